"""The patch-source protocol, and an in-memory patch source.

:class:`PatchSource` is what training, extraction and the viewers read. The
:class:`~drasclr_toolkit.preprocess.store.PatchStore` implements it on disk;
:class:`ArrayPatchSource` keeps an (N, L, P, P, P) int16 array in memory: a test double, a
way to train on patches you cut yourself, and a quick way to hold a small store in RAM.

This module sits below every stage that reads patches (``train``, ``embed``, ``viz``) and
imports none of them.

Example:
    >>> src = ArrayPatchSource.synthetic(n_subjects=2, n_locations=3, patch_size=8)
    >>> isinstance(src, PatchSource), src.read_subject("s001").shape
    (True, (3, 8, 8, 8))
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, Sequence, runtime_checkable

import numpy as np

from drasclr_toolkit.errors import InputError
from drasclr_toolkit.constants import HU_MAX, HU_MIN
from drasclr_toolkit.io_utils import atomic_write
from drasclr_toolkit.landmarks import nearest_neighbors, normalize_landmarks

__all__ = ["ArrayPatchSource", "CachedPatchSource", "PatchSource", "cached_source"]


@runtime_checkable
class PatchSource(Protocol):
    """Patches of a cohort at the atlas landmarks, readable by location and by subject.

    Subject indices are positions in ``subject_ids``. Patches are int16 HU, ``P``³ each.
    (``isinstance`` checks only that the members exist, not their types.)
    """

    @property
    def subject_ids(self) -> list[str]:
        """N subject ids, in source order."""

    @property
    def landmarks(self) -> np.ndarray:
        """(L, 3) int patch corners (x, y, z) in atlas voxel space."""

    @property
    def landmark_coords(self) -> np.ndarray:
        """(L, 3) float32 network locations (:func:`~drasclr_toolkit.landmarks.normalize_landmarks`)."""

    @property
    def neighbors(self) -> np.ndarray:
        """(L, k) int indices of each landmark's nearest landmarks."""

    @property
    def lung_fraction(self) -> np.ndarray:
        """(N, L) float32 fraction of each patch that is lung."""

    @property
    def patch_size(self) -> int:
        """P, the patch edge in voxels."""

    def read_location(self, loc: int, subjects: Sequence[int]) -> np.ndarray:
        """(B, P, P, P) int16 HU: location ``loc`` of the given subject indices."""

    def read_subject(self, subject: int | str) -> np.ndarray:
        """(L, P, P, P) int16 HU: every patch of one subject (index or id)."""


