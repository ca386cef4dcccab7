"""Affine registration of a subject's lungs to the atlas lungs.

We register *lung masks*, as the reference does, but as smooth images: each binary mask is
resampled to a coarse registration grid (``reg_spacing`` mm, area-averaged, so its values
are partial-volume fractions) and Gaussian-smoothed, and the mean squared difference of the
two is minimised with SimpleITK's ``ImageRegistrationMethod`` (affine, 3 resolution levels,
regular-step gradient descent with physical-shift scales). The last level fits
rotation · diag(scales) + translation, without shear (``coarse_model="rotation_scale"``;
``"affine"`` keeps 12 parameters). Start: centres of mass and, when both scans hold the
whole lungs, an isotropic scale from the volume ratio. A final level (``refine_spacing`` mm,
0 turns it off) minimises the same metric on the *binary* masks over a narrow band around
the atlas lung surface, removing the smoothing's sub-millimetre bias; it runs only when the
coarse Dice is at least ``refine_min_dice`` and is kept only if the Dice does not drop.

The atlas is the fixed image and the subject the moving image, so the transform maps *atlas
physical points to subject physical points*, as landmark mapping needs. Atlas points mapped
outside the subject's scanned box are left out of the metric. A scan that cuts the lungs
(lung on its first or last slice) is started from its uncut end (``_partial_init``), and a
free z scale that strays more than ``partial_z_tolerance`` from the in-plane prior
(``partial_z_scale``) is held at the prior.

Why these choices, what was tried and not kept (a B-spline stage), and the measurements
(landmark error with the lung bases cut, Dice, time): ``benchmarks/registration.md``.

QC: Dice of the subject mask warped into atlas space with the atlas mask, over the part of
the atlas that maps inside the subject's scan (``dice``), before (``dice_init``) and after.

``backend="ants"`` runs the reference settings through antspyx when it is installed
(ANTs affine, Mattes MI 32 bins, 500/250/100 iterations, shrink 4/2/1, smoothing 2/1/0).

Example:
    >>> result = register_affine(subject_mask, atlas.mask)      # doctest: +SKIP
    >>> result.qc["dice"]                                       # doctest: +SKIP
    0.93
"""

from __future__ import annotations

import importlib.util
import os
import tempfile
import time
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, Mapping

import numpy as np
import SimpleITK as sitk
from pydantic import ConfigDict, Field

from drasclr_toolkit.errors import InputError
from drasclr_toolkit.config import Config

__all__ = [
    "RegistrationConfig",
    "RegistrationResult",
    "ants_available",
    "cut_ends",
    "mask_dice",
    "register_affine",
    "transform_from_dict",
    "transform_to_dict",
]


class RegistrationConfig(Config):
    """Settings of the affine lung-mask registration.

    Example:
        >>> RegistrationConfig.from_dict({"reg_spacing": 4.0}).reg_spacing
        4.0
    """

    model_config = ConfigDict(frozen=True)
    section = "preprocess.registration"
    yaml_section = ("preprocess", "registration")

    backend: Literal["sitk", "ants"] = "sitk"  # "sitk" or "ants" (antspyx, reference settings)
    reg_spacing: float = Field(4.0, gt=0)  # registration grid (mm); finest level
    shrink_factors: tuple[Annotated[int, Field(ge=1)], ...] = (4, 2, 1)
    smoothing_sigmas: tuple[Annotated[float, Field(ge=0)], ...] = (2.0, 1.0, 0.0)  # in voxels of each level
    mask_sigma_mm: float = Field(3.0, ge=0)  # smoothing of the masks into soft images
    iterations: int = Field(200, ge=1)  # per level
    learning_rate: float = Field(2.0, gt=0)  # regular step gradient descent: max step (mm, physical shift)
    min_step: float = Field(1e-3, gt=0)
    band_mm: float = Field(15.0, gt=0)  # metric on voxels within this distance of the atlas lung surface
    sampling_percentage: float = Field(1.0, gt=0, le=1)  # of fixed voxels per iteration (fixed seed)
    init_scale: bool = True  # isotropic scale from the lung volume ratio (whole-lung scans)
    threads: int = Field(0, ge=0)  # SimpleITK threads for this registration; 0 = SimpleITK default
    # Final level on the *binary* masks, unsmoothed (see _refine): grid in mm (never finer
    # than the masks' own grid; 0 = no refinement), band around the atlas lung surface,
    # expected number of random metric points per iteration, iterations and max step (mm).
    refine_spacing: float = Field(1.0, ge=0)
    refine_band_mm: float = Field(2.0, gt=0)
    refine_points: int = Field(100_000, ge=1)
    refine_iterations: int = Field(40, ge=0)  # converges in ~20 on near-affine pairs; a cap elsewhere
    refine_learning_rate: float = Field(0.5, gt=0)
    # Only when the coarse fit is already close (Dice ≥ this): sub-mm polish means nothing
    # where the two lungs differ by more than an affine (e.g. Dice 0.87 between people).
    refine_min_dice: float = Field(0.95, ge=0, le=1)
    # Partial coverage (lungs cut by the scan's first/last slice): when the free fit's z
    # scale differs from a prior from the in-plane scales ("x", "xy"; "free": never) by
    # more than ``partial_z_tolerance`` (log ratio), the z scale is held at the prior over
    # ``partial_passes`` further fits (see _partial_z_scale).
    partial_z_scale: Literal["x", "xy", "free"] = "x"
    partial_z_tolerance: float = Field(0.10, ge=0)
    partial_passes: int = Field(2, ge=0)
    # Transform model of the coarse fit's last stage: "rotation_scale" (rotation, one
    # scale per atlas axis, translation: no shear; see _rotation_scale_fit) or "affine"
    # (12 parameters, as before). The affine levels run first in both cases.
    coarse_model: Literal["rotation_scale", "affine"] = "rotation_scale"


