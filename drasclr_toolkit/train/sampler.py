"""Batches drawn one anatomical location at a time, safe with any number of workers.

The reference switched the training location in the main process while data-loader
workers kept serving the old one (defect 1). Here the sampler yields a complete batch
description, :class:`BatchSpec` (epoch, position, location, subjects, augmentation seed),
and the dataset turns that into tensors: the location travels with the batch and no state
is shared between processes. Use with ``DataLoader(dataset, sampler=sampler,
batch_size=None)`` (automatic batching off: each sampler item is one batch).
"""

from __future__ import annotations

import math
from typing import Iterator, NamedTuple, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from drasclr_toolkit.errors import InputError
from drasclr_toolkit.patch_source import PatchSource
from drasclr_toolkit.ssl.augment import PatchAugmenter


class BatchSpec(NamedTuple):
    """One batch: every subject's patch at location ``loc`` (and at its neighbours)."""

    epoch: int
    index: int                  # position of the batch within its epoch
    loc: int
    subjects: tuple[int, ...]   # this rank's share of the batch
    seed: int                   # augmentation seed, a function of (seed, epoch, index, rank)


def spread_locations(landmarks: np.ndarray, n: int) -> np.ndarray:
    """``n`` landmark indices spread over the lung: farthest-point order, deterministic.

    Starts at the landmark nearest the centroid, then repeatedly adds the landmark farthest
    from those chosen (ties: lowest index). Returned sorted. ``n >= L`` gives all landmarks.

    Example:
        >>> spread_locations(np.array([[0, 0, 0], [1, 0, 0], [2, 0, 0], [10, 0, 0]]), 2).tolist()
        [2, 3]
    """
    p = np.asarray(landmarks, dtype=np.float64)
    if n >= len(p):
        return np.arange(len(p))
    if n < 1:
        raise InputError(f"need at least one location, got n={n}")
    chosen = [int(np.argmin(((p - p.mean(0)) ** 2).sum(1)))]
    dist = ((p - p[chosen[0]]) ** 2).sum(1)
    while len(chosen) < n:
        nxt = int(np.argmax(dist))
        chosen.append(nxt)
        dist = np.minimum(dist, ((p - p[nxt]) ** 2).sum(1))
    return np.sort(np.asarray(chosen, dtype=np.int64))


class LocationBatchSampler(Sampler[BatchSpec]):
    """Every (location, subject) pair once per epoch, in batches that share a location.

    Per epoch (seeded by ``seed`` and the epoch): each location's subjects are shuffled and
    cut into batches of ``batch_size``; an incomplete last batch is topped up with other
    subjects of the same location (so every batch, and every rank's share, has the same
    size); then all batches of all locations are shuffled together. Under DDP every rank
    sees the same batch order and takes its own contiguous share of each batch's subjects,
    so all ranks train on the same location at each step (the per-location queues stay in
    step) and together cover the whole global batch.

    Args:
        n_subjects: N, number of subjects in the source.
        n_locations: L, number of landmarks.
        batch_size: global batch size (split over ranks); capped at N.
        seed: base seed.
        rank, world_size: this process's place in a DDP job.
        locations: restrict training to these landmark indices (default: all).

    Example:
        >>> s = LocationBatchSampler(n_subjects=5, n_locations=3, batch_size=2, seed=0)
        >>> s.batches_per_epoch, len({b.loc for b in s})
        (9, 3)
        >>> s.set_epoch(0, start_index=7); len(list(s))
        2
    """

    def __init__(self, n_subjects: int, n_locations: int, batch_size: int, seed: int = 0,
                 rank: int = 0, world_size: int = 1,
                 locations: Sequence[int] | None = None) -> None:
        if n_subjects < 1 or n_locations < 1:
            raise InputError(f"sampler needs subjects and locations, got N={n_subjects}, "
                             f"L={n_locations}")
        if not 0 <= rank < world_size:
            raise InputError(f"rank {rank} outside world of size {world_size}")
        global_batch = min(batch_size, n_subjects)
        global_batch -= global_batch % world_size
        if global_batch < world_size or global_batch < 1:
            raise InputError(f"batch_size={batch_size} with {n_subjects} subjects cannot be split "
                             f"over {world_size} ranks; use at least {world_size} subjects")
        self.n_subjects = n_subjects
        self.locations = np.arange(n_locations) if locations is None else np.asarray(locations)
        self.global_batch = global_batch
        self.rank_batch = global_batch // world_size
        self.seed = int(seed)
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        self.start_index = 0

    @property
    def batches_per_location(self) -> int:
        return math.ceil(self.n_subjects / self.global_batch)

    @property
    def batches_per_epoch(self) -> int:
        return len(self.locations) * self.batches_per_location

    def set_epoch(self, epoch: int, start_index: int = 0) -> None:
        """Choose the epoch (reshuffles) and where in it to start (resume)."""
        if not 0 <= start_index <= self.batches_per_epoch:
            raise InputError(f"start_index {start_index} outside 0..{self.batches_per_epoch}")
        self.epoch = int(epoch)
        self.start_index = int(start_index)

    def plan(self, epoch: int) -> list[tuple[int, np.ndarray]]:
        """The epoch's global batches as (location, subject indices), identical on all ranks."""
        rng = np.random.default_rng([self.seed, int(epoch)])
        b = self.global_batch
        batches: list[tuple[int, np.ndarray]] = []
        for loc in self.locations:
            perm = rng.permutation(self.n_subjects)
            rem = len(perm) % b
            if rem:
                # Top up the last batch with subjects from earlier batches: no duplicates
                # within a batch, every subject visited at least once per epoch.
                extra = rng.choice(perm[: len(perm) - rem], size=b - rem, replace=False)
                perm = np.concatenate([perm, extra])
            batches += [(int(loc), chunk) for chunk in perm.reshape(-1, b)]
        order = rng.permutation(len(batches))
        return [batches[i] for i in order]

    def __iter__(self) -> Iterator[BatchSpec]:
        plan = self.plan(self.epoch)
        lo, hi = self.rank * self.rank_batch, (self.rank + 1) * self.rank_batch
        for index in range(self.start_index, len(plan)):
            loc, subjects = plan[index]
            seed = int(np.random.SeedSequence([self.seed, self.epoch, index, self.rank])
                       .generate_state(1, dtype=np.uint64)[0] % (2**62))
            yield BatchSpec(self.epoch, index, loc, tuple(int(s) for s in subjects[lo:hi]), seed)

    def __len__(self) -> int:
        return self.batches_per_epoch - self.start_index


