"""The recipe study (issue 18): which part of DrasCLR carries disease on the synthetic cohort.

Variants × seeds, end to end: pretrain → embed → pooled patient features → one paired
``evaluate_phenotypes`` call (same subjects, same folds for every feature set) with the
random-init encoder of each seed and zone densitometry beside them → paired comparisons of
every variant against the baseline variant of the same seed, against random-init and
against densitometry (``paired_comparisons``, Holm-corrected). The default is then chosen
by the rule written before the study: ``benchmarks/selection_rule.md``.

Each variant is a set of config overrides (``SECTION.KEY: value``); those that touch only
``pretrain`` share one cohort and patch store, a data variant (``synthetic.*`` or
``preprocess.*``) gets its own. Resumable: a finished pretraining (``final.pt``) and
embeddings file are reused, an interrupted one resumes where it stopped; probes are redone
(minutes). Every row of the table carries the command that reproduces its run.

Usage::

    python benchmarks/bench_recipe.py --work runs/recipe                  # all variants, 3 seeds (hours)
    python benchmarks/bench_recipe.py --work runs/recipe --variants baseline,no-neighbour-loss --seeds 0,1,2
    python benchmarks/bench_recipe.py --config tiny --work /tmp/recipe_smoke --variants baseline,no-conditioning \\
        --seeds 0 --max-steps 20 --repeats 2 --permutations 0 --out /tmp/recipe_smoke/result   # smoke run

Writes ``<out>.csv`` (the tidy table: variant, seed, pooling, target, R² with CI,
differences to baseline / random-init / densitometry with paired p, learning verdict,
command), ``<out>.md`` and ``<out>.png`` (the figure: R² per target, variants × seeds, the
references as lines).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from drasclr_toolkit.io_utils import atomic_write_text  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
# the targets and the densitometry baseline are the small benchmark's own
from bench_small_config import DISEASE, NUISANCE, ZONE_DENSITOMETRY  # noqa: E402
# The pooling the selection rule scores (benchmarks/selection_rule.md); others are reported.
RULE_POOLING = "zones_lung_weighted"
# A probe design rather than a pooling: the zones_lung_weighted features with one ridge per
# lung zone, stacked inside the training folds (evaluate_phenotypes(probe="zone_stack")).
ZONE_STACK = "zone_stack"
# The rule's limits (benchmarks/selection_rule.md, "The rule")
MIN_SEEDS, NUISANCE_MARGIN, BUDGET_S = 3, 0.05, 15 * 60

# Each variant: config overrides as SECTION.KEY -> value (the baseline is the config itself).
VARIANTS: dict[str, dict[str, object]] = {
    "baseline": {},
    "no-conditioning": {"model.conditioning": "none"},             # the MoCo baseline
    "concat": {"model.conditioning": "concat"},                    # location into the head
    "no-neighbour-loss": {"pretrain.neighbours": 0},
    "no-intensity-aug": {"pretrain.augment_intensity": False},
    "lung-window": {"pretrain.hu_window": [-1024, -500], "embed.hu_window": [-1024, -500]},
    # the earlier recipe: per-landmark queues, slow key encoder, ±12 voxel shifts
    "queue-recipe": {"pretrain.queue_size": 256, "pretrain.key_momentum": 0.999,
                     "pretrain.augment_translate": 12},
    # a third of the schedule (384 steps): on the outside cohort a 400-step run carried more
    # centrilobular signal than the 1,152-step one (issue 18)
    "short-schedule": {"pretrain.epochs": 4},
    # as benchmarks/configs/small_1mm.yaml: grid step 24 (156 landmarks; a patch spans 32 mm),
    # ±2-voxel shifts (±2 mm, as small)
    "1mm": {"synthetic.spacing": 1.0, "preprocess.spacing": 1.0, "preprocess.step": 24,
            "pretrain.augment_translate": 2},
    # equal steps: 3× the subjects would otherwise mean 3× the steps an epoch
    "96-subjects": {"synthetic.n_subjects": 96, "pretrain.max_steps": 1152},
}


def apply_overrides(config: dict, overrides: dict[str, object]) -> dict:
    """A copy of a loaded config with ``SECTION.KEY[.SUBKEY]`` overrides set
    (:func:`drasclr_toolkit.config.set_options`: ``model.*`` reaches every stage).

    Example:
        >>> cfg = apply_overrides({"pretrain": {"lr": 0.1}}, {"pretrain.neighbours": 0,
        ...                                                   "model.conditioning": "none"})
        >>> cfg["pretrain"]["neighbours"], cfg["pretrain"]["conditioning"], cfg["pretrain"]["lr"]
        (0, 'none', 0.1)
    """
    from drasclr_toolkit.config import set_options

    return set_options(config, overrides)


def apply_rule(tidy: pd.DataFrame, timings: dict[tuple[str, int], float] | None = None,
               default: str = "baseline") -> tuple[pd.DataFrame, str | None]:
    """The selection rule of ``benchmarks/selection_rule.md`` on the study's tidy table.

    Per variant (scored rows: ``RULE_POOLING``, its seeds): ``score`` = mean over seeds of
    the mean R² over the disease targets; ``nuisance`` the same over the nuisance targets,
    beside its random-init encoder's (``nuisance_random_init``); ``learning_all`` the
    learning verdict on every seed; ``pretrain_max_s`` the slowest seed's pretraining
    (``timings``: (variant, seed) → seconds). Eligible: at least ``MIN_SEEDS`` seeds,
    nuisance not above random-init by more than ``NUISANCE_MARGIN``, learning on every
    seed, within ``BUDGET_S``. ``diff`` / ``se_diff``: score minus the current default's,
    paired by seed, and the standard error of that difference. The chosen default is the
    eligible variant with the highest score, unless its lead over the current default is
    not above ``se_diff`` (then the default stays). Returns (table, chosen variant or None).

    Example:
        >>> rows = [dict(variant=v, seed=s, pooling=RULE_POOLING, target=t,
        ...              r2=(r2 + 0.01 * s) if t in DISEASE else 0.0, learning=True,
        ...              random_init="random-init")
        ...         for v, r2 in (("baseline", 0.5), ("better", 0.7), ("random-init", 0.0))
        ...         for s in range(3) for t in DISEASE + NUISANCE]
        >>> table, chosen = apply_rule(pd.DataFrame(rows))
        >>> chosen, bool(table.loc["better", "eligible"]), round(float(table.loc["better", "diff"]), 2)
        ('better', True, 0.2)
    """
    timings = timings or {}
    rule = tidy[tidy["pooling"] == RULE_POOLING]
    per_seed = rule.assign(group=np.where(rule["target"].isin(DISEASE), "disease",
                                          np.where(rule["target"].isin(NUISANCE), "nuisance",
                                                   "other")))
    per_seed = (per_seed[per_seed["group"] != "other"]
                .pivot_table(index=["variant", "seed"], columns="group", values="r2",
                             aggfunc="mean"))
    rows = {}
    for variant in dict.fromkeys(rule["variant"]):
        if variant.startswith(("random-init", "densitometry")):
            continue
        own = rule[rule["variant"] == variant]
        seeds = sorted(int(x) for x in own["seed"].dropna().unique())
        scores = per_seed.loc[variant]
        rand_name = own["random_init"].dropna().iloc[0] if own["random_init"].notna().any() else None
        rand = (per_seed.loc[rand_name] if rand_name in per_seed.index.get_level_values(0)
                else None)
        rand_nuisance = (float(rand.loc[rand.index.isin(seeds), "nuisance"].mean())
                         if rand is not None else np.nan)
        learning = own.drop_duplicates("seed")["learning"]
        times = [timings.get((variant, s), np.nan) for s in seeds]
        row = dict(n_seeds=len(seeds), score=float(scores["disease"].mean()),
                   score_sd=float(scores["disease"].std(ddof=1)) if len(seeds) > 1 else np.nan,
                   nuisance=float(scores["nuisance"].mean()),
                   nuisance_random_init=rand_nuisance,
                   learning_all=bool(learning.astype(object).eq(True).all()),
                   pretrain_max_s=float(np.nanmax(times)) if np.isfinite(times).any() else np.nan)
        reasons = []
        if len(seeds) < MIN_SEEDS:
            reasons.append(f"{len(seeds)} seed(s) < {MIN_SEEDS}")
        if not row["nuisance"] <= rand_nuisance + NUISANCE_MARGIN:
            reasons.append("nuisance above random-init + 0.05")
        if not row["learning_all"]:
            reasons.append("not learning on every seed")
        if row["pretrain_max_s"] > BUDGET_S:
            reasons.append("over the 15-min budget")
        other_cohort = str(rand_name).endswith(" cohort)")
        if other_cohort:   # a data variant: its score is on another cohort, not comparable
            reasons.append("another cohort (a data variant, not a method default)")
        row["eligible"], row["why_not"] = bool(not reasons), "; ".join(reasons)
        if other_cohort:
            row["diff"], row["se_diff"] = np.nan, np.nan
        elif default in per_seed.index.get_level_values(0) and variant != default:
            both = scores["disease"].to_frame("v").join(
                per_seed.loc[default, "disease"].rename("d"), how="inner")
            d = both["v"] - both["d"]
            row["diff"] = float(d.mean())
            row["se_diff"] = float(d.std(ddof=1) / np.sqrt(len(d))) if len(d) > 1 else np.nan
        else:
            row["diff"], row["se_diff"] = (0.0, 0.0) if variant == default else (np.nan, np.nan)
        rows[variant] = row
    table = pd.DataFrame.from_dict(rows, orient="index")
    eligible = table[table["eligible"]] if len(table) else table
    if eligible.empty:
        return table, None
    best = str(eligible["score"].idxmax())
    if (best != default and default in eligible.index
            and not table.loc[best, "diff"] > table.loc[best, "se_diff"]):
        best = default
    return table, best


def data_key(config: dict) -> str:
    """Which cohort and store a config needs (its synthetic + preprocess sections)."""
    text = json.dumps({k: config.get(k) for k in ("synthetic", "preprocess")}, sort_keys=True)
    return hashlib.blake2b(text.encode(), digest_size=4).hexdigest()


def command_of(args: argparse.Namespace, variant: str, seed: int) -> str:
    parts = ["--config", args.config, "--work", args.work, "--variants", variant,
             "--seeds", str(seed)]
    if args.max_steps:
        parts += ["--max-steps", str(args.max_steps)]
    return "python benchmarks/bench_recipe.py " + " ".join(shlex.quote(p) for p in parts)


def run_one(root: Path, config: dict, variant: str, seed: int, max_steps: int | None):
    """Pretrain and embed one (variant, seed), resumably; return (trained, random-init
    embeddings, learning summary, workspace)."""
    from drasclr_toolkit.embed import Embeddings, EmbedConfig, extract_embeddings
    from drasclr_toolkit.train import pretrain, read_metrics
    from drasclr_toolkit.train.summary import learning_summary
    from drasclr_toolkit.workspace import Workspace

    ws = Workspace(root / f"data_{data_key(config)}", config)
    store = ws.patch_store()
    run_dir = root / "runs" / variant / f"seed{seed}"
    pre = dict(config["pretrain"], seed=seed, progress=False)
    if max_steps:
        pre["max_steps"] = max_steps
    final = run_dir / "pretrain" / "final.pt"
    if not final.exists():
        t0, load0 = time.perf_counter(), os.getloadavg()[0]
        final = pretrain(store, pre, run_dir / "pretrain")
        atomic_write_text(run_dir / "timing.json", json.dumps(
            {"pretrain_s": round(time.perf_counter() - t0, 1),
             "load_start": round(load0, 2), "load_end": round(os.getloadavg()[0], 2),
             "machine": f"{platform.machine()}, {os.cpu_count()} cores"}))
    embed_cfg = EmbedConfig.from_dict(dict(config.get("embed", {}), seed=seed))
    out = {}
    for kind, checkpoint in (("trained", final), ("random-init", None)):
        path = run_dir / f"{kind}.npz"
        out[kind] = (Embeddings.load(path) if path.exists() else
                     extract_embeddings(store, checkpoint, config=embed_cfg, out_path=path,
                                        progress=False))
    learning = learning_summary(read_metrics(run_dir / "pretrain"))
    return out["trained"], out["random-init"], learning, ws


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="small")
    p.add_argument("--work", default="runs/recipe")
    p.add_argument("--variants", default="baseline,no-conditioning,concat,no-neighbour-loss,"
                                         "no-intensity-aug,lung-window,queue-recipe")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--max-steps", type=int, default=None, help="shorter runs (say so)")
    p.add_argument("--poolings", default=f"mean,{RULE_POOLING},{ZONE_STACK}",
                   help=f"poolings to report ({ZONE_STACK}: {RULE_POOLING} features, per-zone "
                        "probes stacked inside the training folds)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--permutations", type=int, default=50)
    p.add_argument("--jobs", type=int, default=1,
                   help="processes for the probes (the feature sets split between them)")
    p.add_argument("--from-csv", action="store_true",
                   help="redo the report (markdown, rule, figure) from <out>.csv and "
                        "<out>.json; run and evaluate nothing")
    p.add_argument("--finished-only", action="store_true",
                   help="evaluate the finished (variant, seed) runs only; train nothing")
    p.add_argument("--runs-only", action="store_true",
                   help="pretrain and embed only (for parallel workers); no evaluation")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "recipe_study"))
    args = p.parse_args(argv)

    from drasclr_toolkit.config import load_config
    from drasclr_toolkit.evaluate import (cohort_densitometry, paired_comparisons,
                                          pool_embeddings, summarise)

    if args.from_csv:
        out = Path(args.out)
        tidy = pd.read_csv(out.with_suffix(".csv"))
        tidy["seed"] = tidy["seed"].astype("Int64")
        write_report(tidy, json.loads(out.with_suffix(".json").read_text()), out)
        return 0
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        raise SystemExit(f"--variants: unknown {unknown}; known: {sorted(VARIANTS)}")
    seeds = [int(s) for s in args.seeds.split(",")]
    poolings = [s.strip() for s in args.poolings.split(",") if s.strip()]
    root = Path(args.work).expanduser().resolve()
    base_config = load_config(args.config)
    started = time.perf_counter()

    # 1. runs (resumable), grouped by the data they need
    features: dict[str, dict[str, pd.DataFrame]] = {}   # data key -> feature set -> frame
    meta: dict[str, dict] = {}                          # feature set -> row info
    spaces: dict[str, object] = {}
    probes: dict[str, str] = {}                         # feature set -> probe design
    timings: dict[tuple[str, int], float] = {}
    base_key = data_key(base_config)
    cohort_label: dict[str, str] = {}                   # data key -> "" or " (<variant> cohort)"
    for variant in variants:
        config = apply_overrides(base_config, VARIANTS[variant])
        key = data_key(config)
        # a data variant's references (random-init, densitometry) are of its own cohort
        cohort_label.setdefault(key, "" if key == base_key else f" ({variant} cohort)")
        for seed in seeds:
            run_dir = root / "runs" / variant / f"seed{seed}"
            if args.finished_only and not all((run_dir / f).exists() for f in (
                    "pretrain/final.pt", "trained.npz", "random-init.npz")):
                print(f"{variant} seed {seed}: not run (--finished-only), left out", flush=True)
                continue
            trained, random_init, learning, ws = run_one(root, config, variant, seed,
                                                         args.max_steps)
            spaces[key] = ws
            timing = root / "runs" / variant / f"seed{seed}" / "timing.json"
            if timing.exists():
                timings[(variant, seed)] = json.loads(timing.read_text())["pretrain_s"]
            sets = features.setdefault(key, {})
            # one random-init per seed and network window (a lung-window variant has its own)
            window = config.get("embed", {}).get("hu_window")
            rand = "random-init" + (f" {list(window)}" if window else "") + cohort_label[key]
            for pooling in poolings:
                name = f"{variant}|{seed}|{pooling}"
                method = RULE_POOLING if pooling == ZONE_STACK else pooling
                if pooling == ZONE_STACK:
                    probes[name] = probes[f"{rand}|{seed}|{pooling}"] = "zone_stack"
                sets[name] = pool_embeddings(trained, method)
                sets[f"{rand}|{seed}|{pooling}"] = pool_embeddings(random_init, method)
                meta[name] = dict(variant=variant, seed=seed, pooling=pooling,
                                  learning=learning.get("learning"),
                                  acc_ratio=learning.get("ratio"), random_init=rand,
                                  command=command_of(args, variant, seed))
                meta[f"{rand}|{seed}|{pooling}"] = dict(
                    variant=rand, seed=seed, pooling=pooling, learning=None, random_init=rand,
                    acc_ratio=None, command=command_of(args, variant, seed))
            print(f"{variant} seed {seed}: learning {learning.get('learning')} "
                  f"({time.perf_counter() - started:.0f} s)", flush=True)

    if args.runs_only:
        return 0
    # 2. one paired evaluation per data set: every feature set on the same folds
    rows, pairs = [], []
    for key, sets in features.items():
        ws = spaces[key]
        store = ws.patch_store()
        dens = cohort_densitometry(ws.cohort(), store,  # the store records' numbers
                                   cache=ws.evaluate_dir / "densitometry.csv")
        sets = dict(sets)
        dens_name = f"densitometry{cohort_label[key]}|-|zones"
        sets[dens_name] = dens[[c for c in ZONE_DENSITOMETRY if c in dens]]
        meta[dens_name] = dict(variant=dens_name.split("|")[0], seed=None, pooling="zones",
                               learning=None, acc_ratio=None, random_init=None, command="")
        table = evaluate_in_parallel(sets, ws.ground_truth(), probes, args)
        long = summarise(table)
        for _, r in long.iterrows():
            rows.append({**meta[r["feature_set"]], "feature_set": r["feature_set"],
                         "data": key, "target": r["task"],
                         "r2": r["value"], "ci_low": r["ci_low"], "ci_high": r["ci_high"],
                         "p_adj": r["p_adj"], "evidence": r["evidence"]})
        for name, info in meta.items():
            if name not in sets or info["variant"].startswith(("random-init", "densitometry")):
                continue
            seed, pooling = info["seed"], info["pooling"]
            refs = [f"{info['random_init']}|{seed}|{pooling}", dens_name]
            if info["variant"] != "baseline" and f"baseline|{seed}|{pooling}" in sets:
                refs.append(f"baseline|{seed}|{pooling}")
            cmp = paired_comparisons(long, reference=name, baselines=refs)
            for _, c in cmp.iterrows():
                pairs.append({"feature_set": name, "target": c["task"],
                              "against": next(r for r in ("random-init", "densitometry",
                                                          "baseline")
                                              if c["baseline"].startswith(r)),
                              "diff": c["diff"],
                              "diff_p_adj": c["p_adj"]})

    tidy = pd.DataFrame(rows)
    if pairs:
        wide = (pd.DataFrame(pairs).pivot_table(index=["feature_set", "target"],
                                                columns="against", values=["diff", "diff_p_adj"],
                                                aggfunc="first"))
        wide.columns = [f"{a}_vs_{b}" for a, b in wide.columns]
        wide = wide.reset_index()
        tidy = tidy.merge(wide, on=["feature_set", "target"], how="left")
    tidy = tidy.drop(columns="feature_set")
    tidy = tidy.drop_duplicates(subset=["variant", "seed", "pooling", "target", "data"])
    tidy["seed"] = tidy["seed"].astype("Int64")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out.with_suffix(".csv"), tidy.to_csv(index=False))
    machine = f"{platform.machine()}, {os.cpu_count()} cores"
    from bench_calibration import git_commit

    # provenance for the notebooks (drasclr_toolkit.lab.recorded_study reads it)
    provenance = {
        "config": args.config, "variants": variants, "seeds": seeds,
        "max_steps": args.max_steps, "poolings": poolings, "repeats": args.repeats,
        "permutations": args.permutations, "rule_pooling": RULE_POOLING,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": machine,
        "commit": git_commit(REPO), "elapsed_s": round(time.perf_counter() - started),
        "pretrain_s": {f"{v}|{s}": t for (v, s), t in sorted(timings.items())},
        "command": "python benchmarks/bench_recipe.py " + " ".join(
            shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])),
        "disease": list(DISEASE), "nuisance": list(NUISANCE)}
    write_report(tidy, provenance, out)
    return 0


def write_report(tidy: pd.DataFrame, provenance: dict, out: Path) -> None:
    """The markdown summary, the rule table, the provenance JSON and the figure of a
    study's tidy table (``--from-csv`` redoes them from the saved CSV and JSON)."""
    timings = {(k.rsplit("|", 1)[0], int(k.rsplit("|", 1)[1])): v
               for k, v in provenance.get("pretrain_s", {}).items()}
    short = (f" (shorter runs: max_steps={provenance['max_steps']})"
             if provenance.get("max_steps") else "")
    md = [f"# Recipe study, `{provenance['config']}`{short} ({provenance['date']}, "
          f"{provenance['machine']}, commit {provenance['commit']}, "
          f"{provenance['elapsed_s']} s to evaluate)", "",
          f"Variants {', '.join(provenance['variants'])}; seeds {provenance['seeds']}. "
          "Rule: `benchmarks/selection_rule.md`.", "",
          f"Command: `{provenance['command']}`", ""]
    rule_table, chosen = apply_rule(tidy, timings)
    md += [f"The study table (`{RULE_POOLING}`, the rule's pooling; R² mean ± sd over seeds):",
           ""] + study_table(tidy, rule_table, order=provenance["variants"]) + [""]
    if (tidy["pooling"] == ZONE_STACK).any():
        md += [f"The same with the `{ZONE_STACK}` probe (per-zone ridges stacked inside the "
               "training folds; reported, not used by the rule; densitometry keeps its "
               "linear probe):", ""]
        md += study_table(tidy, rule_table.iloc[0:0], ZONE_STACK,
                          order=provenance["variants"]) + [""]
    md += report_lines(tidy)
    atomic_write_text(out.parent / f"{out.name}_rule.csv", rule_table.to_csv())
    md += ["The rule (`benchmarks/selection_rule.md`) applied:", "", "```",
           rule_table.round(3).to_string(), "```", "", f"Chosen default: **{chosen}**.", "",
           f"Full table (every row with its command): `{out.with_suffix('.csv').name}`."]
    atomic_write_text(out.with_suffix(".md"), "\n".join(md) + "\n")
    atomic_write_text(out.with_suffix(".json"),
                      json.dumps(dict(provenance, chosen=chosen), indent=1))
    plot(tidy, out.with_suffix(".png"))
    print("\n".join(md))


