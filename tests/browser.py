"""Open pages in headless Chromium (DevTools protocol) and check every plotly figure on them.

Used by the tests (``tests/test_pages.py``, ``tests/test_notebooks.py``) and by hand::

    python tests/browser.py demo_output/*.html --shots /tmp/shots   # report + screenshots

What a figure must show (:data:`CHECK_FIGURES_JS`): it is drawn; every visible 2D axis with
tick labels, every 3D axis and every colour bar has a title; every 2D axis title and tick
label lies inside the figure's box; a 3D scene's box (and so its tick labels and titles,
which sit just outside it) projects inside the scene's canvas; the legend covers no tick
label, axis title or plot area. Mouse events are real (``Input.dispatchMouseEvent``), so a
click goes through the same picking as a person's.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

__all__ = ["Browser", "CHECK_FIGURES_JS", "chromium_path", "figure_problems"]


def chromium_path() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        found = shutil.which(name)
        if found:
            return found
    return None


class Browser:
    """One headless Chromium with one page; ``with Browser() as b: b.open(path)``."""

    def __init__(self, width: int = 1500, height: int = 1000, offline: bool = True) -> None:
        import websocket  # websocket-client, a dev dependency

        exe = chromium_path()
        if exe is None:
            raise RuntimeError("no chromium found (apt-get install chromium)")
        self.profile = tempfile.mkdtemp(prefix="drasclr-chromium-")
        self.process = subprocess.Popen(
            [exe, "--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
             "--remote-debugging-port=0", f"--user-data-dir={self.profile}",
             f"--window-size={width},{height}", "--hide-scrollbars", "--mute-audio",
             "--use-angle=swiftshader", "--enable-unsafe-swiftshader", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        port_file = Path(self.profile) / "DevToolsActivePort"
        deadline = time.time() + 30
        while not port_file.exists() or not port_file.read_text().strip():
            if time.time() > deadline or self.process.poll() is not None:
                self.close()
                raise RuntimeError("chromium did not start")
            time.sleep(0.05)
        port = int(port_file.read_text().split()[0])
        targets = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list").read())
        page = next(t for t in targets if t.get("type") == "page")
        self.ws = websocket.create_connection(page["webSocketDebuggerUrl"], timeout=60,
                                              suppress_origin=True)
        self._id = 0
        self.console_errors: list[str] = []
        self.width, self.height = width, height
        self.send("Page.enable")
        self.send("Runtime.enable")
        self.send("Emulation.setDeviceMetricsOverride", width=width, height=height,
                  deviceScaleFactor=1, mobile=False)
        if offline:
            self.send("Network.enable")
            self.send("Network.emulateNetworkConditions", offline=True, latency=0,
                      downloadThroughput=-1, uploadThroughput=-1)

    def send(self, method: str, **params: Any) -> dict[str, Any]:
        self._id += 1
        self.ws.send(json.dumps({"id": self._id, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv())
            if message.get("id") == self._id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})
            if message.get("method") == "Runtime.exceptionThrown":
                self.console_errors.append(
                    message["params"]["exceptionDetails"].get("text", "exception"))
            elif message.get("method") == "Runtime.consoleAPICalled" and \
                    message["params"].get("type") == "error":
                self.console_errors.append(" ".join(
                    str(a.get("value", a.get("description", ""))) for a in message["params"]["args"]))

    def evaluate(self, expression: str, timeout_s: float = 60.0) -> Any:
        result = self.send("Runtime.evaluate", expression=expression, awaitPromise=True,
                           returnByValue=True, timeout=int(timeout_s * 1000))
        if "exceptionDetails" in result:
            raise RuntimeError(f"page script failed: {result['exceptionDetails']}")
        return result["result"].get("value")

    def open(self, path: str | os.PathLike, timeout_s: float = 120.0) -> int:
        """Load a file and wait until every figure placeholder is drawn; returns how many."""
        self.console_errors = []
        self.send("Page.navigate", url=Path(path).resolve().as_uri())
        return self.evaluate(WAIT_FOR_FIGURES_JS % int(timeout_s * 1000), timeout_s + 5)

    def figures(self) -> list[dict[str, Any]]:
        return self.evaluate(CHECK_FIGURES_JS)

    def screenshot(self, path: str | os.PathLike, full_page: bool = True) -> Path:
        params: dict[str, Any] = {"format": "png"}
        if full_page:
            size = self.evaluate("[document.documentElement.scrollWidth,"
                                 " document.documentElement.scrollHeight]")
            params.update(captureBeyondViewport=True, clip={
                "x": 0, "y": 0, "width": max(size[0], self.width), "height": size[1], "scale": 1})
        data = self.send("Page.captureScreenshot", **params)["data"]
        out = Path(path)
        out.write_bytes(base64.b64decode(data))
        return out

    def click(self, x: float, y: float, hold_s: float = 0.15) -> None:
        """A real left click at page (viewport) coordinates: move, press, hold, release.

        The hold matters for WebGL scenes: plotly's 3D view reads the pressed button in
        its next animation frame, as it does for a person's click."""
        self.send("Input.dispatchMouseEvent", type="mouseMoved", x=x, y=y, button="none")
        time.sleep(0.05)
        self.send("Input.dispatchMouseEvent", type="mousePressed", x=x, y=y, button="left",
                  buttons=1, clickCount=1)
        time.sleep(hold_s)
        self.send("Input.dispatchMouseEvent", type="mouseReleased", x=x, y=y, button="left",
                  buttons=0, clickCount=1)

    def move(self, x: float, y: float) -> None:
        self.send("Input.dispatchMouseEvent", type="mouseMoved", x=x, y=y, button="none")

    def close(self) -> None:
        try:
            if getattr(self, "ws", None) is not None:
                self.ws.close()
        finally:
            if self.process.poll() is None:
                self.process.terminate()
                try:
                    self.process.wait(10)
                except subprocess.TimeoutExpired:
                    self.process.kill()
            shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self) -> "Browser":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