@dataclass
class RegistrationResult:
    """An atlas→subject affine with QC figures (``dice``, ``dice_init``, ``seconds``...)."""

    transform: sitk.AffineTransform
    qc: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"transform": transform_to_dict(self.transform), "qc": self.qc}


def ants_available() -> bool:
    return importlib.util.find_spec("ants") is not None


def transform_to_dict(t: sitk.Transform) -> dict[str, Any]:
    """JSON form of an affine: 3×3 matrix, translation, centre (atlas→subject, LPS mm)."""
    a = sitk.AffineTransform(t) if not isinstance(t, sitk.AffineTransform) else t
    return {
        "type": "affine",
        "direction": "atlas_to_subject",
        "matrix": np.array(a.GetMatrix()).reshape(3, 3).tolist(),
        "translation": list(a.GetTranslation()),
        "center": list(a.GetCenter()),
    }


def transform_from_dict(d: Mapping[str, Any]) -> sitk.AffineTransform:
    t = sitk.AffineTransform(3)
    t.SetMatrix(tuple(np.asarray(d["matrix"], float).ravel()))
    t.SetTranslation(tuple(map(float, d["translation"])))
    t.SetCenter(tuple(map(float, d["center"])))
    return t


def _soft_mask(mask: sitk.Image, spacing: float, sigma_mm: float) -> sitk.Image:
    """Binary lung mask → partial-volume fraction image on a ``spacing`` grid, smoothed."""
    binary = sitk.Cast(mask > 0, sitk.sitkFloat32)
    sp = np.array(mask.GetSpacing())
    ratio = spacing / sp
    if np.allclose(ratio, np.round(ratio), atol=1e-3) and (np.round(ratio) >= 1).all():
        soft = sitk.BinShrink(binary, [int(r) for r in np.round(ratio)])
    else:
        size = np.maximum(1, np.round(np.array(mask.GetSize()) * sp / spacing)).astype(int)
        soft = sitk.Resample(
            sitk.SmoothingRecursiveGaussian(binary, float(spacing / 2)), [int(s) for s in size],
            sitk.Transform(), sitk.sitkLinear, mask.GetOrigin(), (spacing,) * 3,
            mask.GetDirection(), 0.0, sitk.sitkFloat32,
        )
    if sigma_mm > 0:
        soft = sitk.SmoothingRecursiveGaussian(soft, float(sigma_mm))
    return soft


def _crop_to_mask(img: sitk.Image, margin_mm: float) -> sitk.Image:
    """Crop to the bounding box of non-zero voxels plus a margin (speed)."""
    stats = sitk.LabelShapeStatisticsImageFilter()
    stats.Execute(sitk.Cast(img > 1e-3, sitk.sitkUInt8))
    if not stats.HasLabel(1):
        return img
    x0, y0, z0, sx, sy, sz = stats.GetBoundingBox(1)
    m = int(np.ceil(margin_mm / img.GetSpacing()[0]))
    lo = np.maximum(np.array([x0, y0, z0]) - m, 0)
    hi = np.minimum(np.array([x0 + sx, y0 + sy, z0 + sz]) + m, np.array(img.GetSize()))
    return sitk.RegionOfInterest(img, [int(v) for v in hi - lo], [int(v) for v in lo])


