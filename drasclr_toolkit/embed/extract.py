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
    >>> from drasclr_toolkit.train.sources import ArrayPatchSource  # doctest: +SKIP
    >>> src = ArrayPatchSource(np.full((2, 4, 32, 32, 32), -800, np.int16),
    ...                        landmarks=np.arange(12).reshape(4, 3) * 26)  # doctest: +SKIP
    >>> emb = extract_embeddings(src, encoder_kwargs=dict(width=0.25, rep_dim=16),
    ...                          progress=False)  # doctest: +SKIP
    >>> emb.patch.shape  # doctest: +SKIP
    (2, 4, 16)
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
import warnings
from contextlib import nullcontext
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping, Sequence
from urllib.parse import quote

import numpy as np
import torch
from tqdm.auto import tqdm

from drasclr_toolkit.config import check_keys
from drasclr_toolkit.io_utils import atomic_write_text
from drasclr_toolkit.models import DrasCLREncoder
from drasclr_toolkit.models.checkpoint import load_official_checkpoint, official_landmark_coords
from drasclr_toolkit.ssl.augment import hu_to_unit
from drasclr_toolkit.train.loop import resolve_device

from .store import Embeddings, atomic_save_npy

__all__ = ["EmbedConfig", "extract_embeddings", "load_encoder", "resolve_device"]

log = logging.getLogger(__name__)

ENCODER_ARGS = ("rep_dim", "num_experts", "width", "conditioning", "proj_dim", "in_channels")


@dataclass
class EmbedConfig:
    """The ``embed:`` section of a configuration.

    Attributes:
        batch_size: subjects embedded together; each forward pass is ``batch_size``
            patches at one landmark. Host memory ≈ batch_size × 38 MB at L = 581.
        device: ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"``, ``"cuda:1"``.
        amp: mixed precision; ``None`` = on for CUDA, off on CPU.
        seed: seed of the randomly initialised encoder (when no checkpoint is given).
        pooling: default patient pooling (``mean``, ``max``, ``lung_weighted``).
        encoder: architecture of the random-init encoder (keys of ``DrasCLREncoder``);
            ignored when a checkpoint is given (the checkpoint's own config is used).

    Example:
        >>> EmbedConfig.from_dict({"batch_size": 8}).batch_size
        8
    """

    batch_size: int = 16
    device: str = "auto"
    amp: bool | None = None
    seed: int = 0
    pooling: str = "mean"
    encoder: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> "EmbedConfig":
        data = dict(data or {})
        check_keys("embed config", data, [f.name for f in fields(cls)])
        check_keys("embed.encoder", data.get("encoder", {}), ENCODER_ARGS)
        config = cls(**data)
        if config.batch_size < 1:
            raise ValueError(f"embed config: batch_size must be >= 1, got {config.batch_size}")
        return config


# -- encoder ---------------------------------------------------------------------------
def _random_encoder(seed: int, encoder_kwargs: Mapping[str, Any]) -> DrasCLREncoder:
    check_keys("encoder_kwargs", encoder_kwargs, ENCODER_ARGS)
    # fork_rng keeps the caller's global RNG untouched while seeding the initialisation.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return DrasCLREncoder(**dict(encoder_kwargs))


