"""Load the authors' released DrasCLR checkpoints into :class:`DrasCLREncoder`.

Layout of a reference checkpoint (github batmanlab/DrasCLR, ``train.py`` / ``models/``):
``torch.save({'epoch', 'arch', 'state_dict', 'optimizer'})`` where ``state_dict`` is the
DDP-wrapped MoCo model, so encoder keys read ``module.encoder_q.<name>`` (query encoder)
and ``module.encoder_k.<name>`` (momentum encoder), beside ``module.queue`` and
``module.queue_ptr``. Inside an encoder:

==========================================  ==========================================
reference name                              ours
==========================================  ==========================================
``conv1``, ``conv2``                        ``features.0.conv``, ``features.1.conv``
``downsample{1,2,3}.conv{1,2,3}``           ``features.2.conv`` … ``features.10.conv``
``conv3``, ``conv4``                        ``features.11.conv``, ``features.12.conv``
(matching ``bn*``)                          ``features.<i>.bn``
``<conv>.weight`` ``[E, out, in, 3, 3, 3]``  ``<conv>.weight`` (same shape)
``<conv>._routing_fn.fc.{weight,bias}``     ``<conv>.routing.{weight,bias}``
``fc.0``, ``fc.2`` (MoCo v2 MLP head)       ``head.0``, ``head.2``
==========================================  ==========================================

The reference encoder returns ``(z, h)``; ours returns ``(h, z)``. Its routing layer reads
``num_coordinates * 3`` inputs (3 with the released setting) and its locations are
normalised as ``p / max * 2 - 1`` (:func:`official_landmark_coords`), not our
``(p - min) / (max - min) * 2 - 1``: use the former with official weights.

Our own trainer's checkpoints are written and read here too: :func:`atomic_torch_save`
writes them, :func:`save_encoder_checkpoint` makes ``final.pt`` (format tag
:data:`FINAL_FORMAT`), :func:`read_training_checkpoint` reads ``checkpoints/last.pt``
(:data:`CHECKPOINT_FORMAT`) and :func:`load_encoder` builds an encoder from either kind or
from an official checkpoint, refusing a file whose format tag it does not know.
"""

from __future__ import annotations

import json
import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from drasclr_toolkit.errors import CheckpointError, InputError, MissingFileError
from drasclr_toolkit.io_utils import atomic_write

from drasclr_toolkit.models.encoder import DrasCLREncoder

__all__ = [
    "CHECKPOINT_FORMAT",
    "ENCODER_ARGS",
    "FINAL_FORMAT",
    "OfficialLoadReport",
    "atomic_torch_save",
    "load_encoder",
    "read_training_checkpoint",
    "save_encoder_checkpoint",
    "load_official_checkpoint",
    "official_key_map",
    "official_landmark_coords",
    "official_state_dict",
]

# Reference module names of the 13 conv/bn pairs, in network order.
_OFFICIAL_UNITS: list[tuple[str, str]] = (
    [("conv1", "bn1"), ("conv2", "bn2")]
    + [(f"downsample{b}.conv{i}", f"downsample{b}.bn{i}") for b in (1, 2, 3) for i in (1, 2, 3)]
    + [("conv3", "bn3"), ("conv4", "bn4")]
)
_BN_FIELDS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
_PREFIXES = ("module.{branch}.", "{branch}.", "")


@dataclass
class OfficialLoadReport:
    """What :func:`load_official_checkpoint` did.

    Attributes:
        path: the checkpoint file.
        prefix: key prefix the encoder was read from (e.g. ``"module.encoder_q."``).
        loaded_keys: our parameter/buffer names that received values.
        missing_keys: our names with no value in the checkpoint (left as initialised).
        unexpected_keys: reference names under ``prefix`` that have no counterpart here.
        ignored_keys: number of keys outside ``prefix`` (momentum encoder, queue, ...).
        config: encoder settings read from the tensor shapes.
        epoch: training epoch stored in the checkpoint, if any.
    """

    path: str
    prefix: str
    loaded_keys: list[str] = field(default_factory=list)
    missing_keys: list[str] = field(default_factory=list)
    unexpected_keys: list[str] = field(default_factory=list)
    ignored_keys: int = 0
    config: dict[str, Any] = field(default_factory=dict)
    epoch: int | None = None

    @property
    def ok(self) -> bool:
        """True when every encoder key was loaded and nothing was left over."""
        return not self.missing_keys and not self.unexpected_keys


