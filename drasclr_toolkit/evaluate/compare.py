"""One comparison format for every evaluation, and the words that may follow its numbers.

Each evaluation has its own table (:func:`~drasclr_toolkit.evaluate.evaluate_phenotypes`,
:func:`~drasclr_toolkit.evaluate.evaluate_survival`, :func:`~drasclr_toolkit.evaluate.
evaluate_dense`). :func:`adjust_verdicts` gives a table its Holm-corrected p-values and the
verdicts of :func:`~drasclr_toolkit.evaluate.stats.predictive_verdict` (call it again after
concatenating tables, so the correction covers every test shown together).
:func:`summarise` turns any table into one long table with a row per (feature set, task):
the headline metric, its 95 % CI, the chance level, the null's 95th percentile, the p-value
(raw and Holm-adjusted) and whether there is evidence. :func:`comparison_table` pivots that
into feature sets × tasks, :func:`paired_comparisons` compares feature sets fold by fold and
:func:`comparison_text` writes sentences that say only what the numbers show:

* a feature set has **evidence** on a task when its Holm-adjusted permutation p ≤ 0.05
  **and** its 95 % CI lies above chance (without a null: the CI alone);
* a significant p whose value is not above chance is "association, no predictive gain";
* two feature sets **differ** only by a paired corrected t-test on their per-fold values
  (same subjects, same folds), Holm-corrected over the comparisons; never from CI overlap.

Example:
    >>> import numpy as np, pandas as pd
    >>> from drasclr_toolkit.evaluate import evaluate_phenotypes
    >>> rng = np.random.default_rng(0)
    >>> ids = [f"s{i:02d}" for i in range(60)]
    >>> signal = pd.DataFrame(rng.normal(size=(60, 3)), index=ids)
    >>> noise = pd.DataFrame(rng.normal(size=(60, 3)), index=ids)
    >>> labels = pd.DataFrame({"fev1_pp": 3 * signal[0] + rng.normal(size=60)}, index=ids)
    >>> table = evaluate_phenotypes({"drasclr": signal, "random-init": noise}, labels,
    ...                             n_repeats=2, n_permutations=39)
    >>> long = summarise(table)
    >>> long[["feature_set", "task", "evidence"]].values.tolist()
    [['drasclr', 'fev1_pp', True], ['random-init', 'fev1_pp', False]]
    >>> print(comparison_text(long, reference="drasclr")[1])  # doctest: +ELLIPSIS
    drasclr vs random-init on fev1_pp: difference +... (paired corrected t-test p=...): drasclr higher.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from drasclr_toolkit.errors import InputError
from drasclr_toolkit.evaluate.stats import ALPHA, holm, paired_difference, predictive_verdict

__all__ = ["LONG_COLUMNS", "adjust_verdicts", "comparison_table", "comparison_text",
           "paired_comparisons", "risk_group_text", "summarise"]

LONG_COLUMNS = ("feature_set", "task", "metric", "value", "ci_low", "ci_high", "chance",
                "null_p95", "p", "p_adj", "n_tests", "evidence", "verdict", "n",
                "fold_values", "splits_id", "n_train", "n_test")
LOWER_IS_BETTER = {"mae", "ibs"}


def _row_metric(row: pd.Series) -> str | None:
    metric = row.get("primary_metric")
    if isinstance(metric, str):
        return metric
    if "harrell_c" in row.index:
        return "harrell_c"
    return None


def _chance_of(row: pd.Series, metric: str) -> float:
    if metric in ("harrell_c", "uno_c", "td_auc_mean"):
        return 0.5
    value = row.get(f"{metric}_chance")
    return float(value) if value is not None and np.isfinite(value) else float("nan")


def adjust_verdicts(table: pd.DataFrame, alpha: float = ALPHA,
                    n_permutations: int | None = None) -> pd.DataFrame:
    """The table with ``p_adj`` (Holm over its rows' primary p-values), ``n_tests``,
    ``evidence`` and ``verdict`` (re)computed by one rule for every row.

    Works on the tables of :func:`evaluate_phenotypes` and :func:`evaluate_survival` and on
    their concatenation (call it again after ``pd.concat`` so the correction covers every
    result shown together). Rows whose verdict starts with "not evaluated" keep it.
    """
    table = table.copy().reset_index(drop=True)
    if table.empty:
        return table
    metrics = [_row_metric(r) for _, r in table.iterrows()]
    pvals = np.array([float(r.get(f"{m}_p", np.nan)) if m else np.nan
                      for m, (_, r) in zip(metrics, table.iterrows())], dtype=np.float64)
    skipped = table.get("verdict", pd.Series([""] * len(table))).fillna("").astype(str) \
        .str.startswith("not evaluated")
    pvals[skipped.to_numpy()] = np.nan
    adjusted = holm(pvals)
    n_tests = int(np.isfinite(pvals).sum())
    verdicts, evidence = [], []
    for i, (m, (_, r)) in enumerate(zip(metrics, table.iterrows())):
        if skipped.iloc[i] or m is None or not np.isfinite(r.get(m, np.nan)):
            verdicts.append(r.get("verdict") if skipped.iloc[i] else "not evaluated")
            evidence.append(False)
            continue
        chance = _chance_of(r, m)
        floor = max(chance, 0.0) if m == "r2" else chance
        perms = r.get("n_permutations", n_permutations)
        perms = int(perms) if perms is not None and np.isfinite(perms) else None
        words, ev = predictive_verdict(
            float(r[m]), float(r.get(f"{m}_ci_low", np.nan)),
            float(r.get(f"{m}_ci_high", np.nan)), chance=chance, p=pvals[i],
            p_adj=adjusted[i], n_tests=n_tests, n_permutations=perms, alpha=alpha,
            floor=floor)
        caution = r.get("caution")
        if isinstance(caution, str) and caution:
            words += f" [{caution}]"
        verdicts.append(words)
        evidence.append(ev)
    table["p_adj"] = adjusted
    table["n_tests"] = n_tests
    table["evidence"] = evidence
    table["verdict"] = verdicts
    return table


def _proper_ci(row: pd.Series) -> bool:
    """A usable interval: finite and of non-zero width (zero width: every fold or resample
    gave the same value, which says nothing about uncertainty)."""
    return bool(np.isfinite(row["ci_low"]) and np.isfinite(row["ci_high"])
                and row["ci_high"] > row["ci_low"])


def _evidence(p: float, low: float, high: float, chance: float) -> bool:
    """Evidence for tables without an ``evidence`` column (dense maps: CI above chance)."""
    if np.isfinite(p):
        return bool(p <= ALPHA and np.isfinite(low) and low > chance)
    return bool(np.isfinite(low) and high > low and np.isfinite(chance) and low > chance)


_EXTRA = ("p_adj", "n_tests", "fold_values", "splits_id", "n_train", "n_test")


def _phenotype_rows(table: pd.DataFrame) -> list[dict]:
    rows = []
    for _, r in table.iterrows():
        metric = r.get("primary_metric")
        extra = {k: r.get(k) for k in _EXTRA}
        if not isinstance(metric, str) or metric not in r or not np.isfinite(r[metric]):
            rows.append(dict(feature_set=r["feature_set"], task=r["target"], metric=metric or "",
                             verdict=r.get("verdict", ""), n=r.get("n")))
            continue
        rows.append(dict(feature_set=r["feature_set"], task=r["target"], metric=metric,
                         value=r[metric], ci_low=r.get(f"{metric}_ci_low"),
                         ci_high=r.get(f"{metric}_ci_high"), chance=r.get(f"{metric}_chance"),
                         null_p95=r.get(f"{metric}_null_p95", r.get(f"{metric}_null_p05")),
                         p=r.get(f"{metric}_p"), evidence=r.get("evidence"),
                         verdict=r.get("verdict", ""), n=r.get("n"), **extra))
    return rows


def _survival_rows(table: pd.DataFrame, metric: str) -> list[dict]:
    rows = []
    for _, r in table.iterrows():
        extra = {k: r.get(k) for k in _EXTRA}
        if metric != "harrell_c":  # fold values and the verdict belong to Harrell's C
            extra.update(fold_values=None, p_adj=np.nan)
        else:
            extra["fold_values"] = r.get("fold_values")
        rows.append(dict(feature_set=r["feature_set"], task=f"survival ({r['model']})",
                         metric=metric, value=r.get(metric), ci_low=r.get(f"{metric}_ci_low"),
                         ci_high=r.get(f"{metric}_ci_high"), chance=0.5 if metric != "ibs"
                         else np.nan, null_p95=r.get(f"{metric}_null_p95",
                                                     r.get(f"{metric}_null_p05")),
                         p=r.get(f"{metric}_p"),
                         evidence=r.get("evidence") if metric == "harrell_c" else None,
                         verdict=r.get("verdict", ""), n=r.get("n"), **extra))
    return rows


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
    primary metric (R² or AUC). ``evidence`` is the table's own (see
    :func:`adjust_verdicts`); tables without one (dense maps) use "95 % CI above chance".
    """
    if "primary_metric" in table:
        rows = _phenotype_rows(table)
    elif "harrell_c" in table:
        rows = _survival_rows(table, metric or "harrell_c")
    elif {"features", "task", "metric", "value"} <= set(table.columns):
        rows = _dense_rows(table, [metric] if metric else ["balanced_accuracy", "spearman"])
    else:
        raise InputError("summarise takes the table of evaluate_phenotypes, evaluate_survival "
                         f"or evaluate_dense(...).metrics; got columns {list(table.columns)[:8]}")
    long = pd.DataFrame(rows).reindex(columns=list(LONG_COLUMNS))
    for col in ("value", "ci_low", "ci_high", "chance", "null_p95", "p", "p_adj", "n_train",
                "n_test"):
        long[col] = pd.to_numeric(long[col], errors="coerce")
    evidence = []
    for _, r in long.iterrows():
        if not np.isfinite(r["value"]):
            evidence.append(False)
        elif isinstance(r["evidence"], (bool, np.bool_)):
            evidence.append(bool(r["evidence"]))
        else:
            evidence.append(_evidence(r["p"], r["ci_low"], r["ci_high"], r["chance"]))
    long["evidence"] = evidence
    return long


def _cell(row: pd.Series) -> str:
    if not np.isfinite(row["value"]):
        return "not evaluated"
    text = f"{row['value']:.2f}"
    if np.isfinite(row["ci_low"]):
        text += f" [{row['ci_low']:.2f}, {row['ci_high']:.2f}]"
    if np.isfinite(row["p"]):
        text += f" p={row['p']:.2g}"
        if np.isfinite(row.get("p_adj", np.nan)) and row.get("n_tests", 1) > 1:
            text += f" (Holm {row['p_adj']:.2g})"
    return text + (" *" if row["evidence"] else "")


def comparison_table(long: pd.DataFrame, order: Sequence[str] | None = None) -> pd.DataFrame:
    """Feature sets (rows) × tasks (columns): ``value [95 % CI] p (Holm p)``, ``*`` where
    there is evidence (Holm p ≤ 0.05 and CI above chance); a last row gives each task's
    metric, chance and null 95th percentile (mean over feature sets)."""
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


def _pairable(a: pd.Series, b: pd.Series) -> str:
    """Empty when two long rows can be compared fold by fold, else the reason."""
    fa, fb = a.get("fold_values"), b.get("fold_values")
    if not isinstance(fa, (tuple, list, np.ndarray)) or not isinstance(fb, (tuple, list,
                                                                            np.ndarray)):
        return "no per-fold values"
    if a.get("splits_id") != b.get("splits_id") or len(fa) != len(fb):
        return (f"scored on different subjects or folds (n {a.get('n')} vs {b.get('n')}); "
                "evaluate them in one call (paired=True) to compare")
    return ""


def paired_comparisons(long: pd.DataFrame, reference: str = "drasclr",
                       baselines: Sequence[str] | None = None, alpha: float = ALPHA
                       ) -> pd.DataFrame:
    """``reference`` against each baseline on every task, paired fold by fold.

    Per task and baseline: ``diff`` (reference − baseline, mean over folds), its 95 % CI and
    the two-sided p of the corrected paired t-test
    (:func:`~drasclr_toolkit.evaluate.stats.paired_difference`), ``p_adj`` (Holm over all
    the comparisons in the table) and ``verdict``. Pairs scored on different subjects or
    folds are listed with the reason and no numbers.
    """
    rows = []
    for task, part in long.groupby("task", sort=False):
        part = part.set_index("feature_set")
        if reference not in part.index or not np.isfinite(part.loc[reference, "value"]):
            continue
        ref = part.loc[reference]
        others = [b for b in (baselines or part.index) if b != reference and b in part.index]
        for other in others:
            o = part.loc[other]
            if not np.isfinite(o["value"]):
                continue
            base = dict(task=task, metric=ref["metric"], reference=reference, baseline=other,
                        diff=np.nan, ci_low=np.nan, ci_high=np.nan, p=np.nan, reason="")
            reason = _pairable(ref, o)
            if reason:
                rows.append({**base, "reason": reason})
                continue
            r = paired_difference(ref["fold_values"], o["fold_values"],
                                  float(ref["n_train"]), float(ref["n_test"]))
            sign = -1.0 if ref["metric"] in LOWER_IS_BETTER else 1.0
            rows.append({**base, "diff": r["diff"], "ci_low": r["ci_low"],
                         "ci_high": r["ci_high"], "p": r["p"], "better_sign": sign})
    out = pd.DataFrame(rows, columns=["task", "metric", "reference", "baseline", "diff",
                                      "ci_low", "ci_high", "p", "reason", "better_sign"])
    if out.empty:
        out["p_adj"] = []
        out["verdict"] = []
        return out
    out["p_adj"] = holm(out["p"].to_numpy(np.float64))
    verdicts = []
    for _, r in out.iterrows():
        if r["reason"]:
            verdicts.append(f"not compared: {r['reason']}")
        elif not np.isfinite(r["p"]):
            verdicts.append("not compared: fewer than two folds with values")
        elif r["p_adj"] <= alpha and r["diff"] * r["better_sign"] > 0:
            verdicts.append(f"{r['reference']} better")
        elif r["p_adj"] <= alpha:
            verdicts.append(f"{r['baseline']} better")
        else:
            verdicts.append("no evidence of a difference")
    out["verdict"] = verdicts
    return out.drop(columns="better_sign")


def comparison_text(long: pd.DataFrame, reference: str = "drasclr",
                    baselines: Sequence[str] | None = None) -> list[str]:
    """Sentences: per task, which feature sets show evidence (and which only an
    association); then one sentence per paired comparison of ``reference`` with a baseline
    (corrected paired t-test on the same folds, Holm over the comparisons)."""
    out = []
    for task, part in long.groupby("task", sort=False):
        part = part.set_index("feature_set")
        done = part[np.isfinite(part["value"])]
        metric = part["metric"].dropna().iloc[0] if part["metric"].notna().any() else ""
        if done.empty:
            out.append(f"{task}: not evaluated ({part['verdict'].iloc[0]})")
            continue
        yes = [n for n in done.index if done.loc[n, "evidence"]]
        assoc = [n for n in done.index if not done.loc[n, "evidence"]
                 and str(done.loc[n, "verdict"]).startswith(("association", "beats the null"))]
        below = [n for n in done.index if n not in yes and n not in assoc
                 and _proper_ci(done.loc[n]) and np.isfinite(done.loc[n, "chance"])
                 and done.loc[n, "ci_high"] < done.loc[n, "chance"]]
        no = [n for n in done.index if n not in yes + assoc + below]
        words = []
        if yes:
            words.append("evidence for " + ", ".join(yes))
        if assoc:
            words.append("an association without predictive gain for " + ", ".join(assoc))
        if no:
            words.append("no evidence for " + ", ".join(no))
        if below:
            words.append("below chance (95 % CI excludes it; small-sample cross-validation "
                         "bias, not signal) for " + ", ".join(below))
        out.append(f"{task} ({metric}): " + "; ".join(words) + ".")
    pairs = paired_comparisons(long, reference, baselines)
    n_cmp = int(np.isfinite(pairs["p"]).sum()) if not pairs.empty else 0
    for _, r in pairs.iterrows():
        head = f"{r['reference']} vs {r['baseline']} on {r['task']}"
        if not np.isfinite(r["p"]):
            out.append(f"{head}: {r['verdict']}.")
            continue
        holm_text = f", Holm p={r['p_adj']:.2g} over {n_cmp} comparisons" if n_cmp > 1 else ""
        if r["verdict"].endswith("better"):
            higher = "higher" if r["diff"] > 0 else "lower"
            tail = f"{r['reference']} {higher}."
        else:
            tail = "no evidence of a difference."
        out.append(f"{head}: difference {r['diff']:+.2f} [{r['ci_low']:.2f}, {r['ci_high']:.2f}] "
                   f"(paired corrected t-test p={r['p']:.2g}{holm_text}): {tail}")
    return out


def risk_group_text(name: str, groups, long: pd.DataFrame | None = None,
                    alpha: float = ALPHA) -> str:
    """One sentence on a feature set's Kaplan–Meier risk groups (their permutation
    log-rank p) and how it relates to the same set's Harrell's C in ``long``.

    Both read the same out-of-fold risk ranking: the C-index over every comparable pair,
    the log-rank over one split at the median. They can disagree when the ranking is good
    in one part of the range only, and with few events either can be small by chance.
    """
    lr = groups.logrank
    p = lr["p_value"]
    perms = int(lr.get("n_permutations", 0))
    head = (f"{name}: permutation log-rank p = {p:.2g} ({perms} permutations of the whole "
            f"cross-validated grouping; the plain log-rank p {lr.get('p_value_naive', np.nan):.2g} "
            "is not valid for such groups)")
    if not np.isfinite(p):
        return head + "."
    floor = 1.0 / (perms + 1) if perms else 1.0
    if p <= alpha:
        km = "the out-of-fold risk groups differ"
    elif floor > alpha:
        km = f"no evidence the groups differ ({perms} permutations cannot reach p <= {alpha:g})"
    else:
        km = "no evidence the groups differ"
    text = f"{head}: {km}"
    if long is not None:
        rows = long[(long["feature_set"] == name) & long["task"].str.contains(groups.model)]
        if len(rows) and np.isfinite(rows["value"].iloc[0]):
            r = rows.iloc[0]
            c_ev = bool(r["evidence"])
            agree = (p <= alpha) == c_ev
            text += (f"; its Harrell's C ({groups.model}) is {r['value']:.2f} "
                     f"[{r['ci_low']:.2f}, {r['ci_high']:.2f}], "
                     + ("evidence" if c_ev else "no evidence") + " — "
                     + ("the two agree." if agree else
                        "the two disagree: one test among several at this size; trust "
                        "neither alone."))
            return text
    return text + "."
