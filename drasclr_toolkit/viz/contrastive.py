"""Pictures that explain DrasCLR pretraining: expert routing in 3D, positives and negatives."""

from __future__ import annotations

import numpy as np
import torch

from drasclr_toolkit.constants import HU_MAX, HU_MIN
from drasclr_toolkit.models.routing import routing_weights
from drasclr_toolkit.patch_source import PatchSource
from drasclr_toolkit.ssl.augment import PatchAugmenter, hu_to_unit

__all__ = ["plot_positive_and_negatives", "plot_routing_change", "plot_routing_weights"]


def _scene(title: str, spacing) -> dict:
    from drasclr_toolkit.viz.landmarks import scene_layout

    layout = scene_layout(title, "voxel" if spacing is None else "mm")
    layout.update(height=480)
    return layout


def _centres(landmarks: np.ndarray, patch_size: int, spacing) -> np.ndarray:
    from drasclr_toolkit.viz.landmarks import landmark_centres

    return landmark_centres(np.asarray(landmarks), patch_size,
                            (1.0, 1.0, 1.0) if spacing is None else spacing)


def plot_routing_change(before: torch.nn.Module, after: torch.nn.Module, landmarks: np.ndarray,
                        landmark_coords: np.ndarray, patch_size: int = 32, spacing=None,
                        title: str | None = None):
    """How training moved the routing weights of the first CondConv layer, per landmark.

    Drawn as the difference after − before (not as two maps: changes of a percent vanish
    on a 0–1 scale), one expert at a time (menu), on a diverging scale symmetric about
    zero and fitted to the largest change; hover shows the weights before and after.

    Example:
        >>> from drasclr_toolkit.models import DrasCLREncoder
        >>> a = DrasCLREncoder(rep_dim=8, proj_dim=8, num_experts=2, width=0.125)
        >>> b = DrasCLREncoder(rep_dim=8, proj_dim=8, num_experts=2, width=0.125)
        >>> pts = np.array([[0, 0, 0], [26, 0, 0], [0, 26, 26]])
        >>> fig = plot_routing_change(a, b, pts, pts / 26.0 * 2 - 1)
        >>> fig.data[0].marker.cmin == -fig.data[0].marker.cmax
        True
    """
    import plotly.graph_objects as go

    w0 = routing_weights(before, landmark_coords)
    w1 = routing_weights(after, landmark_coords)
    delta = w1 - w0
    largest = float(np.abs(delta).max()) or 1e-12
    p = _centres(landmarks, patch_size, spacing)
    hover = [f"landmark {i}<br>" + "<br>".join(
        f"expert {e}: {a:.3f} → {b:.3f} (Δ {b - a:+.4f})" for e, (a, b) in enumerate(zip(r0, r1)))
        for i, (r0, r1) in enumerate(zip(w0, w1))]
    fig = go.Figure(go.Scatter3d(
        x=p[:, 0], y=p[:, 1], z=p[:, 2], mode="markers", text=hover, hoverinfo="text",
        marker=dict(size=5, color=delta[:, 0], colorscale="RdBu_r", cmin=-largest, cmax=largest,
                    colorbar=dict(title="Δ weight"))))
    buttons = [dict(label=f"expert {e}", method="restyle",
                    args=[{"marker.color": [delta[:, e]]}]) for e in range(delta.shape[1])]
    fig.update_layout(**_scene(title or f"routing weight change after training (largest "
                                         f"|Δ| = {largest:.4f} on a 0–1 scale)", spacing))
    fig.update_layout(updatemenus=[dict(buttons=buttons, x=0.0, y=1.0, xanchor="left")])
    return fig


