"""Throughput of the DrasCLR encoder: batched CondConv vs the per-sample loop vs plain Conv3d.

Measures patches/s for forward+backward (training step without optimiser) and forward-only
(inference, eval mode) at batch 32 on 32³ patches for:

* ``plain``        — the same 13-layer network with ``nn.Conv3d`` (``conditioning="none"``);
* ``cond_shared``  — CondConv, one location for the batch (training batches: one kernel/layer);
* ``cond_few``     — CondConv, 2 distinct locations in the batch (a flattened batch of k = 2
  neighbours): one ordinary conv per location;
* ``cond_mixed``   — CondConv, a different location per sample (grouped conv per layer,
  stacked experts in the last layers);
* ``cond_loop``    — REFERENCE per-sample Python loop of the original code, mixed locations.

Variants are run round-robin (one iteration of each in turn) and the median is reported, so
that load from other processes on a shared machine hits all variants alike.

Usage::

    python benchmarks/bench_encoder.py                      # CPU, all cores
    python benchmarks/bench_encoder.py --device cuda --dtype bf16
    python benchmarks/bench_encoder.py --device cuda --dtype fp32 --iters 30

Writes ``benchmarks/results/encoder_<host-or-device>.json`` (atomically) and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import socket
import statistics
import sys
import tempfile
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch

from drasclr_toolkit.models import CondConv3d, DrasCLREncoder, layer_specs

VARIANTS = ("plain", "cond_shared", "cond_few", "cond_mixed", "cond_loop")
MODES = ("fwd_bwd", "fwd")


@dataclass
class BenchConfig:
    device: str = "cpu"
    dtype: str = "fp32"
    batch: int = 32
    patch: int = 32
    width: float = 1.0
    num_experts: int = 8
    warmup: int = 2
    iters: int = 5
    threads: int = 0  # 0: all cores
    variants: tuple[str, ...] = VARIANTS
    modes: tuple[str, ...] = MODES
    seed: int = 0


@dataclass
class BenchResult:
    variant: str
    mode: str
    median_s: float
    patches_per_s: float
    ratio_vs_plain: float | None = None
    min_s: float = 0.0
    ratio_min_vs_plain: float | None = None
    times_s: list[float] = field(default_factory=list)


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(cfg: BenchConfig) -> dict:
    info = {
        "host": socket.gethostname(),
        "cpu_model": cpu_model(),
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    try:
        info["load_avg_1m"] = os.getloadavg()[0]
    except OSError:
        pass
    if cfg.device.startswith("cuda"):
        props = torch.cuda.get_device_properties(torch.device(cfg.device))
        info.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1),
                    cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version())
    return info


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build_steps(cfg: BenchConfig) -> dict[tuple[str, str], Callable[[], None]]:
    """One closure per (variant, mode) that runs a single timed iteration."""
    device = torch.device(cfg.device)
    torch.manual_seed(cfg.seed)
    x = torch.rand(cfg.batch, 1, cfg.patch, cfg.patch, cfg.patch, device=device) * 2 - 1
    shared = torch.rand(3, device=device) * 2 - 1
    mixed = torch.rand(cfg.batch, 3, device=device) * 2 - 1
    few = mixed[torch.arange(cfg.batch, device=device) % 2]
    common = dict(num_experts=cfg.num_experts, width=cfg.width)
    specs = {
        "plain": (dict(conditioning="none"), shared),
        "cond_shared": (dict(conditioning="condconv"), shared),
        "cond_few": (dict(conditioning="condconv"), few),
        "cond_mixed": (dict(conditioning="condconv"), mixed),
        "cond_loop": (dict(conditioning="condconv", reference_loop=True), mixed),
    }
    if cfg.dtype == "bf16":
        autocast: Callable[[], object] = lambda: torch.autocast(device.type, dtype=torch.bfloat16)
    elif cfg.dtype == "fp32":
        autocast = nullcontext
    else:
        raise ValueError(f"--dtype must be fp32 or bf16, got {cfg.dtype!r}")

    steps: dict[tuple[str, str], Callable[[], None]] = {}
    for variant in cfg.variants:
        kwargs, loc = specs[variant]
        enc = DrasCLREncoder(**common, **kwargs).to(device)

        def fwd_bwd(enc=enc, loc=loc) -> None:
            enc.train()
            enc.zero_grad(set_to_none=True)
            with autocast():
                h, z = enc(x, loc)
                loss = z.float().square().mean()
            loss.backward()
            _sync(device)

        def fwd(enc=enc, loc=loc) -> None:
            enc.eval()
            with torch.inference_mode(), autocast():
                enc.encode(x, loc)
            _sync(device)

        for mode, fn in (("fwd_bwd", fwd_bwd), ("fwd", fwd)):
            if mode in cfg.modes:
                steps[(variant, mode)] = fn
    return steps


def run(cfg: BenchConfig) -> list[BenchResult]:
    steps = build_steps(cfg)
    for _ in range(cfg.warmup):
        for fn in steps.values():
            fn()
    times: dict[tuple[str, str], list[float]] = {k: [] for k in steps}
    for _ in range(cfg.iters):
        for key, fn in steps.items():  # round-robin: shared-machine noise hits all alike
            t0 = time.perf_counter()
            fn()
            times[key].append(time.perf_counter() - t0)
    results = []
    for (variant, mode), ts in times.items():
        med = statistics.median(ts)
        results.append(BenchResult(variant, mode, med, cfg.batch / med, min_s=min(ts),
                                   times_s=ts))
    plain = {r.mode: r for r in results if r.variant == "plain"}
    for r in results:
        if r.mode in plain:
            r.ratio_vs_plain = r.median_s / plain[r.mode].median_s
            r.ratio_min_vs_plain = r.min_s / plain[r.mode].min_s
    return results


LAYER_IMPLS = ("plain", "shared", "few", "grouped", "stacked")


def run_per_layer(cfg: BenchConfig) -> list[dict]:
    """Forward+backward seconds of each of the 13 layers under each per-sample strategy.

    Used to set ``CondConv3d.stacked_budget``: the stacked-expert evaluation should win
    only where the output is tiny.
    """
    device = torch.device(cfg.device)
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) \
        if cfg.dtype == "bf16" else nullcontext
    rows = []
    size = cfg.patch
    for index, (cin, cout, stride) in enumerate(layer_specs(128, cfg.width)):
        x = torch.randn(cfg.batch, cin, size, size, size, device=device, requires_grad=True)
        mixed = torch.rand(cfg.batch, 3, device=device) * 2 - 1
        cond = CondConv3d(cin, cout, 3, cfg.num_experts, stride, 1).to(device)
        plain = torch.nn.Conv3d(cin, cout, 3, stride, 1).to(device)

        def step(impl: str) -> None:
            with autocast():
                if impl == "plain":
                    y = plain(x)
                elif impl == "shared":
                    y = cond(x, mixed[0])
                elif impl == "few":
                    y = cond(x, mixed[torch.arange(cfg.batch, device=device) % 2])
                else:
                    cond.per_sample_impl, cond.max_groups = impl, 1
                    y = cond(x, mixed)
            y.float().sum().backward()
            _sync(device)

        for impl in LAYER_IMPLS:
            for _ in range(cfg.warmup):
                step(impl)
        times: dict[str, list[float]] = {impl: [] for impl in LAYER_IMPLS}
        for _ in range(cfg.iters):
            for impl in LAYER_IMPLS:
                t0 = time.perf_counter()
                step(impl)
                times[impl].append(time.perf_counter() - t0)
        out_size = (size - 1) // stride + 1
        rows.append({"layer": index, "in": cin, "out": cout, "in_size": size,
                     "out_voxels": out_size ** 3,
                     **{impl: statistics.median(ts) for impl, ts in times.items()}})
        size = out_size
    return rows


def format_layer_table(rows: list[dict]) -> str:
    lines = ["| layer | in→out | in size | out voxels | " + " | ".join(LAYER_IMPLS) + " |",
             "| ---: | --- | ---: | ---: | " + " | ".join("---:" for _ in LAYER_IMPLS) + " |"]
    for r in rows:
        cells = " | ".join(f"{r[impl] * 1e3:.2f}" for impl in LAYER_IMPLS)
        lines.append(f"| {r['layer']} | {r['in']}→{r['out']} | {r['in_size']}³ | "
                     f"{r['out_voxels']} | {cells} |")
    return "\n".join(lines) + "\n(ms per forward+backward)"


def format_table(results: list[BenchResult]) -> str:
    lines = ["| variant | mode | median s/batch | patches/s | × plain | min s/batch | × plain (min) |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for r in sorted(results, key=lambda r: (MODES.index(r.mode), VARIANTS.index(r.variant))):
        ratio = "" if r.ratio_vs_plain is None else f"{r.ratio_vs_plain:.2f}"
        ratio_min = "" if r.ratio_min_vs_plain is None else f"{r.ratio_min_vs_plain:.2f}"
        lines.append(f"| {r.variant} | {r.mode} | {r.median_s:.4f} | {r.patches_per_s:.1f} | "
                     f"{ratio} | {r.min_s:.4f} | {ratio_min} |")
    return "\n".join(lines)


def write_json_atomic(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(payload, f, indent=2)
    os.replace(tmp, path)


def default_output(cfg: BenchConfig, info: dict) -> Path:
    tag = info.get("gpu", "") + "_" + cfg.dtype if cfg.device.startswith("cuda") else \
        f"cpu_{info['host']}"
    tag = re.sub(r"[^A-Za-z0-9._-]+", "-", tag).strip("-")
    return Path(__file__).resolve().parent / "results" / f"encoder_{tag}.json"


def parse_args(argv: list[str] | None = None) -> tuple[BenchConfig, Path | None, bool]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--dtype", default="fp32", choices=("fp32", "bf16"),
                   help="bf16 runs under torch.autocast")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--patch", type=int, default=32)
    p.add_argument("--width", type=float, default=1.0)
    p.add_argument("--experts", type=int, default=8)
    p.add_argument("--warmup", type=int, default=None, help="default 2 (CPU) / 5 (GPU)")
    p.add_argument("--iters", type=int, default=None, help="default 5 (CPU) / 20 (GPU)")
    p.add_argument("--threads", type=int, default=0, help="torch threads; 0 = all cores")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    p.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    p.add_argument("--per-layer", action="store_true",
                   help="also time each layer under each per-sample strategy")
    p.add_argument("--out", type=Path, default=None, help="JSON path (default: results/...)")
    a = p.parse_args(argv)
    gpu = a.device.startswith("cuda")
    cfg = BenchConfig(device=a.device, dtype=a.dtype, batch=a.batch, patch=a.patch,
                      width=a.width, num_experts=a.experts,
                      warmup=a.warmup if a.warmup is not None else (5 if gpu else 2),
                      iters=a.iters if a.iters is not None else (20 if gpu else 5),
                      threads=a.threads, variants=tuple(a.variants), modes=tuple(a.modes))
    return cfg, a.out, a.per_layer


def main(argv: list[str] | None = None) -> int:
    cfg, out, per_layer = parse_args(argv)
    if cfg.device.startswith("cuda") and not torch.cuda.is_available():
        print("CUDA requested but not available", file=sys.stderr)
        return 2
    torch.set_num_threads(cfg.threads or os.cpu_count() or 1)
    if cfg.device.startswith("cuda"):
        torch.backends.cudnn.benchmark = True
    info = machine_info(cfg)
    t0 = time.perf_counter()
    results = run(cfg)
    info["wall_s"] = round(time.perf_counter() - t0, 1)
    table = format_table(results)
    print(f"# encoder benchmark: {cfg.device} {cfg.dtype}, batch {cfg.batch}, {cfg.patch}³, "
          f"width {cfg.width}, E={cfg.num_experts}; {info.get('gpu', info['cpu_model'])}, "
          f"{info['cpu_cores']} cores, torch {info['torch']}, {info['torch_threads']} threads")
    print(table)
    payload = {"config": asdict(cfg), "machine": info,
               "results": [asdict(r) for r in results], "table_md": table}
    if per_layer:
        rows = run_per_layer(cfg)
        payload["per_layer"] = rows
        payload["per_layer_md"] = format_layer_table(rows)
        print(payload["per_layer_md"])
    path = out or default_output(cfg, info)
    write_json_atomic(path, payload)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
