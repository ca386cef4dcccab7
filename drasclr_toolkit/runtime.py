"""Where and how a stage runs: device, mixed precision, and DDP under ``torchrun``.

Training (:mod:`drasclr_toolkit.train`) and extraction (:mod:`drasclr_toolkit.embed`) both
take their device, autocast and process group from here, so the two cannot drift apart.
This module imports nothing from ``drasclr_toolkit``, so every subpackage can use it.

Example:
    >>> resolve_device("cpu")
    device(type='cpu')
    >>> amp_dtype(torch.device("cpu"), None) is None   # ``None`` = on for CUDA only
    True
    >>> amp_dtype(torch.device("cpu"), True)
    torch.bfloat16
    >>> init_distributed(torch.device("cpu")).world_size   # no torchrun: one process
    1
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import ContextManager

import torch
import torch.distributed as dist

from drasclr_toolkit.config import ConfigError

__all__ = [
    "DistInfo", "all_gather_objects", "all_reduce_mean", "amp_dtype", "autocast",
    "barrier", "broadcast_object", "concat_all_gather", "init_distributed",
    "resolve_device", "shutdown",
]


# -- device ------------------------------------------------------------------------------
def resolve_device(device: str | torch.device = "auto", local_rank: int | None = None) -> torch.device:
    """``"auto"`` → this rank's GPU when CUDA is available, else the CPU.

    ``local_rank`` defaults to torchrun's ``LOCAL_RANK`` (0 outside torchrun).
    """
    if str(device) != "auto":
        dev = torch.device(device)
        if dev.type == "cuda" and (not torch.cuda.is_available()
                                   or (dev.index or 0) >= torch.cuda.device_count()):
            have = torch.cuda.device_count() if torch.cuda.is_available() else 0
            raise ConfigError(
                f"config field 'device': {str(device)!r} was asked for but this machine has "
                f"{have} usable CUDA GPU(s). What to do: set device to auto or cpu (e.g. "
                "--set device=cpu), or run on a machine with that GPU", field="device",
                value=str(device), fix="set device to auto or cpu")
        if dev.type == "mps" and not (getattr(torch.backends, "mps", None)
                                      and torch.backends.mps.is_available()):
            raise ConfigError(
                f"config field 'device': {str(device)!r} was asked for but MPS (Apple GPU) is "
                "not available here. What to do: set device to auto or cpu", field="device",
                value=str(device), fix="set device to auto or cpu")
        return dev
    if torch.cuda.is_available():
        rank = int(os.environ.get("LOCAL_RANK", 0)) if local_rank is None else local_rank
        return torch.device("cuda", rank)
    return torch.device("cpu")


# -- mixed precision -----------------------------------------------------------------------
def amp_dtype(device: torch.device, amp: bool | None, *, allow_float16: bool = True
              ) -> torch.dtype | None:
    """The autocast dtype for ``device``, or ``None`` for full precision.

    ``amp=None`` means on for CUDA, off on the CPU. On CUDA bfloat16 is preferred; a GPU
    without bfloat16 gets float16 only with ``allow_float16``: inference is safe in
    float16, while training without a gradient scaler is not, so the trainer keeps bf16.
    On the CPU an explicit ``amp=True`` autocasts to bfloat16.
    """
    use_amp = (device.type == "cuda") if amp is None else bool(amp)
    if not use_amp:
        return None
    if device.type == "cuda":
        if allow_float16 and not torch.cuda.is_bf16_supported():
            return torch.float16
        return torch.bfloat16
    return torch.bfloat16


def autocast(device: torch.device, dtype: torch.dtype | None) -> ContextManager:
    """``torch.autocast`` on ``device`` with ``dtype``; a no-op context when ``dtype`` is None."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


# -- distributed ---------------------------------------------------------------------------


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    started_here: bool = False   # we created the process group, so we destroy it

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device: torch.device) -> DistInfo:
    """Join the DDP job described by the environment (RANK, WORLD_SIZE, LOCAL_RANK, …).

    A single process (no WORLD_SIZE > 1) runs without a process group. NCCL on GPUs,
    gloo on CPU. A group someone else started is joined as it is (and left to them).
    """
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(),
                        int(os.environ.get("LOCAL_RANK", dist.get_rank())), False)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or not dist.is_available():
        return DistInfo()
    if device.type == "cuda":
        torch.cuda.set_device(device)  # NCCL collectives run on the current device
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return DistInfo(dist.get_rank(), dist.get_world_size(),
                    int(os.environ.get("LOCAL_RANK", "0")), True)


@torch.no_grad()
def concat_all_gather(tensor: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Concatenate ``tensor`` from every rank along dim 0, in rank order (no gradient)."""
    if not info.enabled:
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(info.world_size)]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts, dim=0)


def all_reduce_mean(values: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Mean of ``values`` over ranks (for logging)."""
    if not info.enabled:
        return values
    values = values.clone()
    dist.all_reduce(values)
    return values / info.world_size


def broadcast_object(obj: object, info: DistInfo) -> object:
    if not info.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_gather_objects(obj: object, info: DistInfo) -> list[object]:
    """``obj`` of every rank, in rank order (picklable objects; ``[obj]`` in one process)."""
    if not info.enabled:
        return [obj]
    gathered: list[object] = [None] * info.world_size
    dist.all_gather_object(gathered, obj)
    return gathered


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def shutdown(info: DistInfo) -> None:
    if info.started_here and dist.is_initialized():
        dist.destroy_process_group()