class LocationPatchDataset(Dataset):
    """Turns a :class:`BatchSpec` into the tensors of one training batch.

    Returns a dict: ``view1``, ``view2`` (B, 1, P, P, P) float32 in [-1, 1] (two views of
    the anchor patches), ``neighbours`` (k, B, 1, P, P, P) (one view shared by each
    sample's k neighbour patches), ``loc`` (int64 scalar), ``neighbour_locs`` (k,),
    ``subjects`` (B,), ``epoch`` and ``index``.

    Args:
        source: any patch source (PatchStore, ArrayPatchSource).
        k_neighbours: neighbours per anchor (at most ``source.neighbors.shape[1]``).
        augmenter: a :class:`PatchAugmenter` (None: intensity mapping only, no augmentation).
        raw: return the int16 HU patches (``anchor_hu`` (B, P, P, P), ``neighbours_hu``
            (k, B, P, P, P)) and the batch ``seed`` instead of views, for augmentation on the
            training device (:class:`~drasclr_toolkit.ssl.device_augment.DeviceAugmenter`).

    Example:
        >>> from drasclr_toolkit.patch_source import ArrayPatchSource
        >>> src = ArrayPatchSource.synthetic(4, 3, patch_size=16)
        >>> ds = LocationPatchDataset(src, k_neighbours=2)
        >>> b = ds[BatchSpec(0, 0, loc=1, subjects=(0, 3), seed=0)]
        >>> tuple(b["view1"].shape), tuple(b["neighbours"].shape), b["neighbour_locs"].tolist()
        ((2, 1, 16, 16, 16), (2, 2, 1, 16, 16, 16), [0, 2])
    """

    def __init__(self, source: PatchSource, k_neighbours: int = 2,
                 augmenter: PatchAugmenter | None = None, raw: bool = False) -> None:
        available = int(np.asarray(source.neighbors).shape[1]) if np.asarray(source.neighbors).ndim == 2 else 0
        if not 0 <= k_neighbours <= available:
            raise InputError(f"k_neighbours={k_neighbours}, but the patch source lists only "
                             f"{available} neighbours per landmark; lower 'neighbours' in the "
                             "pretrain config")
        self.source = source
        self.k = k_neighbours
        self.neighbors = np.asarray(source.neighbors)[:, :k_neighbours]
        self.augmenter = augmenter if augmenter is not None else PatchAugmenter(enabled=False)
        self.raw = raw

    def __len__(self) -> int:  # not used with a sampler; number of (location) entries
        return len(self.neighbors)

    def __getitem__(self, spec: BatchSpec) -> dict[str, torch.Tensor]:
        spec = BatchSpec(*spec)
        subjects = list(spec.subjects)
        anchor = np.asarray(self.source.read_location(spec.loc, subjects))
        neighbour_locs = self.neighbors[spec.loc]
        neighbours = (np.stack([np.asarray(self.source.read_location(int(n), subjects))
                                for n in neighbour_locs]) if self.k else None)
        common = {
            "loc": torch.tensor(spec.loc, dtype=torch.long),
            "neighbour_locs": torch.as_tensor(neighbour_locs, dtype=torch.long),
            "subjects": torch.as_tensor(subjects, dtype=torch.long),
            "epoch": torch.tensor(spec.epoch), "index": torch.tensor(spec.index),
        }
        if self.raw:
            # Device augmentation: the host only reads int16 HU patches (2 bytes a voxel).
            shape = (0,) + anchor.shape
            return {**common, "anchor_hu": torch.from_numpy(np.ascontiguousarray(anchor)),
                    "neighbours_hu": torch.from_numpy(np.ascontiguousarray(
                        neighbours if neighbours is not None else np.zeros(shape, anchor.dtype))),
                    "seed": torch.tensor(int(spec.seed) % (2**62), dtype=torch.long)}
        v1, v2, nv = self.augmenter(anchor, neighbours, seed=spec.seed)
        return {**common, "view1": v1, "view2": v2, "neighbours": nv}