def official_key_map(encoder: DrasCLREncoder) -> dict[str, str]:
    """Map reference encoder key names (no prefix) to our ``state_dict`` names.

    Example:
        >>> enc = DrasCLREncoder(rep_dim=8, proj_dim=8, num_experts=2, width=0.25)
        >>> official_key_map(enc)["downsample1.conv1._routing_fn.fc.weight"]
        'features.2.conv.routing.weight'
    """
    if encoder.conditioning != "condconv":
        raise InputError("official DrasCLR checkpoints hold conditional convolutions; build the "
                         f"encoder with conditioning='condconv' (got {encoder.conditioning!r})")
    ours = encoder.state_dict()
    mapping: dict[str, str] = {}
    for i, (conv, bn) in enumerate(_OFFICIAL_UNITS):
        mapping[f"{conv}.weight"] = f"features.{i}.conv.weight"
        mapping[f"{conv}._routing_fn.fc.weight"] = f"features.{i}.conv.routing.weight"
        mapping[f"{conv}._routing_fn.fc.bias"] = f"features.{i}.conv.routing.bias"
        if f"features.{i}.conv.bias" in ours:
            mapping[f"{conv}.bias"] = f"features.{i}.conv.bias"
        for name in _BN_FIELDS:
            mapping[f"{bn}.{name}"] = f"features.{i}.bn.{name}"
    for j in (0, 2):
        for name in ("weight", "bias"):
            mapping[f"fc.{j}.{name}"] = f"head.{j}.{name}"
    return mapping


def official_state_dict(encoder: DrasCLREncoder,
                        prefix: str = "module.encoder_q.") -> dict[str, torch.Tensor]:
    """Our encoder's weights under reference key names (to share with the reference code).

    Example:
        >>> enc = DrasCLREncoder(rep_dim=8, proj_dim=8, num_experts=2, width=0.25)
        >>> "module.encoder_q.conv4._routing_fn.fc.bias" in official_state_dict(enc)
        True
    """
    ours = encoder.state_dict()
    return {prefix + off: ours[our].detach().clone()
            for off, our in official_key_map(encoder).items()}


def official_landmark_coords(landmarks: Sequence[Sequence[float]] | np.ndarray) -> np.ndarray:
    """The reference's location normalisation ``p / max * 2 - 1`` per axis (no min).

    Use it with official checkpoints; our own training uses
    :func:`drasclr_toolkit.landmarks.normalize_landmarks`. The reference landmarks start at 0
    on z but at 26/78 on x/y, so the two conventions give different inputs.

    Example:
        >>> official_landmark_coords([[26, 78, 0], [52, 156, 26]]).tolist()
        [[0.0, 0.0, -1.0], [1.0, 1.0, 1.0]]
    """
    p = np.asarray(landmarks, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] != 3 or len(p) == 0:
        raise InputError(f"landmarks must be an (L, 3) array of (x, y, z); got shape {p.shape}")
    hi = p.max(0)
    if np.any(hi <= 0):
        raise InputError("official_landmark_coords divides by the per-axis maximum, which must "
                         f"be > 0; got maxima {hi.tolist()}")
    return (p / hi * 2.0 - 1.0).astype(np.float32)


