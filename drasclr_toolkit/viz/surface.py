"""A lung mask's surface (marching cubes) and the voxel-index → world geometry of an
image: the pieces :func:`~drasclr_toolkit.viz.landmarks.landmark_cloud` draws the lung
under the landmarks with.

Example:
    >>> import numpy as np
    >>> mask = np.zeros((40, 40, 40), np.uint8); mask[8:32, 8:32, 8:32] = 1
    >>> verts, faces = surface_mesh(mask, spacing=(1, 1, 1), downsample=2)
    >>> verts.shape[1], faces.shape[1]
    (3, 3)
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from drasclr_toolkit.errors import InputError

__all__ = ["image_affine", "surface_mesh"]


def surface_mesh(mask: np.ndarray, spacing: Sequence[float] = (1.0, 1.0, 1.0),
                 downsample: int = 2, level: float = 0.5
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Vertices ``(V, 3)`` in (x, y, z) = voxel index · spacing, and faces ``(F, 3)`` of the
    boundary of ``mask > 0`` (a (z, y, x) array).

    ``downsample`` averages ``s³`` blocks first (marching cubes on the block means at
    ``level``), which keeps a 387×387×319 atlas mask at a few ten thousand triangles.
    """
    from skimage.measure import block_reduce, marching_cubes

    binary = np.asarray(mask) > 0
    if binary.ndim != 3 or not binary.any():
        raise InputError(f"mask must be a 3D (z, y, x) array with some voxels > 0; "
                         f"got shape {binary.shape} with {int(binary.sum())} voxels set")
    s = max(1, int(downsample))
    coarse = block_reduce(binary.astype(np.float32), (s, s, s), np.mean) if s > 1 else \
        binary.astype(np.float32)
    # One empty layer around the volume closes the surface where the lung touches the edge.
    coarse = np.pad(coarse, 1)
    sx, sy, sz = (float(v) for v in spacing)
    verts, faces, _, _ = marching_cubes(coarse, level=level, spacing=(sz * s, sy * s, sx * s))
    # Undo the padding and move from block corners to block centres, back to voxel mm.
    verts -= np.array([sz, sy, sx]) * s
    verts += np.array([sz, sy, sx]) * (s - 1) / 2.0
    return verts[:, ::-1].copy(), faces


def image_affine(image: Any) -> np.ndarray:
    """4×4 matrix from voxel index (x, y, z, 1) to the physical (LPS mm) point of a
    SimpleITK image: ``origin + direction · diag(spacing) · index``.

    Example:
        >>> import SimpleITK as sitk
        >>> image = sitk.Image(4, 4, 4, sitk.sitkUInt8); image.SetSpacing((2, 2, 2))
        >>> image.SetOrigin((-10, 0, 5))
        >>> apply_affine(image_affine(image), np.array([[1.0, 0, 0]])).tolist()
        [[-8.0, 0.0, 5.0]]
    """
    affine = np.eye(4)
    affine[:3, :3] = np.reshape(image.GetDirection(), (3, 3)) @ np.diag(image.GetSpacing())
    affine[:3, 3] = image.GetOrigin()
    return affine


def apply_affine(affine: np.ndarray, points_index: np.ndarray) -> np.ndarray:
    """``(n, 3)`` points (x, y, z) through a 4×4 ``affine``."""
    homog = np.c_[points_index, np.ones(len(points_index))]
    return (homog @ np.asarray(affine, dtype=np.float64).T)[:, :3]
