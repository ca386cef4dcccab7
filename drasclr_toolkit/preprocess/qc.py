"""Quality control of preprocessing: a per-subject table and pictures.

``qc_table`` gathers, per subject: status (ok / failed and why), lung volume (and per
lung), registration Dice, the share of landmark patches that are at least half lung, the
share of landmarks outside the scan (partial coverage), and flags with reasons from
:mod:`~drasclr_toolkit.preprocess.qc_rules`: absolute limits (they hold even when every
scan is bad) and robust z-scores over the cohort (the atlas subject left out).

The pictures (``plot_overlay``, ``plot_registration``, ``plot_patches``) are in
:mod:`drasclr_toolkit.viz.qc`, the landmarks in 3D in ``viz.landmark_cloud``.

Example:
    >>> df = qc_table("work/preprocess")          # doctest: +SKIP
    >>> df[["subject_id", "dice", "outlier"]]     # doctest: +SKIP
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from drasclr_toolkit.io_utils import atomic_write
from drasclr_toolkit.preprocess.qc_rules import robust_z

__all__ = ["qc_table", "robust_z"]


def qc_table(
    store: Any,
    thresholds: Any = None,
    z_threshold: float = 3.5,
    write: bool = False,
) -> pd.DataFrame:
    """Per-subject QC table of a PatchStore (or its directory); ``write`` saves qc.csv.

    Flags come from :func:`~drasclr_toolkit.preprocess.qc_rules.cohort_flags`: absolute
    limits (``thresholds``, a :class:`QCThresholds` or dict; default: the store's
    preprocessing config, else the adult defaults) that hold even when every scan is bad,
    and robust z-scores against the cohort with the atlas' own subject left out of the
    statistics. ``qc_reasons`` says why in words; failed subjects keep their reason.
    """
    from drasclr_toolkit.preprocess.qc_rules import cohort_flags
    from drasclr_toolkit.preprocess.store import PatchStore

    if not isinstance(store, PatchStore):
        store = PatchStore(store)
    if thresholds is None:
        config = Path(store.path) / "config.json"
        thresholds = json.loads(config.read_text()).get("qc") if config.exists() else None
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
                    "lung_volume_ml", "right_lung_ml", "left_lung_ml", "dice", "dice_init",
                    "frac_lung_patches", "frac_lung_patches_in_scan", "frac_in_scan",
                    "frac_missing", "atlas_lung_covered", "partial_coverage", "seconds",
                )},
                "segmentation_flags": ";".join(q.get("segmentation_flags", [])),
            })
        elif sid in failures:
            f = failures[sid]
            rows.append({"subject_id": sid, "status": "failed", "stage": f.get("stage", ""),
                         "reason": f.get("reason", "")})
    df = pd.DataFrame(rows)
    if df.empty:
        df = pd.DataFrame(columns=["subject_id", "status", "reason", "qc_flags", "qc_reasons",
                                   "outlier"])
    else:
        metrics = df.copy()
        metrics["segmentation_flags"] = [
            [f for f in str(v).split(";") if f] if isinstance(v, str) else []
            for v in metrics.get("segmentation_flags", pd.Series([""] * len(df)))]
        reference = None
        try:
            reference = store.atlas.info.get("reference_subject")
        except Exception:  # an atlas without info (official atlas): nothing to leave out
            reference = None
        flags = cohort_flags(metrics, reference_subject=reference, thresholds=thresholds,
                             z_threshold=z_threshold)
        extra = [c for c in flags.columns if c.startswith("z_")] + [
            "is_reference", "qc_flags", "qc_reasons", "outlier"]
        df = pd.concat([df.reset_index(drop=True), flags[extra].reset_index(drop=True)], axis=1)
    if write:
        atomic_write(Path(store.path) / "qc.csv", lambda tmp: df.to_csv(tmp, index=False))
    return df
