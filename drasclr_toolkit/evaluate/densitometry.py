"""Quantitative CT densitometry of the lungs: the classical baseline for any learned feature.

What is measured (``laa950_pct``, ``perc15_hu``, ``mld_hu``, ``volume_ml`` per region, the
whole-lung HU histogram), the six zones and the orientation rules are defined, with an
example, in :mod:`drasclr_toolkit.preprocess.densitometry`; this module re-exports
:func:`densitometry` and :func:`lung_zones` and builds cohort tables.

Where the numbers come from for a cohort: the 32³ patches (HU clipped to [-1024, 240],
overlapping, covering part of the lung) are not lung densitometry, so preprocessing measures
each scan when it reads it (:func:`~drasclr_toolkit.preprocess.densitometry.densitometry`
on the scan and its lung mask at the scan's own resolution: the manifest's ``lung_mask``
when given, else :func:`~drasclr_toolkit.preprocess.segment_lungs`) and keeps the numbers
in the subject's store record. :func:`cohort_densitometry` reads them there; only a subject
whose record lacks them (a store written by an older version) has its scan read again.
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
from drasclr_toolkit.preprocess.densitometry import (HIST_EDGES, SCALARS, ZONES,  # noqa: F401
                                                     densitometry, lung_zones)

log = logging.getLogger(__name__)

__all__ = ["HIST_EDGES", "PATCH_METRICS", "ZONES", "ZONE_DENSITOMETRY", "cohort_densitometry",
           "densitometry", "densitometry_of_values", "densitometry_sets", "lung_zones",
           "patch_densitometry"]

# Zone densitometry, the reference a learned representation is measured against in the
# recipe study: MLD, Perc15 and LAA-950 of the upper and lower zones of each lung.
ZONE_DENSITOMETRY = [f"{zone}_{stat}" for zone in ("right_upper", "left_upper", "right_lower",
                                                   "left_lower")
                     for stat in ("mld_hu", "perc15_hu", "laa950_pct")]


def _stored_densitometry(store: Any, sid: str, mask_source: str, zones: bool,
                         histogram: bool) -> pd.Series | None:
    """The subject's densitometry from its store record, or None when the record has none
    (older store, subject not done) or it was measured with another mask than asked."""
    if store is None or sid not in set(store.subject_ids):
        return None
    record = store.subject_record(sid)
    values = record.get("densitometry")
    if not isinstance(values, dict) or not values:
        return None
    made_with = record.get("densitometry_mask")
    if (mask_source == "manifest" and made_with != "manifest") or (
            mask_source == "segment" and made_with != "segmented"):
        return None
    out = pd.Series(values, dtype=np.float64)
    if not zones:
        out = out[[k for k in out.index if not k.startswith(ZONES)]]
    if not histogram:
        out = out[[k for k in out.index if not k.startswith("hist_")]]
    return out


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
                        store: Any = None, progress: bool = False) -> pd.DataFrame:
    """Densitometry of every subject of a manifest: what preprocessing measured on the
    scans (kept in the patch store's records), else from the scans (not the patches).

    Args:
        manifest: a ``Manifest`` or the path of a manifest CSV.
        subjects: subject ids to measure, or a ``PatchStore`` / ``Embeddings`` (their
            subject ids); default all of the manifest. A ``PatchStore`` is also ``store``.
        store: a ``PatchStore`` (or its folder) whose subject records hold the
            densitometry preprocessing measured; subjects whose record lacks it (a store
            written by an older version) are measured from their scans.
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
    if store is None and hasattr(subjects, "subject_record"):
        store = subjects
    elif isinstance(store, (str, os.PathLike)):
        from drasclr_toolkit.preprocess.store import PatchStore

        store = PatchStore(store)
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
    from_scans: list[str] = []
    for sid in [s for s in ids if s not in rows]:
        stored = _stored_densitometry(store, sid, mask_source, zones, histogram)
        if stored is not None:
            rows[sid] = stored
    todo = [s for s in ids if s not in rows]
    for sid in tqdm(todo, desc="densitometry", disable=not progress or not todo):
        from_scans.append(sid)
        try:
            rows[sid] = _subject_densitometry(manifest, sid, mask_source, zones, histogram)
        except Exception as exc:  # one bad scan never stops the cohort
            failures[sid] = f"{type(exc).__name__}: {exc}"
            log.warning("densitometry of subject %s failed: %s", sid, failures[sid])
            continue
        if cache is not None:
            table = pd.DataFrame(rows).T.rename_axis("subject_id")
            atomic_write_text(cache, table.to_csv(), make_parents=True)
    if store is not None and from_scans:
        log.info("densitometry: %d subject(s) measured from their scans, their store records "
                 "hold none (a store written by an older version, or another mask_source): "
                 "%s", len(from_scans), from_scans[:5])
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
