"""Lung segmentation: a fast classical default and an optional ``lungmask`` backend.

Classical method (scipy.ndimage / SimpleITK), on a working grid of ``work_spacing`` mm:

1. Smooth lightly and threshold air (HU < ``air_threshold``).
2. Outside air: per axial slice, air connected to the slice border (slice-wise so that a
   scan that cuts through the lungs at its first or last slice keeps them); the rest of the
   air is inside the body.
3. Trachea and main bronchi: seeded at the top of the scan as a small, central, very dark
   (< ``airway_threshold``) blob and followed slice by slice downwards while each slice's
   part stays small (a blob that becomes large has reached the lung); removed. A run lost
   within ``airway_min_run_mm`` (air in the larynx or pharynx above a stretch where the
   lumen is not dark enough) is not the trachea: the seed is looked for again below it.
4. Largest components: the biggest one or two components are the lungs (small ones, e.g.
   bowel gas, dropped). One component holding both lungs (touching at the anterior
   junction) is split by eroding until it falls into two, then growing the two parts back.
5. Left/right: in LPS, x grows towards the patient's left, so the component with larger
   mean x is the left lung (label 2), the other the right lung (label 1).
6. Vessels and holes: each lung is closed with a ball of ``closing_radius_mm`` (takes in
   vessels and airway walls) and its holes are filled slice by slice and in 3D.

The mask comes back on the input grid (uint8; 1 = right lung, 2 = left lung), with
``info`` holding the parameters used, lung volumes and flags.

Example:
    >>> mask, info = segment_lungs(ct)      # doctest: +SKIP
    >>> info["lung_volume_ml"]              # doctest: +SKIP
    5231.4
"""

from __future__ import annotations

import importlib.util
import logging
import time
from typing import Any, Literal, Mapping

import numpy as np
import SimpleITK as sitk
from pydantic import ConfigDict, Field
from scipy import ndimage as ndi

from drasclr_toolkit.config import Config
from drasclr_toolkit.errors import DrasclrError, InputError
from drasclr_toolkit.preprocess.resample import as_sitk, resample_like, to_lps

__all__ = ["LungSegConfig", "LungSegmentationError", "labels_to_grid", "lungmask_available",
           "segment_lungs"]

log = logging.getLogger(__name__)


class LungSegmentationError(DrasclrError, RuntimeError):
    """No plausible lungs were found in a scan."""


class LungSegConfig(Config):
    """Parameters of the classical lung segmentation (all HU or mm).

    Example:
        >>> LungSegConfig.from_dict({"work_spacing": 3.0}).work_spacing
        3.0
    """

    model_config = ConfigDict(frozen=True)
    section = "preprocess.segmentation"
    yaml_section = ("preprocess", "segmentation")

    backend: Literal["classical", "lungmask", "auto"] = "classical"  # "classical", "lungmask" (if installed with weights), "auto"
    work_spacing: float = Field(2.0, gt=0)  # segmentation grid; coarser is faster
    air_threshold: float = -400.0  # lung parenchyma and airways lie below
    airway_threshold: float = -900.0  # airway lumen (after light smoothing) lies below
    airway_max_area_mm2: float = Field(700.0, gt=0)  # a trachea/bronchus slice is smaller than this
    airway_max_offset_mm: float = Field(40.0, ge=0)  # trachea seed: this close to the body's centre in x
    airway_min_run_mm: float = Field(30.0, ge=0)  # a dark run lost sooner is not the trachea: seed again
    min_lung_volume_ml: float = Field(30.0, ge=0)  # components smaller than this are not lung
    second_lung_ratio: float = Field(0.15, ge=0, le=1)  # 2nd component counts as a lung above this size ratio
    closing_radius_mm: float = Field(6.0, ge=0)  # takes vessels and airway walls into the lungs
    smoothing_mm: float = Field(1.0, ge=0)  # Gaussian sigma before thresholding


def lungmask_available() -> bool:
    """True when the ``lungmask`` package and its default U-Net weights are on disk.

    Never downloads: the weights must already be in torch hub's checkpoint cache.
    """
    if importlib.util.find_spec("lungmask") is None:
        return False
    try:
        import torch.hub

        ckpt_dir = torch.hub.get_dir() + "/checkpoints"
        import os

        return any(n.startswith("unet_r231") for n in os.listdir(ckpt_dir))
    except Exception:
        return False


