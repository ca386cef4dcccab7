"""Pages that work offline: static copies of interactive views and a self-contained HTML export.

In JupyterLab, figures are live (plotly's mimetype renderer) and the viewers are widgets.
An exported page has no kernel and, often, no network, so:

* every plotly figure becomes a ``<div>`` plus its JSON (:func:`figure_html`);
* every widget we make carries a static copy of what it showed when it was displayed
  (:func:`attach_static_fallback`), and the page shows that copy;
* the page holds exactly one plotly.js, gzip-compressed, which a small loader unpacks in
  the browser and then draws every figure (:func:`notebook_page`). Widget state (one
  plotly.js copy per ``FigureWidget``) and scripts from the internet are left out.

Example:
    >>> import plotly.graph_objects as go
    >>> html = figure_html(go.Figure(go.Scatter(x=[0, 1], y=[1, 0])))
    >>> html.startswith('<div class="drasclr-plot"')
    True
"""

from __future__ import annotations

import base64
import copy
import functools
import gzip
import re
import uuid
from typing import Any, Callable, Iterable

import plotly.graph_objects as go
import plotly.io as pio

__all__ = ["PLOT_CLASS", "attach_static_fallback", "figure_html", "html_report",
           "notebook_page", "static_notebook", "write_figure_html"]

PLOT_CLASS = "drasclr-plot"
PLOTLY_MIME = "application/vnd.plotly.v1+json"
WIDGET_MIME = "application/vnd.jupyter.widget-view+json"
# Plotly's "notebook" renderer writes its whole bundle into one output; it starts like this.
_PLOTLY_BUNDLE_MARK = "plotly.js v"
_EXTERNAL_SCRIPT = re.compile(r'<script[^>]*\ssrc="https?://[^"]*"[^>]*>\s*</script>\s*')


def _figure_dict(fig: go.Figure | dict[str, Any]) -> dict[str, Any]:
    if isinstance(fig, dict):
        return fig
    return fig.to_plotly_json()


def figure_html(fig: go.Figure | dict[str, Any], height: int | None = None) -> str:
    """A placeholder ``<div>`` and the figure's JSON, gzip-compressed; the page draws it.

    The data sits in a ``<script type="application/octet-stream">`` (never executed), so a
    figure costs its compressed data only, not another plotly.js.
    """
    spec = _figure_dict(fig)
    layout = spec.get("layout", {}) or {}
    height = int(height or layout.get("height") or 450)
    div_id = f"drasclr-{uuid.uuid4().hex[:12]}"
    payload = pio.to_json({"data": spec.get("data", []), "layout": layout}, validate=False)
    packed = base64.b64encode(gzip.compress(payload.encode("utf-8"), 6)).decode("ascii")
    return (f'<div class="{PLOT_CLASS}" id="{div_id}" style="width:100%;height:{height}px">'
            f'</div><script type="application/octet-stream" data-drasclr-plot="{div_id}">'
            f"{packed}</script>")


def attach_static_fallback(widget: Any, render: Callable[[], Iterable[go.Figure]],
                           note: str | None = None) -> Any:
    """Give ``widget`` a static copy for pages without a kernel; returns the widget.

    ``render()`` is called each time the widget is displayed and returns the figures that
    show its current state. JupyterLab still draws the live widget (its mimetype ranks
    first); an exported page draws the copy.
    """
    live_bundle = widget._repr_mimebundle_

    @functools.wraps(live_bundle)
    def bundle(**kwargs: Any) -> Any:
        data = live_bundle(**kwargs)
        if isinstance(data, tuple):
            data = data[0]
        data = dict(data or {})
        caption = note or "Static copy of an interactive view (open the notebook in " \
            "JupyterLab to use it)."
        data["text/html"] = (f'<div style="font:12px sans-serif;color:#555">{caption}</div>'
                             + "".join(figure_html(f) for f in render()))
        return data

    widget._repr_mimebundle_ = bundle
    return widget


_WIDGET_STATE_MIME = "application/vnd.jupyter.widget-state+json"
_PROGRESS_MODELS = ("FloatProgressModel", "IntProgressModel")


def _widget_models(notebook: Any) -> dict[str, dict[str, Any]]:
    """model id → {"model_name", "state"} from the widget state the kernel run saved."""
    saved = (notebook.metadata.get("widgets") or {}).get(_WIDGET_STATE_MIME) or {}
    return dict(saved.get("state") or {})


