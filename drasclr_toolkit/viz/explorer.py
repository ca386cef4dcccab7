"""Linked patch explorer: pick a landmark in 3D (or from a list), see the subject's patch.

Three linked plotly FigureWidgets in an ipywidgets box:

* the landmark cloud in atlas space (click a point to select it),
* the subject's 32³ patch at the selected landmark in three orthogonal middle slices,
* when the CT and the subject-space patch corners are known, the CT slice through the
  patch centre with the patch drawn as a box (otherwise this panel is left out).

Example:
    >>> from drasclr_toolkit.patch_source import ArrayPatchSource  # doctest: +SKIP
    >>> ex = patch_explorer(source, subject=0)  # doctest: +SKIP
    >>> ex                                      # shows the widget in JupyterLab  # doctest: +SKIP
    >>> ex.select(42)                           # same as clicking landmark 42  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any, Sequence

import ipywidgets as widgets
import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from drasclr_toolkit.constants import HU_WINDOW
from drasclr_toolkit.patch_source import PatchSource

from drasclr_toolkit.viz.export import figure_html
from drasclr_toolkit.viz.landmarks import landmark_centres, landmark_cloud, landmark_labels

__all__ = ["PatchExplorer", "patch_explorer"]

SLICE_NAMES = ("axial", "coronal", "sagittal")
# Side by side the views fit a 1,500 px output area (JupyterLab at full width on a laptop)
# and, with the controls, a 900 px tall window: the 3D view and the patch panels are seen
# together.
CLOUD_WIDTH = 640
PANEL_WIDTH = 680
CLOUD_HEIGHT = 440
# Plotly picks a 3D point only within its drawn marker; an invisible marker this many times
# larger around each landmark catches clicks a few pixels off the centre.
PICK_HALO = 4.0
# What each patch slice's axes show (patient directions, 1 mm per voxel on the 1 mm grid).
# Axial: anterior up (rows reversed); coronal and sagittal: superior up.
_SLICE_AXES = {"axial": ("x (mm, → left)", "y (mm, ↓ posterior)"),
               "coronal": ("x (mm, → left)", "z (mm, ↑ superior)"),
               "sagittal": ("y (mm, → posterior)", "z (mm, ↑ superior)")}


def _ct_array(ct: Any) -> tuple[np.ndarray, tuple[float, float, float]]:
    """(z, y, x) array and (x, y, z) spacing of a CTImage, a SimpleITK image or an array."""
    if ct is None:
        return None, (1.0, 1.0, 1.0)
    if hasattr(ct, "array") and hasattr(ct, "spacing"):  # CTImage
        return np.asarray(ct.array), tuple(float(s) for s in ct.spacing)
    if hasattr(ct, "GetSpacing"):
        import SimpleITK as sitk

        return sitk.GetArrayViewFromImage(ct), tuple(float(s) for s in ct.GetSpacing())
    return np.asarray(ct), (1.0, 1.0, 1.0)


def _atlas_spacing(source: Any) -> tuple[float, float, float] | None:
    """The atlas voxel size of a PatchStore (3D axes in mm); None for other sources."""
    try:
        spacing = float(source.atlas.spacing)
    except Exception:  # an in-memory source has no atlas: axes stay in voxels
        return None
    return (spacing, spacing, spacing)


class PatchExplorer(widgets.VBox):
    """The widget returned by :func:`patch_explorer`; ``select(landmark)`` drives it.

    Attributes: ``cloud`` (FigureWidget, 3D), ``patch_figure`` (FigureWidget, 3 slices),
    ``ct_figure`` (FigureWidget or None), ``dropdown`` (landmark chooser), ``landmark``
    (the selected landmark index), ``patches`` (the subject's (L, P, P, P) patches).
    """

    def __init__(self, source: PatchSource, subject: int | str, ct: Any = None,
                 subject_corners: np.ndarray | None = None, values: np.ndarray | None = None,
                 value_name: str = "value", window: tuple[float, float] = HU_WINDOW,
                 landmark: int = 0) -> None:
        ids = list(source.subject_ids)
        self.subject_index = subject if isinstance(subject, (int, np.integer)) else ids.index(str(subject))
        self.subject_id = ids[self.subject_index]
        self.patches = np.asarray(source.read_subject(int(self.subject_index)))
        self.landmarks = np.asarray(source.landmarks)
        self.patch_size = int(source.patch_size)
        self.window = window
        lung = np.asarray(source.lung_fraction)[self.subject_index]
        if values is None:
            values, value_name = lung, "lung fraction"

        spacing = _atlas_spacing(source)
        self.cloud_spacing = spacing or (1.0, 1.0, 1.0)
        self.labels = landmark_labels(self.landmarks, self.patch_size,
                                      getattr(source, "atlas", None) if spacing else None)
        fig = landmark_cloud(self.landmarks, np.asarray(values), lung_fraction=lung,
                             value_name=value_name, patch_size=self.patch_size,
                             title=f"{self.subject_id}: hover over or click a landmark",
                             spacing=spacing, labels=self.labels)
        # The pick halo: near-transparent large markers on every landmark (fully transparent
        # ones are not picked); a click near a marker lands on its halo.
        everywhere = landmark_centres(self.landmarks, self.patch_size, self.cloud_spacing)
        fig.add_trace(go.Scatter3d(
            x=everywhere[:, 0], y=everywhere[:, 1], z=everywhere[:, 2], mode="markers",
            marker=dict(size=4.0 * PICK_HALO, color="rgba(0,0,0,0.01)"), name="pick halo",
            customdata=np.arange(len(self.landmarks)), text=self.labels,
            hovertemplate="%{text}<extra></extra>", showlegend=False))
        centre = landmark_centres(self.landmarks[:1], self.patch_size, self.cloud_spacing)
        fig.add_trace(go.Scatter3d(x=centre[:, 0], y=centre[:, 1], z=centre[:, 2], mode="markers",
                                   marker=dict(size=10, color="rgba(0,0,0,0)",
                                               line=dict(color="red", width=4)),
                                   name="selected", hoverinfo="skip"))
        # the legend in the top-left corner instead of below: the scene gets the height,
        # and its z and y axis titles room to stay apart
        fig.update_layout(width=CLOUD_WIDTH, height=CLOUD_HEIGHT,
                          legend=dict(orientation="v", x=0.01, y=0.99, yanchor="top"))
        self.cloud = go.FigureWidget(fig)
        # Plotly picks a 3D point on click only within a few pixels of its centre, but
        # reports hover from further away: following the hovered landmark (and clicks,
        # when they hit) makes selection forgiving. The checkbox pins the current one.
        self.follow_hover = widgets.Checkbox(value=True, description="follow hover",
                                             indent=False)
        for trace in self.cloud.data[:-1]:
            trace.on_click(self._on_click)
            trace.on_hover(self._on_hover)

        self.patch_figure = go.FigureWidget(make_subplots(rows=1, cols=3,
                                                          subplot_titles=SLICE_NAMES,
                                                          horizontal_spacing=0.09))
        mm = float(self.cloud_spacing[0])  # patch voxels are preprocessing voxels
        for col, plane in enumerate(SLICE_NAMES, start=1):
            self.patch_figure.add_trace(go.Heatmap(
                z=[[0]], dx=mm, dy=mm, colorscale="gray", zmin=window[0], zmax=window[1],
                showscale=col == 3, colorbar=dict(title=dict(text="HU"), thickness=12),
                hovertemplate="(%{x:.0f}, %{y:.0f}) mm: %{z} HU<extra></extra>"),
                row=1, col=col)
            across, down = _SLICE_AXES[plane]
            self.patch_figure.update_yaxes(autorange="reversed" if plane == "axial" else True,
                                           scaleanchor=f"x{col}",
                                           title_text=down, title_standoff=2, row=1, col=col)
            self.patch_figure.update_xaxes(title_text=across, title_standoff=2, row=1, col=col)
        self.patch_figure.update_layout(width=PANEL_WIDTH, height=300,
                                        margin=dict(l=50, r=10, t=60, b=45))

        ct_array, self.ct_spacing = _ct_array(ct)
        if subject_corners is None and ct_array is not None:
            getter = getattr(source, "subject_corners", None)
            subject_corners = getter(self.subject_index) if callable(getter) else None
        self.ct = ct_array if subject_corners is not None else None
        self.subject_corners = None if subject_corners is None else np.asarray(subject_corners)
        self.ct_figure = None
        if self.ct is not None:
            sx, sy = self.ct_spacing[0], self.ct_spacing[1]
            self.ct_figure = go.FigureWidget(go.Heatmap(
                z=[[0]], dx=sx, dy=sy, colorscale="gray", zmin=window[0], zmax=window[1],
                colorbar=dict(title=dict(text="HU"), thickness=12),
                hovertemplate="(%{x:.0f}, %{y:.0f}) mm: %{z} HU<extra></extra>"))
            self.ct_figure.update_yaxes(autorange="reversed", scaleanchor="x",
                                        title_text="y (mm from the scan corner, → posterior)")
            self.ct_figure.update_xaxes(title_text="x (mm from the scan corner, → left)")
            self.ct_figure.update_layout(width=PANEL_WIDTH, height=340,
                                         margin=dict(l=60, r=10, t=40, b=45))

        self.dropdown = widgets.Dropdown(options=[(label, i) for i, label in enumerate(self.labels)],
                                         value=int(landmark), description="landmark")
        self.dropdown.observe(lambda change: self._show(int(change["new"])), names="value")
        views = [self.cloud, self.patch_figure] if self.ct_figure is None else \
            [self.cloud, widgets.VBox([self.patch_figure, self.ct_figure])]
        # Side by side where the output area is wide enough, wrapped below it where not
        # (a notebook beside the file browser is narrower than the two panels).
        super().__init__([widgets.HBox([self.dropdown, self.follow_hover]),
                          widgets.HBox(views, layout=widgets.Layout(flex_flow="row wrap"))])
        self.landmark = -1
        self._show(int(landmark))

    def _repr_mimebundle_(self, **kwargs: Any) -> dict[str, Any]:
        """The live widget, plus a static copy of the current view for exported pages."""
        data = super()._repr_mimebundle_(**kwargs)
        data = dict(data[0] if isinstance(data, tuple) else data or {})
        figures = [go.Figure(self.cloud), go.Figure(self.patch_figure)]
        if self.ct_figure is not None:
            figures.append(go.Figure(self.ct_figure))
        data["text/html"] = (
            '<div style="font:12px sans-serif;color:#555">Static copy of the patch explorer '
            f"at landmark {self.labels[self.landmark]} (selection works in JupyterLab).</div>"
            + "".join(figure_html(f) for f in figures))
        return data

    def select(self, landmark: int) -> None:
        """Show ``landmark`` (what choosing it in the list or clicking it does)."""
        self.dropdown.value = int(landmark)  # observers update the figures
        if self.landmark != int(landmark):
            self._show(int(landmark))

    def _picked(self, trace: Any, points: Any) -> int | None:
        if not points.point_inds:
            return None
        return int(trace.customdata[points.point_inds[0]])

    def _on_click(self, trace: Any, points: Any, state: Any) -> None:
        landmark = self._picked(trace, points)
        if landmark is not None:
            self.select(landmark)

    def _on_hover(self, trace: Any, points: Any, state: Any) -> None:
        landmark = self._picked(trace, points)
        if landmark is not None and self.follow_hover.value:
            self.select(landmark)

    def _show(self, landmark: int) -> None:
        if not 0 <= landmark < len(self.landmarks):
            raise IndexError(f"landmark {landmark} out of range 0..{len(self.landmarks) - 1}")
        self.landmark = landmark
        patch = self.patches[landmark]  # (z, y, x)
        half = self.patch_size // 2
        slices = (patch[half], patch[:, half], patch[:, :, half])
        with self.patch_figure.batch_update():
            for trace, image in zip(self.patch_figure.data, slices):
                trace.z = image
            self.patch_figure.layout.title = (f"{self.subject_id}, {self.labels[landmark]}: "
                                              f"{self.patch_size}³ patch")
        centre = landmark_centres(self.landmarks[landmark:landmark + 1], self.patch_size,
                                  self.cloud_spacing)
        with self.cloud.batch_update():
            marker = self.cloud.data[-1]
            marker.x, marker.y, marker.z = centre[:, 0], centre[:, 1], centre[:, 2]
        if self.ct_figure is not None:
            self._show_ct(landmark)

    def _show_ct(self, landmark: int) -> None:
        x0, y0, z0 = (int(v) for v in self.subject_corners[landmark])
        p = self.patch_size
        z = int(np.clip(z0 + p // 2, 0, self.ct.shape[0] - 1))
        inside = 0 <= z0 + p // 2 < self.ct.shape[0]
        with self.ct_figure.batch_update():
            self.ct_figure.data[0].z = np.asarray(self.ct[z])
            sx, sy, sz = self.ct_spacing
            # the box as far as it lies on the image (a patch may stick out of the scan)
            ny, nx = self.ct.shape[1:]
            bx0, bx1 = max(x0, 0) - 0.5, min(x0 + p, nx) - 0.5
            by0, by1 = max(y0, 0) - 0.5, min(y0 + p, ny) - 0.5
            self.ct_figure.layout.shapes = [dict(type="rect", x0=bx0 * sx, x1=bx1 * sx,
                                                 y0=by0 * sy, y1=by1 * sy,
                                                 line=dict(color="red", width=2))] \
                if bx1 > bx0 and by1 > by0 else []
            self.ct_figure.layout.title = (f"axial slice at z = {z * sz:.0f} mm"
                                           + ("" if inside else ": patch centre outside the scan"))


def patch_explorer(source: PatchSource, subject: int | str, ct: Any = None, *,
                   subject_corners: np.ndarray | None = None, values: np.ndarray | None = None,
                   value_name: str = "value", window: tuple[float, float] = HU_WINDOW,
                   landmark: int = 0) -> PatchExplorer:
    """Linked view of one subject's patches: 3D landmark cloud ↔ patch slices ↔ CT box.

    Args:
        source: a patch source (PatchStore, ArrayPatchSource, ...).
        subject: index or id in ``source``.
        ct: the subject's CT on the grid the patches were cut from (the 1 mm isotropic
            image of preprocessing): a CTImage, a SimpleITK image or a (z, y, x) array.
        subject_corners: (L, 3) patch corners (x, y, z) in that CT's voxel index; taken from
            ``source.subject_corners(subject)`` when the source offers it. Without CT and
            corners the CT panel is left out and the patch is shown alone.
        values: (L,) per-landmark colouring of the cloud (default: the lung fraction).
        window: HU display range.
        landmark: the landmark shown first.
    """
    return PatchExplorer(source, subject, ct=ct, subject_corners=subject_corners, values=values,
                         value_name=value_name, window=window, landmark=landmark)