def safe_torch_load(path: str | os.PathLike, map_location: Any = "cpu", *,
                    mmap: bool = False) -> Any:
    """``torch.load(path, weights_only=True)`` whose failures are one
    :class:`~drasclr_toolkit.errors.CheckpointError` naming the file and saying what it
    is: missing, not a regular file, truncated or damaged, not a checkpoint, or holding
    Python objects (refused: unpickling them could run code, so no way around it is
    offered)."""
    path = Path(path).expanduser()
    if not path.exists():
        raise CheckpointError("the file does not exist", where=f"checkpoint {path}",
                              fix="check the path (a run writes final.pt in its --out)")
    if not path.is_file():
        raise CheckpointError("it is not a regular file", where=f"checkpoint {path}",
                              fix="give the checkpoint file itself (final.pt, last.pt or an "
                              "official .pth.tar)")
    try:
        return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError:
        raise CheckpointError(
            "it holds Python objects other than tensors and plain values, so it is refused "
            "unread (unpickling such a file can run any code)", where=f"checkpoint {path}",
            fix="use a checkpoint written by `drasclr pretrain` or an official DrasCLR "
            "checkpoint_patch_XXXX.pth.tar; never load files from an untrusted source") from None
    except Exception as err:  # noqa: BLE001 - sorted into truncated / not a checkpoint
        head = path.read_bytes()[:4] if path.stat().st_size else b""
        if head.startswith(b"PK"):
            problem = ("the file is truncated or damaged (its zip archive cannot be read: "
                       f"{type(err).__name__})")
            fix = "copy or write it again (a run killed mid-write keeps the previous file)"
        elif not head:
            problem, fix = "the file is empty", "copy or write it again"
        else:
            problem = ("it is not a PyTorch checkpoint (neither a zip archive nor a legacy "
                       f"torch file: {type(err).__name__})")
            fix = "give a checkpoint written by `drasclr pretrain` (final.pt) or an official one"
        raise CheckpointError(problem, where=f"checkpoint {path}", fix=fix) from None


def _read_checkpoint(path: str) -> Mapping[str, Any]:
    if not os.path.isfile(path):
        raise MissingFileError(f"official checkpoint {path!r} does not exist; pass the path of "
                                "the released .pth.tar file")
    try:
        # mmap: a reference checkpoint carries a 1.2 GB negative queue we never read.
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except (RuntimeError, pickle.UnpicklingError):
        pass  # legacy (non-zip) serialisation cannot be memory-mapped
    return safe_torch_load(path)


def _find_prefix(state: Mapping[str, Any], branch: str, path: str) -> str:
    for pattern in _PREFIXES:
        prefix = pattern.format(branch=branch)
        if f"{prefix}conv1.weight" in state:
            return prefix
    raise InputError(f"{path!r}: no '{branch}' encoder found (looked for 'module.{branch}.conv1."
                     f"weight', '{branch}.conv1.weight' and 'conv1.weight' in 'state_dict'); is "
                     "this a DrasCLR checkpoint?")


def _infer_config(sub: Mapping[str, torch.Tensor], path: str) -> dict[str, Any]:
    w1 = sub["conv1.weight"]
    if w1.dim() != 6:
        raise InputError(f"{path!r}: 'conv1.weight' has shape {tuple(w1.shape)}; expected "
                         "[experts, out, in, 3, 3, 3] of a conditional convolution")
    routing_in = sub["conv1._routing_fn.fc.weight"].shape[1]
    if routing_in != 3:
        raise InputError(f"{path!r}: routing layer 'conv1._routing_fn.fc.weight' reads "
                         f"{routing_in} coordinates; only 3 (num_coordinates=1) is supported")
    if "conv4.weight" not in sub:
        raise InputError(f"{path!r}: 'conv4.weight' is missing; cannot tell rep_dim")
    rep_dim = int(sub["conv4.weight"].shape[1])
    if "fc.2.weight" in sub:
        proj_dim = int(sub["fc.2.weight"].shape[0])
    elif "fc.weight" in sub:
        proj_dim = int(sub["fc.weight"].shape[0])
    else:
        proj_dim = rep_dim
    return {"rep_dim": rep_dim, "num_experts": int(w1.shape[0]),
            "width": float(w1.shape[1]) / 8.0, "proj_dim": proj_dim,
            "in_channels": int(w1.shape[2]), "conditioning": "condconv"}