def _progress_html(model_id: str, models: dict[str, dict[str, Any]]) -> str | None:
    """A tqdm notebook bar (HBox: text, progress, text) drawn in its final state, or None
    when ``model_id`` is not such a bar. Without a saved state the bar is named as such
    instead of showing the 0 % its plain-text form was printed with."""
    import html as html_lib

    model = models.get(model_id)
    if model is None:
        return None
    children = [str(c).removeprefix("IPY_MODEL_")
                for c in model.get("state", {}).get("children", [])]
    parts = [models.get(c, {}) for c in children]
    bars = [p for p in parts if p.get("model_name") in _PROGRESS_MODELS]
    if model.get("model_name") != "HBoxModel" or len(bars) != 1:
        return None
    bar = bars[0]["state"]
    texts = [html_lib.unescape(str(p.get("state", {}).get("value", ""))).replace("\u2007", " ")
             for p in parts if p.get("model_name") == "HTMLModel"]
    left, right = (texts + ["", ""])[:2]
    # a bar over nothing (tqdm draws total=0 as 0/0 on max 1): all was done earlier
    if not float(bar.get("max", 1) or 0) or re.match(r"\s*0/0\b", right):
        return ('<div class="drasclr-progress" style="font:12px monospace">'
                f"{html_lib.escape(left.rstrip(': '))}: nothing to do (finished earlier)</div>")
    value, top = float(bar.get("value", 0)), float(bar.get("max", 1))
    colour = {"danger": "#d62728", "success": "#2ca02c"}.get(bar.get("bar_style", ""), "#1f77b4")
    return ('<div class="drasclr-progress" style="font:12px monospace;display:flex;'
            'align-items:center;gap:8px">'
            f"<span>{html_lib.escape(left)}</span>"
            f'<span style="display:inline-block;width:240px;height:10px;background:#eee">'
            f'<span style="display:block;height:10px;width:{100 * min(value / top, 1):.1f}%;'
            f'background:{colour}"></span></span><span>{html_lib.escape(right)}</span></div>')


# tqdm's plain-text form: "desc:  0%|   | 0/12 [00:00<?, ?it/s]" or "0scan [00:00, ?scan/s]"
_TQDM_TEXT = re.compile(r"\[\d+:\d+[<,]")


def static_notebook(notebook: Any) -> Any:
    """A copy of an executed notebook ready for a static page.

    Widget state goes (the page shows each widget's static copy instead), progress bars
    show the final state the run saved (never the 0 % they were first printed with),
    plotly outputs get a :func:`figure_html` copy, and outputs that only carry plotly's
    bundle go.
    """
    nb = copy.deepcopy(notebook)
    models = _widget_models(nb)
    nb.metadata.pop("widgets", None)
    for cell in nb.cells:
        if cell.get("cell_type") != "code":
            continue
        kept = []
        for output in cell.get("outputs", []):
            data = output.get("data")
            if data is None:
                kept.append(output)
                continue
            html = data.get("text/html", "")
            if isinstance(html, list):
                html = "".join(html)
            if _PLOTLY_BUNDLE_MARK in html and PLOTLY_MIME not in data:
                continue  # plotly.js itself: the page carries one copy of its own
            view = data.pop(WIDGET_MIME, None)
            if view is not None and "text/html" not in data:
                progress = _progress_html(str(view.get("model_id", "")), models)
                plain = data.get("text/plain", "")
                plain = "".join(plain) if isinstance(plain, list) else str(plain)
                if progress is not None:
                    data = {"text/html": progress}
                elif _TQDM_TEXT.search(plain):
                    data = {"text/plain": "(a progress bar: its final state was not saved)"}
                output["data"] = data
            if PLOTLY_MIME in data:
                data["text/html"] = figure_html(data[PLOTLY_MIME])
            if not data:
                continue
            kept.append(output)
        cell["outputs"] = kept
    return nb


@functools.lru_cache(maxsize=1)
def _compressed_plotlyjs() -> str:
    from plotly.offline import get_plotlyjs

    return base64.b64encode(gzip.compress(get_plotlyjs().encode("utf-8"), 9)).decode("ascii")