def load_encoder(checkpoint: str | Path, map_location: str = "cpu"
                 ) -> tuple[DrasCLREncoder, dict[str, Any]]:
    """Encoder from one of our trainer's checkpoints or from an official DrasCLR one.

    Returns the encoder and a provenance dict with ``encoder_kind`` (``"trained"`` or
    ``"official"``), ``checkpoint`` (path), ``checkpoint_config`` and
    ``landmark_convention`` (``"ours"``: ``(p - min)/(max - min)·2 - 1``; ``"reference"``:
    ``p / max · 2 - 1``, what official weights were trained with).
    """
    path = Path(checkpoint).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    state = torch.load(path, map_location=map_location, weights_only=True)
    if not isinstance(state, dict):
        raise ValueError(f"checkpoint {path}: expected a dict, got {type(state).__name__}")
    if _is_official(state):
        encoder, report = load_official_checkpoint(path)
        return encoder, {"encoder_kind": "official", "checkpoint": str(path.resolve()),
                         "checkpoint_config": _jsonable(report.config),
                         "official_epoch": report.epoch,
                         "official_missing_keys": list(report.missing_keys),
                         "landmark_convention": "reference"}
    # Our trainer: final.pt / encoder_epochNNN.pt / checkpoints/last.pt all carry the query
    # encoder's weights under "encoder" and its constructor arguments under "encoder_config".
    weights, arch = state.get("encoder"), state.get("encoder_config")
    if not isinstance(weights, Mapping) or not isinstance(arch, Mapping):
        raise ValueError(f"checkpoint {path}: fields 'encoder' and 'encoder_config' are missing; "
                         "pass a checkpoint written by `drasclr pretrain` (final.pt) or an "
                         "official DrasCLR checkpoint_patch_XXXX.pth.tar")
    unknown = sorted(set(arch) - set(ENCODER_ARGS))
    if unknown:
        raise ValueError(f"checkpoint {path}: field 'encoder_config' has keys {unknown} that "
                         "DrasCLREncoder does not take")
    encoder = DrasCLREncoder(**arch)
    encoder.load_state_dict(weights)
    info = {"encoder_kind": "trained", "checkpoint": str(path.resolve()),
            "checkpoint_config": _jsonable(state.get("config", dict(arch))),
            "encoder_config": _jsonable(dict(arch)),
            "landmark_convention": str(state.get("landmark_convention", "ours"))}
    for key in ("step", "epoch", "format"):
        if key in state:
            info[f"checkpoint_{key}"] = _jsonable(state[key])
    if "landmark_coords" in state:
        info["trained_landmark_coords"] = np.asarray(state["landmark_coords"], np.float32)
    return encoder, info


