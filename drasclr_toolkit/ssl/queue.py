"""One negative queue per anatomical location (MoCo memory bank, DrasCLR style)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from drasclr_toolkit.errors import InputError

QUEUE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def queue_dtype(name: str | torch.dtype) -> torch.dtype:
    """Resolve a storage dtype name ("float32", "bfloat16", "float16")."""
    if isinstance(name, torch.dtype):
        return name
    if name not in QUEUE_DTYPES:
        raise InputError(f"queue dtype {name!r} is not supported; use one of {sorted(QUEUE_DTYPES)}")
    return QUEUE_DTYPES[name]


class LocationQueues(nn.Module):
    """Negative keys kept separately for each of ``L`` locations: a tensor [L, K, D].

    Each location has its own write pointer and a ``filled`` count. Entries never written
    hold random unit vectors (so the buffer is well defined) but :meth:`negatives` returns
    a mask that leaves them out of the loss, unlike the reference, whose first negatives
    were random noise. Each entry also remembers the subject it came from (``ids``), so a
    query's own earlier keys can be left out: with a small cohort (K close to or above the
    number of subjects) the queue otherwise holds the anchor's own patch as a "negative".
    All state lives in buffers, so ``state_dict`` round-trips exactly.

    Args:
        num_locations: L, number of anatomical locations (landmarks).
        size: K, negatives kept per location (reference 4096).
        dim: D, key dimension (128).
        dtype: storage dtype, "float32", "bfloat16" or "float16" (half the memory);
            similarities are always computed in float32.
        seed: seed of the random initial entries (identical on every DDP rank).

    Example:
        >>> q = LocationQueues(num_locations=3, size=4, dim=2)
        >>> q.enqueue(1, torch.tensor([[1.0, 0.0], [0.0, 1.0]]), ids=torch.tensor([7, 8]))
        >>> neg, mask = q.negatives(1)
        >>> mask.tolist(), int(q.ptr[1]), q.nbytes
        ([True, True, False, False], 2, 96)
        >>> q.negatives(1, exclude_ids=torch.tensor([8]))[1].tolist()   # one row per query
        [[True, False, False, False]]
    """

    def __init__(self, num_locations: int, size: int = 4096, dim: int = 128,
                 dtype: str | torch.dtype = "float32", seed: int = 0) -> None:
        super().__init__()
        if num_locations < 1 or size < 1 or dim < 1:
            raise InputError(f"LocationQueues needs positive sizes, got L={num_locations}, "
                             f"K={size}, D={dim}")
        gen = torch.Generator().manual_seed(int(seed))
        init = F.normalize(torch.randn(num_locations, size, dim, generator=gen), dim=-1)
        self.register_buffer("keys", init.to(queue_dtype(dtype)))
        self.register_buffer("ptr", torch.zeros(num_locations, dtype=torch.long))
        self.register_buffer("filled", torch.zeros(num_locations, dtype=torch.long))
        self.register_buffer("ids", torch.full((num_locations, size), -1, dtype=torch.int32))

    @property
    def num_locations(self) -> int:
        return self.keys.shape[0]

    @property
    def size(self) -> int:
        return self.keys.shape[1]

    @property
    def dim(self) -> int:
        return self.keys.shape[2]

    @property
    def nbytes(self) -> int:
        """Memory of the key buffer in bytes (the subject-id buffer adds 4 bytes per entry)."""
        return self.keys.numel() * self.keys.element_size()

    @staticmethod
    def estimate_nbytes(num_locations: int, size: int, dim: int,
                        dtype: str | torch.dtype = "float32") -> int:
        """Memory the queues would take, without allocating them."""
        return num_locations * size * dim * torch.empty((), dtype=queue_dtype(dtype)).element_size()

    @torch.no_grad()
    def enqueue(self, loc: int, keys: torch.Tensor, ids: torch.Tensor | None = None) -> None:
        """Write ``keys`` (n, D) into location ``loc``'s ring buffer, oldest entries first out.

        ``ids`` (n,): the subject index of each key (default -2, "unknown").
        """
        loc = int(loc)
        if not 0 <= loc < self.num_locations:
            raise IndexError(f"location {loc} outside 0..{self.num_locations - 1}")
        if keys.ndim != 2 or keys.shape[1] != self.dim:
            raise InputError(f"keys must be (n, {self.dim}), got {tuple(keys.shape)}")
        if ids is None:
            ids = torch.full((keys.shape[0],), -2, dtype=torch.int32)
        if ids.shape != keys.shape[:1]:
            raise InputError(f"ids must be ({keys.shape[0]},), got {tuple(ids.shape)}")
        keys = keys.detach()[-self.size:].to(device=self.keys.device, dtype=self.keys.dtype)
        ids = ids.detach()[-self.size:].to(device=self.keys.device, dtype=torch.int32)
        n = keys.shape[0]
        # Pointer arithmetic stays on the queue's device: no host synchronisation per step.
        idx = (self.ptr[loc] + torch.arange(n, device=self.keys.device)) % self.size
        self.keys[loc, idx] = keys
        self.ids[loc, idx] = ids
        self.ptr[loc] = (self.ptr[loc] + n) % self.size
        self.filled[loc] = torch.clamp(self.filled[loc] + n, max=self.size)

    def negatives(self, loc: int, exclude_ids: torch.Tensor | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys (K, D) of location ``loc`` and a bool mask of usable entries.

        The mask is (K,): entries ever written (writes start at index 0 and are contiguous
        until the buffer is full, so these are the first ``filled``). With ``exclude_ids``
        (B,) it is (B, K) and also leaves out each query's own subject's entries.
        """
        loc = int(loc)
        mask = torch.arange(self.size, device=self.keys.device) < self.filled[loc]
        if exclude_ids is not None:
            exclude_ids = exclude_ids.to(device=self.keys.device, dtype=torch.int32)
            mask = mask[None, :] & (self.ids[loc][None, :] != exclude_ids[:, None])
        return self.keys[loc], mask

    def extra_repr(self) -> str:
        return (f"L={self.num_locations}, K={self.size}, D={self.dim}, dtype={self.keys.dtype}, "
                f"{self.nbytes / 2**20:.1f} MiB")
