"""Landmark mapping and patch extraction.

A landmark is the corner (x, y, z) of a ``P``-voxel cube in the atlas voxel grid. To find
the same anatomy in a subject we map the *centre* of that cube (corner + (P - 1) / 2 in
continuous index) through the atlas→subject affine and cut an axis-aligned ``P``³ cube
around the mapped centre in the subject's isotropic image. The subject image is never
warped, so patches keep the scan's own voxels and HU texture.

Why the centre and not the corner (the reference maps the corner): with an affine that
scales or flips an axis, the mapped corner is no longer the corner of the same anatomy
(with a 10 % scale the patch shifts by 1.6 mm; with the official atlas, whose y axis is
flipped, mapping the corner would shift every patch by a whole patch in y).

Two sampling modes (``PatchSampling``):

* ``"axis_aligned"`` (default, as the reference): integer crop of the subject image; exact
  HU values, no interpolation, 1 mm voxels in the subject's own orientation; fast.
* ``"affine"``: each patch is resampled (``sitk.Resample``) on the atlas patch grid through
  the affine, so pose and size differences between subjects are removed from the patch; it
  interpolates (linear) and costs one small resample per patch.

Outside the scan, patches read -1024 HU (the reference pads the image by 60 voxels of
-1024; cropping with fill is the same without the copy).

Example:
    >>> arr = np.zeros((40, 40, 40), np.int16)
    >>> crop_patches(arr, np.array([[-4, 0, 0]]), 8, fill=-1024)[0, 0, 0, :5].tolist()
    [-1024, -1024, -1024, -1024, 0]
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import SimpleITK as sitk

from drasclr_toolkit.constants import HU_MAX, HU_MIN

__all__ = [
    "PatchSampling",
    "corners_to_centres_physical",
    "crop_patches",
    "landmarks_missing",
    "map_landmarks",
    "patch_inside_fraction",
    "patch_fractions",
    "sample_patches_affine",
]

PatchSampling = Literal["axis_aligned", "affine"]


def corners_to_centres_physical(
    image: sitk.Image, corners: np.ndarray, patch_size: int
) -> np.ndarray:
    """Physical (LPS mm) centre of each ``patch_size`` cube whose corner index is given.

    Example:
        >>> img = sitk.Image(64, 64, 64, sitk.sitkUInt8)
        >>> corners_to_centres_physical(img, np.array([[0, 0, 0]]), 32).tolist()
        [[15.5, 15.5, 15.5]]
    """
    idx = np.asarray(corners, float) + (patch_size - 1) / 2.0
    return _index_to_physical(image, idx)


def _index_to_physical(image: sitk.Image, idx: np.ndarray) -> np.ndarray:
    direction = np.array(image.GetDirection(), float).reshape(3, 3)
    spacing = np.array(image.GetSpacing(), float)
    origin = np.array(image.GetOrigin(), float)
    return origin + (np.asarray(idx, float) * spacing) @ direction.T


def _physical_to_index(image: sitk.Image, pts: np.ndarray) -> np.ndarray:
    direction = np.array(image.GetDirection(), float).reshape(3, 3)
    spacing = np.array(image.GetSpacing(), float)
    origin = np.array(image.GetOrigin(), float)
    return ((np.asarray(pts, float) - origin) @ np.linalg.inv(direction).T) / spacing


def map_landmarks(
    atlas_grid: sitk.Image,
    corners: np.ndarray,
    patch_size: int,
    transform: sitk.Transform,
    subject_image: sitk.Image,
) -> dict[str, np.ndarray]:
    """Map atlas patch corners into a subject's voxel grid through ``transform``.

    ``transform`` maps atlas physical points to subject physical points (the SimpleITK
    registration convention with the atlas as fixed image). Returns ``centres_mm`` (L, 3)
    subject physical centres, ``centres_index`` (L, 3) continuous subject index and
    ``corners`` (L, 3) int subject patch corners (x, y, z).

    Example:
        >>> img = sitk.Image(64, 64, 64, sitk.sitkUInt8)
        >>> out = map_landmarks(img, np.array([[4, 4, 4]]), 32, sitk.TranslationTransform(3, (2., 0, 0)), img)
        >>> out["corners"].tolist()
        [[6, 4, 4]]
    """
    atlas_centres = corners_to_centres_physical(atlas_grid, corners, patch_size)
    subj = np.array([transform.TransformPoint(tuple(map(float, p))) for p in atlas_centres])
    cidx = _physical_to_index(subject_image, subj) if len(subj) else np.zeros((0, 3))
    # floor(x + 0.5) rather than np.round: banker's rounding would make ties depend on parity.
    sub_corners = np.floor(cidx - (patch_size - 1) / 2.0 + 0.5).astype(np.int64)
    return {
        "centres_mm": subj.reshape(-1, 3),
        "centres_index": cidx.reshape(-1, 3),
        "corners": sub_corners.reshape(-1, 3),
    }


def landmarks_missing(centres_index: np.ndarray, image_size: Any) -> np.ndarray:
    """True where a mapped landmark's patch centre falls outside the scanned box.

    ``centres_index`` (L, 3) continuous subject index (x, y, z) from :func:`map_landmarks`;
    ``image_size`` the subject image's size (x, y, z). A voxel covers its index ± 0.5, so
    the scanned box is [-0.5, size - 0.5] on each axis. On a scan that cuts the lungs these
    are the landmarks of the atlas part that maps beyond the cut (or outside the field of
    view): their patches would be mostly padding, so they are *missing* for that subject
    (stored per landmark, left out of pooling, counted in QC as ``frac_missing``).

    Example:
        >>> landmarks_missing(np.array([[5.0, 5.0, -0.6], [5.0, 5.0, 9.4]]), (10, 10, 10)).tolist()
        [True, False]
    """
    c = np.asarray(centres_index, float).reshape(-1, 3)
    size = np.asarray(image_size, float).reshape(1, 3)
    return ~np.all((c >= -0.5) & (c <= size - 0.5), axis=1)


def patch_inside_fraction(corners: np.ndarray, image_size: Any, patch_size: int) -> np.ndarray:
    """Share of each ``patch_size``³ patch (integer corners x, y, z) inside the scanned box.

    Example:
        >>> patch_inside_fraction(np.array([[0, 0, -4], [0, 0, 0]]), (8, 8, 8), 8).tolist()
        [0.5, 1.0]
    """
    c = np.asarray(corners, np.int64).reshape(-1, 3)
    size = np.asarray(image_size, np.int64).reshape(1, 3)
    P = int(patch_size)
    inside = np.clip(np.minimum(c + P, size) - np.maximum(c, 0), 0, P)
    return (inside.prod(axis=1) / float(P**3)).astype(np.float32)


def crop_patches(
    array: np.ndarray,
    corners: np.ndarray,
    patch_size: int,
    fill: int | float = HU_MIN,
    dtype: np.dtype | type | None = None,
) -> np.ndarray:
    """Cut ``patch_size``³ cubes at integer ``corners`` (x, y, z) from a (z, y, x) array.

    Parts outside the array read ``fill``. Returns (L, P, P, P) in (z, y, x) order.

    Example:
        >>> int(crop_patches(np.ones((4, 4, 4)), np.array([[2, 2, 2]]), 4, fill=0).sum())
        8
    """
    P = int(patch_size)
    corners = np.asarray(corners, np.int64).reshape(-1, 3)
    out = np.full((len(corners), P, P, P), fill, dtype=dtype or array.dtype)
    shape_xyz = np.array(array.shape[::-1])
    for i, c in enumerate(corners):
        lo = np.maximum(c, 0)
        hi = np.minimum(c + P, shape_xyz)
        if np.any(hi <= lo):
            continue  # wholly outside the scan: stays fill
        dlo = lo - c
        dhi = dlo + (hi - lo)
        out[i, dlo[2]:dhi[2], dlo[1]:dhi[1], dlo[0]:dhi[0]] = array[
            lo[2]:hi[2], lo[1]:hi[1], lo[0]:hi[0]
        ]
    return out


def patch_fractions(mask: np.ndarray, corners: np.ndarray, patch_size: int) -> np.ndarray:
    """Fraction of each patch's voxels where ``mask`` is non-zero (outside counts as 0).

    Example:
        >>> m = np.zeros((8, 8, 8), bool); m[:4] = True
        >>> patch_fractions(m, np.array([[0, 0, 0]]), 8).tolist()
        [0.5]
    """
    P = int(patch_size)
    corners = np.asarray(corners, np.int64).reshape(-1, 3)
    binary = np.asarray(mask) > 0
    fr = np.zeros(len(corners), np.float32)
    shape_xyz = np.array(binary.shape[::-1])
    for i, c in enumerate(corners):
        lo = np.maximum(c, 0)
        hi = np.minimum(c + P, shape_xyz)
        if np.any(hi <= lo):
            continue
        fr[i] = binary[lo[2]:hi[2], lo[1]:hi[1], lo[0]:hi[0]].sum() / float(P**3)
    return fr


def sample_patches_affine(
    subject_image: sitk.Image,
    atlas_grid: sitk.Image,
    corners: np.ndarray,
    patch_size: int,
    transform: sitk.Transform,
    fill: float = HU_MIN,
    interpolator: int = sitk.sitkLinear,
) -> np.ndarray:
    """Resample each patch on the atlas patch grid through ``transform`` (``"affine"`` mode).

    The patch grid is the atlas grid (spacing, direction) starting at the landmark corner,
    so the patch is in atlas orientation and scale. Returns (L, P, P, P) int16 HU.

    Example:
        >>> img = sitk.Image(40, 40, 40, sitk.sitkInt16)
        >>> sample_patches_affine(img, img, np.array([[0, 0, 0]]), 8, sitk.Transform()).shape
        (1, 8, 8, 8)
    """
    P = int(patch_size)
    out = np.empty((len(corners), P, P, P), np.int16)
    src = sitk.Cast(subject_image, sitk.sitkFloat32)
    ref = sitk.Image(P, P, P, sitk.sitkFloat32)
    ref.SetSpacing(atlas_grid.GetSpacing())
    ref.SetDirection(atlas_grid.GetDirection())
    for i, c in enumerate(np.asarray(corners).reshape(-1, 3)):
        ref.SetOrigin(tuple(_index_to_physical(atlas_grid, c[None].astype(float))[0]))
        patch = sitk.Resample(src, ref, transform, interpolator, float(fill), sitk.sitkFloat32)
        out[i] = np.clip(np.rint(sitk.GetArrayViewFromImage(patch)), -1024, 3071)
    return out


def clip_patches(patches: np.ndarray, lo: int = HU_MIN, hi: int = HU_MAX) -> np.ndarray:
    """Clip extracted patches to the HU window and return int16 (done at extraction)."""
    return np.clip(patches, lo, hi).astype(np.int16, copy=False)
