"""Figures for the worked examples of the lab: the contrastive step on one batch, the
softmax at several temperatures, the momentum update, the conditional convolution's
kernels, a lung HU histogram with its densitometry, Harrell's C on five subjects and a
permutation null. Numbers come from :mod:`drasclr_toolkit.lab`; these only draw them.

Example:
    >>> import numpy as np
    >>> fig = hu_histogram_figure({"scan": np.array([-990.0, -960, -900, -850, -700])})
    >>> fig.data[0].type
    'scatter'
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e")


def similarity_heatmap(step: Any, title: str | None = None):
    """The (B, B) logits of one contrastive step: query i (rows) · key j (columns) / T.
    The diagonal holds the positives; each row's softmax is what the loss reads."""
    import plotly.graph_objects as go

    ids = step.subject_ids
    z = step.logits.numpy()
    fig = go.Figure(go.Heatmap(
        z=z, x=[f"key {s}" for s in ids], y=[f"query {s}" for s in ids], colorscale="RdBu_r",
        zmid=0, colorbar=dict(title="cos / T"),
        hovertemplate="%{y} · %{x}: %{z:.2f}<extra></extra>"))
    diag = list(range(len(ids)))
    fig.add_trace(go.Scatter(x=[f"key {ids[i]}" for i in diag], y=[f"query {ids[i]}" for i in diag],
                             mode="markers", marker=dict(symbol="square-open", size=14,
                                                         color="black"),
                             name="positive (same subject)", hoverinfo="skip"))
    fig.update_yaxes(autorange="reversed")
    fig.update_layout(title=title or f"landmark {step.loc}: every query's cosine with every key,"
                      f"<br>divided by T = {step.temperature:g} (boxes: the positives)",
                      height=560, width=720, margin=dict(l=10, r=10, t=60, b=10),
                      legend=dict(orientation="h", y=-0.15))
    return fig


def softmax_figure(table: pd.DataFrame, positive: int = 0, title: str | None = None):
    """Bars of the softmax over one query's candidates at each temperature (one panel each);
    the positive's bar is dark."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=len(table.columns), subplot_titles=list(table.columns),
                        shared_yaxes=True)
    colours = ["#333" if i == positive else "#9ecae1" for i in range(len(table))]
    for c, col in enumerate(table.columns, start=1):
        fig.add_trace(go.Bar(x=[str(i) for i in table.index], y=table[col], marker_color=colours,
                             showlegend=False,
                             hovertemplate="candidate %{x}: %{y:.3f}<extra></extra>"), row=1, col=c)
        fig.update_xaxes(title_text="candidate key", row=1, col=c)
    fig.update_yaxes(title_text="softmax probability", range=[0, 1], row=1, col=1)
    fig.update_layout(title=title or "one query's softmax over its candidate keys "
                      "(dark: the positive) at three temperatures", height=330,
                      margin=dict(l=10, r=10, t=70, b=10))
    return fig


def momentum_figure(table: pd.DataFrame):
    """A query weight's drift and its momentum copies over the steps."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for i, col in enumerate(c for c in table.columns if c != "step"):
        fig.add_trace(go.Scatter(x=table["step"], y=table[col], mode="lines", name=col,
                                 line=dict(color="black" if col == "query" else COLOURS[i % 5],
                                           width=1 if col == "query" else 2)))
    fig.update_layout(title="key ← m·key + (1 − m)·query: the key encoder trails the query "
                      "encoder, the more the larger m", xaxis_title="step",
                      yaxis_title="one weight", height=330, margin=dict(l=10, r=10, t=50, b=10))
    return fig


