"""Orientation: every scan is brought to the identity direction in LPS space."""

from __future__ import annotations

import math

import numpy as np
import SimpleITK as sitk

from drasclr_toolkit.data.ct_image import IDENTITY_DIRECTION

__all__ = ["reorient_to_lps"]

# A direction this close to identity after DICOMOrient is snapped to identity (rounding
# noise from the writer); anything further is an oblique scan and is resampled.
_SNAP_TOLERANCE = 1e-4
_AIR_OUTSIDE_FOV_HU = -1024


def reorient_to_lps(image: sitk.Image) -> tuple[sitk.Image, bool]:
    """Return ``image`` with identity direction in LPS and whether it had to be resampled.

    Axis permutations and flips are exact (``sitk.DICOMOrient``); an oblique scan (direction
    not a signed permutation) is resampled with linear interpolation onto an identity grid
    covering the same physical box (outside the scan: -1024 HU).

    Example:
        >>> img = sitk.Image(4, 5, 6, sitk.sitkInt16)
        >>> img.SetDirection((-1, 0, 0, 0, -1, 0, 0, 0, 1))
        >>> out, resampled = reorient_to_lps(img)
        >>> out.GetDirection() == IDENTITY_DIRECTION, resampled
        (True, False)
    """
    out = sitk.DICOMOrient(image, "LPS")
    d = np.asarray(out.GetDirection(), dtype=float)
    if np.allclose(d, IDENTITY_DIRECTION, atol=_SNAP_TOLERANCE):
        out.SetDirection(IDENTITY_DIRECTION)
        return out, False
    # Oblique: bounding box of the corners in physical space, same spacing per axis.
    sx, sy, sz = (float(n - 1) for n in out.GetSize())
    corners = [
        out.TransformContinuousIndexToPhysicalPoint((cx, cy, cz))
        for cx in (0.0, sx)
        for cy in (0.0, sy)
        for cz in (0.0, sz)
    ]
    corners_arr = np.asarray(corners)
    lo, hi = corners_arr.min(axis=0), corners_arr.max(axis=0)
    spacing = np.asarray(out.GetSpacing(), dtype=float)
    new_size = [int(math.floor((hi[i] - lo[i]) / spacing[i] + 1e-6)) + 1 for i in range(3)]
    resampled = sitk.Resample(
        sitk.Cast(out, sitk.sitkFloat32),
        new_size,
        sitk.Transform(),
        sitk.sitkLinear,
        tuple(lo.tolist()),
        tuple(spacing.tolist()),
        IDENTITY_DIRECTION,
        float(_AIR_OUTSIDE_FOV_HU),
        sitk.sitkFloat32,
    )
    return resampled, True
