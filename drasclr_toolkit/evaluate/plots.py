"""Figures of the evaluation results (plotly).

Kept apart from the computations on purpose: plotting is to move into ``viz`` later, and
the evaluation modules never import this one except on request (``RiskGroups.figure``).

Example:
    >>> import numpy as np
    >>> from drasclr_toolkit.evaluate.survival import risk_groups
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(100, 2))
    >>> fig = km_figure(risk_groups(X, rng.exponential(np.exp(-X[:, 0])) + 0.01,
    ...                             rng.random(100) < 0.8))
    >>> len(fig.data) >= 2
    True
"""

from __future__ import annotations

from typing import Any

__all__ = ["km_figure"]

GROUP_COLOURS = {"low risk": "#1f77b4", "middle risk": "#ff7f0e", "high risk": "#d62728"}


def km_figure(groups: Any, title: str | None = None):
    """Kaplan–Meier step curves with 95 % bands per risk group, log-rank p in the title.

    ``groups`` is a :class:`~drasclr_toolkit.evaluate.survival.RiskGroups`.
    """
    import plotly.graph_objects as go

    fig = go.Figure()
    for name, part in groups.curves.groupby("group", sort=False):
        colour = GROUP_COLOURS.get(str(name), None)
        n = int((groups.table["group"] == name).sum())
        fig.add_trace(go.Scatter(x=part["time"], y=part["ci_high"], mode="lines",
                                 line=dict(width=0, shape="hv"), showlegend=False,
                                 hoverinfo="skip"))
        fig.add_trace(go.Scatter(x=part["time"], y=part["ci_low"], mode="lines",
                                 line=dict(width=0, shape="hv"), fill="tonexty",
                                 fillcolor=_transparent(colour), showlegend=False,
                                 hoverinfo="skip"))
        fig.add_trace(go.Scatter(x=part["time"], y=part["survival"], mode="lines",
                                 line=dict(shape="hv", color=colour, width=2),
                                 name=f"{name} (n={n})",
                                 customdata=part["at_risk"],
                                 hovertemplate="t=%{x:.3g}<br>S=%{y:.3f}<br>at risk %{customdata}"))
    p = groups.logrank["p_value"]
    head = title or f"Kaplan–Meier by out-of-fold {groups.model} risk"
    fig.update_layout(title=f"{head} (log-rank p={p:.3g})", xaxis_title="time",
                      yaxis_title="survival probability", yaxis_range=[0, 1.02],
                      template="plotly_white")
    return fig


def _transparent(colour: str | None, alpha: float = 0.15) -> str:
    if not colour or not colour.startswith("#"):
        return f"rgba(128,128,128,{alpha})"
    r, g, b = (int(colour[i:i + 2], 16) for i in (1, 3, 5))
    return f"rgba({r},{g},{b},{alpha})"
