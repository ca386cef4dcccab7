"""3D landmark clouds in atlas space, coloured by any per-landmark value.

The colourings are computed elsewhere: :func:`~drasclr_toolkit.evaluate.patch_pca` (a
principal component of the patch embeddings), :func:`~drasclr_toolkit.evaluate.patch_kmeans`
(a cluster of the patch embeddings); a probe's per-patch prediction or the synthetic
cohort's ground truth are plain ``(L,)`` or ``(N, L)`` arrays and go in the same way.
With ``mask`` the lung surface is drawn under the points.

Points sit at the patch centres, ``(corner + (P - 1) / 2) · spacing``, in the atlas voxel
frame (x grows to the patient's left, y posterior, z superior): millimetres from the atlas
corner when the atlas spacing is given, voxel indices (and axes that say so) when not.

Example:
    >>> import numpy as np
    >>> corners = np.array([[0, 0, 0], [26, 0, 0], [0, 26, 26]])
    >>> fig = landmark_cloud(corners, values=np.array([0.1, 0.5, 0.9]), value_name="PC1")
    >>> fig.data[0].type, len(fig.data[0].x)
    ('scatter3d', 3)
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import plotly.graph_objects as go
from plotly.colors import qualitative

from drasclr_toolkit.errors import InputError
from drasclr_toolkit.viz.surface import apply_affine, image_affine, surface_mesh

__all__ = ["SCENE_CAMERA", "landmark_centres", "landmark_cloud", "landmark_labels",
           "landmark_trace", "landmark_traces",
           "CATEGORY_COLOURS"]

CATEGORY_COLOURS: tuple[str, ...] = tuple(qualitative.Plotly) + tuple(qualitative.Dark24)


def landmark_centres(landmarks: np.ndarray, patch_size: int = 32,
                     spacing: Sequence[float] = (1.0, 1.0, 1.0)) -> np.ndarray:
    """(L, 3) patch centres ``(corner + (P - 1) / 2) · spacing`` in (x, y, z) order.

    Example:
        >>> landmark_centres(np.array([[0, 26, 52]]), 32).tolist()
        [[15.5, 41.5, 67.5]]
    """
    corners = np.asarray(landmarks, dtype=np.float64)
    if corners.ndim != 2 or corners.shape[1] != 3:
        raise InputError(f"landmarks must be (L, 3) corners (x, y, z); got {corners.shape}")
    return (corners + (patch_size - 1) / 2.0) * np.asarray(spacing, dtype=np.float64)


def _is_categorical(values: np.ndarray) -> bool:
    return values.dtype.kind in "iub" or values.dtype.kind in "OUS"


def _format(value: Any) -> str:
    if isinstance(value, (float, np.floating)):
        return f"{value:.4g}"
    return str(value)


def landmark_trace(landmarks: np.ndarray, values: np.ndarray | None = None, *,
                   lung_fraction: np.ndarray | None = None, value_name: str = "value",
                   categorical: bool | None = None, patch_size: int = 32,
                   spacing: Sequence[float] = (1.0, 1.0, 1.0),
                   landmark_ids: Sequence[int] | None = None, marker_size: float = 4.0,
                   colorscale: str = "Viridis", cmin: float | None = None,
                   cmax: float | None = None, name: str = "landmarks",
                   showscale: bool = True, positions: np.ndarray | None = None,
                   unit: str = "mm", labels: Sequence[str] | None = None) -> go.Scatter3d:
    """One Scatter3d of landmarks coloured by ``values`` (L,); the building block of the views.

    Hover shows the landmark (``labels``, e.g. "right upper · 17", else its id), where it is
    drawn (x, y, z) in the axes' ``unit``, its lung fraction and the value. ``positions``
    overrides where the points are drawn (default: patch centres).
    """
    corners = np.asarray(landmarks)
    n_loc = len(corners)
    xyz = landmark_centres(corners, patch_size, spacing) if positions is None else \
        np.asarray(positions, dtype=np.float64)
    ids = np.arange(n_loc) if landmark_ids is None else np.asarray(landmark_ids)
    if values is not None:
        values = np.asarray(values)
        if values.shape != (n_loc,):
            raise InputError(f"values must have one entry per landmark ({n_loc}); "
                             f"got shape {values.shape}")
    if lung_fraction is not None:
        lung_fraction = np.asarray(lung_fraction, dtype=np.float64)
        if lung_fraction.shape != (n_loc,):
            raise InputError(f"lung_fraction must have shape ({n_loc},); got {lung_fraction.shape}")
    text = []
    for i in range(n_loc):
        label = labels[i] if labels is not None else f"landmark {ids[i]}"
        parts = [label, "centre (x, y, z) = ({:.0f}, {:.0f}, {:.0f}) {}".format(*xyz[i], unit)]
        if lung_fraction is not None:
            parts.append(f"lung fraction {lung_fraction[i]:.2f}")
        if values is not None:
            parts.append(f"{value_name} = {_format(values[i])}")
        text.append("<br>".join(parts))
    marker: dict[str, Any] = {"size": marker_size, "opacity": 0.9}
    if values is None:
        marker["color"] = "#636efa"
    elif categorical if categorical is not None else _is_categorical(values):
        # Explicit colours per category: a continuous scale would suggest an order.
        categories = {c: j for j, c in enumerate(sorted(set(values.tolist()), key=str))}
        marker["color"] = [CATEGORY_COLOURS[categories[v] % len(CATEGORY_COLOURS)]
                           for v in values.tolist()]
    else:
        marker.update(color=values.astype(np.float64), colorscale=colorscale,
                      showscale=showscale, colorbar={"title": {"text": value_name}},
                      cmin=cmin, cmax=cmax)
    return go.Scatter3d(x=xyz[:, 0], y=xyz[:, 1], z=xyz[:, 2], mode="markers", marker=marker,
                        text=text, hovertemplate="%{text}<extra></extra>", name=name,
                        customdata=ids)


def landmark_traces(landmarks: np.ndarray, values: np.ndarray | None = None, *,
                    value_name: str = "value", categorical: bool | None = None,
                    name: str = "landmarks", categories: Sequence[Any] | None = None,
                    **kwargs: Any) -> list[go.Scatter3d]:
    """The landmarks as traces: one per category for categorical values (so the legend
    names each colour), otherwise the single trace of :func:`landmark_trace`. ``categories``
    fixes the colour order (pass the cohort's categories so a colour means the same
    category for every subject).

    Example:
        >>> traces = landmark_traces(np.zeros((3, 3)), np.array([0, 1, 1]), value_name="cluster")
        >>> [(t.name, len(t.x)) for t in traces]
        [('cluster 0', 1), ('cluster 1', 2)]
    """
    vals = None if values is None else np.asarray(values)
    is_cat = vals is not None and (categorical if categorical is not None else _is_categorical(vals))
    if not is_cat:
        return [landmark_trace(landmarks, vals, value_name=value_name, categorical=False,
                               name=name, **kwargs)]
    corners = np.asarray(landmarks)
    ids = np.asarray(kwargs.pop("landmark_ids", None) if "landmark_ids" in kwargs else
                     np.arange(len(corners)))
    positions = kwargs.pop("positions", None)
    labels = kwargs.pop("labels", None)
    lung = kwargs.pop("lung_fraction", None)
    traces = []
    order = list(categories) if categories is not None else sorted(set(vals.tolist()), key=str)
    for j, category in enumerate(order):
        keep = vals == category
        if not keep.any():
            continue
        trace = landmark_trace(corners[keep], None, value_name=value_name,
                               lung_fraction=None if lung is None else np.asarray(lung)[keep],
                               positions=None if positions is None else np.asarray(positions)[keep],
                               labels=None if labels is None else
                               [labels[j] for j in np.flatnonzero(keep)],
                               landmark_ids=ids[keep], name=f"{value_name} {category}", **kwargs)
        trace.marker.color = CATEGORY_COLOURS[j % len(CATEGORY_COLOURS)]
        trace.legendgroup = f"{value_name} {category}"
        trace.showlegend = True
        trace.text = [t + f"<br>{value_name} = {category}" for t in trace.text]
        traces.append(trace)
    return traces


# Plotly's default eye (1.25, 1.25, 1.25) draws a lung-shaped box (taller than wide) so
# large that the lowest tick labels and the y title fall below the figure; from this
# distance every tick and title stays inside (checked in a browser, tests/test_pages.py).
# Looking more along x than y lays the y axis flatter, so its title clears the z title
# where both axes meet (at (2.1, 2.1, 1.3) they ran into each other; seen in JupyterLab).
SCENE_CAMERA: dict[str, Any] = {"eye": {"x": 2.4, "y": 1.9, "z": 1.2}}
# A fixed height: without one JupyterLab draws a figure 360 px tall (the exported page 450),
# where the z and y titles of a lung-shaped box run into each other.
SCENE_HEIGHT = 500
# Ticks per 3D axis: plotly's default puts one every 20 mm, which jumble where an axis
# recedes from the camera.
SCENE_TICKS = 6


def landmark_labels(landmarks: np.ndarray, patch_size: int = 32, atlas: Any = None) -> list[str]:
    """"right upper · 17": each landmark's lung zone and index, for lists and hovers.

    Zones come from the atlas lung mask when ``atlas`` is given, else from the landmark
    grid (:func:`drasclr_toolkit.evaluate.features.landmark_zones`).

    Example:
        >>> landmark_labels(np.array([[0, 0, 0], [40, 0, 60]]))
        ['right lower · 0', 'left upper · 1']
    """
    from drasclr_toolkit.evaluate.features import landmark_zones

    zones = landmark_zones(np.asarray(landmarks), patch_size, atlas)
    return [f"{str(z).replace('_', ' ')} · {i}" for i, z in enumerate(zones)]


def scene_layout(title: str | None = None, unit: str = "mm") -> dict[str, Any]:
    """Layout for an atlas-space 3D scene (true proportions, labelled patient axes).

    ``unit`` is ``"mm"`` when positions are voxel index × spacing, ``"voxel"`` when the
    spacing is unknown and positions are atlas voxel indices.
    """
    return dict(
        title=title,
        scene=dict(aspectmode="data", camera=SCENE_CAMERA,
                   xaxis=dict(title=f"x ({unit}, → left)", nticks=SCENE_TICKS),
                   yaxis=dict(title=f"y ({unit}, → posterior)", nticks=SCENE_TICKS),
                   zaxis=dict(title=f"z ({unit}, → superior)", nticks=SCENE_TICKS)),
        margin=dict(l=10, r=10, t=40 if title else 10, b=10),
        legend=dict(orientation="h"),
        height=SCENE_HEIGHT,
    )


def landmark_cloud(landmarks: np.ndarray, values: np.ndarray | None = None, *,
                   lung_fraction: np.ndarray | None = None,
                   subject_ids: Sequence[str] | None = None, value_name: str = "value",
                   categorical: bool | None = None, patch_size: int = 32,
                   spacing: Sequence[float] | None = None, marker_size: float = 4.0,
                   colorscale: str = "Viridis", title: str | None = None,
                   labels: Sequence[str] | None = None, mask: Any = None,
                   affine: np.ndarray | None = None, positions: np.ndarray | None = None,
                   downsample: int = 2, surface_opacity: float = 0.2,
                   surface_colour: str = "#e6a0a0") -> go.Figure:
    """3D cloud of landmarks coloured by a per-landmark value, optionally on the lung
    surface: the one 3D landmark view (atlas, a mapped subject, a cohort).

    Args:
        landmarks: (L, 3) atlas patch corners (x, y, z), e.g. ``embeddings.landmarks``.
        values: ``(L,)`` for one subject or a cohort summary, or ``(N, L)`` for a cohort:
            one trace per subject and a dropdown to switch between them (colour range
            shared). Integer or string values are drawn as categories (e.g. k-means
            clusters); floats on ``colorscale``. ``None``: one colour (or the lung
            fraction when given).
        lung_fraction: ``(L,)`` or ``(N, L)``, shown on hover.
        subject_ids: names for the dropdown (N values).
        value_name: the name of the value in the colour bar and hover.
        categorical: force categorical (True) or continuous (False) colouring.
        spacing: atlas voxel size (x, y, z) in mm (e.g. ``atlas.mask.GetSpacing()``): the
            axes are then in mm. Without it the axes are atlas voxel indices, and say so.
        labels: a name per landmark for the hover (e.g. :func:`landmark_labels`).
        mask: a lung mask to draw under the points as a surface (marching cubes, blocks of
            ``downsample``³ voxels, ``surface_opacity``): a (z, y, x) array in the frame of
            ``spacing``/``affine``, or a SimpleITK image, whose spacing is used when
            ``spacing`` is not given and whose physical geometry (LPS mm) when neither
            ``spacing`` nor ``affine`` is given (e.g. a preprocessed subject's mask with
            its patch corners).
        affine: 4×4 matrix from voxel index (x, y, z, 1) to world coordinates (e.g.
            :func:`~drasclr_toolkit.viz.surface.image_affine`), applied to the surface
            and the landmarks alike.
        positions: ``(L, 3)`` where to draw the points in the scene's frame instead of
            the patch centres of ``landmarks`` (e.g. a subject's exact mapped centres
            ``centres_mm``, which the integer corners round).

    Returns a ``plotly.graph_objects.Figure``; ``fig.write_html(path)`` saves it.

    Example:
        >>> fig = landmark_cloud(np.zeros((4, 3)), np.ones((2, 4)), subject_ids=["a", "b"])
        >>> len(fig.data), [t.visible for t in fig.data]
        (2, [True, False])
        >>> mask = np.zeros((40, 40, 40), np.uint8); mask[8:32, 8:32, 8:32] = 1
        >>> [t.type for t in landmark_cloud(np.array([[8, 8, 8]]), [1.0], mask=mask).data]
        ['mesh3d', 'scatter3d']
    """
    corners = np.asarray(landmarks)
    n_loc = len(corners)
    if hasattr(mask, "GetSpacing"):  # a SimpleITK image brings its geometry
        import SimpleITK as sitk

        if spacing is None and affine is None:
            affine = image_affine(mask)
        spacing = mask.GetSpacing() if spacing is None else spacing
        mask = sitk.GetArrayViewFromImage(mask)
    unit = "voxel" if spacing is None and affine is None and positions is None else "mm"
    spacing = (1.0, 1.0, 1.0) if spacing is None else tuple(float(v) for v in spacing)
    if positions is None:
        positions = landmark_centres(corners, patch_size, spacing)
        if affine is not None:
            positions = apply_affine(affine, positions / np.asarray(spacing))
    positions = np.asarray(positions, dtype=np.float64)
    if positions.shape != (n_loc, 3):
        raise InputError(f"positions must be (L, 3) with L = {n_loc}; got {positions.shape}")
    surface = [] if mask is None else [_surface_trace(mask, spacing, affine, downsample,
                                                      surface_opacity, surface_colour)]
    if values is None and lung_fraction is not None and np.ndim(lung_fraction) == 1:
        values, value_name = np.asarray(lung_fraction), "lung fraction"
    values = None if values is None else np.asarray(values)
    if values is None or values.ndim == 1:
        lung = None if lung_fraction is None else np.asarray(lung_fraction)
        if lung is not None and lung.ndim == 2:
            lung = lung.mean(axis=0)  # a cohort summary of a one-row colouring
        traces = landmark_traces(corners, values, lung_fraction=lung, value_name=value_name,
                                 categorical=categorical, patch_size=patch_size,
                                 spacing=spacing, marker_size=marker_size,
                                 colorscale=colorscale, unit=unit, labels=labels,
                                 positions=positions)
        fig = go.Figure(surface + traces)
        fig.update_layout(**scene_layout(title, unit))
        return fig

    if values.ndim != 2 or values.shape[1] != n_loc:
        raise InputError(f"values must be (L,) or (N, L) with L = {n_loc}; got {values.shape}")
    n = values.shape[0]
    names = [str(s) for s in subject_ids] if subject_ids is not None else \
        [f"subject {i}" for i in range(n)]
    if len(names) != n:
        raise InputError(f"{len(names)} subject_ids for {n} rows of values")
    lung = None if lung_fraction is None else np.asarray(lung_fraction)
    if lung is not None and lung.shape != values.shape:
        raise InputError(f"lung_fraction must have the shape of values {values.shape}; "
                         f"got {lung.shape}")
    is_cat = categorical if categorical is not None else _is_categorical(values)
    lo, hi = (None, None) if is_cat else (float(np.nanmin(values)), float(np.nanmax(values)))
    fig = go.Figure(surface)
    owner: list[int] = [-1] * len(surface)  # the subject each trace belongs to (-1: all)
    for i in range(n):
        extra = {"categories": sorted(set(values.ravel().tolist()), key=str)} if is_cat else \
            {"cmin": lo, "cmax": hi}
        traces = landmark_traces(corners, values[i],
                                 lung_fraction=None if lung is None else lung[i],
                                 value_name=value_name, categorical=is_cat,
                                 patch_size=patch_size, spacing=spacing,
                                 marker_size=marker_size, colorscale=colorscale,
                                 name=names[i], unit=unit, labels=labels,
                                 positions=positions, **extra)
        for trace in traces:
            trace.visible = i == 0
            fig.add_trace(trace)
            owner.append(i)
    buttons = [dict(label=names[i], method="update",
                    args=[{"visible": [o in (i, -1) for o in owner]},
                          {"title.text": f"{title or value_name}: {names[i]}"}])
               for i in range(n)]
    fig.update_layout(**scene_layout(f"{title or value_name}: {names[0]}", unit))
    fig.update_layout(updatemenus=[dict(buttons=buttons, direction="down", x=0.0, y=1.0,
                                        xanchor="left", yanchor="top", showactive=True)])
    return fig


def _surface_trace(mask: np.ndarray, spacing: Sequence[float], affine: np.ndarray | None,
                   downsample: int, opacity: float, colour: str) -> go.Mesh3d:
    verts, faces = surface_mesh(mask, spacing, downsample)
    if affine is not None:
        verts = apply_affine(affine, verts / np.asarray(spacing))
    return go.Mesh3d(x=verts[:, 0], y=verts[:, 1], z=verts[:, 2], i=faces[:, 0],
                     j=faces[:, 1], k=faces[:, 2], color=colour, opacity=opacity,
                     name="lung surface", hoverinfo="skip", showlegend=True, flatshading=False)
