"""Orthogonal CT slice views: a static plotly figure and an ipywidgets viewer on top of it.

The static :func:`slice_figure` is what executed notebooks and HTML exports show; the
interactive :func:`slice_viewer` wraps the same drawing in sliders and window presets.

Example
-------
>>> import numpy as np
>>> vol = np.full((20, 30, 40), -1000, dtype=np.int16)
>>> fig = slice_figure(vol, spacing=(1.0, 1.0, 2.0), window="lung")
>>> [t.name for t in fig.data]
['axial', 'coronal', 'sagittal']
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from drasclr_toolkit.errors import InputError
from drasclr_toolkit.viz.export import attach_static_fallback

# (level, width) in HU; the usual radiology presets for chest CT.
WINDOW_PRESETS: dict[str, tuple[float, float]] = {
    "lung": (-600.0, 1500.0),
    "emphysema": (-900.0, 300.0),
    "mediastinum": (40.0, 400.0),
    "bone": (400.0, 1800.0),
    "full": (-250.0, 2500.0),
}

# Colours of the synthetic disease labels (0 is transparent).
DISEASE_LABELS: dict[int, tuple[str, str]] = {
    1: ("centrilobular", "#e41a1c"),
    2: ("paraseptal", "#377eb8"),
    3: ("panlobular", "#4daf4a"),
    4: ("airway wall", "#ff7f00"),
}

PLANES = ("axial", "coronal", "sagittal")
# What the picture's axes point to (patient directions, radiological display).
ROW_LABELS = {"axial": "anterior ↑", "coronal": "superior ↑", "sagittal": "superior ↑"}
COLUMN_LABELS = {"axial": "patient left →", "coronal": "patient left →",
                 "sagittal": "posterior →"}


@dataclass(frozen=True)
class _Plane:
    """How one plane is cut from a (z, y, x) volume and laid out in millimetres."""

    name: str
    axis: int  # numpy axis held fixed
    row_spacing: float
    col_spacing: float


def _planes(spacing: Sequence[float]) -> dict[str, _Plane]:
    sx, sy, sz = (float(s) for s in spacing)
    return {
        "axial": _Plane("axial", 0, sy, sx),  # rows y (anterior→posterior), cols x
        "coronal": _Plane("coronal", 1, sz, sx),  # rows z, cols x
        "sagittal": _Plane("sagittal", 2, sz, sy),  # rows z, cols y
    }


def _cut(volume: np.ndarray, plane: _Plane, index: int) -> np.ndarray:
    # Rows are drawn at y = row · spacing. Axial rows run anterior → posterior and that axis
    # is reversed (anterior at the top); coronal and sagittal rows run inferior → superior
    # (LPS: z grows to the head) on a plain upward axis, so superior is at the top. Columns
    # run x → patient left (axial, coronal): the patient's left is on the viewer's right,
    # as radiologists read CT.
    return np.take(volume, index, axis=plane.axis)


def _window(name_or_pair: str | tuple[float, float]) -> tuple[float, float]:
    if isinstance(name_or_pair, str):
        if name_or_pair not in WINDOW_PRESETS:
            raise InputError(
                f"unknown window preset {name_or_pair!r}; choose one of "
                f"{sorted(WINDOW_PRESETS)} or pass (level, width) in HU"
            )
        return WINDOW_PRESETS[name_or_pair]
    level, width = name_or_pair
    return float(level), float(width)


def _stride(shape: tuple[int, int], max_pixels: int) -> int:
    return max(1, int(np.ceil(max(shape) / max_pixels)))


def _overlay_colorscale(max_label: int) -> list[list]:
    """A discrete colorscale over label values 0..max_label; 0 is fully transparent.

    Transparency lives in the colorscale (not NaN gaps) so the data stays JSON-clean for
    widgets.
    """
    max_label = max(max_label, 1)
    colours = ["rgba(0,0,0,0)"] + [
        DISEASE_LABELS.get(value, (str(value), "#984ea3"))[1] for value in range(1, max_label + 1)
    ]
    n = len(colours)
    scale: list[list] = []
    for value, colour in enumerate(colours):
        scale += [[value / n, colour], [(value + 1) / n, colour]]
    return scale


def default_indices(volume: np.ndarray, overlay: np.ndarray | None = None) -> dict[str, int]:
    """Middle slices, or per plane the slice holding the most overlay voxels."""
    if overlay is not None and np.any(overlay):
        labelled = np.asarray(overlay) > 0
        zyx = [int(np.argmax(labelled.sum(axis=tuple(a for a in range(3) if a != axis))))
               for axis in range(3)]
    else:
        zyx = [int(n) // 2 for n in volume.shape]
    return {"axial": zyx[0], "coronal": zyx[1], "sagittal": zyx[2]}


def slice_figure(
    volume: np.ndarray,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    indices: dict[str, int] | None = None,
    window: str | tuple[float, float] = "lung",
    overlay: np.ndarray | None = None,
    overlay_opacity: float = 0.45,
    max_pixels: int = 256,
    title: str | None = None,
) -> go.Figure:
    """Axial, coronal and sagittal slices of a (z, y, x) HU volume, drawn in millimetres.

    ``spacing`` is (x, y, z) in mm (SimpleITK order). ``overlay`` is an integer label volume
    of the same shape (e.g. a lung mask or the synthetic disease map), drawn semi-transparent.
    Large slices are subsampled to at most ``max_pixels`` per side so figures stay light.
    """
    volume = np.asarray(volume)
    if volume.ndim != 3:
        raise InputError(f"slice_figure expects a 3-D (z, y, x) volume, got shape {volume.shape}")
    if overlay is not None and np.shape(overlay) != volume.shape:
        raise InputError(
            f"overlay shape {np.shape(overlay)} differs from the volume shape {volume.shape}; "
            "pass a label map on the same voxel grid"
        )
    level, width = _window(window)
    zmin, zmax = level - width / 2, level + width / 2
    indices = {**default_indices(volume, overlay), **(indices or {})}
    planes = _planes(spacing)
    max_label = int(overlay.max()) if overlay is not None and overlay.size else 0

    # The gaps hold each panel's vertical title ("superior ↑"): at 0.04 a narrow output
    # (690 px in JupyterLab) drew it over the neighbouring panel.
    fig = make_subplots(rows=1, cols=3, subplot_titles=[p.capitalize() for p in PLANES],
                        horizontal_spacing=0.06)
    for col, name in enumerate(PLANES, start=1):
        plane = planes[name]
        index = int(np.clip(indices[name], 0, volume.shape[plane.axis] - 1))
        image = _cut(volume, plane, index)
        step = _stride(image.shape, max_pixels)
        image = image[::step, ::step]
        geometry = dict(dx=plane.col_spacing * step, dy=plane.row_spacing * step, x0=0.0, y0=0.0)
        fig.add_trace(
            go.Heatmap(z=image, colorscale="gray", zmin=zmin, zmax=zmax, showscale=False,
                       name=name, hovertemplate="%{z} HU<extra>" + name + f" {index}</extra>",
                       **geometry),
            row=1, col=col,
        )
        if overlay is not None:
            labels = _cut(np.asarray(overlay), plane, index)[::step, ::step]
            fig.add_trace(
                go.Heatmap(z=labels.astype(np.int16), colorscale=_overlay_colorscale(max_label),
                           zmin=-0.5, zmax=max_label + 0.5, showscale=False,
                           opacity=overlay_opacity, name=f"{name} overlay",
                           hovertemplate="label %{z}<extra></extra>", **geometry),
                row=1, col=col,
            )
        axis_suffix = "" if col == 1 else str(col)
        fig.update_yaxes(autorange="reversed" if name == "axial" else True,
                         scaleanchor=f"x{axis_suffix}", showticklabels=False, row=1, col=col,
                         title_text=ROW_LABELS[name], title_standoff=2)
        fig.update_xaxes(showticklabels=False, row=1, col=col, title_text=COLUMN_LABELS[name])
    fig.update_layout(
        height=360, margin=dict(l=10, r=10, t=50 if title else 30, b=10),
        title=title, plot_bgcolor="black",
    )
    return fig


def slice_viewer(
    volume: np.ndarray,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    overlay: np.ndarray | None = None,
    window: str = "lung",
    max_pixels: int = 256,
    title: str | None = None,
):
    """Interactive orthogonal viewer: one slider per plane, HU window presets, overlay toggle.

    Returns an ``ipywidgets.VBox``; its ``figure`` attribute is the live plotly
    ``FigureWidget`` (useful in tests and for adding traces).
    """
    import ipywidgets as widgets

    figure = go.FigureWidget(slice_figure(volume, spacing, window=window, overlay=overlay,
                                          max_pixels=max_pixels, title=title))
    start = default_indices(volume, overlay)
    axes = {"axial": 0, "coronal": 1, "sagittal": 2}
    sliders = {
        name: widgets.IntSlider(value=start[name], min=0, max=volume.shape[axes[name]] - 1,
                                description=name, continuous_update=False)
        for name in PLANES
    }
    preset = widgets.Dropdown(options=list(WINDOW_PRESETS), value=window, description="window")
    show_overlay = widgets.Checkbox(value=overlay is not None, description="overlay",
                                    disabled=overlay is None)

    def redraw(_change=None) -> None:
        fresh = slice_figure(
            volume, spacing, indices={n: s.value for n, s in sliders.items()},
            window=preset.value, overlay=overlay, max_pixels=max_pixels, title=title,
        )
        with figure.batch_update():
            for trace, new in zip(figure.data, fresh.data):
                trace.z, trace.zmin, trace.zmax = new.z, new.zmin, new.zmax
                trace.hovertemplate = new.hovertemplate
                if trace.name.endswith("overlay"):
                    trace.visible = show_overlay.value

    for control in (*sliders.values(), preset, show_overlay):
        control.observe(redraw, names="value")
    box = widgets.VBox([widgets.HBox([preset, show_overlay]),
                        widgets.HBox(list(sliders.values())), figure])
    attach_static_fallback(box, lambda: [go.Figure(figure)],
                           note="Static copy of the slice viewer at its current slices "
                                "(the sliders work in JupyterLab).")
    box.figure = figure
    box.sliders = sliders
    box.window = preset
    box.show_overlay = show_overlay
    return box
