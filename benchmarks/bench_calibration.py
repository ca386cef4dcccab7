"""Calibration of the tests and intervals the evaluation prints: type-I error and coverage,
measured on simulated data sets whose truth is known.

For every scenario the script simulates data sets (null: features carry no information;
planted: a known signal), runs the toolkit's own evaluation functions on each, and counts

* type-I error: how often a test says p <= 0.05 (and how often the printed verdict claims
  evidence) on null data — nominal 0.05, acceptable up to 0.07;
* coverage: how often the printed 95 % interval contains the quantity it estimates — the
  expected performance of the same procedure trained on a training fold's worth of subjects
  and scored on the whole population (computed once per scenario by Monte Carlo on fresh
  data) — nominal 0.95, acceptable within 5 points;
* failures: data sets on which the call raised instead of returning a row.

``--code DIR`` measures another checkout's ``drasclr_toolkit`` (the "before" column of the
table in ``benchmarks/README.md`` is this script run on the commit before the calibrated
statistics, with ``--code`` pointing at a worktree of it). Scenarios whose test did not
exist before are reported as such.

    python benchmarks/bench_calibration.py --label after
    python benchmarks/bench_calibration.py --label before --code /path/to/old/checkout
    python benchmarks/bench_calibration.py --smoke          # a few data sets per row (tests)
    python benchmarks/bench_calibration.py --table          # results/calibration.md from both
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import platform
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
ALPHA = 0.05
OFFSET = 0  # first data-set index (--offset): a later run adds new data sets to an earlier one


def _import(code: str | None):
    if code:
        sys.path.insert(0, str(Path(code).resolve()))
    else:
        sys.path.insert(0, str(HERE.parent))
    import drasclr_toolkit.evaluate as ev
    return ev


def git_commit(code) -> str:
    """The short git commit of the measured checkout ('?' outside git)."""
    import subprocess
    try:
        return subprocess.run(["git", "-C", str(code), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "?"


def _kwargs(fn, **kw):
    accepted = inspect.signature(fn).parameters
    return {k: v for k, v in kw.items() if k in accepted}


def _ids(n):
    return [f"s{i:03d}" for i in range(n)]


# ----------------------------------------------------------------------------- data
def continuous(rng, n, d=10, r2=0.0):
    X = rng.normal(size=(n, d))
    beta = np.zeros(d)
    if r2 > 0:
        beta[:3] = np.sqrt(r2 / (1 - r2) / 3)
    y = X @ beta + rng.normal(size=n)
    return X, y


def binary(rng, n, d=10, strength=0.0):
    X = rng.normal(size=(n, d))
    logits = strength * X[:, 0]
    y = (rng.random(n) < 1 / (1 + np.exp(-logits))).astype(int)
    return X, y


def survival(rng, n, d=5, strength=0.0, event_rate=0.6, n_events=None):
    X = rng.normal(size=(n, d))
    t = rng.exponential(np.exp(-strength * X[:, 0]))
    if n_events is not None:  # exactly n_events observed events
        event = np.zeros(n, bool)
        event[rng.choice(n, n_events, replace=False)] = True
    else:
        c = rng.exponential(np.quantile(t, 0.5) * (1 / event_rate - 0.6), n)
        event = t <= c
        t = np.minimum(t, c)
    return X, t + 1e-3, event


# ----------------------------------------------------------------------------- truths
def truth_r2(ev, n_train, r2, d=10, reps=200, seed=123):
    rng = np.random.default_rng(seed)
    Xt, yt = continuous(rng, 20000, d, r2)
    vals = []
    for _ in range(reps):
        X, y = continuous(rng, n_train, d, r2)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            m = ev.make_probe("continuous").fit(X, y)
        vals.append(1 - np.mean((yt - m.predict(Xt)) ** 2) / np.var(yt))
    return float(np.mean(vals))


def truth_auc(ev, n_train, strength, d=10, reps=100, seed=123):
    from sklearn.metrics import roc_auc_score
    rng = np.random.default_rng(seed)
    Xt, yt = binary(rng, 5000, d, strength)
    vals = []
    for _ in range(reps):
        X, y = binary(rng, n_train, d, strength)
        if len(np.unique(y)) < 2:
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            m = ev.make_probe("categorical").fit(X, y)
        vals.append(roc_auc_score(yt, m.predict_proba(Xt)[:, 1]))
    return float(np.mean(vals))


def truth_c(ev, n_train, strength, d=5, reps=100, seed=123):
    from sksurv.metrics import concordance_index_censored
    rng = np.random.default_rng(seed)
    Xt, tt, et = survival(rng, 3000, d, strength)
    vals = []
    for _ in range(reps):
        X, t, e = survival(rng, n_train, d, strength)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            m = ev.make_survival_model("coxph").fit(X, ev.to_structured(t, e))
        vals.append(concordance_index_censored(et, tt, m.predict(Xt))[0])
    return float(np.mean(vals))


# ----------------------------------------------------------------------------- scenarios
def _evidence(row) -> bool:
    if "evidence" in row.index:
        return bool(row["evidence"])
    return str(row.get("verdict", "")).startswith("better than null")


def run_phenotype(ev, kind, n, datasets, seed, *, planted, perms, repeats, truth):
    rej = evid = cover = fails = 0
    lo_out = 0
    metric = "r2" if kind == "continuous" else "auc"
    widths = []
    for k in range(OFFSET, OFFSET + datasets):
        rng = np.random.default_rng([seed, k])
        if kind == "continuous":
            X, y = continuous(rng, n, r2=0.4 if planted else 0.0)
        else:
            X, y = binary(rng, n, strength=1.5 if planted else 0.0)
        ids = _ids(n)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                table = ev.evaluate_phenotypes(
                    pd.DataFrame(X, index=ids), pd.DataFrame({"t": y}, index=ids), ["t"],
                    **_kwargs(ev.evaluate_phenotypes, n_repeats=repeats, n_permutations=perms,
                              n_bootstrap=500, seed=k))
            row = table.iloc[0]
            if not np.isfinite(row.get(metric, np.nan)):
                raise ValueError(row.get("verdict"))
        except Exception:  # noqa: BLE001 - a crash is what we count
            fails += 1
            continue
        if perms:
            rej += row[f"{metric}_p"] <= ALPHA
            evid += _evidence(row)
        lo, hi = row[f"{metric}_ci_low"], row[f"{metric}_ci_high"]
        if truth is not None and np.isfinite(lo):
            cover += lo <= truth <= hi
            widths.append(hi - lo)
        if metric == "auc" and np.isfinite(lo):
            lo_out += (lo < 0) or (hi > 1)
    done = datasets - fails
    return dict(type1_p=rej / done if perms and done else None,
                type1_verdict=evid / done if perms and done else None,
                coverage=cover / done if truth is not None and done else None,
                mean_width=float(np.mean(widths)) if widths else None,
                outside_range=lo_out / done if done else None,
                failures=fails, n_datasets=datasets, truth=truth)


def run_survival(ev, n, datasets, seed, *, planted, perms, repeats, truth, n_events=None):
    rej = evid = cover = fails = outside = refused = 0
    widths = []
    for k in range(OFFSET, OFFSET + datasets):
        rng = np.random.default_rng([seed, k])
        X, t, e = survival(rng, n, strength=0.8 if planted else 0.0, n_events=n_events)
        ids = _ids(n)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                table = ev.evaluate_survival(
                    pd.DataFrame(X, index=ids), pd.Series(t, index=ids),
                    pd.Series(e, index=ids), models=("coxph",), n_repeats=repeats,
                    n_permutations=perms, seed=k)
            row = table.iloc[0]
        except Exception:  # noqa: BLE001
            fails += 1
            continue
        if not np.isfinite(row.get("harrell_c", np.nan)):
            refused += 1
            continue
        if perms:
            rej += row["harrell_c_p"] <= ALPHA
            evid += _evidence(row)
        lo, hi = row["harrell_c_ci_low"], row["harrell_c_ci_high"]
        if np.isfinite(lo):
            outside += (lo < 0) or (hi > 1)
            widths.append(hi - lo)
            if truth is not None:
                cover += lo <= truth <= hi
    done = datasets - fails - refused
    return dict(type1_p=rej / done if perms and done else None,
                type1_verdict=evid / done if perms and done else None,
                coverage=cover / done if truth is not None and done else None,
                mean_width=float(np.mean(widths)) if widths else None,
                outside_range=outside / done if done else None,
                failures=fails, refused=refused, n_datasets=datasets, truth=truth)


def run_risk_groups(ev, n, datasets, seed, perms):
    rej = fails = 0
    has_perm = "n_permutations" in inspect.signature(ev.risk_groups).parameters
    for k in range(OFFSET, OFFSET + datasets):
        rng = np.random.default_rng([seed, k])
        X, t, e = survival(rng, n, strength=0.0)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                g = ev.risk_groups(X, t, e, seed=k,
                                   **({"n_permutations": perms} if has_perm else {}))
            rej += g.logrank["p_value"] <= ALPHA
        except Exception:  # noqa: BLE001
            fails += 1
    done = datasets - fails
    return dict(type1_p=rej / done if done else None, failures=fails, n_datasets=datasets,
                test="permutation log-rank" if has_perm else "plain log-rank")


def run_paired(ev, n, datasets, seed):
    """Two feature sets that carry the same amount of signal: how often does the printed
    comparison declare one better?"""
    declared = fails = 0
    for k in range(OFFSET, OFFSET + datasets):
        rng = np.random.default_rng([seed, k])
        z = rng.normal(size=n)
        y = z + rng.normal(size=n)
        A = np.column_stack([z + rng.normal(size=n), rng.normal(size=(n, 4))])
        B = np.column_stack([z + rng.normal(size=n), rng.normal(size=(n, 4))])
        ids = _ids(n)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                table = ev.evaluate_phenotypes(
                    {"a": pd.DataFrame(A, index=ids), "b": pd.DataFrame(B, index=ids)},
                    pd.DataFrame({"t": y}, index=ids), ["t"],
                    **_kwargs(ev.evaluate_phenotypes, n_repeats=2, n_permutations=0,
                              n_bootstrap=500, seed=k))
                long = ev.summarise(table)
                words = " ".join(ev.comparison_text(long, reference="a"))
        except Exception:  # noqa: BLE001
            fails += 1
            continue
        declared += (" higher" in words) or (" lower" in words)
    done = datasets - fails
    return dict(type1_p=declared / done if done else None, failures=fails, n_datasets=datasets)


def run_pc_null(n, datasets, seed, perms=199):
    """notebook 03's PC–target Spearman test against its permutation null, on noise."""
    try:
        from drasclr_toolkit.evaluate.embedding_analysis import pc_null_band
    except ImportError:  # a checkout from before the move (the "before" column)
        from drasclr_toolkit.embed.analysis import pc_null_band
    rej = fails = 0
    for k in range(OFFSET, OFFSET + datasets):
        rng = np.random.default_rng([seed, k])
        ids = _ids(n)
        try:
            band = pc_null_band(pd.DataFrame(rng.normal(size=(n, 16)), index=ids),
                                pd.Series(rng.normal(size=n), index=ids),
                                n_permutations=perms, seed=k)
        except Exception:  # noqa: BLE001
            fails += 1
            continue
        rej += band["p"] <= ALPHA
    done = datasets - fails
    return dict(type1_p=rej / done if done else None, failures=fails, n_datasets=datasets)