def mask_dice(
    subject_mask: sitk.Image,
    atlas_mask: sitk.Image,
    transform: sitk.Transform,
    spacing: float | None = 2.0,
) -> tuple[float, float]:
    """Dice of the subject mask warped to atlas space with the atlas mask.

    Computed on the atlas grid coarsened to ``spacing`` mm (None: the atlas grid itself).
    Returns (dice over the part of atlas space that maps inside the subject scan,
    fraction of atlas lung that maps inside the subject scan).

    Example:
        >>> m = sitk.Image(20, 20, 20, sitk.sitkUInt8); m[5:15, 5:15, 5:15] = 1
        >>> mask_dice(m, m, sitk.Transform(), spacing=None)
        (1.0, 1.0)
    """
    ref = sitk.Cast(atlas_mask > 0, sitk.sitkUInt8)
    if spacing is not None:
        ratio = np.maximum(1, np.round(spacing / np.array(ref.GetSpacing()))).astype(int)
        if (ratio > 1).any():
            ref = sitk.Cast(
                sitk.BinShrink(sitk.Cast(ref, sitk.sitkFloat32), [int(r) for r in ratio]) >= 0.5,
                sitk.sitkUInt8,
            )
    warped = sitk.Resample(
        sitk.Cast(subject_mask > 0, sitk.sitkUInt8), ref, transform, sitk.sitkNearestNeighbor, 0
    )
    fov_img = sitk.Image(subject_mask.GetSize(), sitk.sitkUInt8) + 1
    fov_img.CopyInformation(subject_mask)
    # GetArrayFromImage (a copy): a view of a temporary image would dangle.
    fov = sitk.GetArrayFromImage(
        sitk.Resample(fov_img, ref, transform, sitk.sitkNearestNeighbor, 0)
    ).astype(bool)
    a = sitk.GetArrayFromImage(ref).astype(bool)
    w = sitk.GetArrayFromImage(warped).astype(bool)
    a_in = a & fov
    denom = a_in.sum() + (w & fov).sum()
    dice = float(2.0 * (a_in & w).sum() / denom) if denom else 0.0
    covered = float(a_in.sum() / max(a.sum(), 1))
    return dice, covered


def register_affine(
    subject_mask: sitk.Image,
    atlas_mask: sitk.Image,
    config: RegistrationConfig | Mapping[str, Any] | None = None,
    subject_image: sitk.Image | None = None,
    atlas_image: sitk.Image | None = None,
) -> RegistrationResult:
    """Affine atlas→subject transform from the two lung masks (see module docstring).

    Example:
        >>> res = register_affine(subject_mask, atlas.mask)     # doctest: +SKIP
        >>> res.transform.TransformPoint((0.0, 0.0, 0.0))       # doctest: +SKIP
    """
    cfg = config if isinstance(config, RegistrationConfig) else RegistrationConfig.from_dict(config)
    if cfg.backend == "ants":
        return _register_ants(subject_mask, atlas_mask, cfg)
    if cfg.backend != "sitk":
        raise InputError(f"unknown registration backend {cfg.backend!r}; use 'sitk' or 'ants'")
    t0 = time.perf_counter()
    fixed_soft = _soft_mask(atlas_mask, cfg.reg_spacing, cfg.mask_sigma_mm)
    moving_soft = _soft_mask(subject_mask, cfg.reg_spacing, cfg.mask_sigma_mm)
    fixed = _crop_to_mask(fixed_soft, 30.0)
    # The moving image is not cropped in z beyond the scan: points outside it are ignored,
    # which is what lets a partial-coverage scan register to a whole-lung atlas.
    moving = _crop_xy(moving_soft, 30.0)
    # Centres of mass of the (coarse, partial-volume) masks: same as the binary masks'
    # up to rounding, at a fraction of the cost.
    init = sitk.CenteredTransformInitializer(
        fixed_soft, moving_soft, sitk.AffineTransform(3),
        sitk.CenteredTransformInitializerFilter.MOMENTS,
    )
    init = sitk.AffineTransform(init)
    sub_arr = sitk.GetArrayViewFromImage(subject_mask)
    partial = any(cut_ends(subject_mask))
    init_info: dict[str, Any] = {"kind": "centre_of_mass"}
    if cfg.init_scale and not partial:
        v_f = float(sitk.GetArrayViewFromImage(atlas_mask).astype(bool).sum()) * np.prod(atlas_mask.GetSpacing())
        v_m = float(sub_arr.astype(bool).sum()) * np.prod(subject_mask.GetSpacing())
        if v_f > 0 and v_m > 0:
            init.SetMatrix(tuple((np.eye(3) * (v_m / v_f) ** (1 / 3)).ravel()))
            init_info = {"kind": "volume_ratio", "scale": (v_m / v_f) ** (1 / 3)}
    elif partial and cfg.init_scale:
        # The centre of mass and volume of a cut lung are not those of the whole lung:
        # anchor on the uncut end (see _partial_init).
        init, init_info = _partial_init(init, atlas_mask, subject_mask)

    band = _surface_band(fixed, cfg.band_mm) if cfg.band_mm > 0 else None
    passes = 1
    transform, metric, stop, n_iter = _coarse_fit(fixed, moving, init, band, cfg)
    z_rule: dict[str, Any] = {}
    if partial and cfg.partial_z_scale != "free":
        # The z scale of a cut lung may not be observable (see _partial_z_scale): when the
        # free fit's z scale strays from the prior by more than the tolerance, hold the z
        # column's scale at the prior and fit the rest, a few times since the prior
        # depends on the in-plane scales found.
        s_free = float(_scales(transform)[2])
        prior = _partial_z_scale(transform, cfg.partial_z_scale)
        z_rule = {"z_scale_free": s_free, "z_scale_prior": prior,
                  "held": bool(abs(np.log(s_free / prior)) > cfg.partial_z_tolerance)}
        if z_rule["held"]:
            transform = _with_z_scale(init, prior)
            for k in range(max(1, cfg.partial_passes)):
                if k:
                    transform = _with_z_scale(transform, _partial_z_scale(transform, cfg.partial_z_scale))
                transform, metric, stop, it = _coarse_fit(fixed, moving, transform, band, cfg, freeze_z=True)
                n_iter += it
                passes += 1
    shape_qc: dict[str, Any] = {"model": cfg.coarse_model}
    if cfg.coarse_model == "rotation_scale":
        fitted = _rotation_scale_fit(fixed, moving, transform, band, cfg)
        if fitted is None:
            shape_qc["skipped"] = "atlas grid not axis-aligned"
        else:
            transform, metric_rs, stop, it = fitted
            shape_qc.update(metric_affine=metric, metric=metric_rs, iterations=it)
            metric, n_iter, passes = metric_rs, n_iter + it, passes + 1
    t_coarse = time.perf_counter() - t0
    refine_qc: dict[str, Any] = {}
    dice, covered = mask_dice(subject_mask, atlas_mask, transform)
    if cfg.refine_spacing > 0 and dice < cfg.refine_min_dice:
        refine_qc = {"skipped": f"coarse Dice {dice:.3f} < refine_min_dice {cfg.refine_min_dice}"}
    elif cfg.refine_spacing > 0:
        refined, refine_qc = _refine(subject_mask, atlas_mask, transform, cfg)
        # Guard: between different people the masks differ beyond an affine, and the
        # narrow band can trade overall overlap for local fit; keep the refined transform
        # only if the Dice (the QC figure) does not drop by more than its noise.
        dice_ref, covered_ref = mask_dice(subject_mask, atlas_mask, refined)
        refine_qc.update(dice_coarse=dice, dice_refined=dice_ref, accepted=dice_ref >= dice - 1e-3)
        if refine_qc["accepted"]:
            transform, dice, covered = refined, dice_ref, covered_ref
    t_reg = time.perf_counter() - t0
    dice_init, _ = mask_dice(subject_mask, atlas_mask, init)
    qc = {
        "backend": "sitk",
        "metric": metric,
        "iterations": n_iter,
        "passes": passes,
        "stop": stop,
        "seconds_coarse": t_coarse,
        "refine": refine_qc,
        "dice_init": dice_init,
        "dice": dice,
        "atlas_lung_covered": covered,
        "partial_coverage": partial,
        "init": init_info,
        "z_scale": z_rule,
        "coarse_model": shape_qc,
        "seconds": t_reg,
        "config": cfg.to_dict(),
    }
    return RegistrationResult(transform, qc)


