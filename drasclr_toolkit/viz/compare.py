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

__all__ = ["bars_with_null", "study_figure"]

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


def study_figure(tidy: pd.DataFrame, targets: list[str], *, pooling: str,
                 title: str | None = None) -> go.Figure:
    """The recipe study at a glance: one panel per target, one dot per (variant, seed)
    out-of-fold R² with the variant's mean as a dash, the random-init encoder's mean (grey
    dotted) and zone densitometry (red dashed) as reference lines, zero (chance) in black.
    ``tidy`` is ``benchmarks/results/recipe_study.csv`` (columns ``variant, seed, pooling,
    target, r2``)."""
    from plotly.subplots import make_subplots

    rows = tidy[tidy["pooling"] == pooling]
    variants = [v for v in dict.fromkeys(rows["variant"])
                if not v.startswith(("random-init", "densitometry"))]
    # one row per target, the variants along a shared x axis (readable with ten of them)
    fig = make_subplots(rows=len(targets), cols=1, shared_xaxes=True, vertical_spacing=0.06,
                        subplot_titles=[t.replace("_", " ") for t in targets])
    for col, target in enumerate(targets, start=1):
        part = rows[rows["target"] == target]
        for i, variant in enumerate(variants):
            values = part.loc[part["variant"] == variant, "r2"].astype(float)
            seeds = part.loc[part["variant"] == variant, "seed"]
            first = col == 1 and i == 0
            fig.add_trace(go.Scatter(
                x=[variant] * len(values), y=values.clip(lower=-1.0), mode="markers",
                marker=dict(color=PALETTE[2], size=7, opacity=0.7), name="one seed",
                showlegend=first, customdata=values,
                hovertemplate=[f"{variant}, seed {s}: R² %{{customdata:.3f}}<extra></extra>"
                               for s in seeds]), row=col, col=1)
            if len(values):
                fig.add_trace(go.Scatter(
                    x=[variant], y=[max(values.mean(), -1.0)], mode="markers",
                    name="mean over seeds", showlegend=first,
                    marker=dict(symbol="line-ew-open", size=26, color="black",
                                line=dict(width=2)),
                    hovertemplate=f"{variant}: mean %{{y:.3f}} over {len(values)} seeds"
                                  "<extra></extra>"), row=col, col=1)
        references = (
            ("random-init (mean)", rows.loc[(rows["variant"] == "random-init")
                                            & (rows["target"] == target), "r2"].mean(),
             dict(color="grey", dash="dot")),
            ("zone densitometry", tidy.loc[(tidy["variant"] == "densitometry")
                                           & (tidy["target"] == target), "r2"].mean(),
             dict(color=PALETTE[0], dash="dash")))
        for name, value, line in references:
            if pd.notna(value):
                fig.add_trace(go.Scatter(x=[variants[0], variants[-1]], y=[value, value],
                                         mode="lines", line=line, name=name,
                                         legendgroup=name, showlegend=col == 1,
                                         hovertemplate=f"{name}: %{{y:.3f}}<extra></extra>"),
                              row=col, col=1)
        fig.add_hline(y=0, line=dict(color="black", width=1), row=col, col=1)
    fig.update_yaxes(range=[-1.05, 1.05], gridcolor="#eeeeee", title_text="R²")
    fig.update_layout(title=title, height=170 + 230 * len(targets), width=900,
                      legend=dict(orientation="h", y=-0.12), margin=dict(b=140),
                      plot_bgcolor="white")
    fig.update_xaxes(tickangle=30)
    fig.add_annotation(text=f"out-of-fold R², {pooling} features; below -1 drawn at -1; the "
                            "references are the 32-subject cohort's",
                       xref="paper", yref="paper", x=0, y=1.0, yshift=40, showarrow=False,
                       font=dict(size=11), xanchor="left")
    return fig
