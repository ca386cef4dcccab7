"""The atlas lung surface (marching cubes) with the landmarks on it.

Example:
    >>> import numpy as np
    >>> mask = np.zeros((40, 40, 40), np.uint8); mask[8:32, 8:32, 8:32] = 1
    >>> fig = lung_surface(mask, spacing=(1, 1, 1), downsample=2)
    >>> fig.data[0].type
    'mesh3d'
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import plotly.graph_objects as go

from .landmarks import landmark_centres, landmark_traces, scene_layout

__all__ = ["lung_surface", "surface_mesh"]


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
        raise ValueError(f"mask must be a 3D (z, y, x) array with some voxels > 0; "
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


def _apply_affine(affine: np.ndarray, points_index: np.ndarray) -> np.ndarray:
    homog = np.c_[points_index, np.ones(len(points_index))]
    return (homog @ np.asarray(affine, dtype=np.float64).T)[:, :3]


def lung_surface(mask: Any, spacing: Sequence[float] | None = None, affine: np.ndarray | None = None,
                 landmarks: np.ndarray | None = None, values: np.ndarray | None = None, *,
                 lung_fraction: np.ndarray | None = None, value_name: str = "value",
                 categorical: bool | None = None, patch_size: int = 32, downsample: int = 2,
                 opacity: float = 0.2, colour: str = "#e6a0a0", marker_size: float = 4.0,
                 colorscale: str = "Viridis", title: str | None = None) -> go.Figure:
    """3D lung surface as a Mesh3d, with the landmarks on it coloured by a per-landmark value.

    Args:
        mask: the atlas lung mask, a (z, y, x) array (any value > 0 is lung) or a
            SimpleITK image (its spacing is used when ``spacing`` is not given).
        spacing: voxel size (x, y, z) in mm; the scene is voxel index · spacing.
        affine: optional 4×4 matrix from voxel index (x, y, z, 1) to world coordinates
            (e.g. LPS mm); applied to the surface and the landmarks alike.
        landmarks: (L, 3) atlas patch corners; drawn at the patch centres.
        values: (L,) per-landmark colouring (a PC, a cluster, a prediction, ground truth).
        downsample: block size for marching cubes (1 = full resolution).

    Example:
        >>> mask = np.zeros((40, 40, 40), np.uint8); mask[8:32, 8:32, 8:32] = 1
        >>> fig = lung_surface(mask, (1, 1, 1), landmarks=np.array([[8, 8, 8]]), values=[1.0])
        >>> [t.type for t in fig.data]
        ['mesh3d', 'scatter3d']
    """
    if hasattr(mask, "GetSpacing"):  # SimpleITK image
        import SimpleITK as sitk

        spacing = spacing if spacing is not None else mask.GetSpacing()
        mask = sitk.GetArrayViewFromImage(mask)
    unit = "voxel" if spacing is None and affine is None else "mm"
    spacing = tuple(float(v) for v in (spacing if spacing is not None else (1.0, 1.0, 1.0)))
    verts, faces = surface_mesh(mask, spacing, downsample)
    if affine is not None:
        verts = _apply_affine(affine, verts / np.asarray(spacing))
    fig = go.Figure(go.Mesh3d(x=verts[:, 0], y=verts[:, 1], z=verts[:, 2],
                              i=faces[:, 0], j=faces[:, 1], k=faces[:, 2],
                              color=colour, opacity=opacity, name="lung surface",
                              hoverinfo="skip", showlegend=True, flatshading=False))
    if landmarks is not None:
        corners = np.asarray(landmarks)
        positions = landmark_centres(corners, patch_size, spacing)
        if affine is not None:
            positions = _apply_affine(affine, positions / np.asarray(spacing))
        fig.add_traces(landmark_traces(corners, None if values is None else np.asarray(values),
                                       lung_fraction=lung_fraction, value_name=value_name,
                                       categorical=categorical, patch_size=patch_size,
                                       positions=positions, marker_size=marker_size,
                                       colorscale=colorscale, unit=unit))
    fig.update_layout(**scene_layout(title, unit))
    return fig
