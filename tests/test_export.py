"""Exported notebook pages are small, self-contained and draw every figure with no network."""

from __future__ import annotations

import re
import shutil
import subprocess

import nbformat
import numpy as np
import plotly.graph_objects as go
import pytest

from drasclr_toolkit.viz.export import PLOT_CLASS, notebook_page, static_notebook
from drasclr_toolkit.viz.slices import slice_viewer

WIDGET_MIME = "application/vnd.jupyter.widget-view+json"


def _executed_notebook() -> nbformat.NotebookNode:
    """What an executed notebook of ours holds: a plotly figure, a 3D figure, a widget with
    its static copy, plotly's bundle output and per-widget state."""
    nb = nbformat.v4.new_notebook()
    fig = go.Figure(go.Heatmap(z=np.arange(400).reshape(20, 20)))
    cloud = go.Figure(go.Scatter3d(x=[0, 1, 2], y=[2, 1, 0], z=[0, 1, 0], mode="markers"))
    viewer = slice_viewer(np.random.default_rng(0).integers(-1000, 0, (16, 16, 16)).astype(np.int16))
    cells = [
        nbformat.v4.new_markdown_cell("# A page"),
        nbformat.v4.new_code_cell("bundle", outputs=[nbformat.v4.new_output(
            "display_data", data={"text/html": "<script>/** plotly.js v3 */" + "x" * 5_000_000
                                               + "</script>"})]),
        nbformat.v4.new_code_cell("fig", outputs=[nbformat.v4.new_output(
            "display_data", data={"application/vnd.plotly.v1+json": fig.to_plotly_json(),
                                  "text/plain": "Figure"})]),
        nbformat.v4.new_code_cell("cloud", outputs=[nbformat.v4.new_output(
            "display_data", data={"application/vnd.plotly.v1+json": cloud.to_plotly_json()})]),
        nbformat.v4.new_code_cell("viewer", outputs=[nbformat.v4.new_output(
            "display_data", data=viewer._repr_mimebundle_())]),
    ]
    nb.cells = cells
    nb.metadata["widgets"] = {"application/vnd.jupyter.widget-state+json": {
        "state": {"x": {"esm": "y" * 5_000_000}}, "version_major": 2, "version_minor": 0}}
    return nb


def test_static_notebook_drops_widget_state_and_bundles():
    nb = static_notebook(_executed_notebook())
    assert "widgets" not in nb.metadata
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert len(outputs) == 3  # the bundle-only output is gone
    assert all(WIDGET_MIME not in o.data for o in outputs)
    assert all(PLOT_CLASS in o.data["text/html"] for o in outputs)


def test_page_is_small_and_needs_no_network():
    html = notebook_page(_executed_notebook())
    assert len(html.encode()) < 5_000_000
    assert not re.search(r'<script[^>]*src="https?://', html), "page loads a script from the web"
    assert html.count('id="drasclr-plotlyjs"') == 1
    assert "y" * 1000 not in html and "x" * 1000 not in html


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def test_page_draws_every_figure_offline(tmp_path):
    page = tmp_path / "page.html"
    page.write_text(notebook_page(_executed_notebook()), encoding="utf-8")
    browser = _chromium()
    if browser is None:
        pytest.skip("chromium is not installed; the page was checked, not its rendering")
    # A proxy on a closed port: any request to the network fails, as on a plane.
    cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--use-gl=swiftshader",
           "--enable-unsafe-swiftshader", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run",
           "--proxy-server=127.0.0.1:9", f"--user-data-dir={tmp_path / 'profile'}",
           "--virtual-time-budget=20000", "--dump-dom", page.as_uri()]
    dom = subprocess.run(cmd, capture_output=True, text=True, timeout=180).stdout
    divs = re.findall(r'<div class="(' + PLOT_CLASS + r'[^"]*)"', dom)
    assert len(divs) == 3, f"expected 3 figure slots, found {len(divs)}"
    assert all("js-plotly-plot" in d for d in divs), f"not every figure drew: {divs}"
    assert "figure could not be drawn:" not in dom.replace("'figure could not be drawn: '", "")


def test_report_page_draws_offline(tmp_path):
    import pandas as pd

    from drasclr_toolkit.viz.export import html_report

    page = tmp_path / "report.html"
    page.write_text(html_report("A report", [
        ("Table", pd.DataFrame({"subject": ["a<b>", "c"], "dice": [0.91, 0.5]})),
        ("Figure", go.Figure(go.Bar(x=["a", "c"], y=[0.91, 0.5]))),
        ("Text", "plain <text> is escaped"),
    ]), encoding="utf-8")
    html = page.read_text(encoding="utf-8")
    assert "a&lt;b&gt;" in html and "plain &lt;text&gt; is escaped" in html
    browser = _chromium()
    if browser is None:
        pytest.skip("chromium is not installed")
    cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
           "--disable-background-networking", "--proxy-server=127.0.0.1:9",
           f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=20000",
           "--dump-dom", page.as_uri()]
    dom = subprocess.run(cmd, capture_output=True, text=True, timeout=180).stdout
    assert re.search(r'<div class="' + PLOT_CLASS + r' js-plotly-plot', dom)


def _tqdm_notebook(value: float, total: float, right: str) -> nbformat.NotebookNode:
    """An executed notebook holding one tqdm.notebook bar as papermill saves it."""
    def model(name, **state):
        return {"model_name": name, "model_module": "@jupyter-widgets/controls",
                "model_module_version": "2.0.0", "state": {"_model_name": name, **state}}

    state = {"box": model("HBoxModel", children=["IPY_MODEL_left", "IPY_MODEL_bar",
                                                 "IPY_MODEL_right"]),
             "left": model("HTMLModel", value="pretrain:\u2007100%"),
             "bar": model("FloatProgressModel", value=value, max=total, bar_style="success"),
             "right": model("HTMLModel", value=right)}
    nb = nbformat.v4.new_notebook()
    nb.metadata["widgets"] = {"application/vnd.jupyter.widget-state+json":
                              {"state": state, "version_major": 2, "version_minor": 0}}
    cell = nbformat.v4.new_code_cell("train()")
    cell.outputs = [nbformat.v4.new_output("display_data", data={
        "text/plain": "pretrain:   0%|          | 0/160 [00:00<?, ?step/s]",
        "application/vnd.jupyter.widget-view+json": {"model_id": "box", "version_major": 2,
                                                     "version_minor": 0}})]
    nb.cells = [cell]
    return nb


def test_exported_progress_bars_show_their_final_state():
    done = static_notebook(_tqdm_notebook(160, 160, "\u2007160/160\u2007[01:32&lt;00:00]"))
    html = done.cells[0].outputs[0]["data"]["text/html"]
    assert "pretrain: 100%" in html and "160/160 [01:32&lt;00:00]" in html
    assert "width:100.0%" in html and "0%|" not in str(done.cells[0].outputs)
    nothing = static_notebook(_tqdm_notebook(0, 1, "\u20070/0\u2007[00:00&lt;?]"))
    assert "nothing to do" in nothing.cells[0].outputs[0]["data"]["text/html"]
    unsaved = _tqdm_notebook(160, 160, "")
    unsaved.metadata.pop("widgets")
    text = static_notebook(unsaved).cells[0].outputs[0]["data"]["text/plain"]
    assert "0%" not in text and "final state was not saved" in text