def condconv_figure(toy: Mapping[str, Any]):
    """Top: each location's routing weights over the experts; bottom: the middle slice of
    each expert kernel and of each location's mixed kernel (output/input channel 0)."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    routing: pd.DataFrame = toy["routing"]
    experts = toy["experts"]
    kernels = toy["kernels"]
    n_cols = max(len(experts), len(kernels))
    # plotly gives titles to existing cells only: one for the bar chart spanning row 1
    titles = [""] + [f"expert {e}" for e in range(len(experts))] + \
        [""] * (n_cols - len(experts)) + [f"mixed: {n}" for n in kernels] + \
        [""] * (n_cols - len(kernels))
    specs = [[{"colspan": n_cols}] + [None] * (n_cols - 1), [{}] * n_cols, [{}] * n_cols]
    fig = make_subplots(rows=3, cols=n_cols, specs=specs, subplot_titles=titles,
                        row_heights=[0.4, 0.3, 0.3], vertical_spacing=0.08)
    for i, name in enumerate(routing.index):
        fig.add_trace(go.Bar(x=list(routing.columns), y=routing.loc[name], name=name,
                             marker_color=COLOURS[i % 5]), row=1, col=1)
    lim = float(np.abs(experts).max())
    for e, k in enumerate(experts):
        fig.add_trace(go.Heatmap(z=k[k.shape[0] // 2], colorscale="RdBu_r", zmin=-lim, zmax=lim,
                                 showscale=False), row=2, col=e + 1)
    for c, (name, k) in enumerate(kernels.items()):
        fig.add_trace(go.Heatmap(z=k[k.shape[0] // 2], colorscale="RdBu_r", zmin=-lim,
                                 zmax=lim, showscale=False), row=3, col=c + 1)
    for r in (2, 3):
        for c in range(1, n_cols + 1):
            fig.update_xaxes(visible=False, row=r, col=c)
            fig.update_yaxes(visible=False, row=r, col=c)
    fig.update_yaxes(title_text="routing weight r", range=[0, 1], row=1, col=1)
    fig.update_layout(title="CondConv, first layer: r = sigmoid(Linear(location)) per expert; "
                      "kernel = Σ r_e · W_e<br>(middle slice of a 3×3×3 kernel; row 2 the "
                      "experts, row 3 each location's mix)", barmode="group",
                      height=600, margin=dict(l=10, r=10, t=90, b=10))
    return fig


def hu_histogram_figure(values: Mapping[str, np.ndarray], bins: Sequence[float] | None = None,
                        title: str | None = None):
    """Histograms of lung voxel HU (one line per entry), the −950 HU line, and each curve's
    Perc15 and MLD marked; the legend gives its %LAA-950."""
    import plotly.graph_objects as go

    from drasclr_toolkit.evaluate.densitometry import densitometry_of_values

    edges = np.arange(-1100, -499, 5.0) if bins is None else np.asarray(bins, dtype=float)
    centres = (edges[:-1] + edges[1:]) / 2
    fig = go.Figure()
    top = 0.0
    for i, (name, v) in enumerate(values.items()):
        counts, _ = np.histogram(v, bins=edges)
        share = 100.0 * counts / max(len(v), 1)
        top = max(top, float(share.max()))
        d = densitometry_of_values(v)
        colour = COLOURS[i % 5]
        fig.add_trace(go.Scatter(x=centres, y=share, mode="lines", line=dict(color=colour),
                                 name=f"{name}: LAA-950 {d['laa950_pct']:.1f} %, "
                                      f"Perc15 {d['perc15_hu']:.0f}, MLD {d['mld_hu']:.0f} HU"))
        for key, dash in (("perc15_hu", "dot"), ("mld_hu", "dash")):
            fig.add_vline(x=d[key], line=dict(color=colour, dash=dash, width=1))
    fig.add_vline(x=-950, line=dict(color="black", width=2))
    fig.add_annotation(x=-950, y=top, text="−950 HU: voxels left of it count in LAA-950",
                       showarrow=False, xanchor="right", yanchor="bottom")
    fig.update_layout(title=title or "lung voxel HU (dotted: Perc15, dashed: MLD)",
                      xaxis_title="HU", yaxis_title="% of lung voxels per 5 HU", height=380,
                      margin=dict(l=10, r=10, t=50, b=10), legend=dict(orientation="h", y=-0.25))
    return fig


def survival_pairs_figure(time: Sequence[float], event: Sequence[bool], risk: Sequence[float],
                          ids: Sequence[str]):
    """Five subjects' follow-up as lines: a cross where the event happened, a circle where
    follow-up ended without one (censored); the risk score beside each."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for i, (t, e, r, name) in enumerate(zip(time, event, risk, ids)):
        fig.add_trace(go.Scatter(x=[0, t], y=[name, name], mode="lines",
                                 line=dict(color="grey"), showlegend=False, hoverinfo="skip"))
        fig.add_trace(go.Scatter(x=[t], y=[name], mode="markers+text",
                                 marker=dict(symbol="x" if e else "circle-open", size=12,
                                             color="#d62728" if e else "#1f77b4"),
                                 text=[f"  risk {r:g}"], textposition="middle right",
                                 name="event" if e else "censored",
                                 showlegend=i == list(event).index(e)))
    fig.update_layout(title="five subjects: follow-up, event (×) or censored (○), and the "
                      "model's risk", xaxis_title="time (years)", height=300,
                      xaxis_range=[0, 1.2 * float(max(time))],  # room for the last label
                      margin=dict(l=10, r=10, t=50, b=10))
    return fig


def permutation_null_figure(observed: float, null: Sequence[float], label: str = "Spearman ρ"):
    """The permutation null's histogram, its 95 % band (grey) and the observed value."""
    import plotly.graph_objects as go

    null = np.asarray(null, dtype=float)
    low, high = np.percentile(null, [2.5, 97.5])
    fig = go.Figure(go.Histogram(x=null, nbinsx=30, marker_color="#bbbbbb",
                                 name=f"{len(null)} shuffles"))
    fig.add_vrect(x0=low, x1=high, fillcolor="grey", opacity=0.15, line_width=0)
    fig.add_vline(x=observed, line=dict(color="#d62728", width=3))
    fig.add_annotation(x=observed, y=1, yref="paper", text=f"observed {observed:.2f}",
                       showarrow=False, yanchor="bottom")
    fig.update_layout(title=f"{label} against its permutation null (grey band: the middle 95 % "
                      "of the shuffled values)", xaxis_title=label, yaxis_title="shuffles",
                      height=320, margin=dict(l=10, r=10, t=60, b=10), showlegend=False)
    return fig
