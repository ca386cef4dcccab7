"""Pictures that explain DrasCLR pretraining: expert routing in 3D, positives and negatives."""

from __future__ import annotations

import numpy as np
import torch

from drasclr_toolkit.models.routing import routing_weights
from drasclr_toolkit.patch_source import PatchSource
from drasclr_toolkit.ssl.augment import PatchAugmenter, hu_to_unit

__all__ = ["plot_positive_and_negatives", "plot_routing_weights"]


def plot_routing_weights(encoder: torch.nn.Module, landmarks: np.ndarray,
                         landmark_coords: np.ndarray, title: str = "routing weights, first CondConv layer"):
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
    p = np.asarray(landmarks, dtype=float)
    hover = [f"landmark {i}<br>" + "<br>".join(f"expert {e}: {w:.2f}" for e, w in enumerate(row))
             for i, row in enumerate(weights)]
    fig = go.Figure(go.Scatter3d(
        x=p[:, 0], y=p[:, 1], z=p[:, 2], mode="markers", text=hover, hoverinfo="text",
        marker=dict(size=5, color=weights[:, 0], colorscale="Viridis", cmin=0, cmax=1,
                    colorbar=dict(title="weight"))))
    buttons = [dict(label=f"expert {e}", method="restyle",
                    args=[{"marker.color": [weights[:, e]]}]) for e in range(weights.shape[1])]
    fig.update_layout(title=title, height=480, margin=dict(l=0, r=0, t=50, b=0),
                      updatemenus=[dict(buttons=buttons, x=0.0, y=1.0, xanchor="left")],
                      scene=dict(xaxis_title="x (left)", yaxis_title="y (posterior)",
                                 zaxis_title="z (superior)", aspectmode="data"))
    return fig


def plot_positive_and_negatives(source: PatchSource, loc: int, subject: int, n_negatives: int = 3,
                                augmenter: PatchAugmenter | None = None, seed: int = 0):
    """Middle slices of what the contrastive loss compares at one location.

    Left: two augmented views of one subject's patch (query and positive key). Right: the
    same location in other subjects (what the location's queue holds as negatives).

    Example:
        >>> from drasclr_toolkit.patch_source import ArrayPatchSource
        >>> src = ArrayPatchSource.synthetic(4, 3, patch_size=16)
        >>> len(plot_positive_and_negatives(src, loc=1, subject=0, n_negatives=2).data)
        4
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
    fig = make_subplots(rows=1, cols=len(images), subplot_titles=titles, horizontal_spacing=0.02)
    for i, img in enumerate(images, start=1):
        mid = img.shape[0] // 2
        fig.add_trace(go.Heatmap(z=img[mid], colorscale="gray", zmin=-1, zmax=1, showscale=False),
                      row=1, col=i)
        fig.update_xaxes(visible=False, row=1, col=i)
        fig.update_yaxes(visible=False, scaleanchor=f"x{i if i > 1 else ''}", row=1, col=i)
    fig.update_layout(title=f"location {loc}: a positive pair and negatives (middle axial slice)",
                      height=300, margin=dict(l=10, r=10, t=90, b=10))
    return fig
