"""Probe QC: one row per scan saying ok, flagged or failed, and why.

:func:`assess_scans` turns the two things the probe knows about every scan, the load checks
(:func:`~drasclr_toolkit.data.check_scans`: unreadable, not CT, wrong HU) and the
preprocessing QC table (:func:`~drasclr_toolkit.preprocess.qc_table`: Dice, lung volume,
lung patches, coverage), into a table ``subject_id, status, flags, reasons`` plus the
metrics. ``status`` is ``failed`` (no patches), ``flagged`` (patches, but a rule fired) or
``ok``. Flags are short machine names (``low_dice``), reasons are sentences with the number
and the threshold.

The absolute rules and their limits are :mod:`drasclr_toolkit.preprocess.qc_rules`'
(:func:`~drasclr_toolkit.preprocess.qc_rules.absolute_flags` with a
:class:`~drasclr_toolkit.preprocess.qc_rules.QCThresholds`, the config's ``preprocess.qc``);
here they only get the probe's flag names.

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

from typing import Any, Callable, Mapping

import numpy as np
import pandas as pd

from drasclr_toolkit.preprocess.qc_rules import QCThresholds, absolute_flags

__all__ = ["QC_COLUMNS", "assess_scans", "load_failure_flag", "subject_flags"]

QC_COLUMNS = ["subject_id", "status", "flags", "reasons"]
# Metrics of the preprocessing QC table carried into the probe's table (when present).
_METRIC_COLUMNS = ["lung_volume_ml", "dice", "frac_lung_patches", "frac_in_scan", "frac_missing"]


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
    if field in ("pixel values", "scl_slope", "scl_inter", "RescaleSlope (0028,1053)",
                 "RescaleIntercept (0028,1052)", "intensity scale (slope)",
                 "intensity offset (intercept)"):
        return "wrong_hu"  # NaN voxels, or a slope/intercept that puts air and tissue off
    return "unreadable"


def _number(row: Mapping[str, Any], key: str) -> float:
    try:
        value = float(row.get(key))
    except (TypeError, ValueError):
        return float("nan")
    return value


# The probe's flag names for the rules of :mod:`drasclr_toolkit.preprocess.qc_rules`.
_RULE_FLAGS = {"dice": "low_dice", "lung_volume": "implausible_lung_volume",
               "lung_patches": "little_lung", "partial_coverage": "partial_coverage",
               "lung_balance": "lung_imbalance", "segmentation": "segmentation"}


def subject_flags(row: Mapping[str, Any], thresholds: QCThresholds | None = None
                  ) -> list[tuple[str, str]]:
    """``(flag, reason)`` pairs of one preprocessed subject (a row of ``qc_table``): the
    absolute rules of :func:`~drasclr_toolkit.preprocess.qc_rules.absolute_flags` under the
    probe's flag names.

    Example:
        >>> subject_flags({"dice": 0.9, "lung_volume_ml": 900, "frac_lung_patches": 0.5,
        ...                "frac_in_scan": 0.7})[0][0]
        'implausible_lung_volume'
    """
    metrics = {k: v for k, v in row.items() if np.isscalar(v) and not
               (isinstance(v, float) and np.isnan(v))}
    flags = str(row.get("segmentation_flags") or "")
    metrics["segmentation_flags"] = [f for f in flags.split(";") if f]
    return [(_RULE_FLAGS.get(rule, rule), reason)
            for rule, reason in absolute_flags(metrics, thresholds).items()]


def _cohort_flags(row: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The preprocessing table's relative flags (robust z-scores against the cohort); its
    absolute flags are judged again here (:func:`subject_flags`, the probe's limits)."""
    names = [f for f in str(row.get("qc_flags") or "").split(";") if f.endswith("_z")]
    return [(f"outlier_{name[:-2]}" if name.endswith("_z") else name,
             f"{name[:-2]} is a cohort outlier (robust z-score beyond 3.5)"
             if name.endswith("_z") else f"preprocessing QC flag {name}") for name in names]


def assess_scans(
    preprocess_qc: pd.DataFrame | None,
    scan_checks: pd.DataFrame,
    thresholds: QCThresholds | None = None,
    subject_rules: Callable[[Mapping[str, Any], QCThresholds | None], list[tuple[str, str]]]
    = subject_flags,
) -> pd.DataFrame:
    """One row per scan of ``scan_checks``: ``subject_id, status, flags, reasons`` + metrics.

    ``scan_checks`` is :func:`~drasclr_toolkit.data.check_scans`' table (every scan found);
    ``preprocess_qc`` the preprocessing QC table of the scans that loaded (or None).
    ``thresholds``: the absolute QC limits (default: :class:`QCThresholds`' defaults);
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
            pairs += subject_rules(q, thresholds)
            pairs += [p for p in _cohort_flags(q) if p[0] not in {f for f, _ in pairs}]
            status = "flagged" if pairs else "ok"
        row.update(status=status, flags="; ".join(f for f, _ in pairs),
                   reasons=" | ".join(r for _, r in pairs))
        rows.append(row)
    return pd.DataFrame(rows).reindex(columns=QC_COLUMNS + _METRIC_COLUMNS)