def plot_routing_weights(encoder: torch.nn.Module, landmarks: np.ndarray,
                         landmark_coords: np.ndarray, title: str = "routing weights, first CondConv layer",
                         patch_size: int = 32, spacing=None):
    """3D scatter of the landmarks coloured by one expert's routing weight; a menu picks the
    expert. Nearby anatomy gets similar mixtures of expert kernels.

    Example:
        >>> from drasclr_toolkit.models import DrasCLREncoder
        >>> enc = DrasCLREncoder(rep_dim=8, proj_dim=8, num_experts=3, width=0.125)
        >>> pts = np.array([[0, 0, 0], [26, 0, 0], [0, 26, 26]])
        >>> fig = plot_routing_weights(enc, pts, pts / 26.0 * 2 - 1)
        >>> len(fig.data), len(fig.layout.updatemenus[0].buttons)
        (1, 3)
    """
    import plotly.graph_objects as go

    weights = routing_weights(encoder, landmark_coords)
    p = _centres(landmarks, patch_size, spacing)
    hover = [f"landmark {i}<br>" + "<br>".join(f"expert {e}: {w:.2f}" for e, w in enumerate(row))
             for i, row in enumerate(weights)]
    fig = go.Figure(go.Scatter3d(
        x=p[:, 0], y=p[:, 1], z=p[:, 2], mode="markers", text=hover, hoverinfo="text",
        marker=dict(size=5, color=weights[:, 0], colorscale="Viridis", cmin=0, cmax=1,
                    colorbar=dict(title="weight"))))
    buttons = [dict(label=f"expert {e}", method="restyle",
                    args=[{"marker.color": [weights[:, e]]}]) for e in range(weights.shape[1])]
    fig.update_layout(**_scene(title, spacing))
    fig.update_layout(updatemenus=[dict(buttons=buttons, x=0.0, y=1.0, xanchor="left")])
    return fig


def plot_positive_and_negatives(source: PatchSource, loc: int, subject: int, n_negatives: int = 3,
                                augmenter: PatchAugmenter | None = None, seed: int = 0):
    """Middle slices of what the contrastive loss compares at one location.

    Left: two augmented views of one subject's patch (query and positive key). Right: the
    same location in other subjects (what the location's queue holds as negatives). Top
    row: what the network sees (-1024…240 HU mapped to [-1, 1]); bottom row: the same
    slices in an emphysema window (-1050…-750 HU), where low-attenuation holes show.

    Example:
        >>> from drasclr_toolkit.patch_source import ArrayPatchSource
        >>> src = ArrayPatchSource.synthetic(4, 3, patch_size=16)
        >>> len(plot_positive_and_negatives(src, loc=1, subject=0, n_negatives=2).data)
        8
    """
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    augmenter = augmenter or PatchAugmenter(translate=12.0 * source.patch_size / 32.0)
    others = [s for s in range(len(source.subject_ids)) if s != subject][:n_negatives]
    anchor = np.asarray(source.read_location(loc, [subject]))
    view1, view2, _ = augmenter(anchor, None, seed=seed)
    negatives = hu_to_unit(np.asarray(source.read_location(loc, others)))
    images = [view1[0, 0].numpy(), view2[0, 0].numpy()] + [n for n in negatives]
    ids = source.subject_ids
    titles = [f"view 1 (query)<br>{ids[subject]}", f"view 2 (positive)<br>{ids[subject]}"] + \
             [f"negative<br>{ids[s]}" for s in others]
    from drasclr_toolkit.viz.slices import WINDOW_PRESETS

    level, width = WINDOW_PRESETS["emphysema"]
    n = len(images)
    fig = make_subplots(rows=2, cols=n, subplot_titles=titles, horizontal_spacing=0.02,
                        vertical_spacing=0.04)
    for i, img in enumerate(images, start=1):
        mid = img[img.shape[0] // 2]
        hu = (mid + 1.0) * (HU_MAX - HU_MIN) / 2.0 + HU_MIN
        fig.add_trace(go.Heatmap(z=mid, colorscale="gray", zmin=-1, zmax=1, showscale=False,
                                 hovertemplate="network input %{z:.2f}<extra></extra>"),
                      row=1, col=i)
        fig.add_trace(go.Heatmap(z=hu, colorscale="gray", zmin=level - width / 2,
                                 zmax=level + width / 2, showscale=False,
                                 hovertemplate="%{z:.0f} HU<extra></extra>"), row=2, col=i)
        for row in (1, 2):
            axis = (row - 1) * n + i
            fig.update_xaxes(visible=False, row=row, col=i)
            # anterior (low y) at the top, as in the axial CT views
            fig.update_yaxes(visible=False, autorange="reversed",
                             scaleanchor=f"x{axis if axis > 1 else ''}", row=row, col=i)
    fig.update_layout(title=f"location {loc}: a positive pair and negatives (middle axial slice;"
                            " top: network input −1024…240 HU, bottom: emphysema window "
                            f"{level - width / 2:.0f}…{level + width / 2:.0f} HU)",
                      height=470, margin=dict(l=10, r=10, t=100, b=10))
    return fig
