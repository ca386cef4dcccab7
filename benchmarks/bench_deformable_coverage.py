"""Experiment: does a coarse B-spline stage after the affine make a scan that cuts the
lung bases agree with the uncut scan? (issue "partial coverage": ≤ 3 mm median for the
remaining landmarks of lung2 with its lowest 30 % of lung height cut).

Not part of the pipeline: the stage below (``deformable_stage``) lives only here. For each
setting it reports, with one thread:

* lung2 (real CT, 1 mm) whole and with its lowest 20 / 30 / 40 % of lung height cut,
  registered to the official atlas (581 landmarks): median / p90 distance of the
  remaining landmarks from where the whole scan puts them, cut landmarks reported
  missing, landmarks above the cut wrongly reported missing, and the same per height band
  above the cut (30 %);
* lung2 whole: Dice, seconds (affine, deformable), min / max Jacobian determinant of the
  B-spline part over the atlas lung (> 0: no folding);
* lung1 (bases cut in the scan): Dice, z/x scale of the affine;
* synthetic phantoms (subjects 1-5 of a 6-subject cohort, 2 mm, atlas = subject 0's
  mask, as tests/test_coverage.py): landmark error vs the known transform, whole scans.

The stage: atlas soft mask = fixed, subject soft mask = moving (as the coarse affine fit:
``reg_spacing`` grid, ``mask_sigma_mm`` smoothing, metric on the ``band_mm`` surface band);
the affine is the moving initial transform, so the B-spline displaces atlas points before
the affine (T(x) = A(x + d(x))); mean squares, L-BFGS-B with every coefficient bounded to
±``bound`` mm (with a mesh of ≥ 2.5 × bound no folding is possible: Choi & Lee's
sufficient condition for cubic B-splines), a fixed-seed random subset of ``points``
band voxels. Atlas points whose affine image lies less than ``bound + reg_spacing`` mm from
the subject scan's box edge are left out of the metric, so a displacement cannot push a
point out of the scan to drop it from the metric (the metric ignores points outside).

Usage::

    python benchmarks/bench_deformable_coverage.py [--meshes 40,60,80] [--no-phantoms]

Writes ``benchmarks/results/deformable_coverage_<host>.json``. Not a test. About 10
minutes on one core.
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

REPO = Path(__file__).resolve().parent.parent


def deformable_stage(subject_mask, atlas_mask, affine, cfg, mesh_mm, bound=8.0, points=5000,
                     iterations=100):
    """(atlas→subject composite transform, B-spline part, info) — see the module docstring."""
    from drasclr_toolkit.preprocess import registration as R

    t0 = time.perf_counter()
    fixed = R._crop_to_mask(R._soft_mask(atlas_mask, cfg.reg_spacing, cfg.mask_sigma_mm), 30.0)
    moving = R._crop_xy(R._soft_mask(subject_mask, cfg.reg_spacing, cfg.mask_sigma_mm), 30.0)
    band = R._surface_band(fixed, cfg.band_mm)
    # Scan box shrunk by bound + one grid step, pulled back into atlas space by the affine.
    grid = R._soft_mask(subject_mask, cfg.reg_spacing, 0.0)
    k = [int(np.ceil((bound + cfg.reg_spacing) / s)) for s in grid.GetSpacing()]
    box = np.zeros(grid.GetSize()[::-1], np.uint8)
    box[k[2]:box.shape[0] - k[2], k[1]:box.shape[1] - k[1], k[0]:box.shape[2] - k[0]] = 1
    box_img = sitk.GetImageFromArray(box)
    box_img.CopyInformation(grid)
    inside = sitk.Resample(box_img, fixed, affine, sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    band = sitk.Cast(band * inside, sitk.sitkUInt8)
    n_band = float(sitk.GetArrayViewFromImage(band).sum())
    extent = np.array(fixed.GetSize()) * np.array(fixed.GetSpacing())
    mesh = [max(1, int(round(e / mesh_mm))) for e in extent]
    bspline = sitk.BSplineTransformInitializer(fixed, mesh, 3)
    reg = sitk.ImageRegistrationMethod()
    reg.SetMetricAsMeanSquares()
    reg.SetMetricSamplingStrategy(reg.RANDOM)
    reg.SetMetricSamplingPercentage(min(1.0, points / max(n_band, 1.0)), 1234)
    reg.SetMetricFixedMask(band)
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetOptimizerAsLBFGSB(gradientConvergenceTolerance=1e-7, numberOfIterations=iterations,
                             maximumNumberOfCorrections=5,
                             maximumNumberOfFunctionEvaluations=4 * iterations,
                             costFunctionConvergenceFactor=1e7, lowerBound=-bound, upperBound=bound)
    reg.SetShrinkFactorsPerLevel([1])
    reg.SetSmoothingSigmasPerLevel([0.0])
    reg.SetMovingInitialTransform(affine)
    reg.SetInitialTransform(bspline, inPlace=True)
    reg.Execute(fixed, moving)
    composite = sitk.CompositeTransform([sitk.AffineTransform(affine), bspline])
    coef = np.abs(np.array(bspline.GetParameters()))
    info = {"mesh": mesh, "mesh_mm": mesh_mm, "bound_mm": bound, "points": points,
            "metric": float(reg.GetMetricValue()), "stop": reg.GetOptimizerStopConditionDescription(),
            "max_coefficient_mm": float(coef.max()), "seconds": time.perf_counter() - t0}
    return composite, bspline, info


def jacobian_range(bspline, atlas_mask) -> tuple[float, float]:
    """Min / max Jacobian determinant of x ↦ x + d(x) over the atlas lung (2 mm grid)."""
    ref = sitk.BinShrink(sitk.Cast(atlas_mask > 0, sitk.sitkFloat32), [2, 2, 2])
    field = sitk.TransformToDisplacementField(bspline, sitk.sitkVectorFloat64, ref.GetSize(),
                                              ref.GetOrigin(), ref.GetSpacing(), ref.GetDirection())
    jac = sitk.GetArrayFromImage(sitk.DisplacementFieldJacobianDeterminant(field))
    lung = sitk.GetArrayFromImage(ref) > 0.5
    return float(jac[lung].min()), float(jac[lung].max())


def cut_lowest(image, mask, fraction):
    """``image`` without the slices below the lowest ``fraction`` of lung height."""
    zs = np.nonzero((sitk.GetArrayViewFromImage(mask) > 0).any(axis=(1, 2)))[0]
    return image[:, :, int(np.ceil(zs.min() + fraction * (zs.max() - zs.min()))):]


def landmarks(atlas, transform, image):
    from drasclr_toolkit.preprocess.patches import landmarks_missing, map_landmarks

    m = map_landmarks(atlas.mask, atlas.landmarks, atlas.patch_size, transform, image)
    return m["centres_mm"], landmarks_missing(m["centres_index"], image.GetSize())


def compare(full, cut, cut_image, bands=((0, 20), (20, 40), (40, 80), (80, 1000))) -> dict:
    """Remaining landmarks of the cut scan vs the whole scan (see tests/test_coverage.py)."""
    (p_full, _), (p_cut, missing) = full, cut
    z0 = cut_image.GetOrigin()[2]
    below = p_full[:, 2] < z0 - 0.5
    keep = ~below & ~missing
    d = np.linalg.norm(p_cut - p_full, axis=1)
    height = p_full[:, 2] - z0
    out = {"median_mm": float(np.median(d[keep])), "p90_mm": float(np.percentile(d[keep], 90)),
           "cut_missing": [int(missing[below].sum()), int(below.sum())],
           "above_cut_missing": [int(missing[~below].sum()), int((~below).sum())], "by_height": {}}
    for lo, hi in bands:
        sel = keep & (height >= lo) & (height < hi)
        if sel.any():
            out["by_height"][f"{lo}-{hi}mm"] = {
                "n": int(sel.sum()), "median_mm": float(np.median(d[sel])),
                "mean_shift_xyz_mm": np.round((p_cut - p_full)[sel].mean(0), 2).tolist()}
    return out


def run_real(atlas, cfg, meshes, kw) -> dict:
    from drasclr_toolkit.data import load_ct
    from drasclr_toolkit.datasets.sample_data import real_chest_ct
    from drasclr_toolkit.preprocess import register_affine, segment_lungs
    from drasclr_toolkit.preprocess.registration import mask_dice
    from drasclr_toolkit.preprocess.resample import resample_isotropic

    scans = {}
    for name in ("lung1", "lung2"):
        img = resample_isotropic(load_ct(real_chest_ct(name), subject_id=name), 1.0, "linear")
        scans[name] = (img, segment_lungs(img)[0])
    img2, mask2 = scans["lung2"]
    for f in (20, 30, 40):
        cut_img = cut_lowest(img2, mask2, f / 100)
        scans[f"lung2_cut{f}"] = (cut_img, segment_lungs(cut_img)[0])
    affine = {}
    for name, (img, mask) in scans.items():
        res = register_affine(mask, atlas.mask, cfg)
        affine[name] = (res.transform, res.qc["seconds"])
    out: dict = {}
    for mesh in [0.0, *meshes]:
        key = "affine" if mesh == 0 else f"bspline_{mesh:g}mm"
        row: dict = {"seconds": {}}
        pts = {}
        for name, (img, mask) in scans.items():
            t, secs = affine[name]
            row["seconds"][name] = {"affine": secs}
            if mesh:
                t, bspline, info = deformable_stage(mask, atlas.mask, t, cfg, mesh, **kw)
                row["seconds"][name]["deformable"] = info["seconds"]
                if name == "lung2":
                    row["lung2_jacobian_min_max"] = jacobian_range(bspline, atlas.mask)
                    row["lung2_stage"] = info
            dice = mask_dice(mask, atlas.mask, t)[0]
            if name in ("lung1", "lung2"):
                row[f"{name}_dice"] = dice
            if name == "lung1":
                A = np.array(affine[name][0].GetMatrix()).reshape(3, 3)
                sx, _, sz = np.linalg.norm(A, axis=0)
                row["lung1_z_over_x_scale"] = float(sz / sx)
            pts[name] = landmarks(atlas, t, img)
        for f in (20, 30, 40):
            row[f"cut{f}"] = compare(pts["lung2"], pts[f"lung2_cut{f}"], scans[f"lung2_cut{f}"][0])
        out[key] = row
        c = row["cut30"]
        print(f"{key}: 30 % cut {c['median_mm']:.2f} / {c['p90_mm']:.2f} mm, "
              f"20 % {row['cut20']['median_mm']:.2f}, 40 % {row['cut40']['median_mm']:.2f}; "
              f"lung2 Dice {row['lung2_dice']:.3f}", flush=True)
    return out


def run_phantoms(cfg, meshes, kw) -> dict:
    with tempfile.TemporaryDirectory(prefix="deform_phantoms_") as tmp:
        return _phantom_errors(Path(tmp), cfg, meshes, kw)


def _phantom_errors(tmp: Path, cfg, meshes, kw) -> dict:
    from drasclr_toolkit.data import load_ct
    from drasclr_toolkit.datasets.synthetic import make_synthetic_cohort, map_points
    from drasclr_toolkit.preprocess import Atlas, register_affine, segment_lungs
    from drasclr_toolkit.preprocess.resample import resample_isotropic

    cohort = make_synthetic_cohort(6, tmp / "cohort", seed=7, spacing=2.0, size_scale=0.6)
    gt = Path(cohort.path).parent / "ground_truth"
    ids = list(cohort.subject_ids)

    def load(sid):
        img = resample_isotropic(load_ct(cohort.image_path(sid), subject_id=sid), 2.0, "linear")
        return img, segment_lungs(img)[0]

    _, a_mask = load(ids[0])
    atlas = Atlas.from_mask(a_mask, patch_size=16, step=13)
    errs: dict = {"affine": [], **{f"bspline_{m:g}mm": [] for m in meshes}}
    for sid in ids[1:]:
        img, mask = load(sid)
        truth = map_points(atlas.centres_mm, gt / f"{ids[0]}_transform.json", gt / f"{sid}_transform.json")
        res = register_affine(mask, atlas.mask, cfg)
        for mesh in [0.0, *meshes]:
            t = res.transform
            if mesh:
                t = deformable_stage(mask, atlas.mask, t, cfg, mesh, **kw)[0]
            p = landmarks(atlas, t, img)[0]
            key = "affine" if mesh == 0 else f"bspline_{mesh:g}mm"
            errs[key].append(float(np.median(np.linalg.norm(p - truth, axis=1))))
    for k, v in errs.items():
        print(f"phantoms {k}: median error {min(v):.2f}-{max(v):.2f} mm", flush=True)
    return {"median_error_mm_subjects_1_5": errs}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--meshes", default="40,60,80", help="B-spline control-point spacings (mm)")
    ap.add_argument("--bound", type=float, default=8.0, help="coefficient bound (mm)")
    ap.add_argument("--points", type=int, default=5000, help="metric points per iteration")
    ap.add_argument("--iterations", type=int, default=100)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--reference", default=str(REPO.parent / "shared" / "reference"),
                    help="folder with atlas_lung_mask.nii.gz and atlas_patch_loc.npy")
    ap.add_argument("--no-phantoms", action="store_true")
    ap.add_argument("--out", default=None)
    args, _ = ap.parse_known_args(argv)  # run_all.py may pass e.g. --device: ignored here

    os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = str(args.threads)
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(args.threads)
    sys.path.insert(0, str(REPO))
    from drasclr_toolkit.preprocess import Atlas
    from drasclr_toolkit.preprocess.registration import RegistrationConfig

    ref = Path(args.reference)
    if not (ref / "atlas_lung_mask.nii.gz").exists():
        print(f"official atlas not found under {ref} (--reference)", file=sys.stderr)
        return 1
    atlas = Atlas.load(ref / "atlas_lung_mask.nii.gz", ref / "atlas_patch_loc.npy")
    cfg = RegistrationConfig(threads=args.threads)
    meshes = [float(m) for m in args.meshes.split(",") if m]
    kw = {"bound": args.bound, "points": args.points, "iterations": args.iterations}
    result = {"machine": {"host": socket.gethostname(), "cpu": platform.processor(),
                          "cores": os.cpu_count(), "threads": args.threads},
              "settings": {"meshes_mm": meshes, **kw}, "real": run_real(atlas, cfg, meshes, kw)}
    if not args.no_phantoms:
        result["phantoms"] = run_phantoms(cfg, meshes, kw)
    from drasclr_toolkit.io_utils import atomic_write_text

    out = Path(args.out) if args.out else REPO / "benchmarks" / "results" / f"deformable_coverage_{socket.gethostname()}.json"
    atomic_write_text(out, json.dumps(result, indent=2), make_parents=True)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
