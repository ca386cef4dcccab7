"""The `small` CPU configuration, end to end: does the representation show what DrasCLR claims?

On the synthetic cohort with its ground truth: synthetic cohort → preprocessing → pretraining
→ embeddings (trained and honest random-init) → cross-validated probes of each disease
pattern separately (centrilobular, paraseptal, panlobular severity) and of the scanner
nuisance (noise, blur, HU offset), for patient embeddings pooled over all landmarks (mean)
and per lung zone (6 zones concatenated; plain and lung-fraction-weighted means), against
per-zone densitometry (mean lung density, 15th percentile, LAA-950 in the upper and lower
zones) and the random-init encoder. Every row carries its CI and permutation null.

Usage::

    python benchmarks/bench_small_config.py --work runs/small        # ~30-40 min on 2 cores
    python benchmarks/bench_small_config.py --work runs/small_seed1 --set pretrain.seed=1 \
        --out benchmarks/results/small_config_seed1          # the same with another seed

Resumable (the Workspace reuses every finished stage). Writes
``benchmarks/results/small_config.json`` and ``small_config.md`` (the table with the machine).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from drasclr_toolkit.evaluate.densitometry import ZONE_DENSITOMETRY  # noqa: E402
from drasclr_toolkit.io_utils import atomic_write_text  # noqa: E402

DISEASE = ("centrilobular_severity", "paraseptal_severity", "panlobular_severity")
NUISANCE = ("noise_hu", "blur_mm", "hu_offset")


def with_overrides(config: str, overrides: list[str]) -> tuple[dict | str, str]:
    """``config`` (a name or YAML path) with ``SECTION.KEY=VALUE`` overrides applied, and a
    label naming them (``small + pretrain.seed=1``).

    Example:
        >>> cfg, label = with_overrides("small", ["pretrain.seed=1"])
        >>> cfg["pretrain"]["seed"], label
        (1, 'small + pretrain.seed=1')
    """
    if not overrides:
        return config, str(config)
    from drasclr_toolkit.config import load_config, parse_overrides, set_options

    values = parse_overrides(overrides)
    for key in values:
        section, dot, name = key.partition(".")
        if not (dot and section and name):
            raise SystemExit(f"--set {key!r}: write SECTION.KEY=VALUE, e.g. pretrain.seed=1")
    return set_options(load_config(config), values), f"{config} + " + ", ".join(overrides)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", default="runs/small", help="work folder (resumable)")
    p.add_argument("--config", default="small")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override one config value (YAML value), e.g. --set pretrain.seed=1, "
                        "--set pretrain.epochs=20 or --set model.width=0.5; repeatable; use a "
                        "new --work folder")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--permutations", type=int, default=1000,
                   help="permutations of each probe's null (>= 1000 allows a Holm-corrected claim)")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "small_config"))
    args = p.parse_args(argv)

    from drasclr_toolkit.evaluate import cohort_densitometry, evaluate_phenotypes, pool_embeddings
    from drasclr_toolkit.workspace import Workspace

    config, label = with_overrides(args.config, args.set)
    ws = Workspace(args.work, config)
    stages: dict[str, float] = {}
    # A stage whose product was already in the work folder is timed as reused, so the
    # results never pass a cache hit off as the stage's cost.
    # (Products are keyed on what made them: the run folder on the settings and the store.)
    has_store = (ws.preprocess_dir / "store.json").exists()
    reused = {"cohort + preprocessing": has_store,
              "pretraining": has_store and (ws.run_dir() / "final.pt").exists(),
              "embeddings": any(ws.embeddings_dir.glob("trained-*.npz")),
              "densitometry": (ws.evaluate_dir / "densitometry.csv").exists()}
    start = time.perf_counter()
    store = ws.patch_store()
    stages["cohort + preprocessing"] = time.perf_counter() - start
    start = time.perf_counter()
    ws.checkpoint()
    stages["pretraining"] = time.perf_counter() - start
    start = time.perf_counter()
    trained, random_init = ws.embeddings("trained"), ws.embeddings("random-init")
    stages["embeddings"] = time.perf_counter() - start
    start = time.perf_counter()
    dens = cohort_densitometry(ws.cohort(), store, cache=ws.evaluate_dir / "densitometry.csv")
    stages["densitometry"] = time.perf_counter() - start
    stages = {(f"{k} (reused)" if reused.get(k) else k): v for k, v in stages.items()}

    truth = ws.ground_truth()
    features = {
        "drasclr (mean)": pool_embeddings(trained, "mean"),
        "drasclr (zones)": pool_embeddings(trained, "zones"),
        "drasclr (zones, lung-weighted)": pool_embeddings(trained, "zones_lung_weighted"),
        "random-init (mean)": pool_embeddings(random_init, "mean"),
        "random-init (zones)": pool_embeddings(random_init, "zones"),
        "random-init (zones, lung-weighted)": pool_embeddings(random_init, "zones_lung_weighted"),
        "densitometry (upper/lower zones)": dens[[c for c in ZONE_DENSITOMETRY if c in dens]],
        "LAA-950 whole lung": dens[["laa950_pct"]],
    }
    start = time.perf_counter()
    table = evaluate_phenotypes(features, truth, list(DISEASE + NUISANCE), cv=5,
                                n_repeats=args.repeats, n_permutations=args.permutations,
                                kinds={t: "continuous" for t in DISEASE + NUISANCE})
    stages["probes"] = time.perf_counter() - start
    summary = learning = None
    try:
        from drasclr_toolkit.train import read_metrics
        from drasclr_toolkit.train.summary import learning_summary

        learning = learning_summary(read_metrics(ws.checkpoint().parent))
    except Exception as exc:  # the table is the point; the summary is extra
        learning = {"error": str(exc)}
    keep = [c for c in ("feature_set", "features", "target", "n", "r2", "r2_ci_low", "r2_ci_high",
                        "r2_null_p95", "r2_p", "verdict") if c in table.columns]
    summary = table[keep]
    machine = f"{platform.machine()}, {os.cpu_count()} cores, torch {__import__('torch').__version__}"
    result = {"config": label, "machine": machine, "stages_seconds": stages,
              "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "subjects": len(store.subject_ids), "landmarks": int(store.n_landmarks),
              "learning": {k: (v if isinstance(v, (int, float, str, bool)) or v is None else str(v))
                           for k, v in (learning or {}).items()},
              "table": json.loads(summary.to_json(orient="records"))}
    out = Path(args.out)
    atomic_write_text(out.with_suffix(".json"), json.dumps(result, indent=2), make_parents=True)
    md = [f"# `{label}` configuration, measured ({result['time']}, {machine})", "",
          "Stages (s): " + ", ".join(f"{k} {v:.0f}" for k, v in stages.items()), "",
          "```", summary.to_string(index=False, float_format=lambda v: f"{v:.3f}"), "```"]
    atomic_write_text(out.with_suffix(".md"), "\n".join(md) + "\n", make_parents=True)
    pd.set_option("display.width", 200)
    print(summary.to_string(index=False))
    print(f"wrote {out.with_suffix('.json')} and .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
