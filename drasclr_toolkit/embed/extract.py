"""Feature extraction: the representation ``h`` of every patch of every subject.

:func:`extract_embeddings` reads a patch source (a :class:`~drasclr_toolkit.preprocess.store.PatchStore`
or any object with the patch-source protocol), runs the encoder and returns an
:class:`~drasclr_toolkit.embed.store.Embeddings` ``N × L × D``.

How it batches: subjects are taken ``batch_size`` at a time (a *chunk*); for each landmark
the chunk's patches at that landmark form one batch, so every batch shares one location and
the encoder takes its one-kernel fast path. Host memory is ``batch_size × L × 32³`` int16
(38 MB per subject at L = 581).

Resumable: with ``out_path`` every finished subject is written atomically to
``<out_path>.parts/<subject>.npy`` and skipped by the next run; a ``run.json`` there records
which encoder and landmarks made them, and a run with a different encoder refuses to mix.

Distributed: under ``torchrun`` (``WORLD_SIZE`` > 1) each rank embeds every ``world``-th
subject; the results are merged (through the part files, or gathered when there is no
``out_path``) and every rank returns the full cohort; rank 0 writes ``out_path``.

Example:
    >>> import numpy as np
    >>> from drasclr_toolkit.patch_source import ArrayPatchSource  # doctest: +SKIP
    >>> src = ArrayPatchSource(np.full((2, 4, 32, 32, 32), -800, np.int16),
    ...                        landmarks=np.arange(12).reshape(4, 3) * 26)  # doctest: +SKIP
    >>> emb = extract_embeddings(src, encoder_kwargs=dict(width=0.25, rep_dim=16),
    ...                          progress=False)  # doctest: +SKIP
    >>> emb.patch.shape  # doctest: +SKIP
    (2, 4, 16)
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import time
import warnings
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence
from urllib.parse import quote

import numpy as np
import torch
from pydantic import Field, field_validator, model_validator
from tqdm.auto import tqdm

from drasclr_toolkit.config import Config, ConfigError, Device, ModelConfig
from drasclr_toolkit.errors import DrasclrError, InputError, OutputExistsError
from drasclr_toolkit.io_utils import atomic_write_text, remove_stale_temp_files, short_file_name
from drasclr_toolkit.locks import folder_lock
from drasclr_toolkit.models import DrasCLREncoder
from drasclr_toolkit.models.checkpoint import load_encoder, official_landmark_coords
from drasclr_toolkit.patch_source import PatchSource
from drasclr_toolkit.runtime import (DistInfo, all_gather_objects, amp_dtype, autocast, barrier,
                                     init_distributed, resolve_device, shutdown)
from drasclr_toolkit.constants import HU_WINDOW, POOLINGS
from drasclr_toolkit.ssl.augment import check_window, hu_to_unit

from drasclr_toolkit.embed.store import Embeddings, atomic_save_npy

__all__ = ["EmbedConfig", "extract_embeddings"]

log = logging.getLogger(__name__)


class EmbedConfig(Config):
    """The ``embed:`` section of a configuration.

    Attributes:
        batch_size: subjects embedded together; each forward pass is ``batch_size``
            patches at one landmark. Host memory ≈ batch_size × 38 MB at L = 581.
        device: ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"``, ``"cuda:1"``.
        amp: mixed precision; ``None`` = on for CUDA, off on CPU.
        seed: seed of the randomly initialised encoder (when no checkpoint is given).
        pooling: default patient pooling (one of ``constants.POOLINGS``).
        model: architecture of the random-init encoder (:class:`ModelConfig`: the shared
            ``model:`` section, handed on by :func:`~drasclr_toolkit.config.load_config`);
            ignored when a checkpoint is given (the checkpoint's own config is used). An
            older ``encoder:`` mapping is read as ``model``.
        hu_window: the network's HU window for an encoder without a checkpoint (the
            random-init baseline, a given encoder); ``None``: [-1024, 240]. A trained
            checkpoint's own window (pretrain ``hu_window``) always wins.

    Example:
        >>> EmbedConfig.from_dict({"batch_size": 8}).batch_size
        8
    """

    section = "embed config"
    yaml_section = ("embed",)

    batch_size: int = Field(16, ge=1)
    device: Device = "auto"
    amp: bool | None = None
    seed: int = 0
    pooling: Literal[POOLINGS] = "mean"
    model: ModelConfig = Field(default_factory=ModelConfig)
    hu_window: list[float] | None = Field(None, min_length=2, max_length=2)

    @model_validator(mode="before")
    @classmethod
    def _encoder_is_model(cls, data: Any) -> Any:
        # Older sections name the architecture ``encoder``; it is the model section now.
        if isinstance(data, Mapping) and "encoder" in data:
            data = dict(data)
            encoder = data.pop("encoder") or {}
            if "model" in data and data["model"] not in (None, encoder):
                raise ConfigError("embed config: both 'encoder' and 'model' are given; the "
                                  "architecture is written once", section=cls.section,
                                  field="encoder", fix="keep it under model only")
            data["model"] = encoder
        return data

    @field_validator("hu_window")
    @classmethod
    def _window(cls, window: list[float] | None) -> list[float] | None:
        return None if window is None else list(check_window(window))



# -- encoder ---------------------------------------------------------------------------
def _random_encoder(seed: int, model: ModelConfig) -> DrasCLREncoder:
    # fork_rng keeps the caller's global RNG untouched while seeding the initialisation.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return DrasCLREncoder(**model.encoder_kwargs())


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def _encoder_fingerprint(encoder: torch.nn.Module) -> str:
    digest = hashlib.sha1()
    for name, tensor in sorted(encoder.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _part_name(subject_id: str) -> str:
    return short_file_name(quote(subject_id, safe=""), ".npy")


# -- extraction ------------------------------------------------------------------------
def refuse_foreign_embeddings_file(out_path: Path, overwrite: bool = False) -> None:
    """OutputExistsError when ``out_path`` exists and is not an embeddings file this
    toolkit wrote (a user's manifest, a folder, ...), unless ``overwrite``."""
    out_path = Path(out_path)
    if not out_path.exists() or overwrite:
        return
    ours = False
    if out_path.is_file():
        try:
            with np.load(out_path, allow_pickle=False) as data:
                ours = "metadata" in data.files and "patch" in data.files
        except Exception:  # noqa: BLE001 - any unreadable file is not ours
            ours = False
    if not ours:
        kind = "a folder" if out_path.is_dir() else "a file that is not an embeddings .npz"
        raise OutputExistsError(
            f"the output is {kind} this toolkit did not write; it is left as it is",
            where=f"--out {out_path}",
            fix="give a new .npz path, or pass --force (overwrite=True) to replace it")


def extract_embeddings(
    source: PatchSource,
    checkpoint: str | Path | None = None,
    encoder: torch.nn.Module | None = None,
    *,
    config: EmbedConfig | Mapping[str, Any] | str | Path | None = None,
    batch_size: int | None = None,
    device: str | torch.device | None = None,
    out_path: str | Path | None = None,
    amp: bool | None = None,
    seed: int | None = None,
    encoder_kwargs: Mapping[str, Any] | None = None,
    subjects: Sequence[int | str] | None = None,
    progress: bool = True,
    recompute_changed: bool = False,
    recalibrate: bool = True,
    overwrite: bool = False,
) -> Embeddings:
    """Patch-level embeddings ``(N, L, D)`` of every subject of ``source``.

    Args:
        source: a patch source (PatchStore, ArrayPatchSource, ...).
        checkpoint: our trainer's checkpoint or an official DrasCLR one; ``None`` (and no
            ``encoder``) = a randomly initialised encoder seeded by ``seed``, built from
            ``encoder_kwargs`` (the baseline to compare a trained encoder against).
        encoder: an encoder object to use as is (its landmark convention is ours).
        config: the ``embed:`` options (:class:`EmbedConfig`, a dict, a YAML file or a
            packaged name); the keyword arguments below override its fields when given
            (``None``: the config's value; for ``amp`` that means set ``amp`` in the config).
        batch_size: subjects per chunk = patches per forward pass (all at one landmark).
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ... (or a ``torch.device``).
        out_path: ``.npz`` to write; enables resumption through ``<out_path>.parts/``.
        amp: autocast (bfloat16/float16) on CUDA; ``None`` = on for CUDA only.
        seed: seed of the random-init encoder.
        encoder_kwargs: architecture of the random-init encoder (keys of
            :class:`~drasclr_toolkit.config.ModelConfig`; replaces the config's ``model``).
        subjects: restrict to these subjects (ids or indices); default all.
        progress: show a tqdm bar (patches embedded).
        recalibrate: for the random-init encoder, re-estimate its BatchNorm statistics on
            the source's patches first (location by location, no weight changes). Without
            it the initial statistics (mean 0, variance 1) collapse every patch onto nearly
            one embedding, and the "baseline" measures a broken network.
        recompute_changed: on resume, a finished subject whose patches changed since (the
            store's per-subject checksum differs, e.g. ``out_path`` reused with another
            store) is recomputed; by default that is an error, so old vectors are never
            mixed silently with new data.
        overwrite: replace an ``out_path`` that is not an embeddings file (by default it is
            refused, so a user's file given by mistake is never overwritten).

    Returns:
        :class:`Embeddings` in source order; subjects whose patches could not be read
        are left out and listed in ``provenance["failed"]`` with the reason.
    """
    overrides = dict(batch_size=batch_size, amp=amp, seed=seed, model=encoder_kwargs)
    cfg = EmbedConfig.coerce(config).replace(
        **{key: value for key, value in overrides.items() if value is not None})
    batch_size, amp, seed = cfg.batch_size, cfg.amp, cfg.seed
    if checkpoint is not None and encoder is not None:
        raise InputError("give either checkpoint or encoder, not both")
    device = resolve_device(cfg.device if device is None else device)
    encoder, info = _choose_encoder(checkpoint, encoder, seed, cfg.model)
    was_training = encoder.training  # a caller's encoder goes back to its mode afterwards
    encoder = encoder.to(device).eval()
    landmarks, coords = _location_inputs(source, info)
    # The fingerprint is taken before any recalibration: re-estimated statistics can differ
    # in the last bits between runs (thread counts, GPU atomics), the weights never do.
    weights_sha1 = _encoder_fingerprint(encoder)
    window = network_window(info, cfg.hu_window)
    if info["encoder_kind"] == "random-init" and recalibrate:
        info["batchnorm"] = _recalibrate(encoder, source, seed, device, window)

    all_ids = [str(s) for s in source.subject_ids]
    wanted = (list(range(len(all_ids))) if subjects is None else
              [s if isinstance(s, (int, np.integer)) else _index_of(all_ids, s) for s in subjects])
    dist_info = init_distributed(device)
    dtype = amp_dtype(device, amp)
    fingerprint = {"encoder_sha1": weights_sha1,
                   "landmark_coords_sha1": hashlib.sha1(coords.tobytes()).hexdigest(),
                   "encoder_kind": info["encoder_kind"], "checkpoint": info["checkpoint"],
                   "seed": seed if info["encoder_kind"] == "random-init" else None,
                   "amp": dtype is not None,
                   "batchnorm": "recalibrated" if "batchnorm" in info else "as built"}
    if window != HU_WINDOW:  # only then: parts written before windows existed stay valid
        fingerprint["hu_window"] = list(window)
    parts_dir = None
    lock = contextlib.ExitStack()
    if out_path is not None:
        out_path = Path(out_path)
        parts_dir = out_path.with_name(out_path.name + ".parts")
        if dist_info.is_main:
            refuse_foreign_embeddings_file(out_path, overwrite)
            # one writer per output: a second run into it is refused, naming the holder
            lock.enter_context(folder_lock(parts_dir, "embed"))
        if dist_info.is_main:  # temp files of a killed run (other ranks' writes are live)
            remove_stale_temp_files(parts_dir)
            if out_path.parent.is_dir():
                remove_stale_temp_files(out_path.parent, recursive=False)
        _check_parts_dir(parts_dir, fingerprint)

    with lock:
        return _extract(source, encoder, info, wanted, all_ids, landmarks, coords, device, dtype,
                        dist_info, batch_size, fingerprint, parts_dir, out_path, progress,
                        recompute_changed, was_training, window)


def _extract(source, encoder, info, wanted, all_ids, landmarks, coords, device, dtype,
             dist_info, batch_size, fingerprint, parts_dir, out_path, progress,
             recompute_changed, was_training, window) -> Embeddings:
    mine = wanted[dist_info.rank::dist_info.world_size]
    todo = [i for i in mine if parts_dir is None or
            not _part_is_current(parts_dir, source, all_ids[i], recompute_changed)]
    started = time.perf_counter()
    results, failed = _embed_subjects(
        source, encoder, [(i, all_ids[i]) for i in todo],
        torch.as_tensor(coords, dtype=torch.float32, device=device), batch_size, device, dtype,
        parts_dir, _progress_bar(len(todo) * len(landmarks), progress, dist_info), window)
    encoder.train(was_training)
    seconds = time.perf_counter() - started

    if dist_info.enabled:
        results, failed = _merge_ranks(results, failed, parts_dir is not None, dist_info)
    emb = _assemble(source, all_ids, wanted, results, failed, parts_dir, landmarks, coords)
    emb.provenance.update(info)
    emb.provenance.update({
        "seed": fingerprint["seed"], "encoder_sha1": fingerprint["encoder_sha1"],
        "rep_dim": int(encoder.rep_dim), "device": str(device), "amp": fingerprint["amp"],
        "batch_size": batch_size, "world_size": dist_info.world_size, "failed": failed,
        "hu_window": list(window),
        "source": str(getattr(source, "path", getattr(source, "root", type(source).__name__))),
        "seconds_rank0": round(seconds, 3), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "store_fingerprint": (source.fingerprint() if callable(getattr(source, "fingerprint", None))
                              else None),
        "torch": torch.__version__,
    })
    if out_path is not None and dist_info.is_main:
        emb.save(out_path)
    barrier(dist_info)
    shutdown(dist_info)
    return emb


def network_window(info: Mapping[str, Any], configured: Sequence[float] | None = None
                   ) -> tuple[float, float]:
    """The HU window an encoder was trained with: a trained checkpoint's ``hu_window``,
    else ``configured`` (the random-init baseline, a given encoder), else [-1024, 240].

    Example:
        >>> network_window({"encoder_kind": "trained", "checkpoint_config": {"hu_window": [-1024, -500]}})
        (-1024, -500)
        >>> network_window({"encoder_kind": "random-init"}, [-1000, -400])
        (-1000, -400)
    """
    config = info.get("checkpoint_config") or {}
    if info.get("encoder_kind") == "trained" and isinstance(config, Mapping) \
            and config.get("hu_window") is not None:
        return check_window(config["hu_window"])
    return check_window(configured)


def _recalibrate(encoder: torch.nn.Module, source: PatchSource, seed: int,
                 device: torch.device, window: tuple[float, float] = HU_WINDOW,
                 max_locations: int = 64) -> str:
    """Honest random-init statistics: BatchNorm re-estimated from this cohort's patches
    (subjects whose patches cannot be read are left out with a warning)."""
    try:
        return _recalibrate_on(encoder, source, seed, device, window, max_locations, None)
    except DrasclrError as exc:
        # a damaged subject must not stop the cohort: leave it out here, as extraction does
        good, bad = [], []
        for i, sid in enumerate(source.subject_ids):
            try:
                source.read_subject(i)
                good.append(i)
            except DrasclrError:
                bad.append(sid)
        if not bad or not good:
            raise
        warnings.warn(f"BatchNorm recalibration leaves out {len(bad)} subject(s) whose "
                      f"patches cannot be read ({', '.join(map(str, bad[:5]))}): {exc}",
                      stacklevel=2)
        how = _recalibrate_on(encoder, source, seed, device, window, max_locations, good)
        return f"{how}; left out unreadable {', '.join(map(str, bad[:5]))}"


def _recalibrate_on(encoder: torch.nn.Module, source: PatchSource, seed: int,
                    device: torch.device, window: tuple[float, float], max_locations: int,
                    subjects: list[int] | None) -> str:
    from drasclr_toolkit.models.batchnorm import location_batches, recalibrate_batchnorm

    pool = list(range(len(source.subject_ids))) if subjects is None else subjects
    batch = min(32, len(pool))
    if batch >= 2:
        batches = location_batches(source, batch_size=batch, max_locations=max_locations,
                                   seed=seed, window=window, subjects=subjects)
        how = f"up to {batch} subjects at one landmark each, landmarks spread over the lung"
    else:  # one subject: batches of its landmarks (each patch with its own location)
        coords = np.asarray(source.landmark_coords, np.float32)
        patches = np.asarray(source.read_subject(pool[0]))
        batches = ((hu_to_unit(torch.as_tensor(patches[i:i + 16]), window).unsqueeze(1),
                    torch.as_tensor(coords[i:i + 16])) for i in range(0, len(coords), 16))
        how = "one subject: 16 of its landmarks per batch"
    used = recalibrate_batchnorm(encoder, batches, device=device)
    return f"recalibrated on {used} batches ({how})"


def _choose_encoder(checkpoint: str | Path | None, encoder: torch.nn.Module | None, seed: int,
                    model: ModelConfig) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The encoder to run (given, loaded, or random-init) and its provenance."""
    if encoder is not None:
        return encoder, {"encoder_kind": "given", "checkpoint": None, "checkpoint_config": None,
                         "landmark_convention": "ours"}
    if checkpoint is not None:
        return load_encoder(checkpoint)
    return _random_encoder(seed, model), {
        "encoder_kind": "random-init", "checkpoint": None,
        "checkpoint_config": _jsonable(model.encoder_kwargs()),
        "landmark_convention": "ours"}


def _location_inputs(source: PatchSource, info: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """The source's landmarks and their network coordinates in the encoder's convention.

    Pops ``trained_landmark_coords`` from ``info`` and warns when they differ from the
    source's: the checkpoint's location routing was learnt on another atlas.
    """
    landmarks = np.asarray(source.landmarks)
    if info["landmark_convention"] == "reference":
        coords = official_landmark_coords(landmarks)
    else:
        coords = np.asarray(source.landmark_coords, dtype=np.float32)
    trained_coords = info.pop("trained_landmark_coords", None)
    if trained_coords is not None and (trained_coords.shape != coords.shape
                                       or not np.allclose(trained_coords, coords, atol=1e-5)):
        warnings.warn(f"checkpoint {info['checkpoint']} was trained on other landmarks "
                      f"({len(trained_coords)} locations) than this source has ({len(coords)}); "
                      "its location routing may not fit this atlas", stacklevel=3)
    return landmarks, coords


def _progress_bar(total: int, progress: bool, dist_info: DistInfo) -> tqdm:
    desc = f"embed (rank {dist_info.rank})" if dist_info.enabled else "embed"
    # nothing left to embed (a resumed run): no bar, an empty "0/0" one reads as stalled
    return tqdm(total=total, unit="patch", disable=not progress or total == 0, desc=desc)


def _embed_subjects(source: PatchSource, encoder: torch.nn.Module, todo: list[tuple[int, str]],
                    coords: torch.Tensor, batch_size: int, device: torch.device,
                    dtype: torch.dtype | None, parts_dir: Path | None, bar: tqdm,
                    window: tuple[float, float] = HU_WINDOW
                    ) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Embed ``todo`` (source index, subject id) ``batch_size`` subjects at a time.

    Returns the embeddings kept in memory (none when they go to ``parts_dir``) and the
    subjects that failed, with the reason.
    """
    n_loc = len(coords)
    results: dict[str, np.ndarray] = {}
    failed: dict[str, str] = {}
    with torch.inference_mode(), autocast(device, dtype):
        for begin in range(0, len(todo), batch_size):
            chunk_ids, chunk = [], []
            for index, sid in todo[begin:begin + batch_size]:
                try:
                    chunk.append(_read_subject(source, index, sid, n_loc))
                    chunk_ids.append(sid)
                except Exception as exc:  # one bad subject never stops the cohort
                    failed[sid] = f"{type(exc).__name__}: {exc}"
                    log.error("embed: subject %s skipped: %s", sid, failed[sid])
                    bar.update(n_loc)
            if not chunk:
                continue
            out = _embed_chunk(encoder, np.stack(chunk), coords, device, bar, window)
            for row, sid in enumerate(chunk_ids):
                if parts_dir is not None:
                    atomic_save_npy(parts_dir / _part_name(sid), out[row])
                    digest = _subject_digest(source, sid)
                    if digest is not None:  # written after the part: a kill between redoes it
                        atomic_write_text(_digest_path(parts_dir, sid), digest)
                else:
                    results[sid] = out[row]
    bar.close()
    return results, failed


def _embed_chunk(encoder: torch.nn.Module, patches: np.ndarray, coords: torch.Tensor,
                 device: torch.device, bar: tqdm, window: tuple[float, float] = HU_WINDOW
                 ) -> np.ndarray:
    """``(C, L, P, P, P)`` int16 HU patches → ``(C, L, D)`` float32, one landmark per pass."""
    out = np.empty((len(patches), len(coords), encoder.rep_dim), dtype=np.float32)
    for loc in range(len(coords)):
        x = _to_network(patches[:, loc], device, window)
        h = encoder.encode(x, coords[loc])
        out[:, loc] = h.float().cpu().numpy()
        bar.update(len(patches))
    return out


def _index_of(ids: list[str], subject: str) -> int:
    try:
        return ids.index(str(subject))
    except ValueError:
        raise KeyError(f"subject {subject!r} is not in the patch source") from None


def _read_subject(source: PatchSource, index: int, sid: str, n_loc: int) -> np.ndarray:
    patches = np.asarray(source.read_subject(index))
    size = int(source.patch_size)
    if patches.shape != (n_loc, size, size, size):
        raise InputError(f"subject {sid}: read_subject returned shape {patches.shape}, expected "
                         f"({n_loc}, {size}, {size}, {size}); re-run preprocessing for it")
    return patches


def _to_network(hu: np.ndarray, device: torch.device,
                window: tuple[float, float] = HU_WINDOW) -> torch.Tensor:
    """HU patches ``(B, P, P, P)`` → network input ``(B, 1, P, P, P)`` in [-1, 1]."""
    x = torch.from_numpy(np.ascontiguousarray(hu)).to(device=device, dtype=torch.float32)
    return hu_to_unit(x, window).unsqueeze(1)


def _subject_digest(source: PatchSource, sid: str) -> str | None:
    checksum = getattr(source, "subject_checksum", None)
    return checksum(sid) if callable(checksum) else None


def _digest_path(parts_dir: Path, sid: str) -> Path:
    return parts_dir / (_part_name(sid) + ".source")


def _part_is_current(parts_dir: Path, source: PatchSource, sid: str,
                     recompute_changed: bool) -> bool:
    """Whether a finished part can be reused: it exists and was made from the same data."""
    part = parts_dir / _part_name(sid)
    if not part.exists():
        return False
    now = _subject_digest(source, sid)
    digest_file = _digest_path(parts_dir, sid)
    then = digest_file.read_text().strip() if digest_file.exists() else None
    if now == then:
        return True
    if now is not None and then is None:
        return False  # written before its digest (killed in between): redo it
    if recompute_changed:
        return False
    raise InputError(
        f"this embedding was made from other patches than the store now holds (checksum "
        f"{then} then, {now} now: the subject was redone, or out_path is reused with another "
        "store)", where=f"subject {sid}: file {part}, field 'source checksum'",
        fix="pass recompute_changed=True (`drasclr embed --recompute-changed`), or choose "
        "another out_path")


def _check_parts_dir(parts_dir: Path, fingerprint: dict[str, Any]) -> None:
    run_file = parts_dir / "run.json"
    if run_file.exists():
        previous = json.loads(run_file.read_text())
        # The weights' hash, the locations and the precision decide the numbers; a moved
        # checkpoint file with the same weights may resume.
        decisive = ("encoder_sha1", "landmark_coords_sha1", "amp", "batchnorm")
        if any(previous.get(k) != fingerprint[k] for k in decisive):
            raise InputError(
                f"{parts_dir} holds embeddings made by another encoder or landmark set "
                f"({previous.get('encoder_kind')}, checkpoint {previous.get('checkpoint')}); "
                "delete that folder or choose another out_path")
        return
    parts_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_file, json.dumps(fingerprint, indent=1))


