"""Notebook conveniences that every notebook calls once in its first cell
(``from drasclr_toolkit.notebooks import setup_notebook``)."""

from __future__ import annotations

# Wide tables scroll inside their own box instead of widening the page, and long text
# cells (QC reasons, verdicts) wrap instead of being cut with "…". Scoped to rendered
# outputs, in JupyterLab and in the exported pages alike. Cells wrap between words only
# (``break-word``, not ``anywhere``, which let a squeezed column split "0.970" into
# "0.97" / "0" and "disease" into "disea" / "se" in JupyterLab).
TABLE_STYLE = (
    "<style>"
    ".jp-RenderedHTMLCommon table.dataframe, .jp-OutputArea-output table.dataframe"
    "{display:block;max-width:100%;overflow-x:auto}"
    ".jp-RenderedHTMLCommon table.dataframe td, .jp-OutputArea-output table.dataframe td"
    "{white-space:normal;max-width:42em;overflow-wrap:break-word;text-align:left}"
    "</style>"
)


def setup_notebook() -> None:
    """Make figures render live in JupyterLab and in the HTML pages ``drasclr demo`` writes,
    and tables show whole cells.

    Plotly's default in a headless kernel may pick a renderer that stores nothing useful;
    the JSON mimetype is what JupyterLab draws, and the page export
    (``drasclr_toolkit.viz.export``) turns the same JSON into an offline figure, with one
    plotly.js per page instead of one per output. pandas stops cutting long text cells at
    50 characters; :data:`TABLE_STYLE` wraps them and lets wide tables scroll in place.
    """
    import pandas as pd
    import plotly.io as pio
    from IPython.display import HTML, display

    pio.renderers.default = "plotly_mimetype"
    pd.set_option("display.max_colwidth", None)
    display(HTML(TABLE_STYLE))