def load_official_checkpoint(path: str | os.PathLike, encoder: DrasCLREncoder | None = None,
                             strict: bool = False, branch: str = "encoder_q",
                             ) -> tuple[DrasCLREncoder, OfficialLoadReport]:
    """Load a reference DrasCLR checkpoint into a :class:`DrasCLREncoder`.

    Args:
        path: ``checkpoint_patch_XXXX.pth.tar`` from the reference training script (or a
            bare encoder ``state_dict`` with reference names).
        encoder: encoder to fill; by default one is built from the tensor shapes.
        strict: raise when keys are missing or unexpected (shape mismatches always raise).
        branch: ``"encoder_q"`` (query encoder, what the authors extract features with) or
            ``"encoder_k"`` (momentum encoder).

    Returns ``(encoder, report)``. The encoder is left in eval mode. Feed it locations from
    :func:`official_landmark_coords`.

    Example:
        >>> import tempfile, os
        >>> enc = DrasCLREncoder(rep_dim=8, proj_dim=8, num_experts=2, width=0.25)
        >>> f = os.path.join(tempfile.mkdtemp(), "ckpt.pth.tar")
        >>> torch.save({"epoch": 20, "state_dict": official_state_dict(enc)}, f)
        >>> loaded, report = load_official_checkpoint(f)
        >>> report.ok, report.config["num_experts"], report.epoch
        (True, 2, 20)
    """
    path = os.fspath(path)
    ckpt = _read_checkpoint(path)
    if not isinstance(ckpt, Mapping):
        raise InputError(f"{path!r} holds a {type(ckpt).__name__}, not a checkpoint dict")
    state = ckpt.get("state_dict", ckpt)
    if not isinstance(state, Mapping):
        raise InputError(f"{path!r}: field 'state_dict' is a {type(state).__name__}, not a dict")
    prefix = _find_prefix(state, branch, path)
    sub = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    if prefix == "":
        # A bare reference state dict may still carry the MoCo extras; keep encoder keys only.
        sub = {k: v for k, v in sub.items() if not k.startswith(("encoder_", "queue"))}
    config = _infer_config(sub, path)
    if encoder is None:
        encoder = DrasCLREncoder(**config)

    key_map = official_key_map(encoder)
    ours = encoder.state_dict()
    new_state: dict[str, torch.Tensor] = {}
    unexpected: list[str] = []
    for off_key, value in sub.items():
        our_key = key_map.get(off_key)
        if our_key is None:
            unexpected.append(off_key)
            continue
        if tuple(value.shape) != tuple(ours[our_key].shape):
            raise InputError(f"{path!r}: '{prefix}{off_key}' has shape {tuple(value.shape)} but the "
                             f"encoder's '{our_key}' has {tuple(ours[our_key].shape)}; build the "
                             f"encoder to match (checkpoint config: {config}) or pass encoder=None")
        new_state[our_key] = value
    missing = [k for k in ours if k not in new_state]
    if strict and (missing or unexpected):
        raise InputError(f"{path!r}: strict load failed; missing in checkpoint: {missing}; "
                         f"unexpected in checkpoint: {unexpected}")
    encoder.load_state_dict(new_state, strict=False)
    encoder.eval()
    epoch = ckpt.get("epoch") if isinstance(ckpt.get("epoch"), int) else None
    report = OfficialLoadReport(path=path, prefix=prefix, loaded_keys=sorted(new_state),
                                missing_keys=missing, unexpected_keys=sorted(unexpected),
                                ignored_keys=len(state) - len(sub), config=config, epoch=epoch)
    return encoder, report


# -- our trainer's checkpoints ------------------------------------------------------------
CHECKPOINT_FORMAT = "drasclr_toolkit.pretrain/1"   # checkpoints/last.pt: full training state
FINAL_FORMAT = "drasclr_toolkit.encoder/1"         # final.pt, encoder_epochNNN.pt: encoder only
ENCODER_ARGS = ("rep_dim", "num_experts", "width", "conditioning", "proj_dim", "in_channels")


def atomic_torch_save(obj: Any, path: str | Path) -> Path:
    """``torch.save`` to a temporary file next to ``path``, then ``os.replace``: a killed
    process leaves either the old file or the new one, never half of one."""
    return atomic_write(path, lambda tmp: torch.save(obj, tmp), make_parents=True)