def evaluate_in_parallel(sets: dict[str, pd.DataFrame], truth: pd.DataFrame,
                         probes: dict[str, str], args: argparse.Namespace) -> pd.DataFrame:
    """``evaluate_phenotypes`` over the feature sets, split round-robin into ``args.jobs``
    processes. The folds depend only on the seed, the target and the subjects, so every
    part uses the same splits (the table's ``splits_id`` says so) and the parts stay paired;
    ``adjust_verdicts`` then corrects over the whole table."""
    from joblib import Parallel, delayed

    from drasclr_toolkit.evaluate import adjust_verdicts, evaluate_phenotypes

    targets = list(DISEASE + NUISANCE)
    names = list(sets)
    jobs = max(1, min(int(args.jobs), len(names)))
    parts = [names[i::jobs] for i in range(jobs)]
    tables = Parallel(n_jobs=jobs)(
        delayed(evaluate_phenotypes)({n: sets[n] for n in part}, truth, targets, cv=5,
                                     n_repeats=args.repeats, n_permutations=args.permutations,
                                     kinds=dict.fromkeys(targets, "continuous"), paired=True,
                                     probe={n: probes[n] for n in part if n in probes})
        for part in parts)
    table = pd.concat(tables, ignore_index=True)
    for target, part in table.groupby("target"):
        if part["splits_id"].nunique() > 1:
            raise SystemExit(f"{target}: the parallel parts were scored on different folds "
                             f"({part['splits_id'].unique().tolist()}); rerun with --jobs 1")
    return adjust_verdicts(table, n_permutations=args.permutations)