def segment_lungs(
    ct: Any, config: LungSegConfig | Mapping[str, Any] | None = None
) -> tuple[sitk.Image, dict[str, Any]]:
    """Segment the lungs of a CT; returns (uint8 label mask on the input grid, info).

    Labels: 0 background, 1 right lung, 2 left lung. Raises
    :class:`LungSegmentationError` when no lung-sized air region exists.

    Example:
        >>> mask, info = segment_lungs(ct)                       # doctest: +SKIP
        >>> sorted(info)[:3]                                      # doctest: +SKIP
        ['airway_removed_ml', 'backend', 'flags']
    """
    cfg = config if isinstance(config, LungSegConfig) else LungSegConfig.from_dict(config)
    image = to_lps(as_sitk(ct))
    backend = cfg.backend
    if backend == "auto":
        backend = "lungmask" if lungmask_available() else "classical"
    if backend == "lungmask":
        if not lungmask_available():
            raise RuntimeError(
                "segmentation backend 'lungmask' needs the lungmask package and its weights "
                "already on disk (we never download); install them or use backend 'classical'"
            )
        return _segment_lungmask(image, cfg)
    if backend != "classical":
        raise InputError(f"unknown segmentation backend {backend!r}; use classical, lungmask or auto")
    return _segment_classical(image, cfg)


def _segment_lungmask(image: sitk.Image, cfg: LungSegConfig) -> tuple[sitk.Image, dict]:
    from lungmask import LMInferer  # type: ignore[import-not-found]

    t0 = time.perf_counter()
    arr = LMInferer().apply(image)  # (z, y, x), 1 = right, 2 = left
    mask = sitk.GetImageFromArray(arr.astype(np.uint8))
    mask.CopyInformation(image)
    return mask, _volume_info(arr, image, {"backend": "lungmask", "seconds": time.perf_counter() - t0})


def _ball(radius_vox: float) -> np.ndarray:
    r = max(1, int(np.ceil(radius_vox)))
    g = np.mgrid[-r : r + 1, -r : r + 1, -r : r + 1]
    return (g**2).sum(0) <= radius_vox**2 + 1e-6


