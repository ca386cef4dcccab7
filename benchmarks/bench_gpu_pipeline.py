"""The whole training data path on one device, in one call: PatchStore on disk → data loader
(int16 patches, pinned) → device augmentation → training step; plus extraction.

Measures anchor patches per second for fp32 and bf16, with and without ``torch.compile``,
the top-10 kernels of a bf16 step (torch.profiler), and embedding extraction in subjects
per second (581 landmarks a subject, scaled from the store's landmarks). Prepared to run
once on a lent GPU in under 5 minutes; ``--quick`` runs a tiny version anywhere (the test
suite's smoke run uses it on the CPU).

Usage::

    python benchmarks/bench_gpu_pipeline.py --device cuda                   # ~4 min on an H200
    python benchmarks/bench_gpu_pipeline.py --device cpu --quick            # smoke run

Writes ``benchmarks/results/gpu_pipeline_<device name>.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from drasclr_toolkit.io_utils import atomic_write_text  # noqa: E402

PUBLISHED_LANDMARKS = 581


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.machine()} CPU ({os.cpu_count()} cores)"


def make_store(folder: Path, n_subjects: int, n_locations: int, patch: int, seed: int = 0):
    """A PatchStore of lung-like int16 patches (so compression behaves as on real data)."""
    import SimpleITK as sitk

    from drasclr_toolkit.preprocess.atlas import Atlas
    from drasclr_toolkit.preprocess.store import PatchStore

    side = int(np.ceil(n_locations ** (1 / 3)))
    grid = np.array([(x, y, z) for x in range(side) for y in range(side)
                     for z in range(side)])[:n_locations] * 16
    atlas = Atlas(sitk.GetImageFromArray(np.ones((side * 16 + patch,) * 3, np.uint8)), grid,
                  patch_size=patch)
    ids = [f"b{i:04d}" for i in range(n_subjects)]
    store = PatchStore.create(folder, ids, atlas)
    rng = np.random.default_rng(seed)
    base = rng.normal(-820, 60, (n_locations, patch, patch, patch))
    for sid in ids:
        patches = base + rng.normal(0, 40, base.shape) - rng.uniform(0, 80)
        store.write_subject(sid, np.clip(patches, -1024, 240).astype(np.int16),
                            np.full(n_locations, 0.9), np.zeros((n_locations, 3), int),
                            {"subject_id": sid})
    return PatchStore(folder)


def train_throughput(store, device: torch.device, dtype: str, compile_: bool, args) -> dict:
    """Anchor patches/s through the real loader and the device augmentation."""
    from torch.utils.data import DataLoader

    from drasclr_toolkit.ssl import PatchAugmenter
    from drasclr_toolkit.ssl.device_augment import DeviceAugmenter
    from drasclr_toolkit.train import DrasCLRTrainer, PretrainConfig
    from drasclr_toolkit.train.sampler import LocationBatchSampler, LocationPatchDataset

    cfg = PretrainConfig.from_dict(dict(
        width=args.width, num_experts=args.experts, batch_size=args.batch,
        queue_size=args.queue, queue_dtype="bfloat16" if dtype == "bf16" else "float32",
        neighbours=2, amp=dtype == "bf16", device=str(device), channels_last=device.type == "cuda",
        compile=compile_, progress=False, augment_on="device"))
    total = args.warmup + args.steps
    trainer = DrasCLRTrainer(cfg, np.asarray(store.landmark_coords), total_steps=total,
                             device=device)
    trainer.queues.filled.fill_(cfg.queue_size)  # steady state: full queues
    host = PatchAugmenter(translate=12.0 * store.patch_size / 32.0)
    trainer.device_augmenter = DeviceAugmenter.like(host)
    dataset = LocationPatchDataset(store, 2, host, raw=True)
    sampler = LocationBatchSampler(len(store.subject_ids), len(store.landmarks), cfg.batch_size,
                                   seed=0)
    workers = args.workers if args.workers is not None else min(8, os.cpu_count() or 1)
    loader = DataLoader(dataset, sampler=sampler, batch_size=None, num_workers=workers,
                        pin_memory=device.type == "cuda",
                        prefetch_factor=4 if workers else None, persistent_workers=workers > 0)
    done, times, loss = 0, [], float("nan")
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    epoch = 0
    while done < total:
        sampler.set_epoch(epoch, 0)
        for batch in loader:
            if done == args.warmup:
                sync()
                start = time.perf_counter()
            out = trainer.step(batch)
            done += 1
            if done >= total:
                break
        epoch += 1
    loss = float(out["loss"])
    sync()
    seconds = time.perf_counter() - start
    return {"dtype": dtype, "compile": compile_, "steps": args.steps, "batch": args.batch,
            "seconds": seconds, "anchor_patches_per_s": args.steps * args.batch / seconds,
            "loss": loss, "workers": workers,
            "peak_gpu_mem_gib": (torch.cuda.max_memory_allocated(device) / 2**30
                                 if device.type == "cuda" else None)}


def profile_step(store, device: torch.device, args) -> list[dict]:
    """Top-10 kernels (self device time) of bf16 training steps, without compile."""
    from torch.profiler import ProfilerActivity, profile

    from drasclr_toolkit.ssl import PatchAugmenter
    from drasclr_toolkit.ssl.device_augment import DeviceAugmenter
    from drasclr_toolkit.train import DrasCLRTrainer, PretrainConfig
    from drasclr_toolkit.train.sampler import BatchSpec, LocationPatchDataset

    cfg = PretrainConfig.from_dict(dict(
        width=args.width, num_experts=args.experts, batch_size=args.batch,
        queue_size=args.queue, amp=device.type == "cuda", device=str(device),
        channels_last=device.type == "cuda", progress=False, augment_on="device"))
    trainer = DrasCLRTrainer(cfg, np.asarray(store.landmark_coords), total_steps=100, device=device)
    trainer.queues.filled.fill_(cfg.queue_size)
    host = PatchAugmenter(translate=12.0 * store.patch_size / 32.0)
    trainer.device_augmenter = DeviceAugmenter.like(host)
    dataset = LocationPatchDataset(store, 2, host, raw=True)
    subjects = tuple(range(min(args.batch, len(store.subject_ids))))
    batches = [dataset[BatchSpec(0, i, i % len(store.landmarks), subjects, i)] for i in range(8)]
    for batch in batches[:3]:
        trainer.step(batch)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for batch in batches[3:]:
            trainer.step(batch)
        if device.type == "cuda":
            torch.cuda.synchronize()
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    events = sorted(prof.key_averages(), key=lambda e: getattr(e, key, 0), reverse=True)
    total = sum(getattr(e, key, 0) for e in events) or 1
    return [{"kernel": e.key[:120], "self_time_ms": getattr(e, key, 0) / 1e3,
             "share": getattr(e, key, 0) / total, "calls": e.count} for e in events[:10]]


def extraction_throughput(store, device: torch.device, dtype: str, args) -> dict:
    from drasclr_toolkit.embed import extract_embeddings

    kwargs = dict(width=args.width, num_experts=args.experts)
    extract_embeddings(store, encoder_kwargs=kwargs, batch_size=args.embed_batch, device=device,
                       amp=dtype == "bf16", progress=False, subjects=[0, 1], recalibrate=False)
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    emb = extract_embeddings(store, encoder_kwargs=kwargs, batch_size=args.embed_batch,
                             device=device, amp=dtype == "bf16", progress=False, recalibrate=False)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    patches = emb.patch.shape[0] * emb.patch.shape[1]
    return {"dtype": dtype, "subjects": emb.patch.shape[0], "landmarks": emb.patch.shape[1],
            "seconds": seconds, "patches_per_s": patches / seconds,
            "subjects_per_s_at_581_landmarks": patches / seconds / PUBLISHED_LANDMARKS}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run anywhere")
    p.add_argument("--subjects", type=int, default=None)
    p.add_argument("--locations", type=int, default=None)
    p.add_argument("--batch", type=int, default=None)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--warmup", type=int, default=None)
    p.add_argument("--workers", type=int, default=None)
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile rows")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    device = torch.device(args.device)
    quick = args.quick
    args.subjects = args.subjects or (6 if quick else 256)
    args.locations = args.locations or (4 if quick else 64)
    args.batch = args.batch or (4 if quick else 256)
    args.steps = args.steps or (2 if quick else 60)
    args.warmup = args.warmup if args.warmup is not None else (1 if quick else 10)
    args.width, args.experts = (0.125, 2) if quick else (1.0, 8)
    args.queue = 16 if quick else 4096
    args.embed_batch = 4 if quick else 64
    patch = 20 if quick else 32
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    dtypes = ["fp32", "bf16"] if device.type == "cuda" else ["fp32"]
    compiles = [False] if (args.no_compile or quick) else [False, True]
    results: dict = {"benchmark": "gpu_pipeline", "device": str(device),
                     "device_name": device_name(device), "torch": torch.__version__,
                     "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                     "store": {"subjects": args.subjects, "locations": args.locations,
                               "patch": patch}, "train": [], "extract": []}
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        store = make_store(Path(tmp) / "store", args.subjects, args.locations, patch)
        results["store"]["build_seconds"] = time.perf_counter() - t0
        for dtype in dtypes:
            for compile_ in compiles:
                row = train_throughput(store, device, dtype, compile_, args)
                results["train"].append(row)
                print(f"train   {dtype:4s} compile={compile_!s:5s} "
                      f"{row['anchor_patches_per_s']:10.1f} anchor patches/s  loss {row['loss']:.3f}",
                      flush=True)
        results["profile_top10"] = profile_step(store, device, args)
        for row in results["profile_top10"]:
            print(f"  {row['share']:6.1%}  {row['kernel'][:90]}")
        for dtype in dtypes:
            row = extraction_throughput(store, device, dtype, args)
            results["extract"].append(row)
            print(f"extract {dtype:4s} {row['subjects_per_s_at_581_landmarks']:8.2f} subjects/s "
                  f"(581 landmarks each)", flush=True)
    name = "".join(c if c.isalnum() else "-" for c in results["device_name"])[:40]
    out = Path(args.out) if args.out else REPO / "benchmarks" / "results" / f"gpu_pipeline_{name}.json"
    atomic_write_text(out, json.dumps(results, indent=2), make_parents=True)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