def run_spearman_ci(ev, n, datasets, seed, rho=0.5, n_boot=500):
    """notebook 04's nuisance Spearman ρ bootstrap interval: coverage of the population ρ_s
    of a bivariate normal with correlation ``rho``, and the scipy p-value's type-I error at
    ρ = 0."""
    truth = 6 / np.pi * np.arcsin(rho / 2)
    cover = rej = fails = 0
    for k in range(OFFSET, OFFSET + datasets):
        rng = np.random.default_rng([seed, k])
        x = rng.normal(size=n)
        y = rho * x + np.sqrt(1 - rho ** 2) * rng.normal(size=n)
        try:
            r = ev.spearman_ci(x, y, n_boot=n_boot, seed=k)
            r0 = ev.spearman_ci(x, rng.normal(size=n), n_boot=0, seed=k)
        except Exception:  # noqa: BLE001
            fails += 1
            continue
        cover += r["ci_low"] <= truth <= r["ci_high"]
        rej += r0["p"] <= ALPHA
    done = datasets - fails
    return dict(coverage=cover / done if done else None, type1_p=rej / done if done else None,
                truth=truth, failures=fails, n_datasets=datasets)



# ----------------------------------------------------------------------------- table
#: scenario -> (what is simulated, [(quantity key, words, nominal kind)])
DESCRIBED = {
    "continuous_null_n40": ("ridge probe, continuous target, noise features, n = 40", [
        ("type1_p", "permutation p <= 0.05", "type1"),
        ("type1_verdict", "verdict claims evidence", "type1"),
        ("coverage", "95 % interval covers the expected R2", "coverage"),
        ("mean_width", "mean interval width", None)]),
    "continuous_planted_n40": ("ridge probe, planted signal (R2 0.4), n = 40", [
        ("coverage", "95 % interval covers the expected R2", "coverage"),
        ("mean_width", "mean interval width", None)]),
    "continuous_null_n12": ("ridge probe, noise, n = 12", [
        ("type1_p", "permutation p <= 0.05", "type1"),
        ("type1_verdict", "verdict claims evidence", "type1")]),
    "binary_null_n40": ("logistic probe, binary target, noise, n = 40", [
        ("type1_p", "permutation p <= 0.05", "type1"),
        ("type1_verdict", "verdict claims evidence", "type1"),
        ("coverage", "95 % interval covers AUC 0.5", "coverage"),
        ("outside_range", "interval outside [0, 1]", "zero")]),
    "binary_planted_n40": ("logistic probe, planted signal, n = 40", [
        ("coverage", "95 % interval covers the expected AUC", "coverage")]),
    "binary_null_n12": ("logistic probe, noise, n = 12", [
        ("type1_p", "permutation p <= 0.05", "type1"),
        ("type1_verdict", "verdict claims evidence", "type1")]),
    "survival_null_n60": ("Cox model, noise, n = 60 (~36 events)", [
        ("type1_p", "permutation p <= 0.05", "type1"),
        ("type1_verdict", "verdict claims evidence", "type1"),
        ("coverage", "95 % interval covers C = 0.5", "coverage"),
        ("outside_range", "interval outside [0, 1]", "zero")]),
    "survival_planted_n60": ("Cox model, planted signal, n = 60", [
        ("coverage", "95 % interval covers the expected C", "coverage")]),
    "survival_3events_n40": ("Cox model, noise, n = 40 with 3 events", [
        ("failures", "calls that raised (of the data sets)", "zero_count"),
        ("outside_range", "interval outside [0, 1]", "zero"),
        ("coverage", "95 % interval covers C = 0.5", "coverage")]),
    "survival_6events_n40": ("Cox model, noise, n = 40 with 6 events", [
        ("failures", "calls that raised (of the data sets)", "zero_count"),
        ("outside_range", "interval outside [0, 1]", "zero"),
        ("coverage", "95 % interval covers C = 0.5", "coverage")]),
    "risk_groups_null_n60": ("Kaplan-Meier risk groups from CV, noise, n = 60", [
        ("type1_p", "log-rank p <= 0.05", "type1")]),
    "paired_equal_n40": ("two feature sets with equal signal, n = 40", [
        ("type1_p", "printed comparison declares one higher", "type1")]),
    "pc_rho_null_n12": ("notebook 03's PC-target Spearman test, noise, n = 12", [
        ("type1_p", "permutation p <= 0.05", "type1")]),
    "spearman_ci_n12": ("nuisance Spearman rho (bootstrap CI, scipy p), n = 12", [
        ("coverage", "95 % interval covers rho_s", "coverage"),
        ("type1_p", "p <= 0.05 at rho = 0", "type1")]),
    "spearman_ci_n40": ("nuisance Spearman rho, n = 40", [
        ("coverage", "95 % interval covers rho_s", "coverage"),
        ("type1_p", "p <= 0.05 at rho = 0", "type1")]),
}


