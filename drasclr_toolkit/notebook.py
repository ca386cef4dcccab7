"""Notebook conveniences that every notebook calls once in its first cell."""

from __future__ import annotations


def setup_notebook() -> None:
    """Make figures render both live (JupyterLab) and in exported HTML.

    Plotly's default in a headless kernel emits only its JSON mimetype, which nbconvert
    cannot draw; ``plotly_mimetype+notebook`` adds an HTML copy with plotly.js embedded, so
    the HTML files written by ``drasclr demo`` work offline.
    """
    import plotly.io as pio

    pio.renderers.default = "plotly_mimetype+notebook"