def _coarse_fit(
    fixed: sitk.Image,
    moving: sitk.Image,
    init: sitk.AffineTransform,
    fixed_mask: sitk.Image | None,
    cfg: RegistrationConfig,
    freeze_z: bool = False,
) -> tuple[sitk.AffineTransform, float, str, int]:
    """Multi-resolution mean-squares affine fit of the soft masks; (transform, metric,
    stop condition, iterations). ``freeze_z`` holds the matrix's z-z entry (the z scale
    up to a small rotation) at its initial value. With ``coarse_model="rotation_scale"``
    the finest level is left to _rotation_scale_fit."""
    shrink, sigmas = list(cfg.shrink_factors), list(cfg.smoothing_sigmas)
    if cfg.coarse_model == "rotation_scale" and len(shrink) > 1:
        # The finest level is the rotation-scale stage's (_rotation_scale_fit): an affine
        # fit there too would cost the same again and be overridden (same lung2 landmarks
        # within 0.2 mm with or without it).
        shrink, sigmas = shrink[:-1], sigmas[:-1]
    reg = _mask_metric_method(cfg, fixed_mask, shrink, sigmas)
    if freeze_z:
        weights = [1.0] * 12  # affine parameters: 9 matrix entries (row-major), 3 shifts
        weights[8] = 0.0
        reg.SetOptimizerWeights(weights)
    out, metric, stop, iterations = _execute(reg, fixed, moving, init)
    return _as_affine(out), metric, stop, iterations