class ArrayPatchSource:
    """Patch source backed by an in-memory array of HU patches.

    Args:
        patches: (N, L, P, P, P) HU values (converted to int16).
        landmarks: (L, 3) atlas voxel corners (x, y, z); default: a line of points.
        subject_ids: N names; default ``s000``, ``s001``, ….
        neighbors: (L, k) nearest-landmark table; default computed with ``k_neighbors``.
        lung_fraction: (N, L); default all ones.
        k_neighbors: how many neighbours to compute when ``neighbors`` is not given.

    Example:
        >>> src = ArrayPatchSource(np.zeros((3, 4, 8, 8, 8), np.int16),
        ...                        landmarks=np.arange(12).reshape(4, 3))
        >>> src.read_location(2, [0, 2]).shape, src.neighbors.shape, src.patch_size
        ((2, 8, 8, 8), (4, 2), 8)
    """

    def __init__(self, patches: np.ndarray, landmarks: np.ndarray | None = None,
                 subject_ids: Sequence[str] | None = None, neighbors: np.ndarray | None = None,
                 lung_fraction: np.ndarray | None = None, k_neighbors: int = 2) -> None:
        patches = np.asarray(patches)
        if patches.ndim != 5 or not (patches.shape[2] == patches.shape[3] == patches.shape[4]):
            raise InputError(f"ArrayPatchSource: patches must be (N, L, P, P, P), got {patches.shape}")
        self.patches = patches.astype(np.int16, copy=False)
        n, n_loc = patches.shape[:2]
        if landmarks is None:
            landmarks = np.stack([np.arange(n_loc) * 26, np.zeros(n_loc), np.zeros(n_loc)], 1)
        self.landmarks = np.asarray(landmarks).astype(np.int64)
        if self.landmarks.shape != (n_loc, 3):
            raise InputError(f"ArrayPatchSource: landmarks must be ({n_loc}, 3), "
                             f"got {self.landmarks.shape}")
        self.landmark_coords = normalize_landmarks(self.landmarks)
        self.subject_ids = list(subject_ids) if subject_ids is not None else [
            f"s{i:03d}" for i in range(n)]
        if len(self.subject_ids) != n:
            raise InputError(f"ArrayPatchSource: {len(self.subject_ids)} subject ids for {n} subjects")
        if neighbors is None:
            neighbors = nearest_neighbors(self.landmarks, min(k_neighbors, n_loc - 1))
        self.neighbors = np.asarray(neighbors, dtype=np.int64)
        self.lung_fraction = (np.ones((n, n_loc), np.float32) if lung_fraction is None
                              else np.asarray(lung_fraction, np.float32))
        self.patch_size = int(patches.shape[2])

    def __repr__(self) -> str:
        n, n_loc, p = self.patches.shape[:3]
        return f"ArrayPatchSource(subjects={n}, locations={n_loc}, patch={p}³)"

    def __len__(self) -> int:
        return len(self.subject_ids)

    def _subject_index(self, subject: int | str) -> int:
        if isinstance(subject, str):
            try:
                return self.subject_ids.index(subject)
            except ValueError:
                raise KeyError(f"subject {subject!r} is not in this source") from None
        return int(subject)

    def read_location(self, loc: int, subjects: Sequence[int]) -> np.ndarray:
        """Patches (B, P, P, P) int16 of location ``loc`` for the given subject indices."""
        return self.patches[np.asarray(subjects, dtype=np.int64), int(loc)]

    def read_subject(self, subject: int | str) -> np.ndarray:
        """All patches (L, P, P, P) int16 of one subject (index or id)."""
        return self.patches[self._subject_index(subject)]

    def save(self, path: str | Path) -> Path:
        """Write the source to one ``.npz`` file (atomically), readable by :meth:`load` and
        by ``drasclr pretrain --store file.npz``."""
        arrays = dict(patches=self.patches, landmarks=self.landmarks, neighbors=self.neighbors,
                      lung_fraction=self.lung_fraction, subject_ids=np.asarray(self.subject_ids))
        # np.savez appends ".npz" to a path without it, so the temp name ends in ".npz".
        return atomic_write(path, lambda tmp: np.savez(tmp, **arrays), suffix=".tmp.npz")

    @classmethod
    def load(cls, path: str | Path) -> "ArrayPatchSource":
        """Read a source written by :meth:`save`."""
        path = Path(path)
        try:
            with np.load(path, allow_pickle=False) as data:
                return cls(data["patches"], data["landmarks"], [str(s) for s in data["subject_ids"]],
                           neighbors=data["neighbors"], lung_fraction=data["lung_fraction"])
        except KeyError as exc:
            raise InputError(f"{path}: field {exc} missing; write the file with "
                             "ArrayPatchSource.save") from None

    @classmethod
    def from_source(cls, source: PatchSource, subjects: Sequence[int] | None = None,
                    locations: Sequence[int] | None = None) -> "ArrayPatchSource":
        """Copy (a subset of) any patch source into memory, e.g. a PatchStore for fast epochs.

        Neighbours are recomputed within the kept locations.
        """
        subj = list(range(len(source.subject_ids))) if subjects is None else list(subjects)
        locs = list(range(len(source.landmarks))) if locations is None else list(locations)
        patches = np.stack([source.read_location(l, subj) for l in locs], axis=1)
        k = int(np.asarray(source.neighbors).shape[1]) if len(locs) > 1 else 0
        return cls(patches, np.asarray(source.landmarks)[locs],
                   [source.subject_ids[i] for i in subj],
                   lung_fraction=np.asarray(source.lung_fraction)[np.ix_(subj, locs)],
                   k_neighbors=min(k, len(locs) - 1))

    @classmethod
    def synthetic(cls, n_subjects: int = 8, n_locations: int = 6, patch_size: int = 32,
                  seed: int = 0, k_neighbors: int = 2) -> "ArrayPatchSource":
        """Random lung-like patches with structure a contrastive model can learn.

        Each location has its own smooth "anatomy" (vessels, density) shared by all
        subjects; each subject adds its own amount of low-density (emphysema-like) holes
        and noise. Landmarks lie on a 26-voxel grid like the atlas's.
        """
        from scipy.ndimage import gaussian_filter

        rng = np.random.default_rng(seed)
        p = patch_size
        side = int(np.ceil(n_locations ** (1 / 3)))
        grid = np.stack(np.meshgrid(*[np.arange(side)] * 3, indexing="ij"), -1).reshape(-1, 3)
        landmarks = grid[:n_locations] * 26
        anatomy = np.stack([gaussian_filter(rng.normal(size=(p, p, p)), 2.0) for _ in range(n_locations)])
        anatomy /= anatomy.std(axis=(1, 2, 3), keepdims=True) + 1e-6
        severity = rng.uniform(0, 1, n_subjects)
        out = np.empty((n_subjects, n_locations, p, p, p), np.int16)
        for s in range(n_subjects):
            for l in range(n_locations):
                holes = gaussian_filter(rng.normal(size=(p, p, p)), 1.5)
                holes = holes > np.quantile(holes, 1 - 0.3 * severity[s])
                # emphysema also lowers the overall density a little
                hu = -830 - 60 * severity[s] + 180 * anatomy[l] + 25 * rng.normal(size=(p, p, p))
                hu = np.where(anatomy[l] > 1.5, 40.0, hu)       # vessels
                hu = np.where(holes, -980.0, hu)                 # low-density holes
                out[s, l] = np.clip(hu, HU_MIN, HU_MAX).astype(np.int16)
        return cls(out, landmarks, k_neighbors=min(k_neighbors, n_locations - 1))


