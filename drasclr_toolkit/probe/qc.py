"""Probe QC: one row per scan saying ok, flagged or failed, and why.

:func:`assess_scans` turns the two things the probe knows about every scan, the load checks
(:func:`~drasclr_toolkit.data.check_scans`: unreadable, not CT, wrong HU) and the
preprocessing QC table (:func:`~drasclr_toolkit.preprocess.qc_table`: Dice, lung volume,
lung patches, coverage), into a table ``subject_id, status, flags, reasons`` plus the
metrics. ``status`` is ``failed`` (no patches), ``flagged`` (patches, but a rule fired) or
``ok``. Flags are short machine names (``low_dice``), reasons are sentences with the number
and the threshold.

The absolute rules live in one function, :func:`absolute_flags`, applied to one
preprocessed subject at a time; a richer rule set (``preprocess/qc_rules.py``) replaces it
there without touching the rest of the probe.

Example:
    >>> import pandas as pd
    >>> checks = pd.DataFrame({"subject_id": ["a", "b"], "status": ["ok", "error"],
    ...     "field": [None, "file"], "message": ["", "subject 'b': cannot read"]})
    >>> pre = pd.DataFrame({"subject_id": ["a"], "status": ["ok"], "reason": [""],
    ...     "dice": [0.7], "lung_volume_ml": [4500.0], "frac_lung_patches": [0.6],
    ...     "frac_in_scan": [1.0]})
    >>> t = assess_scans(pre, checks)
    >>> t[["subject_id", "status", "flags"]].values.tolist()
    [['a', 'flagged', 'low_dice'], ['b', 'failed', 'unreadable']]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

import numpy as np
import pandas as pd

__all__ = ["ProbeQCRules", "QC_COLUMNS", "absolute_flags", "assess_scans", "load_failure_flag"]

QC_COLUMNS = ["subject_id", "status", "flags", "reasons"]
# Metrics of the preprocessing QC table carried into the probe's table (when present).
_METRIC_COLUMNS = ["lung_volume_ml", "dice", "frac_lung_patches", "frac_in_scan"]


@dataclass(frozen=True)
class ProbeQCRules:
    """Thresholds of the absolute QC rules (adult chest CT).

    ``lung_volume_ml`` is the plausible range of an adult's segmented lungs at inspiration;
    the synthetic phantoms of the tiny config (``size_scale`` 0.6, about 1 L) fall below it
    on purpose, use ``size_scale`` 1.0 (about 5 L) for adult-sized phantoms.
    """

    min_dice: float = 0.85                          # registration Dice to the atlas
    lung_volume_ml: tuple[float, float] = (2000.0, 9000.0)
    min_frac_lung_patches: float = 0.0              # flagged at or below: no lung patch at all
    max_frac_outside_scan: float = 0.10             # landmarks whose centre is outside the scan


def load_failure_flag(field: Any, message: str) -> str:
    """The flag of a scan that could not be loaded: ``unreadable``, ``not_ct`` or ``wrong_hu``.

    Example:
        >>> load_failure_flag("intensity (Hounsfield units)", "… without the rescale …")
        'wrong_hu'
    """
    text = str(message).lower()
    if field == "Modality (0008,0060)":
        return "not_ct"
    if field == "intensity (Hounsfield units)":
        if "without the rescale" in text or "above" in text:
            return "wrong_hu"
        return "not_ct"
    if field == "pixel values":
        return "wrong_hu"
    return "unreadable"


def _number(row: Mapping[str, Any], key: str) -> float:
    try:
        value = float(row.get(key))
    except (TypeError, ValueError):
        return float("nan")
    return value


def absolute_flags(row: Mapping[str, Any], rules: ProbeQCRules = ProbeQCRules()
                   ) -> list[tuple[str, str]]:
    """``(flag, reason)`` pairs of one preprocessed subject (a row of ``qc_table``).

    This is the place where ``preprocess/qc_rules.py`` plugs in: it takes the same row and
    returns the same pairs.

    Example:
        >>> absolute_flags({"dice": 0.9, "lung_volume_ml": 900, "frac_lung_patches": 0.5,
        ...                 "frac_in_scan": 0.7})[0][0]
        'implausible_lung_volume'
    """
    found: list[tuple[str, str]] = []
    volume = _number(row, "lung_volume_ml")
    low, high = rules.lung_volume_ml
    if np.isfinite(volume) and not low <= volume <= high:
        found.append(("implausible_lung_volume",
                      f"lung volume {volume:,.0f} mL is outside {low:,.0f}–{high:,.0f} mL "
                      "(adult lungs; check the segmentation overlay)"))
    dice = _number(row, "dice")
    if np.isfinite(dice) and dice < rules.min_dice:
        found.append(("low_dice", f"registration Dice {dice:.2f} < {rules.min_dice:.2f}: the "
                      "lungs do not line up with the atlas"))
    lung = _number(row, "frac_lung_patches")
    if np.isfinite(lung) and lung <= rules.min_frac_lung_patches:
        found.append(("little_lung", f"{lung:.0%} of the landmark patches are at least half "
                      "lung: the patches show little or no lung"))
    outside = 1.0 - _number(row, "frac_in_scan")
    if np.isfinite(outside) and outside > rules.max_frac_outside_scan:
        found.append(("partial_coverage", f"{outside:.0%} of the landmarks fall outside the "
                      f"scan (> {rules.max_frac_outside_scan:.0%}): the scan does not cover "
                      "the whole lung; those patches are air"))
    return found


def _cohort_flags(row: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The preprocessing table's own relative flags (robust z-scores, its Dice floor)."""
    names = [f for f in str(row.get("qc_flags") or "").split(";") if f]
    return [(f"outlier_{name[:-2]}" if name.endswith("_z") else name,
             f"{name[:-2]} is a cohort outlier (robust z-score beyond 3.5)"
             if name.endswith("_z") else f"preprocessing QC flag {name}") for name in names]


