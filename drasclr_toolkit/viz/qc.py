"""Pictures for preprocessing quality control (plotly).

``plot_overlay`` (slices with lung mask and landmark boxes), ``plot_registration`` (atlas
mask vs. subject mask before and after the affine), ``plot_patches`` (middle slices of
some patches). The landmarks in 3D on the subject's lung surface are
:func:`~drasclr_toolkit.viz.landmarks.landmark_cloud` (``mask=result.mask``). The
per-subject QC table itself is :func:`drasclr_toolkit.preprocess.qc_table`.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import SimpleITK as sitk

from drasclr_toolkit.constants import HU_MAX, HU_MIN
from drasclr_toolkit.data.ct import image_array

__all__ = ["plot_overlay", "plot_patches", "plot_registration"]


# A contour drawn with coloring="lines" takes its colour from the colorscale, not line.color.
_RED = [[0.0, "red"], [1.0, "red"]]


def _default_centre(shape: tuple[int, int, int], mask: np.ndarray | None) -> list[int]:
    """(x, y, z) slice indices: the middle, or with a mask its middle z and y and the
    sagittal plane holding the most lung (the volume's middle plane cuts the mediastinum)."""
    nz, ny, nx = shape
    if mask is None or not np.any(mask):
        return [nx // 2, ny // 2, nz // 2]
    zs, ys, _ = np.nonzero(mask)
    x = int(np.argmax((np.asarray(mask) > 0).sum(axis=(0, 1))))
    return [x, int(np.median(ys)), int(np.median(zs))]


def plot_overlay(
    image: Any,
    mask: Any | None = None,
    corners: np.ndarray | None = None,
    patch_size: int = 32,
    axes: Sequence[str] = ("axial", "coronal", "sagittal"),
    index: Sequence[int] | None = None,
    title: str = "",
):
    """Orthogonal slices of a scan with the lung mask outline and landmark patch boxes.

    ``corners`` (L, 3) x, y, z patch corners in the image grid; boxes are drawn for the
    patches that cross each slice. Returns a plotly Figure.
    """
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    vol = image_array(image)
    msk = image_array(mask) if mask is not None else None
    spacing = _spacing(image)  # (x, y, z) mm: the slices are drawn in mm from the scan corner
    nz, ny, nx = vol.shape
    size = (nx, ny, nz)
    centre = list(index) if index is not None else _default_centre(vol.shape, msk)
    fig = make_subplots(rows=1, cols=len(axes), subplot_titles=list(axes), horizontal_spacing=0.08)
    for col, ax in enumerate(axes, start=1):
        if ax == "axial":
            sl, ms, k, dims = vol[centre[2]], None if msk is None else msk[centre[2]], 2, (0, 1)
        elif ax == "coronal":
            sl, ms, k, dims = vol[:, centre[1], :], None if msk is None else msk[:, centre[1], :], 1, (0, 2)
        else:
            sl, ms, k, dims = vol[:, :, centre[0]], None if msk is None else msk[:, :, centre[0]], 0, (1, 2)
        # Axis of the slice picture: columns are x (axial, coronal) or y (sagittal),
        # rows are y (axial) or z (coronal, sagittal).
        cx = 0 if ax in ("axial", "coronal") else 1
        cy = 1 if ax == "axial" else 2
        geometry = dict(dx=spacing[cx], dy=spacing[cy], x0=0.0, y0=0.0)
        fig.add_trace(go.Heatmap(z=np.clip(sl, HU_MIN, HU_MAX), colorscale="gray", showscale=False,
                                 hovertemplate="(%{x:.0f}, %{y:.0f}) mm: %{z} HU<extra></extra>",
                                 **geometry), row=1, col=col)
        if ms is not None:
            fig.add_trace(go.Contour(z=(ms > 0).astype(float), contours=dict(start=0.5, end=0.5, coloring="lines"),
                                     line=dict(width=2), colorscale=_RED, showscale=False, hoverinfo="skip",
                                     **geometry),
                          row=1, col=col)
        if corners is not None and len(corners):
            c = np.asarray(corners)
            hit = (c[:, k] <= centre[k]) & (centre[k] < c[:, k] + patch_size)
            xs, ys = [], []
            for p in c[hit]:
                # as far as the patch lies on the image (patches may stick out of the scan)
                x0, x1 = max(p[cx], 0) - 0.5, min(p[cx] + patch_size, size[cx]) - 0.5
                y0, y1 = max(p[cy], 0) - 0.5, min(p[cy] + patch_size, size[cy]) - 0.5
                if x1 <= x0 or y1 <= y0:
                    continue
                x0, x1, y0, y1 = x0 * spacing[cx], x1 * spacing[cx], y0 * spacing[cy], y1 * spacing[cy]
                xs += [x0, x1, x1, x0, x0, None]
                ys += [y0, y0, y1, y1, y0, None]
            fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", line=dict(color="yellow", width=1),
                                     showlegend=False, hoverinfo="skip"), row=1, col=col)
        # Superior up for coronal/sagittal: z index grows superior.
        fig.update_yaxes(autorange=True if ax != "axial" else "reversed", scaleanchor=f"x{col}",
                         title_text=_AXIS_TITLES[cy], title_standoff=2, row=1, col=col)
        fig.update_xaxes(title_text=_AXIS_TITLES[cx], title_standoff=2, row=1, col=col)
    fig.update_layout(title=title, height=400, width=380 * len(axes),
                      margin=dict(l=50, r=10, t=50, b=45))
    return fig


