"""Landmark geometry shared by the atlas, the patch sources and the encoder.

A landmark is a patch corner ``(x, y, z)`` in atlas voxel space. The network's location
input is the landmark normalised to [-1, 1] per axis with our convention
:func:`normalize_landmarks`; official checkpoints need the reference's instead
(:func:`drasclr_toolkit.models.official_landmark_coords`). The neighbour loss pairs each
landmark with its :func:`nearest_neighbors`.

This module imports nothing from ``drasclr_toolkit``, so ``preprocess`` and ``models`` can
both use it.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from drasclr_toolkit.errors import InputError

__all__ = ["nearest_neighbors", "normalize_landmarks"]


def normalize_landmarks(landmarks: Sequence[Sequence[float]] | np.ndarray) -> np.ndarray:
    """Our location convention: ``(p - min) / (max - min) * 2 - 1`` per axis → [-1, 1].

    ``landmarks`` is ``(L, 3)`` atlas voxel patch corners (x, y, z). An axis on which every
    landmark has the same value maps to 0. Checkpoints trained by the reference code expect
    :func:`drasclr_toolkit.models.official_landmark_coords` instead.

    Example:
        >>> normalize_landmarks([[0, 26, 52], [26, 52, 52]]).tolist()
        [[-1.0, -1.0, 0.0], [1.0, 1.0, 0.0]]
    """
    p = np.asarray(landmarks, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] != 3 or len(p) == 0:
        raise InputError(f"landmarks must be an (L, 3) array of (x, y, z); got shape {p.shape}")
    lo, hi = p.min(0), p.max(0)
    span = np.where(hi > lo, hi - lo, 1.0)
    out = np.where(hi > lo, (p - lo) / span * 2.0 - 1.0, 0.0)
    return out.astype(np.float32)


def nearest_neighbors(landmarks: np.ndarray, k: int) -> np.ndarray:
    """(L, k) indices of each landmark's k nearest other landmarks (Euclidean).

    Ties are broken by the lower landmark index, so the result never depends on sort
    implementation details (the reference broke them arbitrarily).

    Example:
        >>> nearest_neighbors(np.array([[0, 0, 0], [1, 0, 0], [-1, 0, 0], [5, 0, 0]]), 2).tolist()
        [[1, 2], [0, 2], [0, 1], [1, 0]]
    """
    p = np.asarray(landmarks, dtype=np.float64)
    n = len(p)
    if not 0 <= k < n:
        raise InputError(f"k={k} neighbours needs at least k+1 landmarks, have {n}")
    # Integer landmarks give exact squared distances, so ties are real ties.
    d2 = ((p[:, None, :] - p[None, :, :]) ** 2).sum(-1)
    np.fill_diagonal(d2, np.inf)
    idx = np.arange(n)
    # lexsort: last key is primary → distance first, then index.
    order = np.stack([np.lexsort((idx, row)) for row in d2])
    return order[:, :k].astype(np.int64)