def _is_official(state: Mapping[str, Any]) -> bool:
    inner = state.get("state_dict")
    return isinstance(inner, Mapping) and any(str(k).startswith("module.encoder_q")
                                              for k in inner)


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def _encoder_fingerprint(encoder: torch.nn.Module) -> str:
    digest = hashlib.sha1()
    for name, tensor in sorted(encoder.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


# -- distributed -----------------------------------------------------------------------
def _distributed(device: torch.device) -> tuple[int, int, bool]:
    """(rank, world, we_started_it); starts the process group under torchrun if needed."""
    import torch.distributed as dist

    if not dist.is_available():
        return 0, 1, False
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size(), False
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        if device.type == "cuda":
            torch.cuda.set_device(device)  # NCCL collectives run on the current device
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
        return dist.get_rank(), dist.get_world_size(), True
    return 0, 1, False


def _part_name(subject_id: str) -> str:
    return quote(subject_id, safe="") + ".npy"


# -- extraction ------------------------------------------------------------------------
def extract_embeddings(
    source: Any,
    checkpoint: str | Path | None = None,
    encoder: torch.nn.Module | None = None,
    *,
    batch_size: int = 16,
    device: str | torch.device = "auto",
    out_path: str | Path | None = None,
    amp: bool | None = None,
    seed: int = 0,
    encoder_kwargs: Mapping[str, Any] | None = None,
    subjects: Sequence[int | str] | None = None,
    progress: bool = True,
) -> Embeddings:
    """Patch-level embeddings ``(N, L, D)`` of every subject of ``source``.

    Args:
        source: a patch source (PatchStore, ArrayPatchSource, ...).
        checkpoint: our trainer's checkpoint or an official DrasCLR one; ``None`` (and no
            ``encoder``) = a randomly initialised encoder seeded by ``seed``, built from
            ``encoder_kwargs`` (the baseline to compare a trained encoder against).
        encoder: an encoder object to use as is (its landmark convention is ours).
        batch_size: subjects per chunk = patches per forward pass (all at one landmark).
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ...
        out_path: ``.npz`` to write; enables resumption through ``<out_path>.parts/``.
        amp: autocast (bfloat16/float16) on CUDA; ``None`` = on for CUDA only.
        subjects: restrict to these subjects (ids or indices); default all.
        progress: show a tqdm bar (patches embedded).

    Returns:
        :class:`Embeddings` in source order; subjects whose patches could not be read
        are left out and listed in ``provenance["failed"]`` with the reason.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if checkpoint is not None and encoder is not None:
        raise ValueError("give either checkpoint or encoder, not both")
    device = resolve_device(device)
    if encoder is not None:
        info = {"encoder_kind": "given", "checkpoint": None, "checkpoint_config": None,
                "landmark_convention": "ours"}
    elif checkpoint is not None:
        encoder, info = load_encoder(checkpoint)
    else:
        encoder = _random_encoder(seed, encoder_kwargs or {})
        info = {"encoder_kind": "random-init", "checkpoint": None,
                "checkpoint_config": _jsonable(dict(encoder_kwargs or {})),
                "landmark_convention": "ours"}
    was_training = encoder.training  # a caller's encoder goes back to its mode afterwards
    encoder = encoder.to(device).eval()

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
                      "its location routing may not fit this atlas", stacklevel=2)
    n_loc = len(landmarks)
    coords_t = torch.as_tensor(coords, dtype=torch.float32, device=device)

    all_ids = [str(s) for s in source.subject_ids]
    if subjects is None:
        wanted = list(range(len(all_ids)))
    else:
        wanted = [s if isinstance(s, (int, np.integer)) else _index_of(all_ids, s)
                  for s in subjects]
    rank, world, started_group = _distributed(device)
    mine = wanted[rank::world]

    use_amp = (device.type == "cuda") if amp is None else bool(amp)
    if use_amp and device.type == "cuda":
        amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        autocast = torch.autocast("cuda", dtype=amp_dtype)
    elif use_amp:
        autocast = torch.autocast("cpu", dtype=torch.bfloat16)
    else:
        autocast = nullcontext()

    fingerprint = {"encoder_sha1": _encoder_fingerprint(encoder),
                   "landmark_coords_sha1": hashlib.sha1(coords.tobytes()).hexdigest(),
                   "encoder_kind": info["encoder_kind"], "checkpoint": info["checkpoint"],
                   "seed": seed if info["encoder_kind"] == "random-init" else None,
                   "amp": use_amp}
    parts_dir = None
    if out_path is not None:
        out_path = Path(out_path)
        parts_dir = out_path.with_name(out_path.name + ".parts")
        _check_parts_dir(parts_dir, fingerprint)

    todo = [i for i in mine
            if parts_dir is None or not (parts_dir / _part_name(all_ids[i])).exists()]
    results: dict[str, np.ndarray] = {}
    failed: dict[str, str] = {}
    bar = tqdm(total=len(todo) * n_loc, unit="patch", disable=not progress,
               desc=f"embed (rank {rank})" if world > 1 else "embed")
    started = time.perf_counter()
    with torch.inference_mode(), autocast:
        for begin in range(0, len(todo), batch_size):
            chunk_ids, chunk = [], []
            for index in todo[begin:begin + batch_size]:
                sid = all_ids[index]
                try:
                    chunk.append(_read_subject(source, index, sid, n_loc))
                    chunk_ids.append(sid)
                except Exception as exc:  # one bad subject never stops the cohort
                    failed[sid] = f"{type(exc).__name__}: {exc}"
                    log.error("embed: subject %s skipped: %s", sid, failed[sid])
                    bar.update(n_loc)
            if not chunk:
                continue
            patches = np.stack(chunk)  # (C, L, P, P, P) int16
            out = np.empty((len(chunk), n_loc, encoder.rep_dim), dtype=np.float32)
            for loc in range(n_loc):
                x = _to_network(patches[:, loc], device)
                h = encoder.encode(x, coords_t[loc])
                out[:, loc] = h.float().cpu().numpy()
                bar.update(len(chunk))
            for row, sid in enumerate(chunk_ids):
                if parts_dir is not None:
                    atomic_save_npy(parts_dir / _part_name(sid), out[row])
                else:
                    results[sid] = out[row]
    bar.close()
    encoder.train(was_training)
    seconds = time.perf_counter() - started

    if world > 1:
        results, failed = _merge_ranks(results, failed, parts_dir is not None)
    emb = _assemble(source, all_ids, wanted, results, failed, parts_dir, landmarks, coords)
    emb.provenance.update(info)
    emb.provenance.update({
        "seed": fingerprint["seed"], "encoder_sha1": fingerprint["encoder_sha1"],
        "rep_dim": int(encoder.rep_dim), "device": str(device), "amp": use_amp,
        "batch_size": batch_size, "world_size": world, "failed": failed,
        "source": str(getattr(source, "path", getattr(source, "root", type(source).__name__))),
        "seconds_rank0": round(seconds, 3), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "torch": torch.__version__,
    })
    if out_path is not None and rank == 0:
        emb.save(out_path)
    if world > 1:
        import torch.distributed as dist

        dist.barrier()
        if started_group:
            dist.destroy_process_group()
    return emb


def _index_of(ids: list[str], subject: str) -> int:
    try:
        return ids.index(str(subject))
    except ValueError:
        raise KeyError(f"subject {subject!r} is not in the patch source") from None


def _read_subject(source: Any, index: int, sid: str, n_loc: int) -> np.ndarray:
    patches = np.asarray(source.read_subject(index))
    size = int(source.patch_size)
    if patches.shape != (n_loc, size, size, size):
        raise ValueError(f"subject {sid}: read_subject returned shape {patches.shape}, expected "
                         f"({n_loc}, {size}, {size}, {size}); re-run preprocessing for it")
    return patches


def _to_network(hu: np.ndarray, device: torch.device) -> torch.Tensor:
    """HU patches ``(B, P, P, P)`` → network input ``(B, 1, P, P, P)`` in [-1, 1]."""
    x = torch.from_numpy(np.ascontiguousarray(hu)).to(device=device, dtype=torch.float32)
    return hu_to_unit(x).unsqueeze(1)


def _check_parts_dir(parts_dir: Path, fingerprint: dict[str, Any]) -> None:
    run_file = parts_dir / "run.json"
    if run_file.exists():
        previous = json.loads(run_file.read_text())
        # The weights' hash, the locations and the precision decide the numbers; a moved
        # checkpoint file with the same weights may resume.
        decisive = ("encoder_sha1", "landmark_coords_sha1", "amp")
        if any(previous.get(k) != fingerprint[k] for k in decisive):
            raise ValueError(
                f"{parts_dir} holds embeddings made by another encoder or landmark set "
                f"({previous.get('encoder_kind')}, checkpoint {previous.get('checkpoint')}); "
                "delete that folder or choose another out_path")
        return
    parts_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_file, json.dumps(fingerprint, indent=1))


def _merge_ranks(results: dict[str, np.ndarray], failed: dict[str, str], on_disk: bool
                 ) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    import torch.distributed as dist

    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, (failed, {} if on_disk else results))
    merged_failed: dict[str, str] = {}
    merged: dict[str, np.ndarray] = {}
    for rank_failed, rank_results in gathered:
        merged_failed.update(rank_failed)
        merged.update(rank_results)
    return merged, merged_failed


def _assemble(source: Any, all_ids: list[str], wanted: list[int],
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
    dim = vectors[0].shape[1] if vectors else 0
    patch = np.stack(vectors) if vectors else np.zeros((0, len(landmarks), dim), np.float32)
    return Embeddings(patch=patch, subject_ids=ids, landmarks=landmarks,
                      landmark_coords=coords, lung_fraction=lung, provenance={})