def _segment_classical(image: sitk.Image, cfg: LungSegConfig) -> tuple[sitk.Image, dict]:
    t0 = time.perf_counter()
    sp_in = np.array(image.GetSpacing())
    ws = max(float(cfg.work_spacing), float(sp_in.min()))
    # Working grid: isotropic ws mm over the same box (averaging when downsampling).
    work = image
    if not np.allclose(sp_in, ws):
        ratio = ws / sp_in
        if np.allclose(ratio, np.round(ratio), atol=1e-3) and (np.round(ratio) >= 1).all():
            # Block averaging: anti-aliased and much faster than Gaussian + resample.
            work = sitk.BinShrink(sitk.Cast(image, sitk.sitkFloat32), [int(r) for r in np.round(ratio)])
        else:
            size = np.maximum(1, np.round(np.array(image.GetSize()) * sp_in / ws)).astype(int)
            work = sitk.Resample(
                sitk.Cast(image, sitk.sitkFloat32), [int(s) for s in size], sitk.Transform(),
                sitk.sitkLinear, image.GetOrigin(), (ws,) * 3, image.GetDirection(), -1024.0,
                sitk.sitkFloat32,
            )
        ws = float(work.GetSpacing()[0])
    arr = sitk.GetArrayFromImage(work).astype(np.float32)
    if cfg.smoothing_mm > 0:
        arr = ndi.gaussian_filter(arr, cfg.smoothing_mm / ws)
    air = arr < cfg.air_threshold

    # 2. outside air: per-slice components that touch the slice border.
    slice_struct = np.zeros((3, 3, 3), bool)
    slice_struct[1] = ndi.generate_binary_structure(2, 1)
    lab, n = ndi.label(air, slice_struct)
    border = np.unique(np.concatenate([
        lab[:, 0, :].ravel(), lab[:, -1, :].ravel(), lab[:, :, 0].ravel(), lab[:, :, -1].ravel()
    ]))
    outside = np.isin(lab, border[border > 0])
    inside_air = air & ~outside
    del lab

    # 3. trachea and main bronchi.
    airway = _find_airways(arr, inside_air, ws, cfg)
    candidate = inside_air & ~airway
    # Detach thin airway walls / remnants from the lungs.
    candidate = ndi.binary_opening(candidate, ndi.generate_binary_structure(3, 1))

    # 4. largest components.
    voxel_ml = ws**3 / 1000.0
    lab, n = ndi.label(candidate)
    if n == 0:
        raise LungSegmentationError("no air inside the body: is this a chest CT in HU?")
    sizes = ndi.sum_labels(np.ones_like(lab, np.int32), lab, index=np.arange(1, n + 1))
    order = np.argsort(sizes)[::-1]
    if sizes[order[0]] * voxel_ml < cfg.min_lung_volume_ml:
        raise LungSegmentationError(
            f"largest air region inside the body is {sizes[order[0]] * voxel_ml:.0f} mL, "
            f"less than min_lung_volume_ml={cfg.min_lung_volume_ml}; is this a chest CT?"
        )
    flags: list[str] = []
    parts = [lab == order[0] + 1]
    if n > 1 and sizes[order[1]] >= cfg.second_lung_ratio * sizes[order[0]] and (
        sizes[order[1]] * voxel_ml >= cfg.min_lung_volume_ml
    ):
        parts.append(lab == order[1] + 1)
    else:
        split = _split_lungs(parts[0], cfg.second_lung_ratio)
        if split is None:
            flags.append("single_lung_component")
        else:
            parts = split
    del lab

    # 5. left/right: larger mean x (numpy axis 2) = patient left = label 2.
    parts.sort(key=lambda p: np.nonzero(p)[2].mean())
    labels = [1, 2] if len(parts) == 2 else [1 if _is_right(parts[0], arr.shape) else 2]

    # 6. vessels and holes.
    ball = _ball(cfg.closing_radius_mm / ws)
    pad = ball.shape[0]
    out = np.zeros(arr.shape, np.uint8)
    for part, label in zip(parts, labels):
        # Work in the part's bounding box (padded so closing is not cut by the border).
        box = ndi.find_objects(part.astype(np.uint8))[0]
        p = np.pad(part[box], pad)
        p = ndi.binary_closing(p, ball)[pad:-pad, pad:-pad, pad:-pad]
        p = _fill_holes_slices(p)
        p = ndi.binary_fill_holes(p)
        region = out[box]
        region[p & (region == 0)] = label
    work_mask = sitk.GetImageFromArray(out)
    work_mask.CopyInformation(work)
    mask = labels_to_grid(work_mask, image)
    res = sitk.GetArrayViewFromImage(mask)
    info = {
        "backend": "classical",
        "config": cfg.to_dict(),
        "work_spacing": ws,
        "airway_removed_ml": float(airway.sum() * voxel_ml),
        "n_components": len(parts),
        "flags": flags,
        "touches_top": bool(res[-1].any()),
        "touches_bottom": bool(res[0].any()),
        "seconds": time.perf_counter() - t0,
    }
    if info["touches_top"] or info["touches_bottom"]:
        flags.append("lungs_cut_by_scan_range")
    return mask, _volume_info(res, image, info)


def _is_right(part: np.ndarray, shape: tuple[int, ...]) -> bool:
    return np.nonzero(part)[2].mean() < shape[2] / 2.0


def _volume_info(arr: np.ndarray, image: sitk.Image, info: dict) -> dict:
    vox = float(np.prod(image.GetSpacing())) / 1000.0
    info["right_lung_ml"] = float((arr == 1).sum() * vox)
    info["left_lung_ml"] = float((arr == 2).sum() * vox)
    info["lung_volume_ml"] = info["right_lung_ml"] + info["left_lung_ml"]
    return info


