"""The CPU pretraining step of the `small` configuration: old settings against new, one run.

One measured step is what :class:`~drasclr_toolkit.train.PretrainRun` does per batch: read
the batch's patches (the anchor landmark and its k = 2 neighbours, 16 subjects), augment
them, then :meth:`DrasCLRTrainer.step` (query encoder on the anchors and on each neighbour,
momentum update, key encoder, local + neighbour InfoNCE, backward, SGD step). Every setting
runs through the real run object (``PretrainRun`` on the same patch store, same seed), so
data reading and augmentation are inside the timing.

Settings (``--settings``; each a set of ``pretrain:`` overrides on the `small` config):

* ``old``: the `small` defaults before issue 18 (one torch thread, MONAI augmentation per
  patch on the host, float32, the store read for every batch);
* ``new``: the `small` defaults after it (bf16 autocast on the CPU, the batched torch
  augmentation, the patches held in memory, one thread);
* ``new-2threads``, ``amp-only``, ``batched-aug-only``, ``cache-only``: what each part buys.

The machine is shared, so settings are measured **interleaved**: ``--rounds`` rounds, each
timing ``--steps`` consecutive steps of every setting in turn (order rotated per round),
with the load average recorded before and after each block. The median over rounds of each
setting's anchor patches/s is reported, and the ratio to ``old`` within each round (the
fairest comparison under changing load), and the same per CPU-second of this process
(load moves it much less than the wall time). Minutes per `small` run = its 1,152 steps × 16
anchors at that rate (pretraining only; ``--full`` also times a whole run of each setting).

Usage::

    python benchmarks/bench_cpu_step.py --store runs/small/preprocess      # ~10 min loaded
    python benchmarks/bench_cpu_step.py --work runs/small   # builds the small store first

Writes ``benchmarks/results/cpu_step.json`` and ``cpu_step.md`` (atomically).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from drasclr_toolkit.io_utils import atomic_write_text  # noqa: E402

# The `small` pretrain defaults before issue 18, as overrides of the current small.yaml.
OLD = dict(cpu_threads=1, cpu_amp=False, augment_on="host", patch_cache_mb=0)
NEW = dict(cpu_threads=1, cpu_amp=True, augment_on="device", patch_cache_mb=1024)
SETTINGS: dict[str, dict] = {
    "old": OLD,
    "new": NEW,
    "new-2threads": {**NEW, "cpu_threads": 2},
    "amp-only": {**OLD, "cpu_amp": True},
    "batched-aug-only": {**OLD, "augment_on": "device"},
    "cache-only": {**OLD, "patch_cache_mb": 1024},
}


def loadavg() -> float:
    """The 1-minute load average (what other processes ask of the CPUs)."""
    try:
        return float(Path("/proc/loadavg").read_text().split()[0])
    except OSError:
        return float("nan")


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}"


class Setting:
    """One setting's PretrainRun, stepped a block at a time."""

    def __init__(self, name: str, store, base: dict, out_dir: Path) -> None:
        from drasclr_toolkit.train.loop import PretrainRun

        self.name = name
        self.config = {**base, **SETTINGS[name], "progress": False}
        self.run = PretrainRun(store, self.config, out_dir / name)
        self.run.sampler.set_epoch(0, 0)
        self._batches = iter(self.run._loader())
        self.threads = self.config["cpu_threads"]
        self.losses: list[float] = []

    def block(self, steps: int) -> tuple[float, float, int]:
        """Time ``steps`` steps (data included); return (wall seconds, CPU seconds of this
        process, anchors). CPU time counts only what this process computed, so it moves
        far less with other sessions' load than the wall time does."""
        torch.set_num_threads(self.threads)
        anchors = 0
        start, cpu_start = time.perf_counter(), time.process_time()
        for _ in range(steps):
            try:
                batch = next(self._batches)
            except StopIteration:
                self.run.epoch += 1
                self.run.sampler.set_epoch(self.run.epoch, 0)
                self._batches = iter(self.run._loader())
                batch = next(self._batches)
            metrics = self.run.trainer.step(batch)
            self.losses.append(float(metrics["loss"]))
            anchors += self.run.sampler.global_batch
        return time.perf_counter() - start, time.process_time() - cpu_start, anchors

    def close(self) -> None:
        self.run.close()


