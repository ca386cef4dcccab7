"""One comparison format for every evaluation, and the words that may follow its numbers.

Each evaluation has its own table (:func:`~drasclr_toolkit.evaluate.evaluate_phenotypes`,
:func:`~drasclr_toolkit.evaluate.evaluate_survival`, :func:`~drasclr_toolkit.evaluate.
evaluate_dense`). :func:`summarise` turns any of them into one long table with a row per
(feature set, task): the headline metric, its 95 % CI, the chance level, the null's 95th
percentile (when a permutation null was run), the p-value and whether there is evidence of
signal. :func:`comparison_table` pivots that into feature sets × tasks, and
:func:`comparison_text` writes sentences that say only what the numbers show:

* a feature set has **evidence** of signal on a task when its permutation p ≤ 0.05, or,
  without a null, when its 95 % CI lies above chance; otherwise "no evidence";
* two feature sets **differ** only when their 95 % CIs do not overlap (conservative); else
  "no evidence of a difference".

Example:
    >>> import pandas as pd
    >>> table = pd.DataFrame({"feature_set": ["drasclr", "random-init"],
    ...     "target": ["fev1_pp"] * 2, "kind": ["continuous"] * 2,
    ...     "primary_metric": ["r2"] * 2, "r2": [0.5, 0.0], "r2_ci_low": [0.3, -0.2],
    ...     "r2_ci_high": [0.7, 0.1], "r2_chance": [0.0] * 2, "r2_null_p95": [0.1] * 2,
    ...     "r2_p": [0.01, 0.6], "verdict": ["better than null (p=0.01)", "no evidence"]})
    >>> long = summarise(table)
    >>> long[["feature_set", "task", "evidence"]].values.tolist()
    [['drasclr', 'fev1_pp', True], ['random-init', 'fev1_pp', False]]
    >>> print(comparison_text(long, reference="drasclr")[0])  # doctest: +NORMALIZE_WHITESPACE
    fev1_pp (r2): evidence of signal for drasclr; no evidence for random-init.
    drasclr: higher than random-init (95 % CIs do not overlap).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

__all__ = ["LONG_COLUMNS", "comparison_table", "comparison_text", "summarise"]

LONG_COLUMNS = ("feature_set", "task", "metric", "value", "ci_low", "ci_high", "chance",
                "null_p95", "p", "evidence", "verdict", "n")
ALPHA = 0.05


def _proper_ci(row: pd.Series) -> bool:
    """A usable interval: finite and of non-zero width (zero width: every fold or resample
    gave the same value, which says nothing about uncertainty)."""
    return bool(np.isfinite(row["ci_low"]) and np.isfinite(row["ci_high"])
                and row["ci_high"] > row["ci_low"])


def _evidence(p: float, low: float, high: float, chance: float) -> bool:
    if np.isfinite(p):
        return bool(p <= ALPHA)
    return bool(np.isfinite(low) and high > low and np.isfinite(chance) and low > chance)


def _phenotype_rows(table: pd.DataFrame) -> list[dict]:
    rows = []
    for _, r in table.iterrows():
        metric = r.get("primary_metric")
        if not isinstance(metric, str) or metric not in r or not np.isfinite(r[metric]):
            rows.append(dict(feature_set=r["feature_set"], task=r["target"], metric=metric or "",
                             verdict=r.get("verdict", ""), n=r.get("n")))
            continue
        rows.append(dict(feature_set=r["feature_set"], task=r["target"], metric=metric,
                         value=r[metric], ci_low=r.get(f"{metric}_ci_low"),
                         ci_high=r.get(f"{metric}_ci_high"), chance=r.get(f"{metric}_chance"),
                         null_p95=r.get(f"{metric}_null_p95"), p=r.get(f"{metric}_p"),
                         verdict=r.get("verdict", ""), n=r.get("n")))
    return rows


def _survival_rows(table: pd.DataFrame, metric: str) -> list[dict]:
    return [dict(feature_set=r["feature_set"], task=f"survival ({r['model']})", metric=metric,
                 value=r[metric], ci_low=r.get(f"{metric}_ci_low"),
                 ci_high=r.get(f"{metric}_ci_high"), chance=0.5,
                 null_p95=r.get(f"{metric}_null_p95"), p=r.get(f"{metric}_p"),
                 verdict=r.get("verdict", ""), n=r.get("n"))
            for _, r in table.iterrows()]


def _dense_rows(table: pd.DataFrame, metrics: Sequence[str]) -> list[dict]:
    part = table[table["metric"].isin(metrics)]
    return [dict(feature_set=r["features"], task=f"patch {r['task']}", metric=r["metric"],
                 value=r["value"], ci_low=r["ci_low"], ci_high=r["ci_high"], chance=r["chance"],
                 verdict=r["verdict"], n=r.get("n_subjects"))
            for _, r in part.iterrows()]


def summarise(table: pd.DataFrame, metric: str | None = None) -> pd.DataFrame:
    """The long comparison table (:data:`LONG_COLUMNS`) of a phenotype, survival or dense
    evaluation table (recognised by its columns).

    ``metric``: survival's headline (default ``harrell_c``); dense: the metrics kept
    (default balanced accuracy and the extent's Spearman ρ). Phenotypes use each target's
    primary metric (R² or AUC).
    """
    if "primary_metric" in table:
        rows = _phenotype_rows(table)
    elif "harrell_c" in table:
        rows = _survival_rows(table, metric or "harrell_c")
    elif {"features", "task", "metric", "value"} <= set(table.columns):
        rows = _dense_rows(table, [metric] if metric else ["balanced_accuracy", "spearman"])
    else:
        raise ValueError("summarise takes the table of evaluate_phenotypes, evaluate_survival "
                         f"or evaluate_dense(...).metrics; got columns {list(table.columns)[:8]}")
    long = pd.DataFrame(rows).reindex(columns=list(LONG_COLUMNS))
    for col in ("value", "ci_low", "ci_high", "chance", "null_p95", "p"):
        long[col] = pd.to_numeric(long[col], errors="coerce")
    long["evidence"] = [_evidence(p, lo, hi, c) if np.isfinite(v) else False
                        for p, lo, hi, c, v in zip(long["p"], long["ci_low"], long["ci_high"],
                                                   long["chance"], long["value"])]
    return long


def _cell(row: pd.Series) -> str:
    if not np.isfinite(row["value"]):
        return "not evaluated"
    text = f"{row['value']:.2f}"
    if np.isfinite(row["ci_low"]):
        text += f" [{row['ci_low']:.2f}, {row['ci_high']:.2f}]"
    return text + (" *" if row["evidence"] else "")


def comparison_table(long: pd.DataFrame, order: Sequence[str] | None = None) -> pd.DataFrame:
    """Feature sets (rows) × tasks (columns): ``value [95 % CI]``, ``*`` where there is
    evidence of signal (p ≤ 0.05 against the null, or CI above chance); a last row gives
    each task's metric, chance and null 95th percentile (mean over feature sets)."""
    long = long.copy()
    long["cell"] = long.apply(_cell, axis=1)
    table = long.pivot_table(index="feature_set", columns="task", values="cell",
                             aggfunc="first", sort=False)
    if order is not None:
        table = table.reindex([o for o in order if o in table.index]
                              + [i for i in table.index if i not in order])
    reference = {}
    for task, part in long.groupby("task", sort=False):
        chance = part["chance"].dropna()
        null = part["null_p95"].dropna()
        if part["value"].isna().all():
            reference[task] = "not evaluated"
            continue
        metric = part.loc[part["value"].notna(), "metric"].iloc[0]
        text = f"{metric}; chance {chance.mean():.2f}" if len(chance) else \
            str(metric)
        if len(null):
            text += f", null p95 {null.mean():.2f}"
        reference[task] = text
    table = table.fillna("–")
    table.loc["(metric; reference)"] = pd.Series(reference).reindex(table.columns).fillna("–")
    table.columns.name = None
    return table


def comparison_text(long: pd.DataFrame, reference: str = "drasclr",
                    baselines: Sequence[str] | None = None) -> list[str]:
    """One sentence per task: which feature sets show evidence of signal, and whether
    ``reference`` differs from each baseline (non-overlapping 95 % CIs)."""
    out = []
    for task, part in long.groupby("task", sort=False):
        part = part.set_index("feature_set")
        done = part[np.isfinite(part["value"])]
        metric = part["metric"].dropna().iloc[0] if part["metric"].notna().any() else ""
        if done.empty:
            out.append(f"{task}: not evaluated ({part['verdict'].iloc[0]})")
            continue
        yes = [n for n in done.index if done.loc[n, "evidence"]]
        no = [n for n in done.index if not done.loc[n, "evidence"]]
        words = []
        if yes:
            words.append("evidence of signal for " + ", ".join(yes))
        below = [n for n in no if _proper_ci(done.loc[n])
                 and np.isfinite(done.loc[n, "chance"])
                 and done.loc[n, "ci_high"] < done.loc[n, "chance"]]
        no = [n for n in no if n not in below]
        if no:
            words.append("no evidence for " + ", ".join(no))
        if below:
            words.append("below chance (95 % CI excludes it; small-sample cross-validation "
                         "bias, not signal) for " + ", ".join(below))
        sentence = f"{task} ({metric}): " + "; ".join(words) + "."
        if reference in done.index:
            ref = done.loc[reference]
            others = [b for b in (baselines or done.index) if b != reference and b in done.index]
            higher, lower, same, no_ci = [], [], [], []
            for other in others:
                o = done.loc[other]
                if not (_proper_ci(ref) and _proper_ci(o)):
                    no_ci.append(other)
                elif ref["ci_low"] > o["ci_high"]:
                    higher.append(other)
                elif ref["ci_high"] < o["ci_low"]:
                    lower.append(other)
                else:
                    same.append(other)
            parts = []
            if higher:
                parts.append("higher than " + ", ".join(higher) + " (95 % CIs do not overlap)")
            if lower:
                parts.append("lower than " + ", ".join(lower) + " (95 % CIs do not overlap)")
            if same:
                parts.append("no evidence of a difference from " + ", ".join(same)
                             + " (CIs overlap)")
            if no_ci:
                parts.append("no CI to compare with " + ", ".join(no_ci))
            if parts:
                sentence += f" {reference}: " + "; ".join(parts) + "."
        out.append(sentence)
    return out