def _mask_metric_method(cfg: RegistrationConfig, fixed_mask: sitk.Image | None,
                        shrink: list[int], sigmas: list[float]) -> sitk.ImageRegistrationMethod:
    """The settings the coarse stages share: mean squares of the soft masks, linear
    interpolation, fixed-seed sampling, regular-step gradient descent with physical-shift
    scales, and the given pyramid (shrink factors, smoothing sigmas in voxels)."""
    reg = sitk.ImageRegistrationMethod()
    if cfg.threads > 0:
        reg.SetNumberOfThreads(int(cfg.threads))
    reg.SetMetricAsMeanSquares()
    if cfg.sampling_percentage < 1.0:
        # Fixed seed: the same scan always gives the same transform (resumable runs).
        reg.SetMetricSamplingStrategy(reg.RANDOM)
        reg.SetMetricSamplingPercentage(float(cfg.sampling_percentage), 1234)
    else:
        reg.SetMetricSamplingStrategy(reg.NONE)
    reg.SetInterpolator(sitk.sitkLinear)
    if fixed_mask is not None:
        # Only the band around the atlas lung surface carries signal for mask images;
        # leaving the flat inside and outside out of the metric makes it ~5x cheaper.
        reg.SetMetricFixedMask(fixed_mask)
    reg.SetOptimizerAsRegularStepGradientDescent(
        learningRate=cfg.learning_rate, minStep=cfg.min_step,
        numberOfIterations=int(cfg.iterations), relaxationFactor=0.6,
        gradientMagnitudeTolerance=1e-8,
    )
    reg.SetOptimizerScalesFromPhysicalShift()
    reg.SetShrinkFactorsPerLevel(list(shrink))
    reg.SetSmoothingSigmasPerLevel(list(sigmas))
    reg.SmoothingSigmasAreSpecifiedInPhysicalUnitsOff()
    return reg


def _execute(reg: sitk.ImageRegistrationMethod, fixed: sitk.Image, moving: sitk.Image,
             init: sitk.Transform) -> tuple[sitk.Transform, float, str, int]:
    """Run ``reg`` from ``init`` (not modified); (transform, final metric, stop condition,
    iterations over all levels)."""
    reg.SetInitialTransform(init, inPlace=False)
    iters = [0]
    reg.AddCommand(sitk.sitkIterationEvent, lambda: iters.__setitem__(0, iters[0] + 1))
    out = reg.Execute(fixed, moving)
    return out, float(reg.GetMetricValue()), reg.GetOptimizerStopConditionDescription(), iters[0]


def _rotation_scale_fit(
    fixed: sitk.Image,
    moving: sitk.Image,
    start: sitk.AffineTransform,
    fixed_mask: sitk.Image | None,
    cfg: RegistrationConfig,
) -> tuple[sitk.AffineTransform, float, str, int] | None:
    """Refit ``start`` as rotation · diag(scales) + translation, without shear.

    Why: between two people the lungs differ by pose and size (a rotation and one scale
    per axis: also what the synthetic phantoms are made of) plus shape; the shear terms of
    a 12-parameter fit mostly absorb shape, above all of the lung bases (diaphragm domes,
    costophrenic recesses), which a scan that cuts the bases cannot see. On lung2 the free
    affine leans the atlas z axis by a shear of ~2-4 % (P[0,2], P[1,2] of its polar form)
    that the upper lungs alone do not show; without shear the cut and uncut fits differ
    by ~40 % less (7.7 → 4.5 mm median; registration.py docstring).

    SimpleITK has no transform with exactly this model (ScaleVersor3DTransform computes
    R + S - I, not R · S), so the per-axis scales are taken from ``start`` (column norms,
    the z scale already held for a cut scan) and put into the fixed image's geometry: its
    spacing and origin are scaled by S / λ about the transform centre, and a similarity
    (rotation, isotropic scale λ, translation) is fitted from there. The ratios of the
    axis scales are those of ``start``; rotation, overall scale and shift are refitted at
    the finest level. Returns None when the atlas grid is not axis-aligned (a scaled
    oblique grid has no orthonormal direction); the caller keeps ``start``.
    """
    A = np.array(start.GetMatrix(), float).reshape(3, 3)
    scales = np.linalg.norm(A, axis=0)
    if np.linalg.det(A) <= 0 or (scales <= 0).any():
        return None
    lam = float(np.prod(scales) ** (1.0 / 3.0))
    S = scales / lam
    centre = np.array(start.GetCenter(), float)
    rescaled = [_scaled_geometry(img, centre, S) for img in (fixed, fixed_mask) if img is not None]
    if any(r is None for r in rescaled):
        return None
    fixed_s = rescaled[0]
    mask_s = rescaled[1] if fixed_mask is not None else None
    U, _, Vt = np.linalg.svd(A / scales)
    rot = U @ Vt  # nearest rotation to the normalised columns
    init = sitk.Similarity3DTransform()
    init.SetCenter(tuple(map(float, centre)))
    init.SetMatrix(tuple(rot.ravel()))
    init.SetScale(lam)
    init.SetTranslation(start.GetTranslation())
    # The affine levels have done the coarse work: the finest level only (all levels
    # again give the same transform on lung2 and cost more).
    reg = _mask_metric_method(cfg, mask_s, [1], [0.0])
    out, metric, stop, iterations = _execute(reg, fixed_s, moving, init)
    if isinstance(out, sitk.CompositeTransform):
        out = out.GetBackTransform()
    sim = sitk.Similarity3DTransform(out)
    result = sitk.AffineTransform(3)
    result.SetCenter(tuple(map(float, centre)))
    result.SetMatrix(tuple((np.array(sim.GetMatrix(), float).reshape(3, 3) @ np.diag(S)).ravel()))
    result.SetTranslation(sim.GetTranslation())
    return result, metric, stop, iterations