def save_encoder_checkpoint(path: str | Path, encoder: torch.nn.Module,
                            encoder_config: Mapping[str, Any], *, config: Mapping[str, Any],
                            landmark_coords: np.ndarray, landmarks: np.ndarray, step: int,
                            epoch: int) -> Path:
    """Write an encoder-only checkpoint (what :func:`load_encoder` reads), atomically."""
    return atomic_torch_save({
        "format": FINAL_FORMAT,
        "encoder": encoder.state_dict(),
        "encoder_config": dict(encoder_config),
        "config": dict(config),
        "landmark_convention": "ours",
        "landmark_coords": torch.as_tensor(np.asarray(landmark_coords)),
        "landmarks": torch.as_tensor(np.asarray(landmarks)),
        "step": step, "epoch": epoch,
    }, path)


def read_training_checkpoint(path: str | Path) -> dict[str, Any]:
    """The training state in ``checkpoints/last.pt``, on the CPU, after checking its format."""
    # CPU first: RNG states must stay CPU tensors; load_state_dict copies weights, queues
    # and optimiser state onto the model's device.
    state = safe_torch_load(path)
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise InputError(f"checkpoint {path}: field 'format' is {found!r}, not "
                         f"{CHECKPOINT_FORMAT!r}; use a new out_dir or resume=False")
    return state


def load_encoder(checkpoint: str | Path, map_location: str = "cpu"
                 ) -> tuple[DrasCLREncoder, dict[str, Any]]:
    """Encoder from one of our trainer's checkpoints or from an official DrasCLR one.

    Returns the encoder and a provenance dict with ``encoder_kind`` (``"trained"`` or
    ``"official"``), ``checkpoint`` (path), ``checkpoint_config`` and
    ``landmark_convention`` (``"ours"``: ``(p - min)/(max - min)·2 - 1``; ``"reference"``:
    ``p / max · 2 - 1``, what official weights were trained with).
    """
    path = Path(checkpoint).expanduser()
    if not path.exists():
        raise MissingFileError(f"checkpoint {path} does not exist")
    state = safe_torch_load(path, map_location)
    if not isinstance(state, dict):
        raise InputError(f"checkpoint {path}: expected a dict, got {type(state).__name__}")
    if _is_official(state):
        encoder, report = load_official_checkpoint(path)
        return encoder, {"encoder_kind": "official", "checkpoint": str(path.resolve()),
                         "checkpoint_config": _jsonable(report.config),
                         "official_epoch": report.epoch,
                         "official_missing_keys": list(report.missing_keys),
                         "landmark_convention": "reference"}
    # Our trainer: final.pt / encoder_epochNNN.pt / checkpoints/last.pt all carry the query
    # encoder's weights under "encoder" and its constructor arguments under "encoder_config".
    if state.get("format") not in (FINAL_FORMAT, CHECKPOINT_FORMAT):
        # A tag from a future (or foreign) writer may lay its fields out differently.
        raise InputError(f"checkpoint {path}: field 'format' is {state.get('format')!r}, not "
                         f"{FINAL_FORMAT!r} or {CHECKPOINT_FORMAT!r}; pass a checkpoint written "
                         "by `drasclr pretrain` (final.pt) with this version of drasclr_toolkit, "
                         "or an official DrasCLR checkpoint_patch_XXXX.pth.tar")
    weights, arch = state.get("encoder"), state.get("encoder_config")
    if not isinstance(weights, Mapping) or not isinstance(arch, Mapping):
        raise InputError(f"checkpoint {path}: fields 'encoder' and 'encoder_config' are missing; "
                         "pass a checkpoint written by `drasclr pretrain` (final.pt) or an "
                         "official DrasCLR checkpoint_patch_XXXX.pth.tar")
    unknown = sorted(set(arch) - set(ENCODER_ARGS))
    if unknown:
        raise InputError(f"checkpoint {path}: field 'encoder_config' has keys {unknown} that "
                         "DrasCLREncoder does not take")
    encoder = DrasCLREncoder(**arch)
    try:
        encoder.load_state_dict(weights)
    except RuntimeError as err:
        mismatched = [line.strip() for line in str(err).splitlines() if "size mismatch" in line]
        raise CheckpointError(
            "its weights do not fit the encoder its 'encoder_config' describes "
            f"({dict(arch)}): " + ("; ".join(mismatched[:2]) or str(err).splitlines()[0]),
            where=f"checkpoint {path}",
            fix="the file was edited or mixes two runs; use the final.pt a run wrote") from None
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
