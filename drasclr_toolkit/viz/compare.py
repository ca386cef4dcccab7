"""Comparison bars with their reference: each bar beside its permutation null band.

Example:
    >>> import pandas as pd
    >>> table = pd.DataFrame({"encoder": ["a", "b"], "target": ["t", "t"], "kind": ["disease"] * 2,
    ...                       "value": [0.8, 0.3], "null": [0.6, 0.6]})
    >>> fig = bars_with_null(table, "value", "null")
    >>> [t.type for t in fig.data]
    ['bar', 'bar', 'scatter']
"""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go

__all__ = ["bars_with_null"]

PALETTE = ("#d62728", "#7f7f7f", "#1f77b4", "#2ca02c", "#9467bd")


def bars_with_null(table: pd.DataFrame, value: str, null: str, *, group: str = "encoder",
                   target: str = "target", title: str | None = None,
                   value_label: str | None = None, y_range: tuple[float, float] | None = (0, 1)
                   ) -> go.Figure:
    """Grouped bars of ``value`` per ``target`` (one colour per ``group``), and a black dash
    at each bar's null 95th percentile (``null``): a bar that does not clear its dash is
    no evidence. Targets of kind "nuisance" (a ``kind`` column) are labelled as such."""
    fig = go.Figure()
    groups = list(dict.fromkeys(table[group]))
    targets = list(dict.fromkeys(table[target]))
    kinds = dict(zip(table[target], table["kind"])) if "kind" in table else {}
    labels = [f"{t}<br>({kinds[t]})" if t in kinds else str(t) for t in targets]
    for i, name in enumerate(groups):
        rows = table[table[group] == name].set_index(target).reindex(targets)
        fig.add_trace(go.Bar(x=labels, y=rows[value], name=str(name),
                             marker_color=PALETTE[i % len(PALETTE)], offsetgroup=str(i)))
    # one dash per bar: x positions follow plotly's grouped-bar layout
    xs, ys = [], []
    width = 0.8 / max(1, len(groups))
    for i, name in enumerate(groups):
        rows = table[table[group] == name].set_index(target).reindex(targets)
        for j, _ in enumerate(targets):
            centre = j - 0.4 + width * (i + 0.5)
            xs += [centre - width / 2, centre + width / 2, None]
            ys += [rows[null].iloc[j], rows[null].iloc[j], None]
    fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", xaxis="x2",
                             line=dict(color="black", width=3),
                             name="null 95th percentile (permuted target)"))
    fig.update_layout(
        barmode="group", title=title, height=420, margin=dict(l=10, r=10, t=60, b=10),
        yaxis=dict(title=value_label or value, range=list(y_range) if y_range else None),
        xaxis2=dict(overlaying="x", range=[-0.5, len(targets) - 0.5], visible=False),
        legend=dict(orientation="h", y=-0.25))
    return fig