def full_run(store, base: dict, name: str, out_dir: Path) -> dict:
    """A whole `small` pretraining run of one setting: wall minutes, first and last loss."""
    from drasclr_toolkit.train import pretrain, read_metrics

    before = loadavg()
    start = time.perf_counter()
    pretrain(store, {**base, **SETTINGS[name], "progress": False}, out_dir / f"full_{name}")
    minutes = (time.perf_counter() - start) / 60
    records = read_metrics(out_dir / f"full_{name}")
    tail = records[-50:]
    return {"setting": name, "minutes": round(minutes, 2), "load_before": before,
            "load_after": loadavg(), "steps": len(records),
            "loss_first": records[0]["loss"],
            "loss_last50": round(statistics.mean(r["loss"] for r in tail), 4),
            "acc_last50": round(statistics.mean(r["acc_local"] for r in tail), 4),
            "chance": round(statistics.mean(r["chance_acc"] for r in tail), 4)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group()
    src.add_argument("--store", help="a preprocessed `small` patch store folder")
    src.add_argument("--work", help="a Workspace folder for the `small` config (built if needed)")
    p.add_argument("--settings", default="old,new,new-2threads,amp-only,batched-aug-only,cache-only")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=8, help="steps per timed block")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--full", default="", help="settings to also run end to end, e.g. old,new")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "cpu_step"))
    args = p.parse_args(argv)

    from drasclr_toolkit.config import load_config
    from drasclr_toolkit.preprocess import PatchStore

    base = load_config("small")["pretrain"]
    if args.store:
        store = PatchStore(args.store)
    else:
        from drasclr_toolkit.workspace import Workspace

        store = Workspace(args.work or "runs/small", "small").patch_store()
    names = [n.strip() for n in args.settings.split(",") if n.strip()]
    unknown = sorted(set(names) - set(SETTINGS))
    if unknown or "old" not in names:
        raise SystemExit(f"--settings: unknown {unknown} or no 'old'; known {sorted(SETTINGS)}")
    steps_per_run = None
    with tempfile.TemporaryDirectory(prefix="bench_cpu_step_") as tmp:
        settings = [Setting(n, store, base, Path(tmp)) for n in names]
        steps_per_run = settings[0].run.total_steps
        anchors_per_step = settings[0].run.sampler.global_batch
        for s in settings:
            s.block(args.warmup)
        blocks = []
        for r in range(args.rounds):
            order = settings[r % len(settings):] + settings[:r % len(settings)]
            for s in order:
                before = loadavg()
                seconds, cpu_seconds, anchors = s.block(args.steps)
                blocks.append({"round": r, "setting": s.name, "seconds": round(seconds, 3),
                               "patches_per_s": round(anchors / seconds, 2),
                               "patches_per_cpu_s": round(anchors / cpu_seconds, 2),
                               "load_before": before, "load_after": loadavg()})
                print(f"round {r} {s.name:18s} {anchors / seconds:6.1f} anchor patches/s  "
                      f"{anchors / cpu_seconds:6.1f} per CPU-second  (load {before:.1f})",
                      flush=True)
        losses = {s.name: [round(v, 4) for v in s.losses] for s in settings}
        for s in settings:
            s.close()
        full = [full_run(store, base, n.strip(), Path(tmp)) for n in args.full.split(",")
                if n.strip()]

    rows = []
    for name in names:
        rates = [b["patches_per_s"] for b in blocks if b["setting"] == name]
        ratios = []
        for r in range(args.rounds):
            mine = [b for b in blocks if b["round"] == r and b["setting"] == name]
            old = [b for b in blocks if b["round"] == r and b["setting"] == "old"]
            ratios.append(mine[0]["patches_per_s"] / old[0]["patches_per_s"])
        median = statistics.median(rates)
        cpu_rates = [b["patches_per_cpu_s"] for b in blocks if b["setting"] == name]
        old_cpu = statistics.median(b["patches_per_cpu_s"] for b in blocks if b["setting"] == "old")
        rows.append({"setting": name, "overrides": SETTINGS[name],
                     "patches_per_cpu_s_median": round(statistics.median(cpu_rates), 2),
                     "cpu_speedup_vs_old": round(statistics.median(cpu_rates) / old_cpu, 2),
                     "patches_per_s_median": round(median, 2),
                     "patches_per_s_min": min(rates), "patches_per_s_max": max(rates),
                     "speedup_vs_old_median": round(statistics.median(ratios), 2),
                     "minutes_per_small_run": round(steps_per_run * anchors_per_step / median / 60, 1)})
    loads = [b["load_before"] for b in blocks] + [b["load_after"] for b in blocks]
    result = {"benchmark": "cpu_step", "machine": machine(),
              "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "command": "python benchmarks/bench_cpu_step.py " + " ".join(argv or sys.argv[1:]),
              "store": str(getattr(store, "path", store)), "subjects": len(store.subject_ids),
              "steps_per_small_run": steps_per_run, "anchors_per_step": anchors_per_step,
              "rounds": args.rounds, "steps_per_block": args.steps,
              "load_min": min(loads), "load_median": statistics.median(loads),
              "load_max": max(loads), "results": rows, "blocks": blocks,
              "full_runs": full, "losses": losses}
    out = Path(args.out)
    atomic_write_text(out.with_suffix(".json"), json.dumps(result, indent=2), make_parents=True)
    md = [f"# CPU pretraining step, `small` config ({result['time']})", "",
          f"Machine: {result['machine']}; load average during the run "
          f"{result['load_min']:.1f}-{result['load_max']:.1f} (median "
          f"{result['load_median']:.1f}). {args.rounds} rounds × {args.steps} steps per "
          "setting, interleaved.", "",
          "| setting | anchor patches/s (median) | min-max | × old (median of rounds) | "
          "min per small run | per CPU-second | × old (CPU) |",
          "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    md += [f"| {r['setting']} | {r['patches_per_s_median']:.1f} | {r['patches_per_s_min']:.1f}-"
           f"{r['patches_per_s_max']:.1f} | {r['speedup_vs_old_median']:.2f} | "
           f"{r['minutes_per_small_run']:.1f} | {r['patches_per_cpu_s_median']:.1f} | "
           f"{r['cpu_speedup_vs_old']:.2f} |" for r in rows]
    if full:
        md += ["", "Whole runs:", "", "| setting | minutes | load before/after | loss first → "
               "last 50 | accuracy last 50 (chance) |", "| --- | ---: | --- | --- | --- |"]
        md += [f"| {f['setting']} | {f['minutes']:.1f} | {f['load_before']:.1f}/"
               f"{f['load_after']:.1f} | {f['loss_first']:.2f} → {f['loss_last50']:.2f} | "
               f"{f['acc_last50']:.3f} ({f['chance']:.3f}) |" for f in full]
    md += ["", f"Command: `{result['command']}`"]
    atomic_write_text(out.with_suffix(".md"), "\n".join(md) + "\n", make_parents=True)
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
