"""Preprocessing benchmark: seconds per stage for one full-size chest CT on 2 CPU cores,
and landmark accuracy of our affine registration vs. the reference ANTs settings.

Full-size scan: the real CT ``lung2`` (512×512×61, 0.63×0.63×5 mm) resampled to 1 mm slices
(512×512×305 at 0.63×0.63×1 mm), the size of a typical COPDGene inspiratory scan.

1. Chain timings (``preprocess_subject`` stages + store write) against the official atlas
   (581 landmarks; ../shared/reference) or, without it, an atlas from the scan itself.
2. Accuracy: a "subject" is made by warping the scan with a known affine T (rotation 6°,
   anisotropic scale, shift); the atlas is the original scan at 1 mm. Ground truth maps an
   atlas landmark centre p to T⁻¹(p). Our registration (SimpleITK, lung masks) and the
   reference one (antspyx: ANTs affine, Mattes MI 32 bins, 500/250/100 iterations,
   shrink 4/2/1, smoothing 2/1/0, centre-of-mass init) are run on the same two lung masks;
   we report landmark errors (mm) and seconds.

Writes ``benchmarks/results/preprocess_<host>.json``. Not a test.

Usage::

    python benchmarks/bench_preprocess.py [--threads 2] [--no-ants] [--interpolator bspline]

``--no-ants`` skips the reference run (over 10 minutes); the test subject is
deterministic, so the ANTs figures of an earlier run stay comparable.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
WORK = HERE / "_work"


def full_size_scan() -> sitk.Image:
    """lung2 resampled to 1 mm slices (cached in benchmarks/_work)."""
    from drasclr_toolkit.datasets.sample_data import real_chest_ct

    WORK.mkdir(parents=True, exist_ok=True)
    out = WORK / "lung2_1mm_slices.nii.gz"
    if out.exists():
        return sitk.ReadImage(str(out))
    img = sitk.ReadImage(str(real_chest_ct("lung2")))
    sp = img.GetSpacing()
    size = [img.GetSize()[0], img.GetSize()[1], int(round(img.GetSize()[2] * sp[2] / 1.0))]
    full = sitk.Resample(img, size, sitk.Transform(), sitk.sitkBSpline, img.GetOrigin(),
                         (sp[0], sp[1], 1.0), img.GetDirection(), -1024.0, sitk.sitkInt16)
    sitk.WriteImage(full, str(out), useCompression=True)
    return full


class _Timer:
    """Wall and CPU (all threads of this process) seconds of a block; CPU time is what the
    stage costs even when other jobs share the cores."""

    def __init__(self, table: dict, name: str) -> None:
        self.table, self.name = table, name

    def __enter__(self):
        self.w, self.c = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.table[f"{self.name}_s"] = time.perf_counter() - self.w
        self.table[f"{self.name}_cpu_s"] = time.process_time() - self.c


def time_chain(scan: sitk.Image, atlas, cfg) -> dict:
    """The stages of preprocess_subject one by one (same calls), then the store."""
    from drasclr_toolkit.constants import HU_MAX, HU_MIN
    from drasclr_toolkit.preprocess import (PatchStore, crop_patches, map_landmarks,
                                            patch_fractions, register_affine,
                                            resample_isotropic, segment_lungs)

    t: dict = {}
    with _Timer(t, "resample"):
        image = resample_isotropic(scan, cfg.spacing, cfg.interpolator)
    with _Timer(t, "segment"):
        mask, seg = segment_lungs(image, cfg.segmentation)
    with _Timer(t, "register"):
        reg = register_affine(mask, atlas.mask, cfg.registration)
    with _Timer(t, "patches"):
        mapped = map_landmarks(atlas.mask, atlas.landmarks, atlas.patch_size, reg.transform, image)
        arr = sitk.GetArrayViewFromImage(image)
        patches = np.clip(crop_patches(arr, mapped["corners"], atlas.patch_size), HU_MIN, HU_MAX).astype(np.int16)
        frac = patch_fractions(sitk.GetArrayViewFromImage(mask), mapped["corners"], atlas.patch_size)
    with tempfile.TemporaryDirectory() as tmp:
        with _Timer(t, "store_create"):
            store = PatchStore.create(Path(tmp) / "s", ["bench"], atlas)
        with _Timer(t, "store_write"):
            store.write_subject("bench", patches, frac, mapped["corners"], {"qc": {}})
        with _Timer(t, "read_subject"):
            store.read_subject(0)
        with _Timer(t, "read_location_1"):
            store.read_location(atlas.n_landmarks // 2, [0])
    stages = ("resample", "segment", "register", "patches", "store_write")
    t["register_qc"] = {k: reg.qc.get(k) for k in ("seconds_coarse", "refine", "dice_init")}
    t["chain_s"] = sum(t[f"{k}_s"] for k in stages)
    t["chain_cpu_s"] = sum(t[f"{k}_cpu_s"] for k in stages)
    size = np.array(image.GetSize())
    cidx = mapped["centres_index"]
    in_scan = np.all((cidx >= -0.5) & (cidx <= size - 0.5), axis=1)
    t.update({
        "lung_volume_ml": seg["lung_volume_ml"], "dice": reg.qc["dice"],
        "frac_lung_patches": float((frac >= 0.5).mean()), "frac_in_scan": float(in_scan.mean()),
        "frac_any_lung_in_scan": float((frac[in_scan] > 0).mean()), "n_landmarks": int(len(frac)),
        "resampled_size": [int(v) for v in size],
    })
    return t


def known_affine(centre) -> sitk.AffineTransform:
    """T: subject point → original point (what sitk.Resample needs to make the subject)."""
    ang = np.deg2rad([6.0, -4.0, 3.0])
    cx, cy, cz = np.cos(ang)
    sx, sy, sz = np.sin(ang)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    A = rz @ ry @ rx @ np.diag([1.08, 0.94, 1.05])
    t = sitk.AffineTransform(3)
    t.SetCenter(tuple(map(float, centre)))
    t.SetMatrix(tuple(A.ravel()))
    t.SetTranslation((7.0, -5.0, 9.0))
    return t


def accuracy(scan: sitk.Image, cfg, use_ants: bool) -> dict:
    from drasclr_toolkit.preprocess import Atlas, register_affine, resample_isotropic, segment_lungs
    from drasclr_toolkit.preprocess.registration import RegistrationConfig

    atlas_img = resample_isotropic(scan, 1.0, "linear")
    atlas = Atlas.from_reference(atlas_img, spacing=1.0, interpolator="linear")
    centre = np.array(atlas_img.TransformContinuousIndexToPhysicalPoint(
        [s / 2.0 for s in atlas_img.GetSize()]))
    T = known_affine(centre)
    subject = sitk.Resample(atlas_img, atlas_img, T, sitk.sitkLinear, -1024.0, sitk.sitkInt16)
    sub_mask, _ = segment_lungs(subject, cfg.segmentation)
    truth_tf = T.GetInverse()
    p = atlas.centres_mm
    truth = np.array([truth_tf.TransformPoint(tuple(map(float, x))) for x in p])
    out = {"n_landmarks": atlas.n_landmarks}

    def errors(tf) -> dict:
        est = np.array([tf.TransformPoint(tuple(map(float, x))) for x in p])
        e = np.linalg.norm(est - truth, axis=1)
        return {"mean_mm": float(e.mean()), "median_mm": float(np.median(e)),
                "p95_mm": float(np.percentile(e, 95)), "max_mm": float(e.max())}

    ident = sitk.Transform(3, sitk.sitkIdentity)
    out["identity"] = errors(ident)
    res = register_affine(sub_mask, atlas.mask, cfg.registration)
    out["ours"] = {**errors(res.transform), "seconds": res.qc["seconds"], "dice": res.qc["dice"],
                   "seconds_coarse": res.qc.get("seconds_coarse"), "refine": res.qc.get("refine")}
    # The coarse levels alone (no final binary-mask level): the earlier default.
    coarse_cfg = cfg.registration.replace(refine_spacing=0.0)
    res_c = register_affine(sub_mask, atlas.mask, coarse_cfg)
    out["ours_coarse_only"] = {**errors(res_c.transform), "seconds": res_c.qc["seconds"],
                               "dice": res_c.qc["dice"]}
    if use_ants:
        try:
            res_a = register_affine(sub_mask, atlas.mask, RegistrationConfig(backend="ants"))
            out["ants_reference"] = {**errors(res_a.transform), "seconds": res_a.qc["seconds"],
                                     "dice": res_a.qc["dice"]}
        except Exception as exc:  # antspyx missing or failing: say so in the JSON
            out["ants_reference"] = {"error": f"{type(exc).__name__}: {exc}"}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2, help="CPU threads (SimpleITK and ANTs)")
    ap.add_argument("--no-ants", action="store_true", help="skip the antspyx reference run")
    ap.add_argument("--interpolator", default="bspline", choices=["bspline", "linear"],
                    help="timed first; linear is always timed too")
    ap.add_argument("--out", default=None, help="JSON path (default results/preprocess_<host>.json)")
    args, _ = ap.parse_known_args(argv)  # run_all.py may pass e.g. --device: ignored here

    os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = str(args.threads)
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(args.threads)
    sys.path.insert(0, str(REPO))
    from drasclr_toolkit.preprocess import Atlas, PreprocessConfig

    cfg = PreprocessConfig.from_dict({"spacing": 1.0, "interpolator": "linear"})
    load_start = os.getloadavg()
    t = time.perf_counter()
    scan = full_size_scan()
    make_s = time.perf_counter() - t
    ref = REPO.parent / "shared" / "reference"
    if (ref / "atlas_lung_mask.nii.gz").exists():
        atlas = Atlas.load(ref / "atlas_lung_mask.nii.gz", ref / "atlas_patch_loc.npy")
        atlas_name = "official (581 landmarks)"
    else:
        atlas = Atlas.from_reference(scan, spacing=1.0, interpolator="linear")
        atlas_name = "from the scan itself"
    print(f"full-size scan {scan.GetSize()} spacing {np.round(scan.GetSpacing(), 3)}; "
          f"atlas: {atlas_name}; threads {args.threads}", flush=True)
    chains = {}
    for interp in dict.fromkeys([args.interpolator, "linear"]):
        c = PreprocessConfig.from_dict({"spacing": 1.0, "interpolator": interp})
        chains[interp] = time_chain(scan, atlas, c)
        print(f"chain ({interp}):", json.dumps({k: (round(v, 2) if isinstance(v, float) else v)
                                               for k, v in chains[interp].items()}), flush=True)
    # Against the official atlas (another person) the final binary-mask level is skipped
    # (coarse Dice < refine_min_dice); time the chain once with it forced on as well,
    # the worst case for its cost (refine_iterations, then the Dice guard).
    forced = PreprocessConfig.from_dict({"spacing": 1.0, "interpolator": "linear",
                                         "registration": {"refine_min_dice": 0.0}})
    chains["linear_forced_refine"] = time_chain(scan, atlas, forced)
    print("chain (linear, refinement forced):", json.dumps(
        {k: (round(v, 2) if isinstance(v, float) else v)
         for k, v in chains["linear_forced_refine"].items()}), flush=True)
    chain = chains
    acc = accuracy(scan, cfg, use_ants=not args.no_ants)
    print("accuracy:", json.dumps(acc, indent=1), flush=True)
    result = {
        "host": socket.gethostname(), "platform": platform.platform(),
        "cpu_count": os.cpu_count(), "threads": args.threads,
        "load_average_at_start": load_start, "load_average_at_end": os.getloadavg(),
        "scan": {"source": "lung2 resampled to 1 mm slices", "size": list(scan.GetSize()),
                 "spacing": list(scan.GetSpacing()), "make_s": make_s},
        "atlas": atlas_name, "interpolator": args.interpolator,
        "chain": chain, "accuracy": acc,
        "note": "wall seconds depend on other jobs sharing the cores; *_cpu_s is the CPU "
                "time of this process (all its threads): wall on 2 idle cores ~ cpu / 2..cpu",
        "target": "whole chain <= 60 s per full-size scan on 2 cores",
    }
    from drasclr_toolkit.io_utils import atomic_write_text

    out = Path(args.out) if args.out else HERE / "results" / f"preprocess_{socket.gethostname()}.json"
    atomic_write_text(out, json.dumps(result, indent=1), make_parents=True)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
