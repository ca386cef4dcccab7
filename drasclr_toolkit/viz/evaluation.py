"""Figures of evaluation results (plotly): every number beside its reference.

* :func:`result_figure`: one panel per task, a point per feature set with its 95 % CI
  whiskers, the null band (a grey bar from the null's mean to its 95th percentile, when a
  permutation null was run) and the chance level (dashed line); from
  :func:`drasclr_toolkit.evaluate.summarise`.
* :func:`km_figure`: Kaplan–Meier curves of out-of-fold risk groups with 95 % bands and the
  log-rank p.
* :func:`nuisance_scatter`: a measurement against a nuisance (e.g. LAA-950 against image
  noise) with Spearman ρ and its CI in the title.

Example:
    >>> import pandas as pd
    >>> long = pd.DataFrame({"feature_set": ["a", "b"], "task": ["t", "t"],
    ...     "metric": ["r2", "r2"], "value": [0.4, 0.0], "ci_low": [0.2, -0.2],
    ...     "ci_high": [0.6, 0.2], "chance": [0.0, 0.0], "null_p95": [0.1, 0.1],
    ...     "p": [0.01, 0.5], "evidence": [True, False], "verdict": ["", ""], "n": [20, 20]})
    >>> fig = result_figure(long)
    >>> len(fig.data) >= 2
    True
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

__all__ = ["km_figure", "nuisance_scatter", "result_figure", "time_unit_of"]

GROUP_COLOURS = {"low risk": "#1f77b4", "middle risk": "#ff7f0e", "high risk": "#d62728"}
EVIDENCE_COLOUR, NO_EVIDENCE_COLOUR = "#d62728", "#7f7f7f"


def result_figure(long: pd.DataFrame, title: str | None = None, columns: int = 4,
                  order: Sequence[str] | None = None) -> go.Figure:
    """Per task: value and 95 % CI per feature set, null band and chance line.

    Filled red points have evidence of signal (p ≤ 0.05 against the null, or a CI above
    chance); open grey points do not. Tasks that were not evaluated are left out.
    """
    long = long[np.isfinite(long["value"].astype(float))]
    tasks = list(dict.fromkeys(long["task"]))
    if not tasks:
        return go.Figure().update_layout(title=(title or "") + " (nothing was evaluated)")
    names = list(order) if order is not None else list(dict.fromkeys(long["feature_set"]))
    names = [n for n in names if n in set(long["feature_set"])]
    cols = min(columns, len(tasks))
    rows = math.ceil(len(tasks) / cols)
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=[
        f"{t} ({long.loc[long.task == t, 'metric'].iloc[0]})" for t in tasks],
        vertical_spacing=0.5 / rows if rows > 1 else 0.1)
    for k, task in enumerate(tasks):
        row, col = k // cols + 1, k % cols + 1
        part = long[long["task"] == task].set_index("feature_set").reindex(
            [n for n in names if n in set(long.loc[long.task == task, "feature_set"])])
        x = list(part.index)
        if part["null_p95"].notna().any():
            null_mean = part["chance"].where(part["null_p95"].notna())
            fig.add_trace(go.Bar(x=x, y=part["null_p95"] - null_mean, base=null_mean,
                                 marker_color="rgba(128,128,128,0.25)", width=0.6,
                                 name="null: chance to 95th percentile", legendgroup="null",
                                 showlegend=k == 0, hoverinfo="skip"), row=row, col=col)
        chance = part["chance"].dropna()
        if len(chance):
            fig.add_hline(y=float(chance.mean()), line=dict(dash="dash", color="black", width=1),
                          row=row, col=col)
        ev = part["evidence"].astype(bool)
        fig.add_trace(go.Scatter(
            x=x, y=part["value"], mode="markers",
            marker=dict(size=10, color=[EVIDENCE_COLOUR if e else NO_EVIDENCE_COLOUR for e in ev],
                        symbol=["circle" if e else "circle-open" for e in ev],
                        line=dict(width=2)),
            error_y=dict(type="data", symmetric=False,
                         array=(part["ci_high"] - part["value"]).fillna(0),
                         arrayminus=(part["value"] - part["ci_low"]).fillna(0),
                         color="#444"),
            customdata=np.stack([part["p"].fillna(np.nan), part["ci_low"], part["ci_high"]], 1),
            hovertemplate="%{x}: %{y:.3f} [%{customdata[1]:.3f}, %{customdata[2]:.3f}]"
                          "<br>p=%{customdata[0]:.3g}<extra></extra>",
            name="value, 95 % CI (filled: evidence)", legendgroup="value",
            showlegend=k == 0), row=row, col=col)
        fig.update_xaxes(tickangle=35, row=row, col=col)
        metric = str(part["metric"].dropna().iloc[0]) if part["metric"].notna().any() else "value"
        fig.update_yaxes(title_text=metric, title_standoff=4, row=row, col=col)
    # The legend sits to the right of the panels: below them it would cover the rotated
    # feature-set names, whose height plotly does not reserve for it.
    fig.update_layout(title=title or "Each result beside chance (dashed) and its null band",
                      height=330 * rows + 60, template="plotly_white", barmode="overlay",
                      margin=dict(l=10, r=10, t=70, b=10),
                      legend=dict(orientation="v", x=1.02, xanchor="left", y=1, yanchor="top"))
    return fig


_TIME_UNITS = ("years", "months", "weeks", "days", "hours")


def time_unit_of(card: Any, column: str = "time") -> str | None:
    """The unit of a follow-up time column from a dataset card's description of it
    ("years to death or censoring" → "years"); None when the card does not say.

    Example:
        >>> time_unit_of({"columns": {"time": {"description": "years to death or censoring"}}})
        'years'
    """
    columns = (card or {}).get("columns") or {}
    entry = columns.get(column) or {}
    text = str(entry.get("unit") or entry.get("description") or "").lower()
    return next((u for u in _TIME_UNITS if u in text or u.rstrip("s") in text.split()), None)


def km_figure(groups: Any, title: str | None = None, time_unit: str | None = None) -> go.Figure:
    """Kaplan–Meier step curves with 95 % bands per risk group, log-rank p in the title.

    ``groups`` is a :class:`~drasclr_toolkit.evaluate.survival.RiskGroups`; ``time_unit``
    names the follow-up time's unit on the x axis (e.g. ``time_unit_of(manifest.card)``).

    Example:
        >>> from drasclr_toolkit.evaluate.survival import risk_groups
        >>> rng = np.random.default_rng(0)
        >>> X = rng.normal(size=(100, 2))
        >>> fig = km_figure(risk_groups(X, rng.exponential(np.exp(-X[:, 0])) + 0.01,
        ...                             rng.random(100) < 0.8))
        >>> len(fig.data) >= 2
        True
    """
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
                                 hovertemplate="t=%{x:.3g}" + (f" {time_unit}" if time_unit else "")
                                               + "<br>S=%{y:.3f}<br>at risk %{customdata}"))
    p = groups.logrank["p_value"]
    head = title or f"Kaplan–Meier by out-of-fold {groups.model} risk"
    x_title = f"time to event or censoring ({time_unit})" if time_unit else \
        "time to event or censoring (unit of the labels' time column)"
    fig.update_layout(title=f"{head} (log-rank p={p:.3g})", xaxis_title=x_title,
                      yaxis_title="survival probability", yaxis_range=[0, 1.02],
                      template="plotly_white")
    return fig


def _transparent(colour: str | None, alpha: float = 0.15) -> str:
    if not colour or not colour.startswith("#"):
        return f"rgba(128,128,128,{alpha})"
    r, g, b = (int(colour[i:i + 2], 16) for i in (1, 3, 5))
    return f"rgba({r},{g},{b},{alpha})"


def nuisance_scatter(values: pd.Series, nuisance: pd.Series, stats: dict[str, float] | None = None,
                     labels: pd.Series | None = None, title: str | None = None) -> go.Figure:
    """``values`` against ``nuisance`` (one point per subject, hover: subject id), with
    Spearman ρ [95 % CI] from :func:`~drasclr_toolkit.evaluate.spearman_ci` in the title.
    ``labels`` colours the points (e.g. the true disease severity)."""
    from drasclr_toolkit.evaluate.nuisance import spearman_ci

    frame = pd.DataFrame({"y": values, "x": nuisance.reindex(values.index)}).dropna()
    stats = stats or spearman_ci(frame["x"], frame["y"])
    colour = None if labels is None else labels.reindex(frame.index)
    fig = go.Figure(go.Scatter(
        x=frame["x"], y=frame["y"], mode="markers", text=list(frame.index),
        marker=dict(size=10, color=colour, colorscale="Viridis", showscale=colour is not None,
                    colorbar=dict(title=getattr(labels, "name", "")) if colour is not None else None),
        hovertemplate="%{text}: x=%{x:.3g}, y=%{y:.3g}<extra></extra>"))
    rho = (f"Spearman ρ = {stats['rho']:.2f} [95 % CI {stats['ci_low']:.2f}, "
           f"{stats['ci_high']:.2f}], n = {stats['n']}")
    fig.update_layout(title=f"{title or 'measurement against nuisance'}<br><sub>{rho}</sub>",
                      xaxis_title=nuisance.name or "nuisance", yaxis_title=values.name or "value",
                      template="plotly_white", height=420)
    return fig