def _find_airways(arr: np.ndarray, inside_air: np.ndarray, ws: float, cfg: LungSegConfig) -> np.ndarray:
    """Trachea + main bronchi, followed from the top slice down (z index grows superior)."""
    dark = (arr < cfg.airway_threshold) & inside_air
    airway = np.zeros_like(dark)
    max_area = cfg.airway_max_area_mm2 / ws**2
    nz, ny, nx = arr.shape
    body_x = nx / 2.0
    cols = np.nonzero(inside_air.any(axis=(0, 1)))[0]
    if len(cols):
        body_x = (cols.min() + cols.max()) / 2.0
    struct2 = ndi.generate_binary_structure(2, 2)
    prev: np.ndarray | None = None
    started = False
    run = 0  # slices followed since the seed
    for z in range(nz - 1, -1, -1):
        lab, n = ndi.label(dark[z], struct2)
        if n == 0:
            if started:
                if run * ws >= cfg.airway_min_run_mm or inside_air[z].sum() > 4 * max_area:
                    break
                started, prev = False, None  # a short run: see below
            continue
        areas = ndi.sum_labels(np.ones_like(lab), lab, np.arange(1, n + 1))
        keep = np.zeros(n + 1, bool)
        if not started:
            # Seed: a small dark blob near the body's centre line, with nothing large at
            # this level (if the lungs already fill the slice, the scan starts below the
            # apex and we look no further for a trachea above them).
            lung_like = inside_air[z].sum() > 4 * max_area
            for i in range(1, n + 1):
                if areas[i - 1] > max_area:
                    continue
                cx = ndi.center_of_mass(lab == i)[1]
                if abs(cx - body_x) * ws <= cfg.airway_max_offset_mm and areas[i - 1] * ws**2 >= 20:
                    keep[i] = True
            if not keep.any():
                if lung_like and z < nz - 3:
                    break
                continue
            started = True
            run = 0
        else:
            grown = ndi.binary_dilation(prev, iterations=2)
            hits = np.unique(lab[grown & (lab > 0)])
            for i in hits:
                if areas[i - 1] <= max_area:
                    keep[i] = True
            if not keep.any():
                if run * ws >= cfg.airway_min_run_mm or inside_air[z].sum() > 4 * max_area:
                    break
                # A short dark run above the trachea (larynx, pharynx: on lung1 the lumen
                # is not dark enough for 10 mm below it): seed again further down.
                started, prev = False, None
                continue
        prev = keep[lab]
        airway[z] = prev
        run += 1
    return airway


def _split_lungs(part: np.ndarray, ratio: float, max_iter: int = 8) -> list[np.ndarray] | None:
    """Erode a joined lung component until it falls into two big parts, then regrow them."""
    eroded = part
    struct = ndi.generate_binary_structure(3, 1)
    for _ in range(max_iter):
        eroded = ndi.binary_erosion(eroded, struct)
        lab, n = ndi.label(eroded)
        if n < 2:
            if n == 0:
                return None
            continue
        sizes = ndi.sum_labels(np.ones_like(lab, np.int32), lab, np.arange(1, n + 1))
        order = np.argsort(sizes)[::-1]
        if sizes[order[1]] >= ratio * sizes[order[0]]:
            markers = np.zeros(part.shape, np.int32)
            markers[lab == order[0] + 1] = 1
            markers[lab == order[1] + 1] = 2
            # Each voxel of the joined part goes to the nearer seed.
            _, inds = ndi.distance_transform_edt(markers == 0, return_indices=True)
            nearest = markers[tuple(inds)]
            return [part & (nearest == 1), part & (nearest == 2)]
    return None


def _fill_holes_slices(mask: np.ndarray) -> np.ndarray:
    out = np.empty_like(mask)
    for z in range(mask.shape[0]):
        out[z] = ndi.binary_fill_holes(mask[z]) if mask[z].any() else mask[z]
    return out


def labels_to_grid(work_mask: sitk.Image, image: sitk.Image) -> sitk.Image:
    """Bring a label mask (0, 1 right, 2 left) onto ``image``'s grid with smooth (linear,
    per label) edges: how :func:`segment_lungs` returns its working-grid labels, and how
    preprocessing brings a mask segmented at the scan's resolution onto its own grid."""
    if work_mask.GetSize() == image.GetSize() and np.allclose(
        work_mask.GetSpacing(), image.GetSpacing()
    ) and np.allclose(work_mask.GetOrigin(), image.GetOrigin()):
        return work_mask
    best = None
    out = None
    for label in (1, 2):
        prob = resample_like(
            sitk.Cast(work_mask == label, sitk.sitkFloat32), image, "linear", 0.0
        )
        p = sitk.GetArrayFromImage(prob)
        if best is None:
            best = p
            out = np.where(p >= 0.5, 1, 0).astype(np.uint8)
        else:
            sel = (p >= 0.5) & (p > best)
            out[sel] = label
    mask = sitk.GetImageFromArray(out)
    mask.CopyInformation(image)
    return mask
