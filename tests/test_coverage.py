"""Partial coverage and airways on real CT: registration of scans that cut the lungs keeps
the scale of the whole scan, landmarks beyond the cut are reported missing, and the lung
mask leaves the trachea out. Real scans (pyradiomics-bhklab lung1/lung2) and the official
atlas (../shared/reference); a synthetic path with a cohort-built atlas runs everywhere."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage as ndi

from drasclr_toolkit.preprocess import Atlas, segment_lungs
from drasclr_toolkit.preprocess.patches import landmarks_missing, map_landmarks
from drasclr_toolkit.preprocess.registration import cut_ends, register_affine
from drasclr_toolkit.preprocess.resample import resample_isotropic


# ----------------------------------------------------------------------------- helpers
def cut_lowest(image: sitk.Image, mask: sitk.Image, fraction: float) -> sitk.Image:
    """``image`` without its slices below the lowest ``fraction`` of the lung height
    (``mask`` on the same grid; z index grows superior)."""
    zs = np.nonzero((sitk.GetArrayViewFromImage(mask) > 0).any(axis=(1, 2)))[0]
    k = int(np.ceil(zs.min() + fraction * (zs.max() - zs.min())))
    return image[:, :, k:]


def landmark_shift(atlas: Atlas, full: tuple, cut: tuple) -> dict:
    """Compare landmarks of a whole scan and of the same scan with its bottom cut away.

    ``full``/``cut``: (image, mask). Returns distances (mm) of the landmarks that remain,
    and which landmarks are truly below the cut (by the whole scan's transform) and which
    the cut scan reports missing."""
    out = {}
    for name, (img, msk) in (("full", full), ("cut", cut)):
        reg = register_affine(msk, atlas.mask)
        mapped = map_landmarks(atlas.mask, atlas.landmarks, atlas.patch_size, reg.transform, img)
        out[name] = (reg, mapped, landmarks_missing(mapped["centres_index"], img.GetSize()))
    cut_img = cut[0]
    below = out["full"][1]["centres_mm"][:, 2] < cut_img.GetOrigin()[2] - 0.5
    missing = out["cut"][2]
    d = np.linalg.norm(out["cut"][1]["centres_mm"] - out["full"][1]["centres_mm"], axis=1)
    keep = ~below & ~missing
    return {
        "median": float(np.median(d[keep])), "p90": float(np.percentile(d[keep], 90)),
        "below": below, "missing": missing,
        "z_scale": [float(np.linalg.norm(np.array(out[k][0].transform.GetMatrix()).reshape(3, 3)[:, 2]))
                    for k in ("full", "cut")],
        "partial": [bool(out[k][0].qc["partial_coverage"]) for k in ("full", "cut")],
    }


def tracheal_lumen(image: sitk.Image, depth_mm: float = 40.0) -> np.ndarray:
    """The tracheal lumen near the lung apex, found from the CT alone (not the mask).

    From the first axial slice (top down) with a lateral air region (lung apex: < -400 HU,
    > 100 mm², centroid > 40 mm from the body's midline), over ``depth_mm``: very dark (< -900 HU)
    regions not touching the slice border, 40–700 mm², within 25 mm of the midline; of
    those, the 3D piece present on the most slices (a vertical tube)."""
    a = sitk.GetArrayFromImage(image)
    sx, sy, sz = image.GetSpacing()
    xs = np.nonzero((a > -500).any(axis=(0, 1)))[0]
    mid = (xs.min() + xs.max()) / 2.0
    lumen = np.zeros(a.shape, bool)
    apex = None
    for z in range(a.shape[0] - 1, -1, -1):
        if apex is None:
            air, n, ids, inner, areas, off = _slice_regions(a[z] < -400, mid, sx, sy)
            if not (inner & (off > 40) & (areas > 100)).any():
                continue
            apex = z
        if (apex - z) * sz > depth_mm:
            break
        lab, n, ids, inner, areas, off = _slice_regions(a[z] < -900, mid, sx, sy)
        lumen[z] = np.isin(lab, ids[inner & (off < 25) & (areas >= 40) & (areas <= 700)])
    lab, n = ndi.label(lumen)
    if n == 0:
        return lumen
    span = [len(np.unique(np.nonzero(lab == i)[0])) for i in range(1, n + 1)]
    return lab == 1 + int(np.argmax(span))


def _slice_regions(binary: np.ndarray, mid: float, sx: float, sy: float):
    """2D components of a slice: labels, count, ids, not touching the border, area (mm²),
    distance of the centroid from the midline in x (mm)."""
    lab, n = ndi.label(binary)
    ids = np.arange(1, n + 1)
    border = np.unique(np.r_[lab[0], lab[-1], lab[:, 0], lab[:, -1]])
    inner = ~np.isin(ids, border)
    areas = ndi.sum_labels(np.ones_like(lab), lab, ids) * sx * sy
    cx = np.array([c[1] for c in ndi.center_of_mass(binary, lab, ids)]) if n else np.zeros(0)
    return lab, n, ids, inner, areas, np.abs(cx - mid) * sx


# ----------------------------------------------------------------------------- real CT
@pytest.fixture(scope="module")
def real_1mm():
    """lung1 and lung2 at 1 mm (linear: the test is about geometry, not texture), segmented."""
    from drasclr_toolkit.data import load_ct
    from drasclr_toolkit.datasets.sample_data import SampleDataUnavailable, real_chest_ct

    out = {}
    for name in ("lung1", "lung2"):
        try:
            path = real_chest_ct(name)
        except SampleDataUnavailable as exc:
            pytest.skip(f"real CT unavailable: {exc}")
        img = resample_isotropic(load_ct(path, subject_id=name), 1.0, "linear")
        mask, info = segment_lungs(img)
        out[name] = (img, mask, info)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("name", ["lung1", "lung2"])
def test_trachea_is_not_in_the_lung_mask(real_1mm, name):
    img, mask, info = real_1mm[name]
    lumen = tracheal_lumen(img)
    zs = np.unique(np.nonzero(lumen)[0])
    assert len(zs) >= 30, f"{name}: tracheal lumen found on {len(zs)} slices only"
    covered = float((sitk.GetArrayViewFromImage(mask)[lumen] > 0).mean())
    # Before: 99.9 % of lung1's tracheal lumen near the apex was lung in the mask.
    assert covered < 0.02, f"{name}: {covered:.1%} of the tracheal lumen is in the lung mask"
    assert info["airway_removed_ml"] > 5.0


@pytest.mark.slow
def test_cut_lung2_keeps_the_whole_scan_scale(real_1mm, shared_reference):
    atlas = Atlas.load(shared_reference / "atlas_lung_mask.nii.gz",
                       shared_reference / "atlas_patch_loc.npy")
    img, mask, _ = real_1mm["lung2"]
    cut_img = cut_lowest(img, mask, 0.3)
    cut_mask, _ = segment_lungs(cut_img)
    assert cut_ends(cut_mask) == (True, False) and cut_ends(mask) == (False, False)
    r = landmark_shift(atlas, (img, mask), (cut_img, cut_mask))
    assert r["partial"] == [False, True]
    # Free z scale (before): 0.90 -> 0.67, remaining landmarks 18 mm median / 36 mm p90
    # from the whole scan's, 4 of 128 landmarks below the cut reported outside.
    # z held at the left-right scale (the free fit strays > 10 % from it), affine: 7.7 mm /
    # 15 mm, 100 of 127. Now (measured) with the no-shear last level (coarse_model
    # "rotation_scale"): z 0.90 in both, 4.5 mm median / 8.5 mm p90, 107 of 131 outside;
    # the rest is rotation that the whole scan's fit takes from the lung bases
    # (benchmarks/registration.md). The target (3 mm) is not reached.
    assert abs(r["z_scale"][1] / r["z_scale"][0] - 1) < 0.05, r["z_scale"]
    assert r["median"] <= 6.0 and r["p90"] <= 11.0, (r["median"], r["p90"])
    below, missing = r["below"], r["missing"]
    assert missing[below].mean() >= 0.7, f"{missing[below].sum()} of {below.sum()} cut landmarks missing"
    assert missing[~below].mean() <= 0.05


@pytest.mark.slow
def test_lung1_is_partial_and_keeps_a_plausible_scale(real_1mm, shared_reference):
    atlas = Atlas.load(shared_reference / "atlas_lung_mask.nii.gz",
                       shared_reference / "atlas_patch_loc.npy")
    img, mask, _ = real_1mm["lung1"]
    assert cut_ends(mask) == (True, False)  # the bases are cut off, the apex is in
    reg = register_affine(mask, atlas.mask)
    assert reg.qc["partial_coverage"] and reg.qc["init"]["anchor"] == "superior"
    A = np.array(reg.transform.GetMatrix()).reshape(3, 3)
    sx, _, sz = np.linalg.norm(A, axis=0)
    # The free fit's z scale (0.83) is within 10 % of the left-right scale (0.80): kept.
    assert not reg.qc["z_scale"]["held"] and abs(np.log(sz / sx)) <= 0.10


# ----------------------------------------------------------------------------- synthetic
@pytest.mark.slow
def test_cut_synthetic_subject_with_a_cohort_atlas(tiny_cohort):
    from drasclr_toolkit.data import load_ct

    def load(sid):
        img = resample_isotropic(load_ct(tiny_cohort.image_path(sid), subject_id=sid), 2.0, "linear")
        return img, segment_lungs(img)[0]

    ids = list(tiny_cohort.subject_ids)
    a_img, a_mask = load(ids[0])
    atlas = Atlas.from_mask(a_mask, patch_size=16, step=13)
    img, mask = load(ids[1])
    cut_img = cut_lowest(img, mask, 0.3)
    cut_mask, _ = segment_lungs(cut_img)
    r = landmark_shift(atlas, (img, mask), (cut_img, cut_mask))
    assert r["partial"] == [False, True]
    # Phantom lungs differ by about an affine, so the free fit is kept (z within 10 % of x):
    # 0.3–1.0 mm median over subjects 1–5.
    assert r["median"] <= 2.0, (r["median"], r["p90"])
    assert r["missing"][r["below"]].mean() >= 0.7