WAIT_FOR_FIGURES_JS = """
new Promise(function (resolve, reject) {
  var start = Date.now();
  (function poll() {
    if (document.readyState === 'complete') {
      var holders = document.querySelectorAll('.drasclr-plot, .plotly-graph-div');
      var drawn = Array.from(holders).filter(function (el) {
        return el.classList.contains('js-plotly-plot') || el.textContent.indexOf('could not be drawn') >= 0;
      });
      if (drawn.length === holders.length) {
        // one more frame for WebGL scenes and autosize
        return setTimeout(function () { resolve(holders.length); }, 400);
      }
    }
    if (Date.now() - start > %d) { return reject(new Error('figures not drawn in time')); }
    setTimeout(poll, 100);
  })();
})
"""

CHECK_FIGURES_JS = r"""
(function () {
  function box(el) { var r = el.getBoundingClientRect(); return {l: r.left, t: r.top, r: r.right, b: r.bottom, w: r.width, h: r.height}; }
  function inside(a, b, slack) { slack = slack || 1; return a.l >= b.l - slack && a.t >= b.t - slack && a.r <= b.r + slack && a.b <= b.b + slack; }
  function overlap(a, b) { return Math.min(a.r, b.r) - Math.max(a.l, b.l) > 1 && Math.min(a.b, b.b) - Math.max(a.t, b.t) > 1; }
  function text(el) { return (el.textContent || '').trim(); }
  // plotly fills an empty title with an editing placeholder ("Click to enter X axis title")
  function real(t) { t = (t || '').trim(); return /^Click to enter/.test(t) ? '' : t; }
  var out = [];
  document.querySelectorAll('.js-plotly-plot').forEach(function (gd, index) {
    var fig = {index: index, id: gd.id, problems: [], titles: [], kind: '2d'};
    var full = gd._fullLayout;
    fig.title = full && full.title && full.title.text || '';
    var gbox = box(gd);
    fig.box = gbox;
    if (!full || !gd.querySelector('.main-svg')) { fig.problems.push('not drawn'); out.push(fig); return; }
    // 2D axes: a title where tick labels are shown, every title and tick label inside the box
    Object.keys(full).filter(function (k) { return /^[xy]axis\d*$/.test(k); }).forEach(function (k) {
      var ax = full[k];
      if (!ax.visible || !ax._id || (ax._mainSubplot === undefined && !ax.anchor)) { return; }
      // a category axis (feature-set names) names its points itself
      var ticks = ax.showticklabels && (ax._vals || []).length > 0 && ax.type !== 'category';
      var title = real(ax.title && ax.title.text);
      fig.titles.push(k + ': ' + title);
      if (ticks && !title.trim()) { fig.problems.push(k + ' has tick labels but no title (quantity, unit)'); }
    });
    gd.querySelectorAll('.g-xtitle text, .g-ytitle text, .gtitle').forEach(function (el) {
      if (!real(text(el))) { return; }
      var b = box(el);
      if (!inside(b, gbox, 2)) { fig.problems.push('title "' + text(el).slice(0, 40) + '" outside the figure box'); }
    });
    var tickLabels = Array.from(gd.querySelectorAll('.xtick text, .ytick text, .xtick2 text, .ytick2 text'));
    tickLabels.forEach(function (el) {
      if (!text(el)) { return; }
      var b = box(el);
      if (b.w > 0 && !inside(b, gbox, 2)) { fig.problems.push('tick label "' + text(el).slice(0, 20) + '" outside the figure box'); }
    });
    // colour bars need a title
    (gd._fullData || []).forEach(function (trace) {
      var shows = trace.showscale || (trace.marker && trace.marker.showscale);
      if (!shows || trace.visible === false || trace.visible === 'legendonly') { return; }
      var cb = trace.colorbar || (trace.marker && trace.marker.colorbar) || {};
      if (!real(cb.title && cb.title.text)) { fig.problems.push('colour bar of "' + (trace.name || trace.type) + '" has no title'); }
    });
    Object.keys(full).filter(function (k) { return /^coloraxis\d*$/.test(k); }).forEach(function (k) {
      var ca = full[k];
      if (ca.showscale && !real(ca.colorbar && ca.colorbar.title && ca.colorbar.title.text)) { fig.problems.push(k + ' colour bar has no title'); }
    });
    // legend: clear of tick labels, axis titles and the plot areas
    var legend = gd.querySelector('.legend');
    if (legend && full.showlegend !== false) {
      var lb = box(legend.querySelector('.bg') || legend);
      if (lb.w > 0 && lb.h > 0) {
        tickLabels.concat(Array.from(gd.querySelectorAll('.g-xtitle text, .g-ytitle text'))).forEach(function (el) {
          if (text(el) && overlap(lb, box(el))) { fig.problems.push('legend covers "' + text(el).slice(0, 24) + '"'); }
        });
        gd.querySelectorAll('.nsewdrag').forEach(function (el) {
          if (overlap(lb, box(el))) { fig.problems.push('legend covers a plot area'); }
        });
        if (!inside(lb, gbox, 2)) { fig.problems.push('legend outside the figure box'); }
      }
    }
    // 3D scenes: titles on every axis; the projected box inside the canvas (ticks and titles sit just outside it)
    Object.keys(full).filter(function (k) { return /^scene\d*$/.test(k); }).forEach(function (k) {
      fig.kind = '3d';
      var sc = full[k];
      ['xaxis', 'yaxis', 'zaxis'].forEach(function (a) {
        var t = real(sc[a] && sc[a].title && sc[a].title.text);
        fig.titles.push(k + '.' + a + ': ' + t);
        if (sc[a].visible !== false && !t.trim()) { fig.problems.push(k + '.' + a + ' has no title'); }
      });
      var scene = sc._scene, gl = scene && scene.glplot;
      if (!gl) { fig.problems.push(k + ' not drawn (no WebGL)'); return; }
      var canvas = gl.canvas, cbox = box(canvas);
      var cam = gl.cameraParams || {};
      var bounds = gl.axes && gl.axes.bounds;
      if (!bounds || !cam.projection) { return; }
      var m = [cam.model, cam.view, cam.projection];
      function mul(mat, v) { var o = [0, 0, 0, 0]; for (var i = 0; i < 4; i++) { for (var j = 0; j < 4; j++) { o[i] += mat[j * 4 + i] * v[j]; } } return o; }
      // the scene's viewport inside the canvas (its domain)
      // the scene's viewport: its domain of the plot area left after margins and legend
      var dom = sc.domain, sz = full._size;
      var vw = sz.w * (dom.x[1] - dom.x[0]), vh = sz.h * (dom.y[1] - dom.y[0]);
      var vl = gbox.l + sz.l + sz.w * dom.x[0], vt = gbox.t + sz.t + sz.h * (1 - dom.y[1]);
      var view = {l: vl, t: vt, r: vl + vw, b: vt + vh};
      var worst = 0;
      // corners pushed out by 15 % of the box: where tick labels and titles are drawn
      var lo = bounds[0], hi = bounds[1], pad = [0, 1, 2].map(function (i) { return 0.15 * (hi[i] - lo[i]); });
      for (var c = 0; c < 8; c++) {
        var p = [0, 1, 2].map(function (i) { return (c >> i) & 1 ? hi[i] + pad[i] : lo[i] - pad[i]; });
        var v = mul(m[2], mul(m[1], mul(m[0], [p[0], p[1], p[2], 1])));
        var x = vl + (v[0] / v[3] * 0.5 + 0.5) * vw, y = vt + (0.5 - v[1] / v[3] * 0.5) * vh;
        var out_ = Math.max(view.l - x, x - view.r, view.t - y, y - view.b, 0);
        worst = Math.max(worst, out_);
      }
      fig.scene_overflow_px = Math.round(worst);
      if (worst > 2) { fig.problems.push(k + ': axis labels run ' + Math.round(worst) + ' px outside the scene (cut off)'); }
    });
    out.push(fig);
  });
  return out;
})()
"""


