"""Quantitative CT densitometry of the lungs: the classical baseline for any learned feature.

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

Where the numbers come from for a cohort: preprocessing keeps only the 32³ patches (HU
clipped to [-1024, 240], overlapping, covering part of the lung, with no voxel lung mask),
so densitometry from the patch store would not be lung densitometry. :func:`cohort_densitometry`
therefore reads each scan (``load_ct``) and its lung mask (the manifest's ``lung_mask``
when given, else :func:`~drasclr_toolkit.preprocess.segment_lungs`, the same segmentation
preprocessing uses) at the scan's own resolution.

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

import logging
import os
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from drasclr_toolkit.errors import InputError
from drasclr_toolkit.data.ct import image_array

log = logging.getLogger(__name__)

__all__ = ["HIST_EDGES", "PATCH_METRICS", "ZONES", "cohort_densitometry", "densitometry",
           "densitometry_of_values",
           "densitometry_sets", "lung_zones", "patch_densitometry"]

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


def _subject_densitometry(manifest: Any, sid: str, mask_source: str, zones: bool,
                          histogram: bool) -> pd.Series:
    import SimpleITK as sitk

    from drasclr_toolkit.data import load_ct
    from drasclr_toolkit.preprocess.resample import resample_like, to_lps

    image = to_lps(load_ct(manifest.image_path(sid), subject_id=sid).to_sitk())
    mask_path = manifest.lung_mask_path(sid) if mask_source in ("auto", "manifest") else None
    if mask_source == "manifest" and mask_path is None:
        raise InputError(f"subject {sid}: mask_source='manifest' but the manifest has no "
                         "lung_mask for it; use mask_source='auto' to segment instead")
    if mask_path is not None and str(mask_path).strip():
        mask = to_lps(sitk.ReadImage(str(mask_path)))
        mask = resample_like(mask, image, "nearest", 0)
    else:
        mask = None
    return densitometry(image, mask, zones=zones, histogram=histogram)


def cohort_densitometry(manifest: Any, subjects: Any = None, *, mask_source: str = "auto",
                        zones: bool = True, histogram: bool = True,
                        cache: str | os.PathLike | None = None,
                        progress: bool = False) -> pd.DataFrame:
    """Densitometry of every subject of a manifest, from the scans (not the patches).

    Args:
        manifest: a ``Manifest`` or the path of a manifest CSV.
        subjects: subject ids to measure, or a ``PatchStore`` / ``Embeddings`` (their
            subject ids); default all of the manifest.
        mask_source: ``"auto"`` (the manifest's ``lung_mask`` when given, else segment),
            ``"manifest"`` (must be given) or ``"segment"`` (always segment).
        cache: a CSV file: subjects already in it are not measured again, and it is
            rewritten (atomically) after each new subject, so a stopped run resumes.

    Returns:
        DataFrame indexed by ``subject_id``; a subject that fails is logged, left out and
        listed with its reason in ``.attrs["failures"]``.

    Example:
        >>> table = cohort_densitometry("cohort/manifest.csv", cache="dens.csv")  # doctest: +SKIP
        >>> table[["laa950_pct", "perc15_hu"]].head()                              # doctest: +SKIP
    """
    from tqdm.auto import tqdm

    from drasclr_toolkit.io_utils import atomic_write_text

    if mask_source not in ("auto", "manifest", "segment"):
        raise InputError(f"mask_source must be 'auto', 'manifest' or 'segment', got "
                         f"{mask_source!r}")
    if isinstance(manifest, (str, os.PathLike)):
        from drasclr_toolkit.data import Manifest

        manifest = Manifest.load(manifest)
    if subjects is None:
        ids = list(manifest.subject_ids)
    elif hasattr(subjects, "subject_ids"):
        ids = list(subjects.subject_ids)
    else:
        ids = [str(s) for s in subjects]
    unknown = [s for s in ids if s not in set(manifest.subject_ids)]
    if unknown:
        raise KeyError(f"subjects {unknown[:5]} are not in the manifest")
    done = pd.DataFrame()
    if cache is not None and Path(cache).exists():
        done = pd.read_csv(cache, dtype={"subject_id": str}).set_index("subject_id")
    rows = {sid: done.loc[sid] for sid in ids if sid in done.index}
    failures: dict[str, str] = {}
    for sid in tqdm([s for s in ids if s not in rows], desc="densitometry",
                    disable=not progress):
        try:
            rows[sid] = _subject_densitometry(manifest, sid, mask_source, zones, histogram)
        except Exception as exc:  # one bad scan never stops the cohort
            failures[sid] = f"{type(exc).__name__}: {exc}"
            log.warning("densitometry of subject %s failed: %s", sid, failures[sid])
            continue
        if cache is not None:
            table = pd.DataFrame(rows).T.rename_axis("subject_id")
            atomic_write_text(cache, table.to_csv(), make_parents=True)
    if failures:
        warnings.warn(f"densitometry failed for {len(failures)} subjects (see "
                      f".attrs['failures']): {list(failures)[:5]}", stacklevel=2)
    table = pd.DataFrame({sid: rows[sid] for sid in ids if sid in rows}).T
    table.index.name = "subject_id"
    table.attrs["failures"] = failures
    return table.astype(np.float64)


def densitometry_sets(table: pd.DataFrame, metrics: Sequence[str] = ("laa950_pct", "perc15_hu",
                                                                      "mld_hu")
                      ) -> dict[str, pd.DataFrame]:
    """The two classical baselines as feature tables: ``densitometry`` (whole lung:
    ``metrics`` and the lung volume) and ``densitometry zones`` (``metrics`` in each of the
    six :data:`ZONES`), from a :func:`cohort_densitometry` table.

    Example:
        >>> t = pd.DataFrame({"laa950_pct": [1.0], "volume_ml": [900.0],
        ...                   "right_upper_laa950_pct": [2.0]}, index=["s1"])
        >>> {k: list(v.columns) for k, v in densitometry_sets(t, ["laa950_pct"]).items()}
        {'densitometry': ['laa950_pct', 'volume_ml'], \
'densitometry zones': ['right_upper_laa950_pct']}
    """
    whole = [c for c in (*metrics, "volume_ml") if c in table.columns]
    zones = [f"{z}_{m}" for z in ZONES for m in metrics if f"{z}_{m}" in table.columns]
    out = {"densitometry": table[whole].copy()}
    if zones:
        out["densitometry zones"] = table[zones].copy()
    return out


PATCH_METRICS = ("laa950_pct", "perc15_hu", "mld_hu", "lung_pct")
PARENCHYMA_HU = -500  # voxels below this count as lung parenchyma inside a patch


def patch_densitometry(store: Any, subject_ids: Sequence[str] | None = None) -> np.ndarray:
    """Densitometry of every patch: the per-location baseline for dense evaluation.

    The patch store keeps no voxel lung mask, so a patch's lung is its voxels below -500 HU
    (parenchyma; chest wall, vessels and airway walls are denser). Per patch, over those
    voxels: ``laa950_pct`` (% below -950 HU), ``perc15_hu``, ``mld_hu``, and ``lung_pct``
    (% of the patch they fill). A patch with no such voxel is NaN.

    Returns ``(N, L, 4)`` float in the order of ``subject_ids`` (default the store's).

    Example:
        >>> class Store:
        ...     subject_ids = ["a"]
        ...     def read_subject(self, s):
        ...         p = np.full((2, 4, 4, 4), -800, np.int16); p[0, :2] = -980; p[1] = 40
        ...         return p
        >>> out = patch_densitometry(Store())
        >>> out[0, 0].round(1).tolist(), bool(np.isnan(out[0, 1]).all())
        ([50.0, -980.0, -890.0, 100.0], True)
    """
    ids = list(store.subject_ids) if subject_ids is None else [str(s) for s in subject_ids]
    rows = []
    for sid in ids:
        patches = np.asarray(store.read_subject(sid), dtype=np.float32)
        flat = patches.reshape(len(patches), -1)
        lung = flat < PARENCHYMA_HU
        values = np.where(lung, flat, np.nan)
        count = lung.sum(axis=1)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # an all-dense patch: NaN
            out = np.stack([100.0 * (flat < -950).sum(axis=1) / np.maximum(count, 1),
                            np.nanpercentile(values, 15, axis=1), np.nanmean(values, axis=1),
                            100.0 * count / flat.shape[1]], axis=1)
        out[count == 0] = np.nan
        rows.append(out)
    return np.stack(rows).astype(np.float64)


def densitometry_of_values(values: np.ndarray) -> dict[str, float]:
    """%LAA-950 (share of lung voxels below −950 HU), Perc15 (the HU value below which 15 %
    of lung voxels lie) and MLD (mean lung density, HU) of lung voxel values.

    Example:
        >>> densitometry_of_values(np.array([-1000.0, -960, -900, -850]))
        {'laa950_pct': 50.0, 'perc15_hu': -982.0, 'mld_hu': -927.5}
    """
    v = np.asarray(values, dtype=np.float64)
    return {"laa950_pct": float(100.0 * (v < -950).mean()),
            "perc15_hu": float(np.percentile(v, 15)), "mld_hu": float(v.mean())}
