"""Training curves of a pretraining run: a static figure, and a live one for notebooks."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import pandas as pd

from drasclr_toolkit.train.metrics import read_metrics

__all__ = ["LiveTrainingCurves", "plot_training_curves"]

CURVE_PANELS = (
    ("InfoNCE loss", ("loss_local", "loss_neighbour", "chance_loss")),
    ("contrast accuracy (positive ranked first)", ("acc_local", "acc_neighbour", "chance_acc")),
    ("learning rate", ("lr",)),
)
#: the quantity and unit of each panel's y axis
CURVE_Y_TITLES = ("loss (nats)", "accuracy (fraction of anchors)", "learning rate (per step)")
# The references drawn dashed: what an encoder that ranks the positive at random among its
# 1 + n negatives scores (accuracy 1/(1+n), loss log(1+n)), from the logged negatives.
REFERENCE_CURVES = {"chance_acc": "chance (1 / (1 + negatives))",
                    "chance_loss": "chance (log(1 + negatives))"}


def _with_references(df: pd.DataFrame) -> pd.DataFrame:
    import numpy as np

    if "n_negatives" in df and "chance_loss" not in df:
        df = df.assign(chance_loss=np.log1p(df["n_negatives"].astype(float)))
    return df


def _trace_style(name: str) -> dict[str, Any]:
    if name in REFERENCE_CURVES:
        return dict(name=REFERENCE_CURVES[name], line=dict(dash="dash", color="black", width=1))
    return dict(name=name)


def _empty_figure(title: str):
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=len(CURVE_PANELS),
                        subplot_titles=[p[0] for p in CURVE_PANELS], horizontal_spacing=0.08)
    fig.update_layout(title=title, height=400, margin=dict(t=70, l=60, r=20, b=110),
                      legend=dict(orientation="h", y=-0.38, yanchor="top"))
    for col, y_title in enumerate(CURVE_Y_TITLES, start=1):
        fig.update_xaxes(title_text="step", row=1, col=col)
        fig.update_yaxes(title_text=y_title, row=1, col=col)
    return fig


def plot_training_curves(metrics: pd.DataFrame | str | Path, title: str = "DrasCLR pretraining",
                         smooth: int = 1):
    """Losses, contrast accuracies and learning rate against the step (plotly Figure).

    Args:
        metrics: a DataFrame from :func:`read_metrics`, or a path to read.
        smooth: rolling-mean window (steps) for losses and accuracies; 1 = raw.

    Example:
        >>> df = pd.DataFrame({"step": [1, 2], "loss_local": [3.0, 2.5], "loss_neighbour": [3.2, 2.9],
        ...                    "acc_local": [0.1, 0.3], "acc_neighbour": [0.0, 0.2], "lr": [0.01, 0.005]})
        >>> len(plot_training_curves(df).data)
        5
    """
    import plotly.graph_objects as go

    df = metrics if isinstance(metrics, pd.DataFrame) else read_metrics(metrics)
    df = _with_references(df)
    fig = _empty_figure(title)
    for col, (_, columns) in enumerate(CURVE_PANELS, start=1):
        for name in columns:
            if name not in df:
                continue
            y = df[name]
            if smooth > 1 and name != "lr":
                y = y.rolling(smooth, min_periods=1).mean()
            fig.add_trace(go.Scatter(x=df["step"], y=y, mode="lines", **_trace_style(name)),
                          row=1, col=col)
    return fig


class LiveTrainingCurves:
    """A plotly ``FigureWidget`` that grows while training runs (pass as a callback).

    ``show()`` displays it with a static copy for exported pages; the copy follows the
    curves every ``static_every`` records and at ``finish()``, so a saved notebook shows
    the finished curves even without a kernel.

    Example (in a notebook)::

        live = LiveTrainingCurves()
        live.show()
        pretrain(source, config, out_dir, callbacks=[live])
        live.finish()
    """

    def __init__(self, title: str = "DrasCLR pretraining (live)", every: int = 1,
                 static_every: int = 25) -> None:
        import plotly.graph_objects as go

        from drasclr_toolkit.viz.export import attach_static_fallback

        self.every = max(1, every)
        self.static_every = max(1, static_every)
        self._handle = None
        self.widget = go.FigureWidget(_empty_figure(title))
        attach_static_fallback(self.widget, lambda: [go.Figure(self.widget)],
                               note="Static copy of the live training curves.")
        self.columns: list[str] = []
        for col, (_, columns) in enumerate(CURVE_PANELS, start=1):
            for name in columns:
                self.widget.add_trace(go.Scatter(x=[], y=[], mode="lines", **_trace_style(name)),
                                      row=1, col=col)
                self.columns.append(name)
        self.records: list[dict[str, Any]] = []

    def __call__(self, record: Mapping[str, Any]) -> None:
        import math

        record = dict(record)
        if "n_negatives" in record:
            record.setdefault("chance_loss", math.log1p(float(record["n_negatives"])))
        self.records.append(record)
        if len(self.records) % self.every:
            return
        steps = [r["step"] for r in self.records]
        with self.widget.batch_update():
            for trace, name in zip(self.widget.data, self.columns):
                trace.x = steps
                trace.y = [r.get(name) for r in self.records]
        if self._handle is not None and len(self.records) % self.static_every == 0:
            self._handle.update(self.widget)

    def show(self) -> None:
        """Display the live figure (with its static copy) in the notebook."""
        from IPython.display import display

        self._handle = display(self.widget, display_id=True)

    def finish(self, metrics: pd.DataFrame | str | Path | None = None) -> None:
        """Bring the static copy up to date with the last record. ``metrics`` (a
        :func:`read_metrics` frame or its file): when no step was recorded live (the run
        was reused, not trained), the figure is drawn from the run's own log instead of
        staying empty."""
        if not self.records and metrics is not None:
            df = metrics if isinstance(metrics, pd.DataFrame) else read_metrics(metrics)
            self.records.extend(_with_references(df).to_dict("records"))
            steps = [r["step"] for r in self.records]
            with self.widget.batch_update():
                for trace, name in zip(self.widget.data, self.columns):
                    trace.x = steps
                    trace.y = [r.get(name) for r in self.records]
            if self.widget.layout.title.text:
                self.widget.layout.title.text += " (reused run: its logged steps)"
        if self._handle is not None:
            self._handle.update(self.widget)