def study_table(tidy: pd.DataFrame, rule: pd.DataFrame, pooling: str = RULE_POOLING,
                order: list[str] | None = None) -> list[str]:
    """One markdown row per variant: seeds, mean ± sd over seeds of each disease R², the
    disease mean, the nuisance mean, the paired difference to the baseline over seeds with
    its 95 % t-interval (``drasclr_toolkit.lab.seed_paired_interval``), the seeds whose
    fold-paired test (Holm) found a difference on any disease target, and the rule's verdict.
    References (random-init, zone densitometry) as rows of their own."""
    from drasclr_toolkit.lab import seed_paired_interval

    part = tidy[(tidy["pooling"] == pooling) | tidy["variant"].str.startswith("densitometry")]
    disease = [t for t in DISEASE if t in set(part["target"])]
    per_seed = part.pivot_table(index=["variant", "seed"], columns="target", values="r2",
                                aggfunc="mean")
    dens_rows = part[part["variant"].str.startswith("densitometry")]
    score = per_seed[disease].mean(axis=1)
    nuisance = per_seed[[t for t in NUISANCE if t in per_seed]].mean(axis=1)
    base = score.loc["baseline"] if "baseline" in score.index.get_level_values(0) else None
    head = ("| variant | seeds | " + " | ".join(t.split("_")[0] for t in disease)
            + " | disease mean | nuisance | − baseline (95 % CI over seeds) | "
              "fold-paired p_adj ≤ 0.05 | rule |")
    lines = [head, "|" + " --- |" * (head.count("|") - 1)]

    def ms(values):
        v = values.dropna()
        return f"{v.mean():.2f}" + (f" ± {v.std(ddof=1):.2f}" if len(v) > 1 else "")

    present = list(dict.fromkeys(per_seed.index.get_level_values(0)))
    ordered = ([v for v in order or [] if v in present]
               + [v for v in present if v not in (order or []) and not v.startswith("random")]
               + sorted(v for v in present if v.startswith("random")))
    for variant in ordered:
        if variant.startswith("densitometry"):
            continue
        rows = per_seed.loc[variant]
        cells = [variant, str(len(rows))] + [ms(rows[t]) for t in disease]
        cells += [ms(score.loc[variant]), ms(nuisance.loc[variant])]
        own_cohort = part.loc[part["variant"] == variant, "random_init"].dropna()
        other_cohort = bool(len(own_cohort)) and own_cohort.iloc[0].endswith(" cohort)")
        if variant.startswith("random-init"):
            cells += ["", ""]
        elif other_cohort:   # a data variant: its own cohort, not paired with the baseline
            cells += ["another cohort: see its references", ""]
        elif base is not None and variant != "baseline" and not variant.startswith("random"):
            d = (score.loc[variant] - base).dropna()
            mean, low, high = seed_paired_interval(d.to_numpy())
            cells.append(f"{mean:+.3f}" + (f" ({low:+.3f} to {high:+.3f})"
                                            if np.isfinite(low) else " (1 seed)"))
            own = tidy[(tidy["pooling"] == pooling) & (tidy["variant"] == variant)
                       & tidy["target"].isin(disease)]
            hits = (own.groupby("seed")["diff_p_adj_vs_baseline"].min() <= 0.05).sum() \
                if "diff_p_adj_vs_baseline" in own else 0
            cells.append(f"{int(hits)}/{len(d)}")
        else:
            cells += ["", ""]
        if variant in rule.index:
            r = rule.loc[variant]
            cells.append("eligible" if r["eligible"] else f"out: {r['why_not']}")
        else:
            cells.append("reference" if variant.startswith("random-init") else "")
        lines.append("| " + " | ".join(cells) + " |")
    for name, rows in dens_rows.groupby("variant", sort=False):
        dens = rows.groupby("target")["r2"].mean()
        lines.append(f"| zone {name} | – | " + " | ".join(
            f"{dens.get(t, np.nan):.2f}" for t in disease) + f" | {dens[disease].mean():.2f} | "
            f"{dens[[t for t in NUISANCE if t in dens]].mean():.2f} | | | reference |")
    return lines


