"""Throughput of one full DrasCLR training step, in anchor patches per second.

One step = query encoder on view 1 of the anchors, key encoder on view 2 (momentum update
first), query encoder on the k = 2 neighbour patches, local + neighbour InfoNCE against the
anchor location's queue, backward, SGD step, cosine schedule step, enqueue. Exactly
:meth:`drasclr_toolkit.train.DrasCLRTrainer.step`, with the batch already on the device (the
data pipeline is measured elsewhere). Queues are the published size: 581 × 4096 × 128.

Usage::

    python benchmarks/bench_train_step.py                          # CPU, full width, batch 32
    python benchmarks/bench_train_step.py --device cuda --dtype bf16
    python benchmarks/bench_train_step.py --device cuda --dtype bf16 --batches 32,128,256 \\
        --channels-last both --compile

Writes ``benchmarks/results/train_step_<device>.json`` (atomically) and prints a table.
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

import numpy as np
import torch

from drasclr_toolkit.train import DrasCLRTrainer, PretrainConfig

N_LOCATIONS = 581


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} ({os.cpu_count()} cores, " \
           f"{torch.get_num_threads()} threads)"


def make_batch(batch: int, patch: int, k: int, device: torch.device, seed: int = 0) -> dict:
    gen = torch.Generator().manual_seed(seed)
    shape = (batch, 1, patch, patch, patch)
    return {
        "view1": (torch.rand(shape, generator=gen) * 2 - 1).to(device),
        "view2": (torch.rand(shape, generator=gen) * 2 - 1).to(device),
        "neighbours": (torch.rand((k,) + shape, generator=gen) * 2 - 1).to(device),
        "loc": torch.tensor(7), "neighbour_locs": torch.tensor([8, 9][:k]),
        "subjects": torch.arange(batch, device=device),
    }


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_one(args: argparse.Namespace, batch: int, channels_last: bool, device: torch.device) -> dict:
    cfg = PretrainConfig.from_dict(dict(
        width=args.width, num_experts=args.num_experts, batch_size=batch, queue_size=args.queue_size,
        queue_dtype=args.queue_dtype, neighbours=2, amp=args.dtype == "bf16", device=str(device),
        channels_last=channels_last, compile=args.compile, progress=False))
    coords = np.random.default_rng(0).uniform(-1, 1, (N_LOCATIONS, 3)).astype(np.float32)
    trainer = DrasCLRTrainer(cfg, coords, total_steps=10_000, device=device)
    # queue already full, as in steady-state training
    trainer.queues.filled.fill_(cfg.queue_size)
    data = make_batch(batch, args.patch, 2, device)
    if channels_last and device.type == "cuda":
        for key in ("view1", "view2"):
            data[key] = data[key].contiguous(memory_format=torch.channels_last_3d)
    for _ in range(args.warmup):
        trainer.step(data)
    sync(device)
    times = []
    for _ in range(args.iters):
        t0 = time.perf_counter()
        for _ in range(args.inner):
            out = trainer.step(data)
        float(out["loss"])  # the loss must really have been computed
        sync(device)
        times.append((time.perf_counter() - t0) / args.inner)
    median = statistics.median(times)
    mem = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return {"batch": batch, "channels_last": channels_last, "median_step_s": median,
            "anchor_patches_per_s": batch / median, "encoder_patches_per_s": 4 * batch / median,
            "peak_gpu_mem_gib": mem, "step_times_s": times,
            "params": trainer.encoder.num_parameters(), "queue_bytes": trainer.queues.nbytes}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32",
                   help="bf16: autocast (CUDA only); fp32: full precision")
    p.add_argument("--batches", default="32", help="comma-separated batch sizes (anchors per step)")
    p.add_argument("--patch", type=int, default=32)
    p.add_argument("--width", type=float, default=1.0)
    p.add_argument("--num-experts", type=int, default=8)
    p.add_argument("--queue-size", type=int, default=4096)
    p.add_argument("--queue-dtype", default="float32")
    p.add_argument("--channels-last", choices=("on", "off", "both"), default="off")
    p.add_argument("--compile", action="store_true", help="torch.compile the encoders")
    p.add_argument("--warmup", type=int, default=None)
    p.add_argument("--iters", type=int, default=None, help="timed repetitions (median reported)")
    p.add_argument("--inner", type=int, default=None, help="steps per timed repetition")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch default)")
    p.add_argument("--out", default=None, help="JSON path (default results/train_step_<device>.json)")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    gpu = device.type == "cuda"
    args.warmup = args.warmup if args.warmup is not None else (5 if gpu else 1)
    args.iters = args.iters if args.iters is not None else (5 if gpu else 3)
    args.inner = args.inner if args.inner is not None else (10 if gpu else 1)
    if gpu:
        torch.backends.cudnn.benchmark = True
    if args.dtype == "bf16" and not gpu:
        print("note: bf16 autocast is used on CUDA only; this CPU run is fp32", file=sys.stderr)
    layouts = {"on": [True], "off": [False], "both": [False, True]}[args.channels_last]
    rows = []
    for batch in [int(b) for b in args.batches.split(",")]:
        for cl in layouts:
            row = bench_one(args, batch, cl, device)
            rows.append(row)
            print(f"batch {batch:4d}  channels_last={str(cl):5s}  {row['median_step_s'] * 1e3:9.2f} ms/step  "
                  f"{row['anchor_patches_per_s']:10.1f} anchor patches/s"
                  + (f"  peak {row['peak_gpu_mem_gib']:.1f} GiB" if gpu else ""), flush=True)
    result = {
        "benchmark": "train_step", "device": str(device), "device_name": device_name(device),
        "dtype": args.dtype, "torch": torch.__version__, "patch": args.patch, "width": args.width,
        "num_experts": args.num_experts, "neighbours": 2, "queue": [N_LOCATIONS, args.queue_size, 128],
        "queue_dtype": args.queue_dtype, "compile": args.compile,
        "warmup": args.warmup, "iters": args.iters, "inner": args.inner,
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "results": rows,
    }
    out = Path(args.out) if args.out else (Path(__file__).resolve().parent / "results" /
                                            f"train_step_{device.type}_{args.dtype}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, suffix=".tmp")
    with os.fdopen(fd, "w") as fh:
        json.dump(result, fh, indent=2)
    os.replace(tmp, out)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