_LOADER = """
<script>
(function () {
  function unpack(text) {
    var bytes = Uint8Array.from(atob(text.trim()), function (c) { return c.charCodeAt(0); });
    var stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream('gzip'));
    return new Response(stream).text();
  }
  function drawAll() {
    document.querySelectorAll('script[data-drasclr-plot]').forEach(function (node) {
      var target = document.getElementById(node.getAttribute('data-drasclr-plot'));
      if (!target || target.classList.contains('js-plotly-plot')) { return; }
      unpack(node.textContent).then(function (json) {
        var spec = JSON.parse(json);
        return Plotly.newPlot(target, spec.data, spec.layout, {responsive: true});
      }).catch(function (err) {
        target.textContent = 'figure could not be drawn: ' + err;
      });
    });
  }
  if (window.Plotly) { drawAll(); return; }
  unpack(document.getElementById('drasclr-plotlyjs').textContent).then(function (source) {
    var script = document.createElement('script');
    script.textContent = source;
    document.head.appendChild(script);
    drawAll();
  });
})();
</script>
"""


def notebook_page(notebook: Any) -> str:
    """A self-contained HTML page of an executed notebook that works with no network."""
    from nbconvert import HTMLExporter

    nb = static_notebook(notebook)
    exporter = HTMLExporter(template_name="lab")
    body, _ = exporter.from_notebook_node(nb)
    body = _EXTERNAL_SCRIPT.sub("", body)  # require.js, MathJax: nothing here needs them
    assets = (f'<script id="drasclr-plotlyjs" type="application/octet-stream">'
              f"{_compressed_plotlyjs()}</script>{_LOADER}")
    if "</body>" in body:
        return body.replace("</body>", assets + "</body>", 1)
    return body + assets


_REPORT_STYLE = """
<style>
body { font: 14px/1.45 -apple-system, "Segoe UI", Roboto, sans-serif; margin: 24px auto;
       max-width: 1400px; color: #222; padding: 0 16px; }
h1 { font-size: 24px; } h2 { font-size: 19px; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; font-size: 12px; margin: 8px 0; }
th, td { border: 1px solid #ccc; padding: 3px 6px; text-align: right; }
th { background: #f4f4f4; } tr.flagged td { background: #fde8e8; }
.note { color: #555; font-size: 13px; }
</style>
"""


def _section_html(item: Any) -> str:
    import html as html_lib

    import pandas as pd

    if item is None:
        return ""
    if isinstance(item, go.Figure) or (isinstance(item, dict) and "data" in item):
        return figure_html(item)
    if isinstance(item, pd.DataFrame):
        return item.to_html(index=False, float_format=lambda v: f"{v:.4g}", na_rep="–",
                            border=0, escape=True)
    if isinstance(item, str):
        return item if item.lstrip().startswith("<") else f"<p>{html_lib.escape(item)}</p>"
    if isinstance(item, (list, tuple)):
        return "".join(_section_html(part) for part in item)
    return f"<pre>{html_lib.escape(str(item))}</pre>"


def html_report(title: str, sections: Iterable[tuple[str, Any]], intro: str | None = None) -> str:
    """A self-contained, offline HTML page: a title and sections of text, tables, figures.

    ``sections`` is a sequence of ``(heading, content)``; content is a plotly figure, a
    pandas DataFrame, text (plain text is escaped; text starting with ``<`` is HTML), or a
    list of those. The page holds one compressed plotly.js and needs no network.

    Example:
        >>> import pandas as pd
        >>> page = html_report("QC", [("Table", pd.DataFrame({"a": [1]}))])
        >>> "<h2>Table</h2>" in page and "drasclr-plotlyjs" in page
        True
    """
    import html as html_lib

    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html_lib.escape(title)}"
             f"</title>{_REPORT_STYLE}</head><body><h1>{html_lib.escape(title)}</h1>"]
    if intro:
        parts.append(_section_html(intro))
    for heading, content in sections:
        parts.append(f"<h2>{html_lib.escape(heading)}</h2>{_section_html(content)}")
    parts.append(f'<script id="drasclr-plotlyjs" type="application/octet-stream">'
                 f"{_compressed_plotlyjs()}</script>{_LOADER}</body></html>")
    return "".join(parts)


def write_figure_html(fig: go.Figure, path: Any, title: str | None = None) -> Any:
    """Write one figure as an offline page (compressed plotly.js, about 2 MB)."""
    from pathlib import Path

    from drasclr_toolkit.io_utils import atomic_write_text

    page = html_report(title or (fig.layout.title.text or "figure"), [("", fig)])
    return atomic_write_text(Path(path), page.replace("<h2></h2>", ""))
