"""How long each exercise of notebook 02 takes, split into its side run and its comparison.

Issue 23 asks that every exercise ("try this, expect that") runs in at most 2 minutes on a
2-core laptop CPU. An exercise is ``lab.exercise(ws, name, **change)``: it trains a side run
with one setting changed (``ws.experiment``) and then compares it with the baseline run
(:func:`drasclr_toolkit.lab.compare_to_baseline`: fresh-view accuracy of both runs, the
embeddings of the side run, a cross-validated probe of %LAA-950 with its permutation null
and a paired test). This script builds the synthetic cohort, the patch store and the
baseline run of the ``tiny`` configuration in a work folder (not timed), then times every
exercise of notebook 02 from scratch (its side run deleted first) and records the machine
and the load average beside each time.

    python benchmarks/bench_lab_exercises.py                 # ~10 min on 2 idle cores
    python benchmarks/bench_lab_exercises.py --only temperature-1

Writes ``benchmarks/results/lab_exercises.json`` (atomically).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

#: the exercises of notebook 02, as the notebook calls them
EXERCISES: dict[str, dict] = {
    "no-conditioning": dict(conditioning="none"),
    "temperature-1": dict(temperature=1.0),
    "beta-0": dict(beta=0.0),
    "stale-queue": dict(queue_size=33, prefill_queues=True, batch_negatives=False),
}
TARGET_S = 120.0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default=None, help="work folder (default: a temporary one)")
    ap.add_argument("--only", nargs="*", default=None, help="exercise names")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "lab_exercises.json"))
    args = ap.parse_args(argv)

    import warnings

    from drasclr_toolkit import lab
    from drasclr_toolkit.io_utils import atomic_write_text
    from drasclr_toolkit.workspace import Workspace

    warnings.simplefilter("ignore")
    work = Path(args.work) if args.work else Path(os.environ.get("TMPDIR", "/tmp")) / "bench_lab"
    ws = Workspace(work, "tiny")
    start = time.perf_counter()
    ws.patch_store()
    ws.checkpoint()          # the baseline run (trained when missing)
    ws.embeddings()
    setup_s = time.perf_counter() - start
    print(f"cohort, patch store and baseline ready in {setup_s:.0f} s (reused where present)")

    rows = []
    for name, change in EXERCISES.items():
        if args.only and name not in args.only:
            continue
        run_dir = ws.run_dir(name, **change)
        shutil.rmtree(run_dir, ignore_errors=True)   # time it from scratch
        load_before = os.getloadavg()[0]
        t0, c0 = time.perf_counter(), time.process_time()
        experiment = ws.experiment(name, **change)
        t1, c1 = time.perf_counter(), time.process_time()
        result = lab.compare_to_baseline(ws, experiment)
        t2, c2 = time.perf_counter(), time.process_time()
        row = dict(exercise=name, change=change, train_s=round(t1 - t0, 1),
                   compare_s=round(t2 - t1, 1), total_s=round(t2 - t0, 1),
                   train_cpu_s=round(c1 - c0, 1), compare_cpu_s=round(c2 - c1, 1),
                   total_cpu_s=round(c2 - c0, 1),
                   within_target=bool(t2 - t0 <= TARGET_S),
                   load_before=round(load_before, 2), load_after=round(os.getloadavg()[0], 2),
                   text=result["text"])
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "text"}), flush=True)

    import torch
    from bench_calibration import git_commit

    machine = dict(platform=platform.platform(), cpus=os.cpu_count(),
                   torch_threads=torch.get_num_threads(), python=platform.python_version(),
                   commit=git_commit(REPO), date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))
    out = Path(args.out)
    atomic_write_text(out, json.dumps({"target_s": TARGET_S, "machine": machine,
                                       "rows": rows}, indent=1), make_parents=True)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
