"""Quality control of preprocessing: a per-subject table and pictures.

``qc_table`` gathers, per subject: status (ok / failed and why), lung volume, registration
Dice, fraction of landmarks whose patch is at least half lung, and robust z-scores
((x - median) / (1.4826 · MAD), with a floor on the scale) of these over the cohort;
``outlier`` flags |z| > 3.5 for the volume, z < -3.5 for Dice and lung-patch fraction, or a
Dice below ``min_dice``.

The pictures (``plot_overlay``, ``plot_registration``, ``plot_landmarks_3d``,
``plot_patches``) are in :mod:`drasclr_toolkit.viz.qc`.

Example:
    >>> df = qc_table("work/preprocess")          # doctest: +SKIP
    >>> df[["subject_id", "dice", "outlier"]]     # doctest: +SKIP
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from ..io_utils import atomic_write

__all__ = ["qc_table", "robust_z"]

_METRICS = ("lung_volume_ml", "dice", "frac_lung_patches")


def robust_z(x: Sequence[float], min_scale: float = 0.0) -> np.ndarray:
    """(x - median) / max(1.4826 · MAD, min_scale); ``min_scale`` keeps a cohort whose values
    barely differ (MAD ≈ 0) from flagging tiny differences.

    Example:
        >>> robust_z([1.0, 2.0, 3.0, 100.0]).round(1).tolist()
        [-1.0, -0.3, 0.3, 65.8]
        >>> robust_z([0.5, 0.5, 0.5, 0.4], min_scale=0.05).round(1).tolist()
        [0.0, 0.0, 0.0, -2.0]
    """
    a = np.asarray(x, float)
    med = np.nanmedian(a)
    scale = max(1.4826 * float(np.nanmedian(np.abs(a - med))), float(min_scale))
    if not np.isfinite(scale) or scale == 0:
        return np.zeros_like(a)
    return (a - med) / scale


# Per metric: smallest meaningful spread (absolute, or relative to the median when "rel"),
# and which side is bad.
_Z_RULES = {
    "lung_volume_ml": (0.10, "rel", "both"),
    "dice": (0.02, "abs", "low"),
    "frac_lung_patches": (0.05, "abs", "low"),
}


def qc_table(
    store: Any,
    min_dice: float = 0.6,
    half_lung: float = 0.5,
    z_threshold: float = 3.5,
    write: bool = False,
) -> pd.DataFrame:
    """Per-subject QC table of a PatchStore (or its directory); ``write`` saves qc.csv."""
    from .store import PatchStore

    if not isinstance(store, PatchStore):
        store = PatchStore(store)
    rows = []
    failures = store.failures()
    done = set(store.subject_ids)
    for sid in store.slots:
        if sid in done:
            rec = store.subject_record(sid)
            q = rec.get("qc", {})
            rows.append({
                "subject_id": sid, "status": "ok", "stage": "", "reason": "",
                **{k: q.get(k) for k in (
                    "lung_volume_ml", "dice", "dice_init", "frac_lung_patches",
                    "frac_lung_patches_in_scan", "frac_in_scan", "atlas_lung_covered",
                    "partial_coverage", "seconds",
                )},
                "segmentation_flags": ";".join(q.get("segmentation_flags", [])),
            })
        elif sid in failures:
            f = failures[sid]
            rows.append({"subject_id": sid, "status": "failed", "stage": f.get("stage", ""),
                         "reason": f.get("reason", "")})
    df = pd.DataFrame(rows)
    if df.empty:
        df = pd.DataFrame(columns=["subject_id", "status", "reason", "outlier"])
    else:
        ok = df["status"] == "ok"
        flags = pd.Series("", index=df.index)
        for m in _METRICS:
            if m not in df:
                df[m] = np.nan
            z = pd.Series(np.nan, index=df.index)
            floor, kind, side = _Z_RULES[m]
            if ok.sum() >= 3:
                vals = df.loc[ok, m].astype(float)
                if kind == "rel":
                    floor = floor * abs(float(np.nanmedian(vals)))
                z[ok] = robust_z(vals, min_scale=floor)
            df[f"z_{m}"] = z
            bad = z.abs() > z_threshold if side == "both" else z < -z_threshold
            flags[bad] += f"{m}_z;"
        low = ok & (df["dice"].astype(float) < min_dice)
        flags[low] += "low_dice;"
        df["qc_flags"] = flags.str.rstrip(";")
        df["outlier"] = ok & (df["qc_flags"] != "")
    if write:
        atomic_write(Path(store.path) / "qc.csv", lambda tmp: df.to_csv(tmp, index=False))
    return df