def report_lines(tidy: pd.DataFrame) -> list[str]:
    """Markdown blocks: mean R² over seeds per variant and target (the rule's pooling, then
    every other pooling / probe design), and the paired differences to the baseline variant
    of the same seed (mean over seeds, with how many seeds' Holm-adjusted p ≤ 0.05)."""
    lines: list[str] = []
    dens = tidy[tidy["variant"] == "densitometry"]
    poolings = [RULE_POOLING] + [p for p in dict.fromkeys(tidy["pooling"])
                                 if p != RULE_POOLING and (tidy["pooling"] == p).any()
                                 and not (tidy.loc[tidy["pooling"] == p, "variant"]
                                          == "densitometry").all()]
    for pooling in poolings:
        part = pd.concat([tidy[(tidy["pooling"] == pooling) & (tidy["variant"] != "densitometry")],
                          dens])
        if part.empty:
            continue
        table = part.pivot_table(index="variant", columns="target", values="r2", aggfunc="mean")
        seeds = part.groupby("variant")["seed"].nunique()
        table.insert(0, "seeds", seeds.reindex(table.index).fillna(0).astype(int))
        lines += [f"Mean R² over seeds, `{pooling}`"
                  + (" (the rule's)" if pooling == RULE_POOLING else "") + ":", "", "```",
                  table.round(3).to_string(), "```", ""]
        if "diff_vs_baseline" in part:
            vs = part.dropna(subset=["diff_vs_baseline"])
            if len(vs):
                agg = vs.groupby(["variant", "target"]).agg(
                    diff=("diff_vs_baseline", "mean"), seeds=("seed", "nunique"),
                    significant=("diff_p_adj_vs_baseline", lambda p: int((p <= 0.05).sum())))
                cell = agg.apply(lambda r: f"{r['diff']:+.3f} ({int(r['significant'])}/"
                                           f"{int(r['seeds'])})",
                                 axis=1).unstack("target")
                lines += [f"Paired R² difference to `baseline` of the same seed, `{pooling}` "
                          "(mean over seeds; in brackets: seeds with Holm-adjusted p ≤ 0.05):",
                          "", "```", cell.to_string(), "```", ""]
    return lines