def _merge_ranks(results: dict[str, np.ndarray], failed: dict[str, str], on_disk: bool,
                 dist_info: DistInfo) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    gathered = all_gather_objects((failed, {} if on_disk else results), dist_info)
    merged_failed: dict[str, str] = {}
    merged: dict[str, np.ndarray] = {}
    for rank_failed, rank_results in gathered:
        merged_failed.update(rank_failed)
        merged.update(rank_results)
    return merged, merged_failed


def _assemble(source: PatchSource, all_ids: list[str], wanted: list[int],
              results: dict[str, np.ndarray], failed: dict[str, str], parts_dir: Path | None,
              landmarks: np.ndarray, coords: np.ndarray) -> Embeddings:
    rows, ids, vectors = [], [], []
    for index in sorted(wanted):
        sid = all_ids[index]
        if sid in failed:
            continue
        if sid in results:
            vectors.append(results[sid])
        else:
            part = parts_dir / _part_name(sid) if parts_dir is not None else None
            if part is None or not part.exists():
                failed.setdefault(sid, "no embedding produced")
                continue
            vectors.append(np.load(part, allow_pickle=False))
        rows.append(index)
        ids.append(sid)
    lung = np.asarray(source.lung_fraction, dtype=np.float32)[rows] if rows else \
        np.zeros((0, len(landmarks)), np.float32)
    in_scan = getattr(source, "in_scan", None)  # PatchStore: landmarks inside each scan
    in_scan = None if in_scan is None else np.asarray(in_scan, bool)[rows]
    dim = vectors[0].shape[1] if vectors else 0
    patch = np.stack(vectors) if vectors else np.zeros((0, len(landmarks), dim), np.float32)
    return Embeddings(patch=patch, subject_ids=ids, landmarks=landmarks,
                      landmark_coords=coords, lung_fraction=lung, provenance={},
                      in_scan=in_scan)