def judge(kind: str | None, value: float | None, n: int) -> str:
    """Words for one measured rate against its nominal value (type-I: <= alpha + 0.02;
    coverage: within 5 points of 0.95, above that 'conservative')."""
    if value is None or kind is None:
        return ""
    if kind == "type1":
        return "ok" if value <= ALPHA + 0.02 else "**too many**"
    if kind == "coverage":
        if abs(value - 0.95) <= 0.05:
            return "ok (conservative)" if value > 0.975 else "ok"
        return "conservative (wide)" if value > 0.95 else "**under-covers**"
    if kind == "zero":
        return "ok" if value == 0 else "**impossible values**"
    if kind == "zero_count":
        return "ok" if value == 0 else f"**{value / n:.0%} crashed**"
    return ""


def render_table(before: dict | None, after: dict) -> str:
    """The before/after calibration table (markdown) from the two result files."""
    rows_b = {r["scenario"]: r for r in (before or {}).get("rows", [])}
    rows_a = {r["scenario"]: r for r in after["rows"]}

    def fmt(row, key):
        if row is None or row.get(key) is None:
            return "–"
        v = row[key]
        if key == "failures":
            return f"{v} / {row['n_datasets']}"
        return f"{v:.3f}" if key != "mean_width" else f"{v:.2f}"

    lines = ["| scenario | quantity | nominal | before | after | verdict (after) | data sets "
             "(before / after) |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for name, (what, quantities) in DESCRIBED.items():
        a, b = rows_a.get(name), rows_b.get(name)
        if a is None:
            continue
        for key, words, kind in quantities:
            nominal = {"type1": "≤ 0.05 (+0.02)", "coverage": "0.95 (± 0.05)", "zero": "0",
                       "zero_count": "0"}.get(kind, "")
            verdict = judge(kind, a.get(key), a["n_datasets"])
            n_sets = f"{b['n_datasets'] if b else '–'} / {a['n_datasets']}"
            lines.append(f"| {what} | {words} | {nominal} | {fmt(b, key)} | {fmt(a, key)} | "
                         f"{verdict} | {n_sets} |")
    tests = {r.get("test") for r in rows_b.values() if r.get("test")}
    notes = []
    if before:
        notes.append(f"Before: commit {before['machine'].get('commit', '?')} "
                     f"({before['machine']['date']}); after: commit "
                     f"{after['machine'].get('commit', '?')} ({after['machine']['date']}). " + (
                         f"The before risk-group test was the {', '.join(sorted(tests))}." if tests
                         else ""))
    return "\n".join(lines + [""] + notes) + "\n"

# ----------------------------------------------------------------------------- pooling
_RATES = ("type1_p", "type1_verdict", "coverage", "outside_range")


def _done(row: dict) -> int:
    """Data sets of a row that returned a usable result (the denominator of its rates)."""
    return row["n_datasets"] - row.get("failures", 0) - row.get("refused", 0)


def pool_rows(old: dict, new: dict) -> dict:
    """One row from two runs of the same scenario on disjoint data sets (``--offset``):
    counts add, rates are weighted by the data sets each run completed, the mean interval
    width by the data sets that had one (taken as the completed ones)."""
    if old["scenario"] != new["scenario"]:
        raise ValueError(f"cannot pool {old['scenario']} with {new['scenario']}")
    d_old, d_new = _done(old), _done(new)
    out = dict(old)
    for key in _RATES + ("mean_width",):
        a, b = old.get(key), new.get(key)
        if a is None or b is None:
            out[key] = a if b is None else b
        else:
            out[key] = (a * d_old + b * d_new) / (d_old + d_new) if d_old + d_new else None
    for key in ("failures", "refused", "n_datasets"):
        if key in old or key in new:
            out[key] = old.get(key, 0) + new.get(key, 0)
    out["seconds"] = round(old.get("seconds", 0) + new.get("seconds", 0), 1)
    runs = old.get("runs", 2 if old.get("pooled") else 1) + new.get("runs", 1)
    out["runs"] = runs
    out["pooled"] = f"data sets 0-{out['n_datasets'] - 1}: {runs} runs pooled (--offset)"
    return out


def pool_files(target: Path, parts: list[Path]) -> dict:
    """Pool every row of ``parts`` into the same scenario's row of ``target`` (rewritten in
    place). A part must start where the target row ends: its ``offset`` is checked."""
    data = json.loads(target.read_text())
    rows = {r["scenario"]: r for r in data["rows"]}
    for part in parts:
        pdata = json.loads(part.read_text())
        for row in pdata["rows"]:
            name = row["scenario"]
            start = row.get("offset", 0)
            have = rows[name]["n_datasets"] if name in rows else 0
            if start != have:
                raise ValueError(f"{part}: {name} starts at data set {start}, but {target} "
                                 f"holds data sets 0-{have - 1}; run it with --offset {have}")
            rows[name] = pool_rows(rows[name], row) if name in rows else row
    data["rows"] = [rows[r["scenario"]] for r in data["rows"]] + [
        r for n, r in rows.items() if n not in {x["scenario"] for x in data["rows"]}]
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    tmp.replace(target)
    return data


# ----------------------------------------------------------------------------- main
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--code", default=None, help="checkout whose drasclr_toolkit is measured")
    ap.add_argument("--label", default="after")
    ap.add_argument("--scale", type=float, default=1.0, help="multiplies every data-set count")
    ap.add_argument("--only", nargs="*", default=None, help="scenario names to run")
    ap.add_argument("--smoke", action="store_true", help="3 data sets per row (tests)")
    ap.add_argument("--counts", nargs="*", default=[], metavar="SCENARIO=N",
                    help="data sets for a scenario (overrides its default count)")
    ap.add_argument("--out", default=None)
    ap.add_argument("--offset", type=int, default=0,
                    help="first data-set index: new data sets to pool with an earlier run's")
    ap.add_argument("--pool", nargs="+", default=None, metavar="PART",
                    help="pool the rows of these result files (runs with --offset) into "
                         "results/calibration_<label>.json")
    ap.add_argument("--table", action="store_true",
                    help="write results/calibration.md from calibration_{before,after}.json")
    args = ap.parse_args(argv)
    if args.table:
        res = HERE / "results"
        before = res / "calibration_before.json"
        text = render_table(json.loads(before.read_text()) if before.is_file() else None,
                            json.loads((res / "calibration_after.json").read_text()))
        (res / "calibration.md").write_text(text)
        print(text)
        return 0
    if args.pool:
        target = Path(args.out) if args.out else HERE / "results" / f"calibration_{args.label}.json"
        data = pool_files(target, [Path(p) for p in args.pool])
        for row in data["rows"]:
            print(row["scenario"], row["n_datasets"], row.get("type1_p"))
        return 0
    overrides = {k: int(v) for k, v in (c.split("=", 1) for c in args.counts)}
    global OFFSET
    OFFSET = args.offset
    ev = _import(args.code)
    scale = 3 / 500 if args.smoke else args.scale

    current = {"name": ""}

    def count(k):
        if current["name"] in overrides and not args.smoke:
            return overrides[current["name"]]
        return max(3, int(round(k * scale)))

    scenarios = {
        # name: (callable, description, nominal kind)
        "continuous_null_n40": lambda: run_phenotype(
            ev, "continuous", 40, count(500), 1, planted=False, perms=19, repeats=2,
            truth=truth_r2(ev, 32, 0.0, reps=count(200))),
        "continuous_planted_n40": lambda: run_phenotype(
            ev, "continuous", 40, count(500), 2, planted=True, perms=0, repeats=2,
            truth=truth_r2(ev, 32, 0.4, reps=count(200))),
        "continuous_null_n12": lambda: run_phenotype(
            ev, "continuous", 12, count(500), 3, planted=False, perms=19, repeats=1,
            truth=None),
        "binary_null_n40": lambda: run_phenotype(
            ev, "categorical", 40, count(150), 4, planted=False, perms=19, repeats=1,
            truth=0.5),
        "binary_planted_n40": lambda: run_phenotype(
            ev, "categorical", 40, count(200), 5, planted=True, perms=0, repeats=2,
            truth=truth_auc(ev, 32, 1.5, reps=count(100))),
        "binary_null_n12": lambda: run_phenotype(
            ev, "categorical", 12, count(150), 6, planted=False, perms=19, repeats=1,
            truth=None),
        "survival_null_n60": lambda: run_survival(
            ev, 60, count(200), 7, planted=False, perms=19, repeats=1, truth=0.5),
        "survival_planted_n60": lambda: run_survival(
            ev, 60, count(200), 8, planted=True, perms=0, repeats=3,
            truth=truth_c(ev, 48, 0.8, reps=count(100))),
        "survival_3events_n40": lambda: run_survival(
            ev, 40, count(100), 9, planted=False, perms=0, repeats=1, truth=0.5, n_events=3),
        "survival_6events_n40": lambda: run_survival(
            ev, 40, count(100), 10, planted=False, perms=0, repeats=1, truth=0.5, n_events=6),
        "risk_groups_null_n60": lambda: run_risk_groups(ev, 60, count(200), 11, perms=19),
        "paired_equal_n40": lambda: run_paired(ev, 40, count(500), 12),
        "pc_rho_null_n12": lambda: run_pc_null(12, count(500), 13),
        "spearman_ci_n12": lambda: run_spearman_ci(ev, 12, count(500), 14),
        "spearman_ci_n40": lambda: run_spearman_ci(ev, 40, count(500), 15),
    }
    chosen = args.only or list(scenarios)
    unknown = [n for n in chosen + list(overrides) if n not in scenarios]
    if unknown:
        ap.error(f"unknown scenario(s) {unknown}; known: {list(scenarios)}")
    out = Path(args.out) if args.out else HERE / "results" / f"calibration_{args.label}.json"
    rows = []
    for name in chosen:  # the file is rewritten after every scenario: a kill loses one row
        current["name"] = name
        start = time.time()
        result = scenarios[name]()
        result.update(scenario=name, seconds=round(time.time() - start, 1))
        if OFFSET:
            result["offset"] = OFFSET
        rows.append(result)
        print(json.dumps(result), flush=True)
        machine = dict(platform=platform.platform(), processor=platform.processor(),
                       cpus=os.cpu_count(), python=platform.python_version(),
                       load_average=os.getloadavg(), commit=git_commit(args.code or HERE.parent),
                       date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))
        if not args.smoke or args.out:
            out.parent.mkdir(parents=True, exist_ok=True)
            tmp = out.with_name(out.name + ".tmp")
            tmp.write_text(json.dumps({"label": args.label, "machine": machine, "rows": rows},
                                      indent=1))
            tmp.replace(out)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