def plot(tidy: pd.DataFrame, path: Path) -> None:
    """R² per target: one dot per (variant, seed) with the rule's pooling, references as lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    targets = list(DISEASE + NUISANCE)
    rule = tidy[tidy["pooling"] == RULE_POOLING]
    variants = [v for v in dict.fromkeys(rule["variant"]) if not v.startswith("random-init")]
    fig, axes = plt.subplots(1, len(targets), figsize=(3 * len(targets), 3.6), sharey=True)
    for ax, target in zip(axes, targets):
        part = rule[rule["target"] == target]
        for i, v in enumerate(variants):
            vals = part.loc[part["variant"] == v, "r2"].to_numpy(float)
            ax.scatter(np.full(len(vals), i), vals, s=18)
            if len(vals):
                ax.plot([i - 0.3, i + 0.3], [np.nanmean(vals)] * 2, color="k", lw=1)
        rand = part.loc[part["variant"] == "random-init", "r2"].mean()
        dens = tidy[(tidy["variant"] == "densitometry") & (tidy["target"] == target)]["r2"].mean()
        ax.axhline(rand, color="grey", ls=":", label="random-init")
        ax.axhline(dens, color="tab:red", ls="--", label="zone densitometry")
        ax.axhline(0, color="k", lw=0.5)
        ax.set_xticks(range(len(variants)), variants, rotation=60, ha="right", fontsize=7)
        ax.set_title(target.replace("_", " "), fontsize=9)
        ax.set_ylim(-1.05, 1.05)   # R² below -1 (worse than the mean, small cohorts) is clipped
    axes[0].set_ylabel(f"R² ({RULE_POOLING} pooling; axis clipped at -1)")
    axes[-1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
