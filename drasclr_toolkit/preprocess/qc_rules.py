"""Quality-control rules for preprocessed scans: absolute limits and cohort outliers.

Two kinds of rule, each a plain function on plain data:

* **absolute** (:func:`absolute_flags`): one subject's QC metrics (the ``qc`` dict of a
  preprocessed subject) against fixed limits with a physical or methodological meaning:
  registration Dice, adult lung volume, share of landmark patches holding lung, share of
  landmarks outside the scan (partial coverage), segmentation flags. They work on a single
  scan and on a cohort where every scan is bad.
* **relative** (:func:`cohort_flags`): robust z-scores, (x - median) / (1.4826 · MAD) with a
  floor on the scale, of the same metrics over the cohort; the atlas' own subject is left
  out of the median and MAD (registered to itself its Dice is 1 and its lung patches are
  all there, which would make every other subject look worse).

:func:`cohort_flags` applies both and returns one row per subject with its flags and
their reasons in words, e.g. ``"dice 0.81 < 0.85"``.

Example:
    >>> absolute_flags({"dice": 0.81, "lung_volume_ml": 900.0})
    {'dice': 'dice 0.81 < 0.85', 'lung_volume': 'lung volume 900 mL outside plausible adult 2,000–9,000 mL'}
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np
import pandas as pd
from scipy.stats import median_abs_deviation

from pydantic import ConfigDict, Field

from drasclr_toolkit.config import Config

__all__ = ["QCThresholds", "RELATIVE_RULES", "absolute_flags", "cohort_flags", "robust_z"]


class QCThresholds(Config):
    """Absolute QC limits (the defaults and why; override per cohort with ``from_dict``).

    * ``min_dice = 0.85``: Dice of the affinely registered subject lung mask with the atlas
      lung mask. Between two different adults an affine leaves shape differences: whole-lung
      scans land at about 0.85–0.93 (lung2 vs the official atlas: 0.87). Below 0.85 the
      landmarks sit on visibly different anatomy (lung1, bases cut off: 0.82; a failed
      registration: < 0.7). The pipeline's older ``min_dice = 0.6`` caught only failures.
    * ``lung_volume_ml = (2000, 9000)``: plausible adult lung volume on CT. Inspiratory scans
      of adults hold about 3–8 L (total lung capacity, up to ~9 L with hyperinflation in
      COPD); expiratory scans go down to about 2 L. Outside: segmentation leak (bowel,
      outside air) or a failed segmentation, a child, or a scan that misses much of the
      lungs.
    * ``min_frac_lung_patches = 0.3``: share of landmark patches that are at least half lung
      (``frac_lung_patches``). The atlas grid keeps patches with more than 10 % lung, so even
      in the atlas itself only 0.62 of the official atlas' patches are half lung; registered
      real scans reach about 0.5 (lung2: 0.51, lung1: 0.54). Under 0.3 the landmarks have
      slid off the lungs in large part; at 0 % they are not on the lungs at all.
    * ``max_frac_missing = 0.10``: share of landmarks whose patch centre is outside the scan
      (partial coverage). A patient embedding is a mean over locations; with more than a
      tenth of them missing it averages a different mix of anatomy than other subjects'.
    * ``min_lung_share = 0.25``: smaller lung's share of the total lung volume. The left lung
      holds about 45 % in adults; under 25 % means a lung missing from the mask (merged
      into one, leaked, or cut off), or a pneumonectomy, which should be looked at anyway.
    * ``bad_segmentation_flags``: segmentation flags that are flags here too.

    Example:
        >>> QCThresholds.from_dict({"min_dice": 0.8}).min_dice
        0.8
    """

    model_config = ConfigDict(frozen=True)
    section = "preprocess.qc"
    yaml_section = ("preprocess", "qc")

    min_dice: float = Field(0.85, ge=0, le=1)
    lung_volume_ml: tuple[float, float] = (2000.0, 9000.0)
    min_frac_lung_patches: float = Field(0.3, ge=0, le=1)
    max_frac_missing: float = Field(0.10, ge=0, le=1)
    min_lung_share: float = Field(0.25, ge=0, le=0.5)
    bad_segmentation_flags: tuple[str, ...] = ("single_lung_component",)


# Relative rules: metric -> (smallest meaningful spread, "abs" or "rel" to the median,
# which side is bad). The floors keep a cohort whose values barely differ (MAD ≈ 0, e.g.
# synthetic subjects) from flagging tiny differences.
RELATIVE_RULES: dict[str, tuple[float, str, str]] = {
    "lung_volume_ml": (0.10, "rel", "both"),
    "dice": (0.02, "abs", "low"),
    "frac_lung_patches": (0.05, "abs", "low"),
}


def _value(metrics: Mapping[str, Any], key: str) -> float | None:
    v = metrics.get(key)
    if v is None or isinstance(v, (list, tuple, dict, str)):
        return None
    try:
        v = float(v)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(v) else v


def _pct(x: float) -> str:
    return f"{100.0 * x:.0f} %"


def _frac_missing(metrics: Mapping[str, Any]) -> float | None:
    """Share of landmarks outside the scan: ``frac_missing`` or 1 - ``frac_in_scan``."""
    v = _value(metrics, "frac_missing")
    if v is None:
        inside = _value(metrics, "frac_in_scan")
        v = None if inside is None else 1.0 - inside
    return v


def absolute_flags(
    metrics: Mapping[str, Any], thresholds: QCThresholds | Mapping[str, Any] | None = None
) -> dict[str, str]:
    """Absolute rules on one subject's QC metrics; returns {rule: reason} (empty = passes).

    ``metrics`` is the ``qc`` dict of a preprocessed subject (keys used: ``dice``,
    ``lung_volume_ml``, ``right_lung_ml``, ``left_lung_ml``, ``frac_lung_patches``,
    ``frac_missing`` or ``frac_in_scan``, ``partial_coverage``, ``segmentation_flags``). A
    metric that is absent or NaN is not judged.

    Example:
        >>> absolute_flags({"dice": 0.9, "frac_lung_patches": 0.0})
        {'lung_patches': '0 % of landmark patches hold lung (≥ half lung; want ≥ 30 %)'}
        >>> absolute_flags({"frac_in_scan": 0.69, "partial_coverage": True})
        {'partial_coverage': 'partial coverage: 31 % of landmarks outside the scan (limit 10 %)'}
    """
    th = thresholds if isinstance(thresholds, QCThresholds) else QCThresholds.from_dict(thresholds)
    flags: dict[str, str] = {}
    dice = _value(metrics, "dice")
    if dice is not None and dice < th.min_dice:
        flags["dice"] = f"dice {dice:.2f} < {th.min_dice:.2f}"
    vol = _value(metrics, "lung_volume_ml")
    lo, hi = th.lung_volume_ml
    if vol is not None and not lo <= vol <= hi:
        flags["lung_volume"] = (
            f"lung volume {vol:,.0f} mL outside plausible adult {lo:,.0f}–{hi:,.0f} mL"
        )
    right, left = _value(metrics, "right_lung_ml"), _value(metrics, "left_lung_ml")
    if right is not None and left is not None and right + left > 0:
        share = min(right, left) / (right + left)
        if share < th.min_lung_share:
            side = "left" if left < right else "right"
            flags["lung_balance"] = (
                f"{side} lung holds {_pct(share)} of the lung volume (< {_pct(th.min_lung_share)})"
            )
    lung = _value(metrics, "frac_lung_patches")
    if lung is not None and lung < th.min_frac_lung_patches:
        flags["lung_patches"] = (
            f"{_pct(lung)} of landmark patches hold lung (≥ half lung; want "
            f"≥ {_pct(th.min_frac_lung_patches)})"
        )
    missing = _frac_missing(metrics)
    if missing is not None and missing > th.max_frac_missing:
        flags["partial_coverage"] = (
            f"partial coverage: {_pct(missing)} of landmarks outside the scan "
            f"(limit {_pct(th.max_frac_missing)})"
        )
    seg = metrics.get("segmentation_flags") or []
    if isinstance(seg, str):
        seg = [s for s in seg.split(";") if s]
    bad = [s for s in seg if s in th.bad_segmentation_flags]
    if bad:
        flags["segmentation"] = "segmentation: " + ", ".join(bad)
    return flags


def robust_z(x: Any, min_scale: float = 0.0, reference: Any = None) -> np.ndarray:
    """(x - median) / max(1.4826 · MAD, min_scale), median and MAD over ``reference``
    (default: x itself), NaN ignored.

    Example:
        >>> robust_z([1.0, 2.0, 3.0, 100.0]).round(1).tolist()
        [-1.0, -0.3, 0.3, 65.8]
        >>> robust_z([0.5, 0.9], min_scale=0.05, reference=[0.5, 0.5, 0.6]).round(1).tolist()
        [0.0, 8.0]
    """
    a = np.asarray(x, float)
    ref = a if reference is None else np.asarray(reference, float)
    ref = ref[np.isfinite(ref)]
    if ref.size == 0:
        return np.full_like(a, np.nan)
    med = float(np.median(ref))
    scale = max(float(median_abs_deviation(ref, scale="normal")), float(min_scale))
    if not np.isfinite(scale) or scale == 0:
        return np.zeros_like(a)
    return (a - med) / scale


def cohort_flags(
    metrics: pd.DataFrame | Mapping[str, Mapping[str, Any]],
    reference_subject: str | None = None,
    thresholds: QCThresholds | Mapping[str, Any] | None = None,
    z_threshold: float = 3.5,
    min_cohort: int = 3,
) -> pd.DataFrame:
    """Absolute and relative QC flags for every subject of a cohort.

    ``metrics``: {subject_id: qc dict} or a DataFrame with a ``subject_id`` column and one
    column per metric (rows with ``status`` other than "ok", if that column exists, are
    judged by neither rule). ``reference_subject`` (the atlas' own subject) is left out of
    the robust statistics but judged like every other subject. Relative rules need at least
    ``min_cohort`` other subjects.

    Returns one row per subject: ``subject_id``, ``is_reference``, ``z_<metric>`` for each
    relative rule, ``qc_flags`` (rule names joined by ";"), ``qc_reasons`` (reasons joined
    by "; ") and ``outlier`` (any flag).

    Example:
        >>> bad = {s: {"dice": 0.6, "lung_volume_ml": 1200.0} for s in "abcd"}
        >>> cohort_flags(bad)["outlier"].tolist()
        [True, True, True, True]
    """
    th = thresholds if isinstance(thresholds, QCThresholds) else QCThresholds.from_dict(thresholds)
    if isinstance(metrics, pd.DataFrame):
        df = metrics.reset_index(drop=True).copy()
    else:
        df = pd.DataFrame([{"subject_id": sid, **dict(q)} for sid, q in metrics.items()])
    if df.empty:
        return pd.DataFrame(columns=["subject_id", "is_reference", "qc_flags", "qc_reasons", "outlier"])
    df["subject_id"] = df["subject_id"].astype(str)
    ok = (df["status"] == "ok") if "status" in df else pd.Series(True, index=df.index)
    is_ref = df["subject_id"] == (str(reference_subject) if reference_subject is not None else None)
    names: list[list[str]] = [[] for _ in range(len(df))]
    reasons: list[list[str]] = [[] for _ in range(len(df))]
    for i in np.nonzero(ok.to_numpy())[0]:
        row = {k: v for k, v in df.iloc[i].items() if not _is_na(v)}
        for rule, why in absolute_flags(row, th).items():
            names[i].append(rule)
            reasons[i].append(why)
    stats_rows = ok & ~is_ref
    for m, (floor, kind, side) in RELATIVE_RULES.items():
        z = pd.Series(np.nan, index=df.index)
        if m in df and stats_rows.sum() >= min_cohort:
            vals = pd.to_numeric(df[m], errors="coerce")
            ref_vals = vals[stats_rows].to_numpy(float)
            if kind == "rel":
                floor = floor * abs(float(np.nanmedian(ref_vals)))
            z[ok] = robust_z(vals[ok].to_numpy(float), min_scale=floor, reference=ref_vals)
            bad = (z.abs() > z_threshold) if side == "both" else (z < -z_threshold)
            for i in np.nonzero(bad.to_numpy())[0]:
                names[i].append(f"{m}_z")
                reasons[i].append(f"{m} {vals.iloc[i]:.3g} is a cohort outlier (robust z {z.iloc[i]:+.1f})")
        df[f"z_{m}"] = z
    df["is_reference"] = is_ref
    df["qc_flags"] = [";".join(n) for n in names]
    df["qc_reasons"] = ["; ".join(r) for r in reasons]
    df["outlier"] = ok & (df["qc_flags"] != "")
    return df


def _is_na(v: Any) -> bool:
    try:
        return bool(pd.isna(v))
    except (TypeError, ValueError):
        return False