def _scaled_geometry(img: sitk.Image, centre: np.ndarray, S: np.ndarray) -> sitk.Image | None:
    """``img`` (same voxels) placed in atlas space scaled by diag(S) about ``centre``:
    the voxel at p moves to centre + S (p - centre). None if the result's direction would
    not be orthonormal (an oblique grid)."""
    D = np.array(img.GetDirection(), float).reshape(3, 3)
    M = np.diag(S) @ D
    spacing_factor = np.linalg.norm(M, axis=0)
    D2 = M / spacing_factor
    if not np.allclose(D2.T @ D2, np.eye(3), atol=1e-6):
        return None
    out = sitk.Image(img)
    out.SetOrigin(tuple(map(float, centre + S * (np.array(img.GetOrigin(), float) - centre))))
    out.SetSpacing(tuple(map(float, np.array(img.GetSpacing(), float) * spacing_factor)))
    out.SetDirection(tuple(map(float, D2.ravel())))
    return out


def _scales(t: sitk.AffineTransform) -> np.ndarray:
    """Scale along each atlas axis: the norms of the matrix columns."""
    return np.linalg.norm(np.array(t.GetMatrix(), float).reshape(3, 3), axis=0)


def _partial_z_scale(t: sitk.AffineTransform, rule: str) -> float:
    """Prior for the z scale of a scan that cuts the lungs, from the in-plane scales.

    With one lung end missing, lung shape alone does not fix the z scale: fitting it
    freely on real scans (lung2 with its lowest 30 % of lung cut away) shrinks it from
    0.90 to 0.67 and moves the remaining landmarks by 18 mm median. ``"x"`` takes the
    left-right scale (set by the rib cage, the best-determined in-plane scale; on lung2's
    full scan z = 0.895, x = 0.907, y = 0.832), ``"xy"`` the geometric mean of x and y.
    """
    sx, sy, _ = _scales(t)
    if rule == "x":
        return float(sx)
    if rule == "xy":
        return float(np.sqrt(sx * sy))
    raise InputError(f"registration.partial_z_scale must be 'x', 'xy' or 'free', got {rule!r}")


def _with_z_scale(t: sitk.AffineTransform, s_z: float) -> sitk.AffineTransform:
    """``t`` with its z column rescaled to norm ``s_z`` (same centre; the point at the
    centre keeps its image)."""
    A = np.array(t.GetMatrix(), float).reshape(3, 3)
    A[:, 2] *= s_z / max(np.linalg.norm(A[:, 2]), 1e-9)
    out = sitk.AffineTransform(t)
    out.SetMatrix(tuple(A.ravel()))
    return out


def _refine(
    subject_mask: sitk.Image,
    atlas_mask: sitk.Image,
    start: sitk.AffineTransform,
    cfg: RegistrationConfig,
) -> tuple[sitk.AffineTransform, dict[str, Any]]:
    """Final level: mean squares of the binary masks at ``refine_spacing``, no smoothing.

    Why: Gaussian smoothing in mm does not commute with the subject's (anisotropic) scale,
    so the optimum of the smoothed-mask metric sits a fraction of a mm off the true
    transform; on the unsmoothed masks the true transform is the better fit. Only a narrow
    band around the atlas lung surface carries signal here (binary images are flat
    elsewhere), and a fixed-seed random subset of it (``refine_points`` expected points,
    continuous positions, so the voxel grid does not alias) keeps each iteration cheap.
    The start is the coarse result, already well inside the band's capture range;
    register_affine keeps the result only if the mask Dice does not drop.
    """
    t0 = time.perf_counter()
    sp = float(max(cfg.refine_spacing, min(atlas_mask.GetSpacing()), min(subject_mask.GetSpacing())))
    band = float(max(cfg.refine_band_mm, 2.0 * sp))
    fixed = _crop_to_mask(_soft_mask(atlas_mask, sp, 0.0), band + 2 * sp)
    moving = _crop_xy(_soft_mask(subject_mask, sp, 0.0), band + 2 * sp)
    band_img = _surface_band(fixed, band)
    n_band = float(sitk.GetArrayViewFromImage(band_img).sum())
    n_domain = float(np.prod(fixed.GetSize()))
    reg = sitk.ImageRegistrationMethod()
    if cfg.threads > 0:
        reg.SetNumberOfThreads(int(cfg.threads))
    reg.SetMetricAsMeanSquares()
    # The sampler draws percentage × domain voxels and keeps those in the band, so
    # percentage = wanted / band voxels gives ``refine_points`` points on average.
    pct = min(1.0, cfg.refine_points / max(n_band, 1.0))
    if pct < 1.0:
        reg.SetMetricSamplingStrategy(reg.RANDOM)
        reg.SetMetricSamplingPercentage(pct, 1234)  # fixed seed: same scan, same transform
    else:
        reg.SetMetricSamplingStrategy(reg.NONE)
    reg.SetMetricFixedMask(band_img)
    reg.SetInterpolator(sitk.sitkLinear)
    # Sparse points: gradients by finite differences at the points, not a gradient image
    # of the whole moving volume (seconds at 1 mm for nothing).
    reg.SetMetricUseMovingImageGradientFilter(False)
    reg.SetMetricUseFixedImageGradientFilter(False)
    reg.SetOptimizerAsRegularStepGradientDescent(
        learningRate=cfg.refine_learning_rate, minStep=cfg.min_step,
        numberOfIterations=int(cfg.refine_iterations), relaxationFactor=0.6,
        gradientMagnitudeTolerance=1e-8,
    )
    reg.SetOptimizerScalesFromPhysicalShift()
    reg.SetShrinkFactorsPerLevel([1])
    reg.SetSmoothingSigmasPerLevel([0.0])
    raw, metric, stop, iterations = _execute(reg, fixed, moving, sitk.AffineTransform(start))
    out = _as_affine(raw)
    qc = {
        "spacing": sp, "band_mm": band, "points": int(round(pct * n_band)), "band_voxels": int(n_band),
        "metric": metric, "iterations": iterations, "stop": stop,
        "seconds": time.perf_counter() - t0,
    }
    return out, qc