class CachedPatchSource:
    """Another patch source with all its patches read into memory once.

    Every read is then an array index: no decoding, no checksum, no file access. Reading
    goes subject by subject through the source's own ``read_subject`` (so a damaged
    subject is reported as the source reports it); every other attribute (landmarks,
    ids, ``fingerprint``, ...) is the source's own.

    Example:
        >>> inner = ArrayPatchSource.synthetic(n_subjects=3, n_locations=4, patch_size=8)
        >>> cached = CachedPatchSource(inner)
        >>> bool((cached.read_location(2, [2, 0]) == inner.read_location(2, [2, 0])).all())
        True
        >>> cached.subject_ids == inner.subject_ids, cached.nbytes
        (True, 12288)
    """

    def __init__(self, source: PatchSource) -> None:
        self.source = source
        n, n_loc, p = len(source.subject_ids), len(source.landmarks), int(source.patch_size)
        self.patches = np.empty((n_loc, n, p, p, p), np.int16)  # location-major, as training reads
        for s in range(n):
            self.patches[:, s] = np.asarray(source.read_subject(s))

    @staticmethod
    def size_mb(source: PatchSource) -> float:
        """MiB the cache of ``source`` would take."""
        n, n_loc, p = len(source.subject_ids), len(source.landmarks), int(source.patch_size)
        return n * n_loc * p ** 3 * 2 / 2 ** 20

    @property
    def nbytes(self) -> int:
        return int(self.patches.nbytes)

    def read_location(self, loc: int, subjects: Sequence[int]) -> np.ndarray:
        return self.patches[int(loc), np.asarray(list(subjects), dtype=np.int64)]

    def read_subject(self, subject: int | str) -> np.ndarray:
        index = self.source.subject_ids.index(subject) if isinstance(subject, str) else int(subject)
        return self.patches[:, index].copy()

    def __getattr__(self, name: str):
        # Only reached for names not set here: landmarks, ids, fingerprint, path, ...
        return getattr(self.__dict__["source"], name)


def cached_source(source: PatchSource, limit_mb: float) -> PatchSource:
    """``source`` held in memory (:class:`CachedPatchSource`) when its patches fit in
    ``limit_mb`` MiB; otherwise ``source`` itself (read from disk as before).

    Example:
        >>> src = ArrayPatchSource.synthetic(n_subjects=2, n_locations=3, patch_size=8)
        >>> cached_source(src, 100) is src    # already in memory
        True
        >>> round(CachedPatchSource.size_mb(src), 4)   # what a store of this shape would take
        0.0059
    """
    if isinstance(source, (CachedPatchSource, ArrayPatchSource)) or limit_mb <= 0:
        return source
    if CachedPatchSource.size_mb(source) > limit_mb:
        return source
    return CachedPatchSource(source)