PROJECT_POINT_JS = r"""
(function (index, trace, point) {
  var gd = document.querySelectorAll('.js-plotly-plot')[index];
  var full = gd._fullLayout, sc = full.scene, gl = sc._scene.glplot, cam = gl.cameraParams;
  var data = gd._fullData[trace];
  var p = sc._scene.dataScale ? [data.x[point] * sc._scene.dataScale[0], data.y[point] * sc._scene.dataScale[1], data.z[point] * sc._scene.dataScale[2]]
                              : [data.x[point], data.y[point], data.z[point]];
  function mul(mat, v) { var o = [0, 0, 0, 0]; for (var i = 0; i < 4; i++) { for (var j = 0; j < 4; j++) { o[i] += mat[j * 4 + i] * v[j]; } } return o; }
  var v = mul(cam.projection, mul(cam.view, mul(cam.model, [p[0], p[1], p[2], 1])));
  var dom = sc.domain, sz = full._size, gb = gd.getBoundingClientRect();
  var vw = sz.w * (dom.x[1] - dom.x[0]), vh = sz.h * (dom.y[1] - dom.y[0]);
  var vl = gb.left + sz.l + sz.w * dom.x[0], vt = gb.top + sz.t + sz.h * (1 - dom.y[1]);
  return [vl + (v[0] / v[3] * 0.5 + 0.5) * vw, vt + (0.5 - v[1] / v[3] * 0.5) * vh];
})
"""


def figure_problems(figures: list[dict[str, Any]]) -> list[str]:
    """One line per problem, naming the figure by its number and title."""
    return [f"figure {f['index']} ({f.get('title', '')[:60]!r}): {p}"
            for f in figures for p in f["problems"]]


def _main() -> int:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pages", nargs="+")
    parser.add_argument("--shots", default=None, help="folder for full-page screenshots")
    parser.add_argument("--width", type=int, default=1500)
    args = parser.parse_args()
    bad = 0
    with Browser(width=args.width) as browser:
        for page in args.pages:
            start = time.perf_counter()
            n = browser.open(page)
            figures = browser.figures()
            problems = figure_problems(figures)
            print(f"{page}: {n} figures in {time.perf_counter() - start:.1f} s, "
                  f"{len(problems)} problems, console errors {browser.console_errors}")
            for line in problems:
                print("   ", line)
            bad += len(problems)
            if args.shots:
                Path(args.shots).mkdir(parents=True, exist_ok=True)
                browser.screenshot(Path(args.shots) / (Path(page).stem + ".png"))
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(_main())
