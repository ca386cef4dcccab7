"""Notebook conveniences that every notebook calls once in its first cell."""

from __future__ import annotations


def setup_notebook() -> None:
    """Make figures render live in JupyterLab and in the HTML pages ``drasclr demo`` writes.

    Plotly's default in a headless kernel may pick a renderer that stores nothing useful;
    the JSON mimetype is what JupyterLab draws, and the page export
    (``drasclr_toolkit.viz.export``) turns the same JSON into an offline figure, with one
    plotly.js per page instead of one per output.
    """
    import plotly.io as pio

    pio.renderers.default = "plotly_mimetype"
