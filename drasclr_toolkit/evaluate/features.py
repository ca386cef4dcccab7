"""Feature sets for the probes: patient pooling of patch embeddings (including by lung
zone) and named combinations such as ``"drasclr+densitometry"``.

Pooling (:func:`pool_embeddings`):

* ``mean``: average over landmarks (the DrasCLR default),
* ``max``: maximum over landmarks,
* ``lung_weighted``: average weighted by each patch's lung fraction (from the patch store,
  kept in ``Embeddings.lung_fraction``),
* ``zones``: the mean over the landmarks of each of the six lung zones (upper / middle /
  lower third along the superior–inferior axis × right / left; the zones of
  :mod:`~drasclr_toolkit.evaluate.densitometry`), concatenated: ``6 × D`` columns named
  ``<zone>_h<j>``,
* ``zones_lung_weighted``: as ``zones``, each landmark weighted by its patch's lung
  fraction (an edge patch that is mostly chest wall counts little; a subject whose zone
  patches hold no lung at all gets the plain mean there). On the small synthetic cohort,
  where the median patch is a third lung, it lifted the centrilobular probe R² from 0.35 to
  0.42 and the paraseptal one from 0.06 to 0.24 in one run (benchmarks/README.md).

Missing landmarks (a patch whose embedding is NaN, e.g. outside the scan) are left out of
every pool; a subject with no valid landmark in a zone gets NaN there (with a warning).

Landmark zones (:func:`landmark_zones`): landmarks are patch corners (x, y, z) in atlas
voxels. With an ``atlas`` the patch centres go through its geometry to LPS millimetres
(+x patient Left, +z Superior), thirds are taken of the atlas lung mask's superior–inferior
extent, and right/left comes from the mask's labels (1 right, 2 left) at the centre, or the
midline of a binary mask. Without one, the atlas is taken to have the identity direction
(every atlas this toolkit builds; the official atlas's diag(1, -1, 1) flips only y): a
higher z index is more superior, a higher x index further left, thirds are of the
landmark centres' z range and the midline is the middle of their x range.

Example:
    >>> import numpy as np
    >>> from drasclr_toolkit.embed import Embeddings
    >>> lm = np.array([[x, 0, z] for x in (0, 64) for z in (0, 32, 64)])
    >>> emb = Embeddings(np.arange(12, dtype=np.float32).reshape(1, 6, 2), ["s1"], lm,
    ...                  np.zeros((6, 3)), np.ones((1, 6)))
    >>> list(landmark_zones(lm))
    ['right_lower', 'right_middle', 'right_upper', 'left_lower', 'left_middle', 'left_upper']
    >>> pool_embeddings(emb, "zones").shape
    (1, 12)
"""

from __future__ import annotations

import warnings
from typing import Any, Literal, Mapping

import numpy as np
import pandas as pd

from drasclr_toolkit.errors import InputError
from drasclr_toolkit.constants import POOLINGS
from drasclr_toolkit.evaluate.densitometry import ZONES

__all__ = ["POOLINGS", "feature_sets", "landmark_zones", "pool_embeddings"]

Pooling = Literal["mean", "max", "lung_weighted", "zones", "zones_lung_weighted"]


