"""Lung densitometry of one scan: the numbers preprocessing keeps for every subject.

Per region: ``laa950_pct`` (% of lung voxels below -950 HU), ``perc15_hu`` (15th
percentile of lung HU), ``mld_hu`` (mean lung density) and ``volume_ml``; for the whole lung
also a HU histogram on fixed 25-HU bins from -1000 to -500 HU plus the two open ends
(``hist_lt-1000``, ``hist_-1000_-975``, …, ``hist_ge-500``; fractions summing to 1).

Regions: ``whole`` and six zones: upper / middle / lower thirds of the lungs' extent along
the superior–inferior axis × right / left lung. Orientation: arrays are numpy (z, y, x) of an
image in LPS physical space (SimpleITK convention: +x towards the patient's Left, +y
Posterior, +z Superior); the physical position of a slice is ``origin + direction ·
(spacing · index)``, so with the identity direction that :func:`~drasclr_toolkit.data.load_ct`
gives, a higher z index is more superior and a higher x index is further left. A
non-identity diagonal direction (e.g. the official atlas's diag(1, -1, 1)) is honoured; an
oblique one is refused (reorient with ``load_ct`` first). Right/left come from the mask's
labels when it carries them (1 right, 2 left, as :func:`~drasclr_toolkit.preprocess.
segment_lungs` and the synthetic cohort write them); a binary mask is split at the midline,
the sagittal plane with the fewest lung voxels in the middle 40 % of the lungs' left–right
extent (the gap between the lungs).

This is the preprocess stage's module (preprocessing measures every scan once, at the scan's
own resolution, and keeps the numbers in the subject's store record);
:mod:`drasclr_toolkit.evaluate.densitometry` re-exports it and builds cohort tables.

Example:
    >>> import numpy as np
    >>> ct = np.full((30, 20, 40), -860, np.int16)
    >>> ct[20:, :, :] = -980                          # emphysema in the upper third (high z)
    >>> mask = np.zeros(ct.shape, np.uint8)
    >>> mask[:, :, :18], mask[:, :, 22:] = 1, 2       # right lung at low x, left at high x
    >>> d = densitometry(ct, mask, spacing=(1.0, 1.0, 1.0))
    >>> [round(float(d[k]), 1) for k in ("laa950_pct", "right_upper_laa950_pct",
    ...                                  "right_lower_laa950_pct")]
    [33.3, 100.0, 0.0]
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import pandas as pd

from drasclr_toolkit.data.ct import image_array
from drasclr_toolkit.errors import InputError

__all__ = ["HIST_EDGES", "SCALARS", "ZONES", "densitometry", "lung_zones"]

ZONES = ("right_upper", "right_middle", "right_lower", "left_upper", "left_middle",
         "left_lower")
HIST_EDGES = np.array([-np.inf, *range(-1000, -475, 25), np.inf])
SCALARS = ("laa950_pct", "perc15_hu", "mld_hu", "volume_ml")


def _hist_names() -> list[str]:
    names = []
    for lo, hi in zip(HIST_EDGES[:-1], HIST_EDGES[1:]):
        if not np.isfinite(lo):
            names.append(f"hist_lt{int(hi)}")
        elif not np.isfinite(hi):
            names.append(f"hist_ge{int(lo)}")
        else:
            names.append(f"hist_{int(lo)}_{int(hi)}")
    return names


def _geometry(ct: Any, spacing, origin, direction):
    """(array (z,y,x), spacing xyz, origin xyz, direction 3×3) from any accepted input."""
    import SimpleITK as sitk

    if isinstance(ct, sitk.Image):
        return (sitk.GetArrayFromImage(ct), ct.GetSpacing(), ct.GetOrigin(),
                np.reshape(ct.GetDirection(), (3, 3)))
    if hasattr(ct, "array") and hasattr(ct, "spacing"):  # CTImage
        return ct.array, ct.spacing, ct.origin, np.reshape(ct.direction, (3, 3))
    array = np.asarray(ct)
    if spacing is None:
        raise InputError("densitometry of a plain array needs spacing=(sx, sy, sz) in mm "
                         "(or pass a CTImage / SimpleITK image, which carry it)")
    return (array, spacing, (0.0, 0.0, 0.0) if origin is None else origin,
            np.eye(3) if direction is None else np.reshape(direction, (3, 3)))


def lung_zones(mask: np.ndarray, spacing: Sequence[float], origin: Sequence[float] = (0, 0, 0),
               direction: Any = None) -> np.ndarray:
    """Zone of every voxel: 0 outside the lungs, 1–6 the :data:`ZONES` in order.

    See the module docstring for the orientation rules (LPS, diagonal direction).

    Example:
        >>> m = np.zeros((9, 4, 10), np.uint8); m[:, :, :4] = 1; m[:, :, 6:] = 1
        >>> z = lung_zones(m, (1, 1, 1))
        >>> [ZONES[z[k, 0, x] - 1] for k, x in ((8, 0), (0, 9))]
        ['right_upper', 'left_lower']
    """
    D = np.eye(3) if direction is None else np.reshape(np.asarray(direction, float), (3, 3))
    if not np.allclose(D, np.diag(np.diag(D)), atol=1e-6):
        raise InputError("lung_zones needs an axis-aligned image (diagonal direction matrix); "
                         "load the scan with drasclr_toolkit.data.load_ct, which reorients "
                         "to LPS")
    mask = np.asarray(mask)
    lung = mask > 0
    if not lung.any():
        raise InputError("the lung mask is empty: no zones to measure")
    nz, _, nx = mask.shape
    s_of_slice = origin[2] + D[2, 2] * spacing[2] * np.arange(nz)  # superior coordinate (mm)
    x_of_col = origin[0] + D[0, 0] * spacing[0] * np.arange(nx)  # towards patient left (mm)
    slices = np.flatnonzero(lung.any(axis=(1, 2)))
    s_lo, s_hi = s_of_slice[slices].min(), s_of_slice[slices].max()
    third = (s_of_slice - s_lo) / max(s_hi - s_lo, 1e-9)
    level = np.where(third > 2 / 3, 0, np.where(third > 1 / 3, 1, 2))  # 0 upper … 2 lower
    labels = set(np.unique(mask[lung]).tolist())
    if labels == {1, 2}:
        is_left = mask == 2
    else:
        columns = lung.sum(axis=(0, 1)).astype(np.float64)  # lung voxels per x column
        cols = np.flatnonzero(columns)
        lo, hi = x_of_col[cols].min(), x_of_col[cols].max()
        central = np.flatnonzero((x_of_col >= lo + 0.3 * (hi - lo)) &
                                 (x_of_col <= hi - 0.3 * (hi - lo)))
        mid = x_of_col[central[np.argmin(columns[central])]] if len(central) else (lo + hi) / 2
        is_left = np.broadcast_to(x_of_col > mid, mask.shape)
    zone = (np.where(is_left, 3, 0) + level[:, None, None] + 1).astype(np.uint8)
    zone[~lung] = 0
    return zone


def _region_stats(values: np.ndarray, voxel_ml: float) -> dict[str, float]:
    if len(values) == 0:
        return {k: float("nan") for k in SCALARS[:-1]} | {"volume_ml": 0.0}
    v = values.astype(np.float64)
    return {"laa950_pct": 100.0 * float((v < -950).mean()),
            "perc15_hu": float(np.percentile(v, 15)), "mld_hu": float(v.mean()),
            "volume_ml": float(len(v) * voxel_ml)}


def densitometry(ct: Any, lung_mask: Any = None, spacing: Sequence[float] | None = None, *,
                 origin: Sequence[float] | None = None, direction: Any = None,
                 zones: bool = True, histogram: bool = True) -> pd.Series:
    """Lung densitometry of one scan (see the module docstring for definitions).

    Args:
        ct: ``CTImage``, SimpleITK image or (z, y, x) HU array (then ``spacing`` (x, y, z)
            mm is needed; ``origin``/``direction`` default to LPS identity).
        lung_mask: same grid as ``ct`` (array or image; non-zero = lung, 1/2 = right/left).
            None: segmented with :func:`~drasclr_toolkit.preprocess.segment_lungs`.
        zones: add the six zones' ``<zone>_<metric>`` values.
        histogram: add the whole-lung HU histogram.

    Returns:
        A Series: ``laa950_pct, perc15_hu, mld_hu, volume_ml``, ``hist_*``, ``<zone>_*``.
    """
    import SimpleITK as sitk

    if lung_mask is None:
        from drasclr_toolkit.preprocess.lungmask import segment_lungs
        from drasclr_toolkit.preprocess.resample import as_sitk, to_lps

        image = ct if isinstance(ct, sitk.Image) else (
            as_sitk(ct) if hasattr(ct, "to_sitk") else None)
        if image is None:
            raise InputError("densitometry without lung_mask needs a CTImage or SimpleITK "
                             "image (to segment the lungs); pass lung_mask for a plain array")
        image = to_lps(image)
        lung_mask, _ = segment_lungs(image)
        ct = image
    array, spacing, origin, D = _geometry(ct, spacing, origin, direction)
    mask = image_array(lung_mask)
    if mask.shape != array.shape:
        raise InputError(f"lung mask shape {mask.shape} differs from the CT's {array.shape}; "
                         "resample the mask onto the CT grid (preprocess.resample_like)")
    voxel_ml = float(np.prod(spacing)) / 1000.0
    lung = mask > 0
    if not lung.any():
        raise InputError("the lung mask is empty: no densitometry possible")
    values = array[lung]
    out: dict[str, float] = dict(_region_stats(values, voxel_ml))
    if histogram:
        counts, _ = np.histogram(values.astype(np.float64), bins=HIST_EDGES)
        out.update(zip(_hist_names(), (counts / counts.sum()).tolist()))
    if zones:
        zone = lung_zones(mask, spacing, origin, D)
        zone_of_lung = zone[lung]
        for k, name in enumerate(ZONES, start=1):
            stats = _region_stats(values[zone_of_lung == k], voxel_ml)
            out.update({f"{name}_{m}": v for m, v in stats.items()})
    return pd.Series(out, dtype=np.float64)
