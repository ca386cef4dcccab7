"""Notebooks 00 and 03 live in JupyterLab, driven by headless Chromium with real mouse events.

Start JupyterLab first (the app must be exposed to the page), from the repository root::

    jupyter lab --no-browser --port 8897 --IdentityProvider.token=TOKEN \\
        --ServerApp.root_dir=$PWD --LabApp.expose_app_in_browser=True
    python benchmarks/live_lab_check.py --port 8897 --token TOKEN --shots /tmp/shots

Each notebook is opened, run with "Run All Cells", and then checked: error outputs, every
plotly figure (tests/browser.py's checks: drawn, axis titles present and inside), progress
bars left in the outputs, console errors; the notebook panel is photographed viewport by
viewport (1,500 x 1,000). In notebook 03's patch explorer, clicks ~7 px off a landmark's
marker (the pointer resting 0.6 s, then pressed) must select that landmark, first with
"follow hover" on, then unticked by a click (so only the click can select). JupyterLab
autosaves the run notebooks: `git checkout notebooks/` afterwards. Results:
benchmarks/results/live_lab_check.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from browser import PROJECT_POINT_JS, Browser, figure_problems  # noqa: E402

NOTEBOOK = "Array.from(jupyterapp.shell.widgets('main')).find(x=>x.content&&x.content.widgets)"
SCROLLER = "document.querySelector('.jp-NotebookPanel .jp-WindowedPanel-outer')"
PROGRESS_JS = ("Array.from(document.querySelectorAll('.jp-NotebookPanel .widget-hprogress'))"
               ".map(e=>(e.closest('.widget-hbox')||e).textContent.trim().slice(0,120))")
TEXT_PROGRESS_JS = ("Array.from(document.querySelectorAll('.jp-NotebookPanel .jp-OutputArea-output'))"
                    ".map(e=>e.textContent).filter(t=>/\\d+%\\|/.test(t)).map(t=>t.trim().slice(0,160))")
ERRORS_JS = ("Array.from(document.querySelectorAll('.jp-OutputArea-output[data-mime-type="
             "\"application/vnd.jupyter.stderr\"], .jp-RenderedText[data-mime-type="
             "\"application/vnd.jupyter.error\"]')).map(e=>e.textContent.slice(0,300))")
SELECTED_JS = ("Array.from(document.querySelectorAll('.jp-NotebookPanel .widget-dropdown select'))"
               ".map(s=>s.options[s.selectedIndex]?s.options[s.selectedIndex].text:'')")


def wait(b: Browser, js: str, timeout: float, step: float = 1.0):
    start = time.time()
    while time.time() - start < timeout:
        try:
            value = b.evaluate(js)
        except Exception:  # the page is navigating
            value = None
        if value:
            return value
        time.sleep(step)
    raise TimeoutError(js)


def open_and_run(b: Browser, url: str, timeout: float) -> float:
    b.send("Page.navigate", url=url)
    wait(b, f"!!(window.jupyterapp && {SCROLLER} && document.querySelector('.jp-Cell'))", 180)
    time.sleep(3)
    b.evaluate("(function(){var n=Array.from(document.querySelectorAll('button')).find("
               "e=>e.textContent.trim()==='No'); if(n){n.click()} return 1})()")  # news toast
    idle = (f"(function(){{var w={NOTEBOOK}; var k=w&&w.sessionContext.session&&"
            "w.sessionContext.session.kernel; return !!k && k.status==='idle'})()")
    wait(b, idle, timeout)
    start = time.time()
    b.evaluate(f"(function(){{var w={NOTEBOOK}; jupyterapp.shell.activateById(w.id); "
               "jupyterapp.commands.execute('notebook:run-all-cells'); return 1})()")
    time.sleep(3)
    done = (f"(function(){{var w={NOTEBOOK}; var k=w.sessionContext.session.kernel;"
            "var busy=w.content.widgets.filter(c=>c.model.type==='code'&&c.promptNode&&"
            "c.promptNode.textContent.indexOf('*')>=0).length; return k.status==='idle'&&!busy})()")
    wait(b, done, timeout, 2)
    time.sleep(5)
    return time.time() - start


def photograph(b: Browser, shots: Path, name: str, limit: int = 40) -> int:
    b.evaluate(f"(function(){{{SCROLLER}.scrollTop=0; return 1}})()")
    for i in range(limit):
        time.sleep(1.0)
        b.screenshot(shots / f"{name}_{i:02d}.png", full_page=False)
        more = b.evaluate(f"(function(){{var s={SCROLLER}; var t=s.scrollTop; "
                          "s.scrollTop=t+s.clientHeight*0.9; return s.scrollTop>t+1})()")
        if not more:
            return i + 1
    return limit


def click_landmarks(b: Browser, index: int, n_clicks: int, seed: int = 0) -> list[tuple]:
    """Click ~7 px off well-separated markers; returns (landmark, selected text, ok)."""
    n = b.evaluate(f"document.querySelectorAll('.js-plotly-plot')[{index}]._fullData[0].x.length")
    points = np.array([b.evaluate(f"({PROJECT_POINT_JS})({index}, 0, {i})") for i in range(n)])
    out = []
    for landmark in np.random.default_rng(seed).permutation(n):
        x, y = points[landmark]
        gap = np.linalg.norm(points - points[landmark], axis=1)
        gap[landmark] = np.inf
        if gap.min() < 18 or not (300 < x < 1400 and 120 < y < 950):
            continue
        b.move(x + 90, y + 90)
        time.sleep(0.3)
        b.move(x + 6, y - 4)
        time.sleep(0.6)  # the hand rests on the point, then presses
        b.click(x + 6, y - 4)
        time.sleep(2.5)
        selected = b.evaluate(SELECTED_JS)[-1].replace("\xa0", " ")
        out.append((int(landmark), selected, selected.endswith(f"· {landmark}")))
        if len(out) >= n_clicks:
            break
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8897)
    parser.add_argument("--token", required=True)
    parser.add_argument("--shots", default="/tmp/live_lab_shots")
    parser.add_argument("--notebooks", nargs="+",
                        default=["00_quickstart.ipynb", "03_embeddings_3d.ipynb"])
    parser.add_argument("--timeout", type=float, default=1800)
    args = parser.parse_args()
    shots = Path(args.shots)
    shots.mkdir(parents=True, exist_ok=True)
    report: dict = {}
    for notebook in args.notebooks:
        url = (f"http://127.0.0.1:{args.port}/lab/tree/notebooks/{notebook}"
               f"?token={args.token}&reset")
        name = notebook.split("_")[0]
        with Browser(width=1500, height=1000, offline=False) as b:
            seconds = open_and_run(b, url, args.timeout)
            figures = b.figures()
            entry = {"run_s": round(seconds), "errors": b.evaluate(ERRORS_JS),
                     "figures": len(figures), "figure_problems": figure_problems(figures),
                     "progress_widgets": b.evaluate(PROGRESS_JS),
                     "text_progress": b.evaluate(TEXT_PROGRESS_JS),
                     "console_errors": list(b.console_errors)}
            entry["screenshots"] = photograph(b, shots, name)
            traces = b.evaluate("Array.from(document.querySelectorAll('.js-plotly-plot'))"
                                ".map(g=>(g._fullData||[]).map(t=>t.name))")
            explorer = next((i for i, names in enumerate(traces) if "pick halo" in names), None)
            if explorer is not None:
                b.evaluate(f"(function(){{document.querySelectorAll('.js-plotly-plot')[{explorer}]"
                           f".scrollIntoView({{block:'start'}}); {SCROLLER}.scrollTop-=80; return 1}})()")
                time.sleep(2)
                entry["explorer_px"] = b.evaluate(
                    f"(function(){{var g=document.querySelectorAll('.js-plotly-plot')[{explorer}];"
                    f"var r=(g.closest('.widget-vbox')||g).getBoundingClientRect();"
                    f"var s={SCROLLER}.getBoundingClientRect(); return {{explorer_height:r.height,"
                    "explorer_top:r.top, explorer_bottom:r.bottom, visible_top:s.top, visible_bottom:s.bottom}})()")
                entry["clicks_follow_hover"] = click_landmarks(b, explorer, 6)
                box = b.evaluate("(function(){var c=Array.from(document.querySelectorAll("
                                 "'.jp-NotebookPanel .widget-checkbox')).find(e=>e.textContent"
                                 ".indexOf('follow hover')>=0).querySelector('input');"
                                 "var r=c.getBoundingClientRect(); return [r.left+r.width/2, r.top+r.height/2]})()")
                b.click(*box)
                time.sleep(1.5)
                entry["clicks_click_only"] = click_landmarks(b, explorer, 10, seed=1)
                b.screenshot(shots / f"{name}_explorer.png", full_page=False)
        report[notebook] = entry
        print(json.dumps({notebook: entry}, indent=1, ensure_ascii=False))
    (shots / "report.json").write_text(json.dumps(report, indent=1, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