def landmark_zones(landmarks: np.ndarray, patch_size: int = 32, atlas: Any = None
                   ) -> np.ndarray:
    """Zone name (one of :data:`~drasclr_toolkit.evaluate.densitometry.ZONES`) of each
    landmark; see the module docstring for the orientation rules."""
    landmarks = np.asarray(landmarks, dtype=np.float64).reshape(-1, 3)
    if atlas is not None:
        import SimpleITK as sitk

        from drasclr_toolkit.evaluate.densitometry import lung_zones

        mask = atlas.mask
        arr = sitk.GetArrayFromImage(mask)
        zone_map = lung_zones(arr, mask.GetSpacing(), mask.GetOrigin(),
                              np.reshape(mask.GetDirection(), (3, 3)))
        centre = np.clip(np.round(landmarks + (atlas.patch_size - 1) / 2).astype(int), 0,
                         np.array(arr.shape[::-1]) - 1)
        out = []
        for x, y, z in centre:
            k = int(zone_map[z, y, x])
            if k == 0:  # centre outside the lung: the most common zone in the patch
                x0, y0, z0 = np.maximum(np.array([x, y, z]) - atlas.patch_size // 2, 0)
                block = zone_map[z0:z0 + atlas.patch_size, y0:y0 + atlas.patch_size,
                                 x0:x0 + atlas.patch_size]
                inside = block[block > 0]
                k = int(np.bincount(inside).argmax()) if inside.size else 0
            out.append(ZONES[k - 1] if k else _zone_from_grid(landmarks, patch_size, (x, y, z)))
        return np.array(out, dtype=object)
    centres = landmarks + (patch_size - 1) / 2
    return np.array([_zone_from_grid(landmarks, patch_size, c) for c in centres], dtype=object)


def _zone_from_grid(landmarks: np.ndarray, patch_size: int, centre) -> str:
    centres = landmarks + (patch_size - 1) / 2
    x_lo, x_hi = centres[:, 0].min(), centres[:, 0].max()
    z_lo, z_hi = centres[:, 2].min(), centres[:, 2].max()
    third = (centre[2] - z_lo) / max(z_hi - z_lo, 1e-9)
    level = "upper" if third > 2 / 3 else ("middle" if third > 1 / 3 else "lower")
    side = "left" if centre[0] > (x_lo + x_hi) / 2 else "right"
    return f"{side}_{level}"


def pool_embeddings(embeddings: Any, method: Pooling = "mean", *, atlas: Any = None,
                    patch_size: int = 32) -> pd.DataFrame:
    """Patient-level features ``(N, D)`` (``zones``: ``(N, 6·D)``) of an ``Embeddings``,
    indexed by subject id (columns ``h0 … h{D-1}``; ``.to_numpy()`` gives the array).

    Missing landmarks (NaN patches, or ``in_scan`` False: outside a partial scan) are left
    out of every method; a subject with no landmark inside the scan keeps all of them (with
    a warning), and ``lung_weighted`` falls back to the plain mean, with a warning, for a
    subject whose patches hold no lung. ``zones`` needs landmark zones: from ``atlas`` when
    given, else from the landmark grid (module docstring).

    Example:
        >>> from drasclr_toolkit.embed import Embeddings
        >>> emb = Embeddings(np.arange(8, dtype=np.float32).reshape(1, 2, 4), ["s"],
        ...                  np.zeros((2, 3), int), np.zeros((2, 3)), [[1.0, 0.0]])
        >>> pool_embeddings(emb, "lung_weighted").to_numpy().tolist()
        [[0.0, 1.0, 2.0, 3.0]]
    """
    if method not in POOLINGS:
        raise InputError(f"unknown pooling {method!r}; use one of {POOLINGS}")
    patch = np.asarray(embeddings.patch, dtype=np.float64)
    nan = np.isnan(patch).any(axis=2)  # (N, L)
    missing = nan
    in_scan = getattr(embeddings, "in_scan", None)
    if in_scan is not None:  # landmarks outside a partial scan count as missing
        missing = nan | ~np.asarray(in_scan, bool)
        none_inside = missing.all(axis=1) & ~nan.all(axis=1)
        if none_inside.any():  # nothing to pool: keep every landmark rather than NaN
            warnings.warn("pooling: subjects with no landmark inside the scan use all "
                          f"landmarks: {_ids(embeddings, none_inside)}", stacklevel=2)
            missing = np.where(none_inside[:, None], nan, missing)
    index = pd.Index(embeddings.subject_ids, name="subject_id")
    if not method.startswith("zones"):
        valid = ~missing
        if method == "max":
            pooled = np.where(valid[..., None], patch, -np.inf).max(axis=1)
            pooled[~valid.any(axis=1)] = np.nan
        else:
            lung = np.asarray(embeddings.lung_fraction, float)
            if method == "mean":
                lung = np.ones_like(lung)
            else:
                no_lung = valid.any(axis=1) & ~(np.clip(np.nan_to_num(lung), 0, None)
                                                * valid).any(axis=1)
                if no_lung.any():
                    warnings.warn("lung_weighted pooling: subjects with no lung in any patch "
                                  f"use the plain mean: {_ids(embeddings, no_lung)}",
                                  stacklevel=2)
            pooled = _lung_weighted_mean(patch, missing, lung)
        columns = [f"h{j}" for j in range(patch.shape[2])]
        frame = pd.DataFrame(pooled.astype(np.float32), index=index, columns=columns)
        frame.attrs["pooling"] = method
        return frame
    zones = landmark_zones(embeddings.landmarks, patch_size, atlas)
    parts = []
    empty_zones = []
    for zone in ZONES:
        cols = zones == zone
        block = np.where(missing[:, cols, None], np.nan, patch[:, cols])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN zone → NaN, said below
            if not cols.any():
                pooled = np.full((len(patch), patch.shape[2]), np.nan)
            elif method == "zones_lung_weighted":
                pooled = _lung_weighted_mean(block, missing[:, cols],
                                             np.asarray(embeddings.lung_fraction, float)[:, cols])
            else:
                pooled = np.nanmean(block, axis=1)
        if np.isnan(pooled).all(axis=1).any():
            empty_zones.append(zone)
        parts.append(pd.DataFrame(pooled.astype(np.float32), index=index,
                                  columns=[f"{zone}_h{j}" for j in range(patch.shape[2])]))
    if empty_zones:
        warnings.warn(f"zone pooling: some subjects have no valid landmark in {empty_zones}; "
                      "their values there are NaN (the probes leave such subjects out)",
                      stacklevel=2)
    frame = pd.concat(parts, axis=1)
    frame.attrs["pooling"] = method
    return frame


def _ids(embeddings: Any, rows: np.ndarray) -> list[str]:
    return [embeddings.subject_ids[i] for i in np.flatnonzero(rows)]


def _lung_weighted_mean(block: np.ndarray, missing: np.ndarray, lung: np.ndarray) -> np.ndarray:
    """Lung-fraction-weighted mean of ``block`` (N, L, D) over its valid landmarks; rows
    whose valid landmarks hold no lung get the plain mean, rows with none get NaN."""
    valid = ~missing
    w = np.where(valid, np.clip(np.nan_to_num(lung), 0, None), 0.0)
    w = np.where(w.sum(1, keepdims=True) > 0, w, valid.astype(float))
    total = w.sum(1, keepdims=True)
    pooled = np.einsum("nl,nld->nd", w / np.where(total > 0, total, 1.0), np.nan_to_num(block))
    pooled[total[:, 0] == 0] = np.nan
    return pooled


def feature_sets(sets: Mapping[str, Any], combine: Any = (), *, pooling: Pooling = "mean",
                 atlas: Any = None) -> dict[str, pd.DataFrame]:
    """Named feature tables, plus combinations named by joining names with ``+``.

    ``sets`` maps a name to an ``Embeddings`` (pooled with ``pooling``) or a DataFrame
    indexed by subject id (e.g. :func:`~drasclr_toolkit.evaluate.densitometry.cohort_densitometry`);
    ``combine`` lists combinations like ``"drasclr+densitometry"``: the named tables side by
    side (columns prefixed by the set name), on the subjects they share.

    Example:
        >>> a = pd.DataFrame({"h0": [1.0, 2.0]}, index=["s1", "s2"])
        >>> b = pd.DataFrame({"laa950_pct": [3.0, 4.0]}, index=["s2", "s1"])
        >>> out = feature_sets({"drasclr": a, "densitometry": b}, ["drasclr+densitometry"])
        >>> list(out), out["drasclr+densitometry"].loc["s1"].tolist()
        (['drasclr', 'densitometry', 'drasclr+densitometry'], [1.0, 4.0])
    """
    combine = [combine] if isinstance(combine, str) else list(combine)
    out: dict[str, pd.DataFrame] = {}
    for name, value in sets.items():
        if hasattr(value, "patch") and hasattr(value, "lung_fraction"):  # an Embeddings
            frame = pool_embeddings(value, pooling, atlas=atlas)
        elif isinstance(value, pd.DataFrame):
            frame = value.copy()
        else:
            raise TypeError(f"feature set {name!r} is a {type(value).__name__}; give an "
                            "Embeddings or a DataFrame indexed by subject id")
        frame.index = frame.index.astype(str)
        out[str(name)] = frame
    for combo in combine:
        names = [n.strip() for n in combo.split("+")]
        unknown = [n for n in names if n not in out]
        if unknown:
            raise KeyError(f"combination {combo!r} names {unknown}, which are not among the "
                           f"feature sets {list(out)}")
        frames = [out[n].add_prefix(f"{n}:") for n in names]
        joined = pd.concat(frames, axis=1, join="inner")
        dropped = max(len(f) for f in frames) - len(joined)
        if dropped:
            warnings.warn(f"{combo}: {dropped} subjects are missing from some of its sets "
                          f"and are left out ({len(joined)} kept)", stacklevel=2)
        out[combo] = joined
    return out
