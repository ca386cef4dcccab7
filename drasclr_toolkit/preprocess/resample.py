"""Resampling to an isotropic grid and HU clipping.

The scan is first put in the canonical LPS identity orientation (``load_ct`` already does
this; here it is repeated for images that come from elsewhere), then resampled with
SimpleITK onto an isotropic grid that covers the same physical box. Voxels outside the
scanned box read -1024 HU (air), which is also what patch extraction pads with.

Example:
    >>> import numpy as np, SimpleITK as sitk
    >>> img = sitk.GetImageFromArray(np.full((10, 20, 20), -800, np.int16))
    >>> img.SetSpacing((0.5, 0.5, 2.0))
    >>> out = resample_isotropic(img, spacing=1.0, interpolator="linear")
    >>> out.GetSpacing(), out.GetSize()
    ((1.0, 1.0, 1.0), (10, 10, 20))
"""

from __future__ import annotations

from typing import Any

import numpy as np
import SimpleITK as sitk

from drasclr_toolkit.errors import InputError
from drasclr_toolkit.constants import HU_MAX, HU_MIN

__all__ = [
    "as_sitk",
    "clip_hu",
    "resample_isotropic",
    "resample_like",
    "to_lps",
]


INTERPOLATORS = {
    "bspline": sitk.sitkBSpline,
    "linear": sitk.sitkLinear,
    "nearest": sitk.sitkNearestNeighbor,
}


def as_sitk(ct: Any) -> sitk.Image:
    """Return a SimpleITK image for a ``CTImage`` (anything with ``to_sitk``) or an image.

    Example:
        >>> as_sitk(sitk.Image(4, 4, 4, sitk.sitkInt16)).GetSize()
        (4, 4, 4)
    """
    if isinstance(ct, sitk.Image):
        return ct
    if hasattr(ct, "to_sitk"):
        return ct.to_sitk()
    raise TypeError(
        f"expected a CTImage or SimpleITK image, got {type(ct).__name__}; "
        "load scans with drasclr_toolkit.data.load_ct"
    )


def to_lps(image: sitk.Image) -> sitk.Image:
    """Reorient to the identity direction in LPS (no-op when already canonical).

    Example:
        >>> to_lps(sitk.Image(3, 3, 3, sitk.sitkInt16)).GetDirection()[:3]
        (1.0, 0.0, 0.0)
    """
    if np.allclose(image.GetDirection(), np.eye(3).ravel(), atol=1e-4):
        return image
    return sitk.DICOMOrient(image, "LPS")


def clip_hu(array: np.ndarray, lo: int = HU_MIN, hi: int = HU_MAX) -> np.ndarray:
    """Clip Hounsfield units to [lo, hi] and return int16.

    Example:
        >>> clip_hu(np.array([-3000, 0, 1000])).tolist()
        [-1024, 0, 240]
    """
    return np.clip(array, lo, hi).astype(np.int16, copy=False)


def resample_isotropic(
    ct: Any,
    spacing: float = 1.0,
    interpolator: str = "bspline",
    default_value: float = HU_MIN,
) -> sitk.Image:
    """Resample a CT to ``spacing`` mm isotropic voxels (int16 HU, LPS identity direction).

    The output grid starts at the input origin and covers the input's physical extent.
    B-spline overshoot is clamped to the int16 HU range [-1024, 3071]; the network window
    [-1024, 240] is applied later, at patch extraction, so lung segmentation sees full HU.

    Example:
        >>> img = sitk.Image(8, 8, 4, sitk.sitkInt16); img.SetSpacing((1, 1, 2))
        >>> resample_isotropic(img, 2.0, "linear").GetSize()
        (4, 4, 4)
    """
    if interpolator not in INTERPOLATORS:
        raise InputError(
            f"interpolator {interpolator!r} is not one of {sorted(INTERPOLATORS)}; "
            "set preprocess.interpolator in your config"
        )
    image = to_lps(as_sitk(ct))
    in_spacing = np.array(image.GetSpacing(), float)
    in_size = np.array(image.GetSize(), float)
    # Keep the physical extent (size * spacing) of the scan, rounded to whole voxels.
    out_size = np.maximum(1, np.round(in_size * in_spacing / spacing)).astype(int)
    if np.allclose(in_spacing, spacing) and image.GetPixelID() == sitk.sitkInt16:
        return image
    resampler = sitk.ResampleImageFilter()
    resampler.SetOutputSpacing((float(spacing),) * 3)
    resampler.SetSize([int(s) for s in out_size])
    resampler.SetOutputOrigin(image.GetOrigin())
    resampler.SetOutputDirection(image.GetDirection())
    resampler.SetInterpolator(INTERPOLATORS[interpolator])
    resampler.SetDefaultPixelValue(float(default_value))
    resampler.SetOutputPixelType(sitk.sitkFloat32)
    out = resampler.Execute(sitk.Cast(image, sitk.sitkFloat32))
    out = sitk.Clamp(out, sitk.sitkFloat32, -1024.0, 3071.0)
    return sitk.Cast(sitk.Round(out), sitk.sitkInt16)


def resample_like(
    image: sitk.Image,
    reference: sitk.Image,
    interpolator: str = "nearest",
    default_value: float = 0.0,
    transform: sitk.Transform | None = None,
) -> sitk.Image:
    """Resample ``image`` onto the grid of ``reference`` (optionally through ``transform``).

    Example:
        >>> a = sitk.Image(4, 4, 4, sitk.sitkUInt8)
        >>> resample_like(a, sitk.Image(2, 2, 2, sitk.sitkUInt8)).GetSize()
        (2, 2, 2)
    """
    return sitk.Resample(
        image,
        reference,
        transform if transform is not None else sitk.Transform(),
        INTERPOLATORS[interpolator],
        float(default_value),
        image.GetPixelID(),
    )