def _surface_band(soft: sitk.Image, band_mm: float) -> sitk.Image:
    inside = sitk.Cast(soft >= 0.5, sitk.sitkUInt8)
    dist = sitk.SignedMaurerDistanceMap(inside, insideIsPositive=False, squaredDistance=False,
                                        useImageSpacing=True)
    return sitk.Cast(sitk.Abs(dist) <= band_mm, sitk.sitkUInt8)


def _crop_xy(img: sitk.Image, margin_mm: float) -> sitk.Image:
    cropped = _crop_to_mask(img, margin_mm)
    # Restore the full z range so scan ends stay the image ends.
    if cropped.GetSize()[2] == img.GetSize()[2]:
        return cropped
    idx = img.TransformPhysicalPointToIndex(cropped.GetOrigin())
    size = list(cropped.GetSize())
    return sitk.RegionOfInterest(img, [size[0], size[1], img.GetSize()[2]], [idx[0], idx[1], 0])


def _z_profile(mask: sitk.Image) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per axial slice of a lung mask: physical z (mm), lung volume (mL... any unit) and the
    lung's physical centroid, in slice order sorted by z ascending (inferior → superior)."""
    arr = sitk.GetArrayViewFromImage(mask) > 0
    nz = arr.shape[0]
    vox = float(np.prod(mask.GetSpacing()))
    counts = arr.reshape(nz, -1).sum(1).astype(float)
    zz = np.array([mask.TransformContinuousIndexToPhysicalPoint((0.0, 0.0, float(k)))[2] for k in range(nz)])
    # Slice centroids in index space (x, y), then to physical points.
    ys = np.arange(arr.shape[1], dtype=float)
    xs = np.arange(arr.shape[2], dtype=float)
    sum_y = (arr.sum(2) * ys[None]).sum(1)
    sum_x = (arr.sum(1) * xs[None]).sum(1)
    safe = np.maximum(counts, 1.0)
    idx = np.stack([sum_x / safe, sum_y / safe, np.arange(nz, dtype=float)], 1)
    direction = np.array(mask.GetDirection(), float).reshape(3, 3)
    phys = np.array(mask.GetOrigin(), float) + (idx * np.array(mask.GetSpacing(), float)) @ direction.T
    order = np.argsort(zz)
    return zz[order], counts[order] * vox, phys[order]


def cut_ends(mask: sitk.Image) -> tuple[bool, bool]:
    """(inferior end cut, superior end cut): lung on the first/last axial slice of the scan.

    "Inferior"/"superior" are physical (LPS z), whatever the slice order of the file.

    Example:
        >>> m = sitk.Image(8, 8, 8, sitk.sitkUInt8); m[2:6, 2:6, 0:5] = 1
        >>> cut_ends(m)
        (True, False)
    """
    arr = sitk.GetArrayViewFromImage(mask)
    first, last = bool(arr[0].any()), bool(arr[-1].any())
    z_dir = float(np.array(mask.GetDirection(), float).reshape(3, 3)[2, 2])
    return (first, last) if z_dir >= 0 else (last, first)


