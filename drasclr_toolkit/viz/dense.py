"""Dense emphysema maps: per-landmark classes in 3D and on a CT slice, truth beside prediction.

Class colours follow the disease overlay of :mod:`drasclr_toolkit.viz.slices`
(centrilobular red, paraseptal blue, panlobular green); "none" is light grey.

Example:
    >>> import numpy as np
    >>> corners = np.array([[0, 0, 0], [16, 0, 0], [0, 16, 16]])
    >>> fig = dense_map_figure(corners, np.array([0, 1, 3]), np.array([0, 1, 2]))
    >>> sorted({t.scene for t in fig.data})
    ['scene', 'scene2']
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from drasclr_toolkit.viz.landmarks import landmark_centres, scene_layout
from drasclr_toolkit.viz.slices import DISEASE_LABELS, WINDOW_PRESETS

__all__ = ["CLASS_COLOURS", "dense_map_figure", "dense_slice_figure", "label_efficiency_figure"]

CLASSES = ("none", "centrilobular", "paraseptal", "panlobular")
CLASS_COLOURS: dict[str, str] = {"none": "#c8c8c8",
                                 **{name: colour for name, colour in DISEASE_LABELS.values()}}


def _colour(name: str, index: int) -> str:
    return CLASS_COLOURS.get(name, ["#984ea3", "#a65628", "#f781bf"][index % 3])


def dense_map_figure(landmarks: np.ndarray, truth: np.ndarray, predicted: np.ndarray, *,
                     classes: Sequence[str] = CLASSES, spacing: Sequence[float] | None = None,
                     patch_size: int = 32, title: str | None = None,
                     marker_size: float = 5.0) -> go.Figure:
    """Two linked 3D scenes of one subject's landmarks: true class (left), predicted (right).

    ``truth`` and ``predicted`` are ``(L,)`` class indices (-1: unknown, not drawn). With
    ``spacing`` (atlas voxel size, mm) the axes are in mm, else in atlas voxels.
    """
    truth, predicted = np.asarray(truth), np.asarray(predicted)
    centres = landmark_centres(np.asarray(landmarks), patch_size,
                               (1.0, 1.0, 1.0) if spacing is None else spacing)
    unit = "voxel" if spacing is None else "mm"
    agree = (truth == predicted) & (truth >= 0)
    known = truth >= 0
    fig = make_subplots(rows=1, cols=2, specs=[[{"type": "scene"}, {"type": "scene"}]],
                        subplot_titles=["truth", f"predicted ({agree.sum()}/{known.sum()} "
                                                 "patches agree)"],
                        horizontal_spacing=0.02)
    for col, values in ((1, truth), (2, predicted)):
        for index, name in enumerate(classes):
            keep = values == index
            if not keep.any():
                continue
            ids = np.flatnonzero(keep)
            fig.add_trace(go.Scatter3d(
                x=centres[keep, 0], y=centres[keep, 1], z=centres[keep, 2], mode="markers",
                marker=dict(size=marker_size, color=_colour(name, index), opacity=0.9),
                name=name, legendgroup=name, showlegend=col == 1 or not (truth == index).any(),
                customdata=ids,
                hovertemplate="landmark %{customdata}<br>" + ("truth" if col == 1 else "predicted")
                              + f": {name}<extra></extra>"), row=1, col=col)
    layout = scene_layout(title, unit)
    fig.update_layout(title=title, margin=layout["margin"], legend=layout["legend"], height=480,
                      scene=layout["scene"], scene2=layout["scene"])
    return fig


def dense_slice_figure(ct: Any, centres_mm: np.ndarray, patch_mm: float, truth: np.ndarray,
                       predicted: np.ndarray, *, disease_map: np.ndarray | None = None,
                       z_mm: float | None = None, classes: Sequence[str] = CLASSES,
                       window: str = "emphysema", title: str | None = None) -> go.Figure:
    """One axial CT slice, twice: patches outlined in their true (left) and predicted
    (right) class colours; the true disease map (if given) tinted on the left.

    Args:
        ct: a ``CTImage`` from ``load_ct`` or a SimpleITK image, in LPS with an identity
            direction (what ``load_ct`` returns).
        centres_mm: ``(L, 3)`` patch centres in the same physical space (a subject
            record's ``centres_mm``).
        patch_mm: patch edge length in mm (patch size × preprocessing spacing).
        disease_map: label volume on the CT grid (synthetic ground truth), optional.
        z_mm: axial position; default the one crossing the most labelled patches.
    """
    import SimpleITK as sitk

    if hasattr(ct, "GetSpacing"):
        array, origin, spacing = (sitk.GetArrayViewFromImage(ct), np.array(ct.GetOrigin()),
                                  np.array(ct.GetSpacing()))
    else:  # a CTImage (numpy z, y, x in LPS)
        array, origin, spacing = (np.asarray(ct.array), np.asarray(ct.origin, float),
                                  np.asarray(ct.spacing, float))
    centres = np.asarray(centres_mm, dtype=np.float64)
    truth, predicted = np.asarray(truth), np.asarray(predicted)
    if z_mm is None:
        diseased = centres[(truth > 0) | (predicted > 0)]
        z_mm = float(np.median(diseased[:, 2])) if len(diseased) else float(np.median(centres[:, 2]))
    z_index = int(np.clip(round((z_mm - origin[2]) / spacing[2]), 0, array.shape[0] - 1))
    level, width = WINDOW_PRESETS[window]
    geometry = dict(x0=origin[0], dx=spacing[0], y0=origin[1], dy=spacing[1])
    fig = make_subplots(rows=1, cols=2, subplot_titles=["truth", "predicted"],
                        horizontal_spacing=0.04)
    for col in (1, 2):
        fig.add_trace(go.Heatmap(z=np.asarray(array[z_index]), colorscale="gray",
                                 zmin=level - width / 2, zmax=level + width / 2, showscale=False,
                                 hovertemplate="%{z} HU<extra></extra>", **geometry),
                      row=1, col=col)
    if disease_map is not None:
        labels = np.asarray(disease_map)[z_index].astype(float)
        tint = np.where(np.isin(labels, [1, 2, 3]), labels, np.nan)
        scale = [[0.0, CLASS_COLOURS["centrilobular"]], [0.5, CLASS_COLOURS["paraseptal"]],
                 [1.0, CLASS_COLOURS["panlobular"]]]
        fig.add_trace(go.Heatmap(z=tint, zmin=1, zmax=3, colorscale=scale, opacity=0.35,
                                 showscale=False, hoverinfo="skip", **geometry), row=1, col=1)
    half = patch_mm / 2.0
    crossing = np.abs(centres[:, 2] - z_mm) <= half
    for col, values, axis in ((1, truth, ""), (2, predicted, "2")):
        for loc in np.flatnonzero(crossing & (values >= 0)):
            name = classes[int(values[loc])]
            if name == "none":
                continue
            x, y = centres[loc, 0], centres[loc, 1]
            fig.add_shape(type="rect", x0=x - half, x1=x + half, y0=y - half, y1=y + half,
                          line=dict(color=_colour(name, int(values[loc])), width=2),
                          xref=f"x{axis}", yref=f"y{axis}")
    for index, name in enumerate(classes):  # legend entries for the outline colours
        if name != "none":
            fig.add_trace(go.Scatter(x=[None], y=[None], mode="lines", name=name,
                                     line=dict(color=_colour(name, index), width=3)),
                          row=1, col=1)
    for col in (1, 2):
        suffix = "" if col == 1 else str(col)
        # LPS: y grows posterior, so reversing puts anterior on top; x grows to the
        # patient's left, drawn on the viewer's right.
        fig.update_yaxes(autorange="reversed", scaleanchor=f"x{suffix}",
                         title_text="anterior ↑ (mm)", row=1, col=col)
        fig.update_xaxes(title_text="patient left → (mm)", row=1, col=col)
    fig.update_layout(title=title or f"axial slice z = {z_mm:.0f} mm: patch classes",
                      height=460, margin=dict(l=10, r=10, t=60, b=10),
                      legend=dict(orientation="v", x=1.02, xanchor="left", y=1))
    return fig


def label_efficiency_figure(results: Any, metric: str = "balanced_accuracy",
                            title: str | None = None) -> go.Figure:
    """Metric against the share of labelled subjects: mean over seeds with the min–max band
    per method, and the chance line (from :func:`drasclr_toolkit.evaluate.label_efficiency`).
    """
    import pandas as pd

    frame = pd.DataFrame(results)
    palette = {"fine-tuned": "#d62728", "from scratch": "#7f7f7f", "linear probe": "#1f77b4"}
    fig = go.Figure()
    for method, rows in frame.groupby("method", sort=False):
        stats = rows.groupby("fraction")[metric].agg(["mean", "min", "max", "count"]).reset_index()
        colour = palette.get(method, "#2ca02c")
        x = (stats["fraction"] * 100).tolist()
        fig.add_trace(go.Scatter(x=x + x[::-1], y=stats["max"].tolist() + stats["min"].tolist()[::-1],
                                 fill="toself", fillcolor=colour, opacity=0.15, line=dict(width=0),
                                 hoverinfo="skip", showlegend=False, legendgroup=method))
        fig.add_trace(go.Scatter(x=x, y=stats["mean"], mode="lines+markers", name=method,
                                 line=dict(color=colour), legendgroup=method,
                                 customdata=stats["count"],
                                 hovertemplate="%{x:.0f} % of labelled subjects: %{y:.3f} "
                                               "(mean of %{customdata} seeds)<extra>" + method
                                               + "</extra>"))
    if "chance" in frame:
        fig.add_hline(y=float(frame["chance"].mean()), line=dict(dash="dash", color="black"),
                      annotation_text="chance", annotation_position="bottom right")
    # Ticks at the shares that were run (plotly would label 20–90 % of a log axis "2 … 9").
    shares = sorted({float(f) * 100 for f in frame["fraction"]})
    fig.update_xaxes(type="log", title_text="labelled training subjects (% of the pool, log scale)",
                     tickmode="array", tickvals=shares, ticktext=[f"{v:g} %" for v in shares])
    fig.update_yaxes(title_text=metric.replace("_", " ") + " on held-out subjects", range=[0, 1])
    fig.update_layout(title=title or "Label efficiency: mean over seeds, band = min–max",
                      height=420, margin=dict(l=10, r=10, t=50, b=10))
    return fig
