"""Embedding extraction speed: seconds per subject (L = 581 patches of 32³).

Two ways to embed a cohort with the full-width DrasCLR encoder, in one run:

* ``shared``: :func:`drasclr_toolkit.embed.extract_embeddings` as shipped: a chunk of
  subjects at one landmark per forward pass (one mixed kernel, one ordinary conv per layer),
  end to end from an in-memory patch source (HU → [-1, 1] included);
* ``loop``: what the reference extraction does: one subject's patches per batch, each with
  its own location, through the per-sample CondConv loop of the original code
  (``DrasCLREncoder(reference_loop=True)``), same weights.

Every landmark costs the same (same shapes, one forward pass each), so on a CPU both paths
are timed on the first ``--time-landmarks`` landmarks and scaled to L = 581; the JSON records
``landmarks_timed`` and ``extrapolated``. On a GPU all 581 are timed.

Usage::

    python benchmarks/bench_extract.py                     # 2 CPU threads, full width, 16 subjects
    python benchmarks/bench_extract.py --device cuda       # subjects/s on a GPU (< 1 min)

Writes ``benchmarks/results/extract_<device>.json`` (atomically) and prints a summary.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch

from drasclr_toolkit.embed import extract_embeddings
from drasclr_toolkit.models import DrasCLREncoder
from drasclr_toolkit.ssl.augment import hu_to_unit
from drasclr_toolkit.patch_source import ArrayPatchSource

RESULTS = Path(__file__).resolve().parent / "results"


def reference_landmarks(n_loc: int) -> np.ndarray:
    """The official atlas landmarks when ../shared is present, else a 26-voxel grid."""
    ref = Path(__file__).resolve().parents[2] / "shared" / "reference" / "atlas_patch_loc.npy"
    if ref.exists() and n_loc <= 581:
        return np.load(ref)[:n_loc]
    side = int(np.ceil(n_loc ** (1 / 3)))
    grid = np.stack(np.meshgrid(*[np.arange(side)] * 3, indexing="ij"), -1).reshape(-1, 3)
    return grid[:n_loc] * 26


def make_source(n_subjects: int, n_loc: int, seed: int = 0) -> ArrayPatchSource:
    rng = np.random.default_rng(seed)
    patches = rng.integers(-1024, 240, (n_subjects, n_loc, 32, 32, 32), dtype=np.int16)
    return ArrayPatchSource(patches, reference_landmarks(n_loc))


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_shared(encoder: DrasCLREncoder, source: ArrayPatchSource, batch_size: int,
                device: torch.device, amp: bool) -> float:
    sync(device)
    start = time.perf_counter()
    extract_embeddings(source, encoder=encoder, batch_size=batch_size, device=device, amp=amp,
                       progress=False)
    sync(device)
    return time.perf_counter() - start


def time_loop(encoder: DrasCLREncoder, source: ArrayPatchSource, n_patches: int,
              batch: int, device: torch.device, amp: bool) -> float:
    """Seconds for the first ``n_patches`` patches of subject 0, per-sample locations."""
    patches = source.read_subject(0)[:n_patches]
    coords = torch.as_tensor(source.landmark_coords[:n_patches], device=device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if amp else nullcontext()
    sync(device)
    start = time.perf_counter()
    with torch.inference_mode(), autocast:
        for begin in range(0, n_patches, batch):
            x = hu_to_unit(torch.from_numpy(patches[begin:begin + batch]).to(device)).unsqueeze(1)
            encoder.encode(x, coords[begin:begin + batch]).float().cpu()
    sync(device)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (torch)")
    parser.add_argument("--subjects", type=int, default=None,
                        help="subjects for the shared path (default 16 on CPU = tiny.yaml "
                        "batch, 64 on GPU = gpu.yaml batch)")
    parser.add_argument("--landmarks", type=int, default=581, help="L per subject")
    parser.add_argument("--time-landmarks", type=int, default=None,
                        help="landmarks actually timed, scaled to L (default 32 on CPU, L on GPU)")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="subjects per forward pass (default: all subjects)")
    parser.add_argument("--loop-batch", type=int, default=32,
                        help="patches per batch in the loop (the reference used a whole subject)")
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--rounds", type=int, default=4,
                        help="alternate the two paths this many times (fair under load)")
    parser.add_argument("--amp", action="store_true", help="bf16 autocast (default on for CUDA)")
    parser.add_argument("--out", default=None, help="JSON path (default results/extract_<device>.json)")
    args = parser.parse_args()

    device = torch.device(args.device)
    gpu = device.type == "cuda"
    torch.set_num_threads(args.threads)
    amp = args.amp or gpu
    n_subjects = args.subjects or (64 if gpu else 16)
    batch_size = args.batch_size or n_subjects
    n_loc = args.landmarks
    timed = min(args.time_landmarks or (n_loc if gpu else 32), n_loc)
    if gpu:
        torch.backends.cudnn.benchmark = True

    torch.manual_seed(0)
    fast = DrasCLREncoder(width=args.width).eval().to(device)
    loop = DrasCLREncoder(width=args.width, reference_loop=True).eval().to(device)
    loop.load_state_dict(fast.state_dict())  # same weights: the same function, two speeds
    source = make_source(n_subjects, timed)

    # Warm-up (allocator, cuDNN autotuning, thread pools), then one timed run of each.
    warm = make_source(min(n_subjects, batch_size), 4, seed=1)
    time_shared(fast, warm, batch_size, device, amp)
    time_loop(loop, warm, 4, args.loop_batch, device, amp)

    # Alternate the two paths in rounds over slices of the timed landmarks, so that load
    # from other processes on a shared machine falls on both alike.
    shared_s = loop_s = 0.0
    for locs in np.array_split(np.arange(timed), max(1, min(args.rounds, timed))):
        part = ArrayPatchSource(source.patches[:, locs], source.landmarks[locs])
        shared_s += time_shared(fast, part, batch_size, device, amp)
        loop_s += time_loop(loop, part, len(locs), args.loop_batch, device, amp)
    shared_per_subject = shared_s / n_subjects * n_loc / timed
    loop_per_subject = loop_s / timed * n_loc

    # The two paths compute the same h (checked here on a few patches).
    check = make_source(2, 3, seed=2)
    a = extract_embeddings(check, encoder=fast, device=device, amp=False, progress=False).patch
    with torch.inference_mode():
        x = hu_to_unit(torch.from_numpy(check.read_subject(1)).to(device)).unsqueeze(1)
        b = loop.encode(x, torch.as_tensor(check.landmark_coords, device=device)).float().cpu().numpy()
    max_diff = float(np.abs(a[1] - b).max())

    result = {
        "device": torch.cuda.get_device_name(device) if gpu else f"cpu ({platform.processor() or platform.machine()})",
        "torch": torch.__version__, "threads": args.threads if not gpu else None,
        "amp_bf16": amp, "width": args.width, "landmarks": n_loc, "patch": 32,
        "landmarks_timed": timed, "extrapolated": timed < n_loc,
        "shared": {"subjects": n_subjects, "batch_size": batch_size, "seconds": round(shared_s, 3),
                   "seconds_per_subject": round(shared_per_subject, 3),
                   "subjects_per_second": round(1 / shared_per_subject, 3)},
        "rounds": args.rounds,
        "loop": {"subjects": 1, "batch": args.loop_batch, "seconds": round(loop_s, 3),
                 "seconds_per_subject": round(loop_per_subject, 3)},
        "speedup": round(loop_per_subject / shared_per_subject, 2),
        "max_abs_diff_shared_vs_loop": max_diff,
        "cpu_load_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    out = Path(args.out) if args.out else RESULTS / f"extract_{device.type}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as handle:
        json.dump(result, handle, indent=2)
    os.replace(tmp, out)
    print(json.dumps(result, indent=2))
    print(f"\nshared-location path: {shared_per_subject:.2f} s/subject "
          f"({1 / shared_per_subject:.2f} subjects/s); per-sample loop: {loop_per_subject:.2f} "
          f"s/subject{f' (timed on {timed} of {n_loc} landmarks)' if timed < n_loc else ''}; "
          f"speed-up {loop_per_subject / shared_per_subject:.1f}x -> {out}")


if __name__ == "__main__":
    main()