def assess_scans(
    preprocess_qc: pd.DataFrame | None,
    scan_checks: pd.DataFrame,
    rules: ProbeQCRules = ProbeQCRules(),
    subject_rules: Callable[[Mapping[str, Any], ProbeQCRules], list[tuple[str, str]]] =
    absolute_flags,
) -> pd.DataFrame:
    """One row per scan of ``scan_checks``: ``subject_id, status, flags, reasons`` + metrics.

    ``scan_checks`` is :func:`~drasclr_toolkit.data.check_scans`' table (every scan found);
    ``preprocess_qc`` the preprocessing QC table of the scans that loaded (or None).
    ``subject_rules`` gives the ``(flag, reason)`` pairs of one preprocessed subject.
    """
    pre = {} if preprocess_qc is None or preprocess_qc.empty else {
        str(r["subject_id"]): r for r in preprocess_qc.to_dict("records")}
    rows = []
    for check in scan_checks.to_dict("records"):
        sid = str(check["subject_id"])
        row: dict[str, Any] = {"subject_id": sid}
        pairs: list[tuple[str, str]] = []
        if check["status"] == "error":
            pairs.append((load_failure_flag(check.get("field"), check.get("message", "")),
                          str(check.get("message", ""))))
            status = "failed"
        elif sid not in pre:
            pairs.append(("not_preprocessed", "the scan loaded but was not preprocessed"))
            status = "failed"
        elif pre[sid].get("status") != "ok":
            pairs.append(("preprocess_failed", f"preprocessing failed at "
                          f"{pre[sid].get('stage') or '?'}: {pre[sid].get('reason', '')}"))
            status = "failed"
        else:
            q = pre[sid]
            row.update({k: q.get(k) for k in _METRIC_COLUMNS})
            if check["status"] == "warning":
                pairs.append(("load_warning", str(check.get("message", ""))))
            pairs += subject_rules(q, rules)
            pairs += [p for p in _cohort_flags(q) if p[0] not in {f for f, _ in pairs}]
            status = "flagged" if pairs else "ok"
        row.update(status=status, flags="; ".join(f for f, _ in pairs),
                   reasons=" | ".join(r for _, r in pairs))
        rows.append(row)
    return pd.DataFrame(rows).reindex(columns=QC_COLUMNS + _METRIC_COLUMNS)