_AXIS_TITLES = ("x (mm, → left)", "y (mm, → posterior)", "z (mm, → superior)")


def _spacing(image: Any) -> tuple[float, float, float]:
    if hasattr(image, "GetSpacing"):
        return tuple(float(v) for v in image.GetSpacing())
    if hasattr(image, "spacing"):
        return tuple(float(v) for v in image.spacing)
    return (1.0, 1.0, 1.0)


def plot_registration(atlas: Any, subject_mask: sitk.Image, transform: sitk.Transform,
                      initial: sitk.Transform | None = None, title: str = ""):
    """Atlas lung mask (grey) with the subject mask warped into atlas space (red outline),
    before (``initial``, default identity) and after the affine; coronal middle slices."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    ref = atlas.mask if hasattr(atlas, "mask") else atlas
    a = sitk.GetArrayFromImage(ref) > 0
    y = int(np.nonzero(a.any(axis=(0, 2)))[0].mean())
    fig = make_subplots(rows=1, cols=2, subplot_titles=["before", "after"])
    # millimetres along the atlas grid (x: → patient left, z: → superior, drawn upwards)
    sx, _, sz = (float(v) for v in ref.GetSpacing())
    ox, _, oz = (float(v) for v in ref.GetOrigin())
    xs = ox + sx * np.arange(a.shape[2])
    zs = oz + sz * np.arange(a.shape[0])
    for col, t in enumerate([initial or sitk.Transform(3, sitk.sitkIdentity), transform], start=1):
        w = sitk.GetArrayFromImage(sitk.Resample(sitk.Cast(subject_mask > 0, sitk.sitkUInt8), ref, t,
                                                 sitk.sitkNearestNeighbor, 0)) > 0
        fig.add_trace(go.Heatmap(z=a[:, y, :].astype(float), x=xs, y=zs, colorscale="gray",
                                 showscale=False, hoverinfo="skip"), row=1, col=col)
        fig.add_trace(go.Contour(z=w[:, y, :].astype(float), x=xs, y=zs,
                                 contours=dict(start=0.5, end=0.5, coloring="lines"),
                                 line=dict(width=2), colorscale=_RED, showscale=False, hoverinfo="skip"),
                      row=1, col=col)
        fig.update_yaxes(scaleanchor=f"x{col}", title_text=_AXIS_TITLES[2], title_standoff=2,
                         row=1, col=col)
        fig.update_xaxes(title_text=_AXIS_TITLES[0], title_standoff=2, row=1, col=col)
    fig.update_layout(title=title or "subject lungs (red) on the atlas lungs (grey), coronal",
                      height=420, width=800, margin=dict(l=60, r=10, t=50, b=50))
    return fig


def plot_patches(patches: np.ndarray, indices: Sequence[int] | None = None, n: int = 8, title: str = "",
                 window: str = "lung"):
    """Middle axial slice of some patches (int16 HU) side by side, in a radiology window
    (``"lung"`` by default; ``"emphysema"`` shows low-attenuation holes best)."""
    import plotly.express as px

    idx = list(indices) if indices is not None else list(np.linspace(0, len(patches) - 1, min(n, len(patches))).astype(int))
    P = patches.shape[-1]
    sl = np.stack([patches[i, P // 2] for i in idx])
    from drasclr_toolkit.viz.slices import WINDOW_PRESETS

    level, width = WINDOW_PRESETS[window]
    fig = px.imshow(sl, facet_col=0, facet_col_wrap=len(idx), color_continuous_scale="gray",
                    zmin=level - width / 2, zmax=level + width / 2, binary_string=False)
    for i, a in enumerate(fig.layout.annotations):
        a.text = f"landmark {idx[i]}"
    window_text = f"{window} window {level - width / 2:.0f}…{level + width / 2:.0f} HU"
    fig.update_layout(title=f"{title} ({window_text})" if title else window_text, height=260,
                      coloraxis_showscale=False, margin=dict(l=10, r=10, t=50, b=10))
    fig.update_xaxes(showticklabels=False)
    fig.update_yaxes(showticklabels=False)
    return fig