def _partial_init(
    init: sitk.AffineTransform, atlas_mask: sitk.Image, subject_mask: sitk.Image
) -> tuple[sitk.AffineTransform, dict[str, Any]]:
    """Initial transform for a scan that cuts the lungs at one end (e.g. bases cut off).

    A cut lung has neither the centre of mass nor the volume of the whole lung, so the
    whole-scan initialisation (centres of mass, scale from the volume ratio) squeezes the
    atlas into the scanned part, and the optimiser stays in that basin (on real scans the
    uncut scan's transform scores better on the cut scan's metric than the squeezed one).
    Instead, from the uncut end: for an isotropic scale s, the subject's lung height H
    corresponds to the atlas slab of height H / s from the same (uncut) end; s is chosen so
    that s³ × (atlas lung volume in that slab) equals the subject's lung volume, and the
    slab's centre of mass is mapped onto the subject's. A scan cut at both ends keeps the
    centre-of-mass initialisation (no uncut end to anchor on).
    """
    low_cut, high_cut = cut_ends(subject_mask)
    if low_cut == high_cut:
        return init, {"kind": "centre_of_mass", "cut_inferior": low_cut, "cut_superior": high_cut}
    z_s, v_s, c_s = _z_profile(subject_mask)
    z_a, v_a, c_a = _z_profile(atlas_mask)
    lung_s, lung_a = v_s > 0, v_a > 0
    z_s, v_s, c_s = z_s[lung_s], v_s[lung_s], c_s[lung_s]
    z_a, v_a, c_a = z_a[lung_a], v_a[lung_a], c_a[lung_a]
    if high_cut:  # anchor on the lung bases: measure heights from the bottom
        z_s, v_s, c_s, z_a, v_a, c_a = (a[::-1] for a in (z_s, v_s, c_s, z_a, v_a, c_a))
    height_s = abs(z_s[-1] - z_s[0]) + abs(z_s[1] - z_s[0]) if len(z_s) > 1 else 1.0
    # Atlas slices ordered from the uncut end: distance from that end, cumulative volume.
    depth_a = np.abs(z_a - z_a[-1])  # from the anchored (uncut) end, which is last
    order = np.argsort(depth_a)
    depth_a, v_a, c_a = depth_a[order], v_a[order], c_a[order]
    cum_a = np.cumsum(v_a)
    vol_s = float(v_s.sum())
    scales = np.exp(np.linspace(np.log(0.5), np.log(2.0), 301))
    slab_vol = np.interp(height_s / scales, depth_a, cum_a)
    err = np.abs(np.log(scales**3 * np.maximum(slab_vol, 1e-9) / vol_s))
    s = float(scales[int(np.argmin(err))])
    in_slab = depth_a <= height_s / s
    com_a = (c_a[in_slab] * v_a[in_slab, None]).sum(0) / v_a[in_slab].sum()
    com_s = (c_s * v_s[:, None]).sum(0) / vol_s
    out = sitk.AffineTransform(3)
    out.SetCenter(tuple(map(float, com_a)))
    out.SetMatrix(tuple((np.eye(3) * s).ravel()))
    out.SetTranslation(tuple(map(float, com_s - com_a)))
    info = {"kind": "uncut_end_slab", "anchor": "superior" if low_cut else "inferior",
            "scale": s, "cut_inferior": low_cut, "cut_superior": high_cut,
            "atlas_slab_mm": float(height_s / s)}
    return out, info


def _as_affine(t: sitk.Transform) -> sitk.AffineTransform:
    """Flatten a (composite) registration output into one AffineTransform."""
    if isinstance(t, sitk.CompositeTransform):
        t = t.GetBackTransform() if t.GetNumberOfTransforms() == 1 else t
        if isinstance(t, sitk.CompositeTransform):
            t.FlattenTransform()
            t = t.GetNthTransform(0)
    try:
        return sitk.AffineTransform(t)
    except Exception:
        # Generic Transform holding an affine: go through its parameters.
        a = sitk.AffineTransform(3)
        a.SetFixedParameters(t.GetFixedParameters())
        a.SetParameters(t.GetParameters())
        return a


def _register_ants(subject_mask: sitk.Image, atlas_mask: sitk.Image, cfg: RegistrationConfig) -> RegistrationResult:
    """Reference settings through antspyx (ANTs affine, MI 32 bins, 500/250/100, 4/2/1, 2/1/0)."""
    if not ants_available():
        raise RuntimeError("registration backend 'ants' needs antspyx: pip install antspyx")
    import ants  # type: ignore[import-not-found]

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        fpath, mpath = os.path.join(tmp, "fixed.nii.gz"), os.path.join(tmp, "moving.nii.gz")
        sitk.WriteImage(sitk.Cast(atlas_mask > 0, sitk.sitkFloat32), fpath)
        sitk.WriteImage(sitk.Cast(subject_mask > 0, sitk.sitkFloat32), mpath)
        fixed = ants.image_read(fpath)
        moving = ants.image_read(mpath)
        out = ants.registration(
            fixed, moving, type_of_transform="Affine",
            aff_metric="mattes", aff_sampling=32,
            aff_iterations=(500, 250, 100), aff_shrink_factors=(4, 2, 1),
            aff_smoothing_sigmas=(2, 1, 0), outprefix=os.path.join(tmp, "ants_"),
        )
        # ANTs writes an ITK transform file mapping fixed (atlas) points to moving points.
        transform = _as_affine(sitk.ReadTransform(out["fwdtransforms"][0]))
    seconds = time.perf_counter() - t0
    dice, covered = mask_dice(subject_mask, atlas_mask, transform)
    qc = {"backend": "ants", "dice": dice, "atlas_lung_covered": covered, "seconds": seconds,
          "partial_coverage": False, "dice_init": float("nan")}
    return RegistrationResult(transform, qc)
