"""Figures as a person sees them: every figure kind on one offline page, opened in headless
Chromium (1,500 × 1,000, network off), checked for axis titles, cut-off labels and legends
over ticks; and a real mouse click a few pixels off a landmark selects it.

The notebooks' own exported pages get the same check in ``tests/test_notebooks.py``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from browser import PROJECT_POINT_JS, Browser, chromium_path, figure_problems

pytestmark = pytest.mark.skipif(chromium_path() is None, reason="chromium is not installed")


def _figures():
    """One of each figure the notebooks show, on small made-up inputs."""
    from drasclr_toolkit.evaluate.survival import risk_groups
    from drasclr_toolkit.patch_source import ArrayPatchSource
    from drasclr_toolkit.viz.dense import dense_map_figure, label_efficiency_figure
    from drasclr_toolkit.viz.evaluation import km_figure, result_figure
    from drasclr_toolkit.viz.explorer import patch_explorer
    from drasclr_toolkit.viz.landmarks import landmark_cloud
    from drasclr_toolkit.viz.qc import plot_overlay
    from drasclr_toolkit.viz.slices import slice_figure

    rng = np.random.default_rng(0)
    grid = np.stack(np.meshgrid(np.arange(0, 130, 26), np.arange(0, 80, 26),
                                np.arange(0, 160, 26), indexing="ij"), -1).reshape(-1, 3)
    n_loc = len(grid)
    figures = {"cloud": landmark_cloud(grid, rng.normal(size=(3, n_loc)), spacing=(1, 1, 1),
                                       value_name="PC1", subject_ids=["a", "b", "c"])}
    source = ArrayPatchSource(rng.integers(-1000, 200, (2, n_loc, 32, 32, 32)).astype(np.int16),
                              grid, subject_ids=["a", "b"], lung_fraction=rng.random((2, n_loc)))
    ct = rng.integers(-1000, 100, (120, 110, 150)).astype(np.int16)
    explorer = patch_explorer(source, "a", ct=ct, subject_corners=grid - 10)
    figures["explorer 3D"] = explorer.cloud
    figures["explorer patch"] = explorer.patch_figure
    figures["explorer CT"] = explorer.ct_figure
    figures["slices"] = slice_figure(ct, spacing=(0.7, 0.7, 2.0))
    figures["qc overlay"] = plot_overlay(ct, corners=grid - 20)
    x = rng.normal(size=(80, 2))
    groups = risk_groups(x, rng.exponential(np.exp(-x[:, 0])) + 0.01, rng.random(80) < 0.8,
                         n_permutations=9)
    figures["kaplan-meier"] = km_figure(groups, time_unit="years")
    names = ["drasclr", "random-init", "densitometry", "densitometry zones"]
    long = pd.DataFrame([{"feature_set": f, "task": t, "metric": "C-index", "value": 0.6,
                          "ci_low": 0.5, "ci_high": 0.7, "chance": 0.5, "null_p95": 0.58,
                          "p": 0.04, "evidence": True, "verdict": "", "n": 40}
                         for f in names for t in ("coxph", "coxnet")])
    figures["results"] = result_figure(long)
    efficiency = pd.DataFrame([{"method": m, "fraction": f, "seed": s, "balanced_accuracy": 0.5,
                                "chance": 0.25} for m in ("fine-tuned", "from scratch")
                               for f in (0.2, 0.5, 0.9) for s in range(2)])
    figures["label efficiency"] = label_efficiency_figure(efficiency)
    labels = rng.integers(0, 4, n_loc)
    figures["dense 3D"] = dense_map_figure(grid, labels, labels[::-1], spacing=(1, 1, 1))
    return figures


@pytest.fixture(scope="module")
def browser():
    with Browser(width=1500, height=1000) as b:
        yield b


def test_every_figure_kind_draws_with_titles_inside_and_legends_clear(browser, tmp_path):
    import plotly.graph_objects as go

    from drasclr_toolkit.viz.export import html_report

    figures = _figures()
    page = tmp_path / "figures.html"
    page.write_text(html_report("figures", [(name, go.Figure(fig)) for name, fig in figures.items()]))
    assert browser.open(page) == len(figures)
    drawn = browser.figures()
    assert len(drawn) == len(figures)
    problems = figure_problems(drawn)
    assert not problems, "\n".join(problems)
    assert not browser.console_errors
    three_d = [f for f in drawn if f["kind"] == "3d"]
    assert three_d and all(f["scene_overflow_px"] == 0 for f in three_d)


def test_the_check_catches_cut_labels_missing_titles_and_covering_legends(browser, tmp_path):
    """The same check on figures made wrong on purpose reports each fault."""
    import plotly.graph_objects as go

    from drasclr_toolkit.viz.export import html_report
    from drasclr_toolkit.viz.landmarks import landmark_cloud

    cut = landmark_cloud(np.array([[0, 0, 0], [100, 60, 180]]), np.array([0.0, 1.0]),
                         spacing=(1, 1, 1), value_name="v")
    cut.update_layout(scene_camera=dict(eye=dict(x=1.25, y=1.25, z=1.25)))  # plotly's default
    bare = go.Figure(go.Scatter(x=[1, 2], y=[3, 4]))
    covered = go.Figure([go.Scatter(x=[1, 2], y=[3, 4], name="a"), go.Scatter(x=[1, 2], y=[4, 3], name="b")])
    covered.update_layout(xaxis_title="x (mm)", yaxis_title="y (mm)",
                          legend=dict(orientation="h", y=-0.02))
    page = tmp_path / "bad.html"
    page.write_text(html_report("bad", [("cut", cut), ("bare", bare), ("covered", covered)]))
    browser.open(page)
    problems = "\n".join(figure_problems(browser.figures()))
    assert "figure 0" in problems and "outside the scene" in problems
    assert "xaxis has tick labels but no title" in problems
    assert "figure 2" in problems and "legend covers" in problems


def test_a_click_near_a_landmark_selects_it(browser, tmp_path):
    """Real mouse events a few pixels off the marker centres, in the explorer's 3D view:
    plotly reports the landmark under the pick halo, which the explorer then selects."""
    import plotly.graph_objects as go

    from drasclr_toolkit.patch_source import ArrayPatchSource
    from drasclr_toolkit.viz.explorer import patch_explorer
    from drasclr_toolkit.viz.export import html_report

    rng = np.random.default_rng(1)
    grid = np.stack(np.meshgrid(np.arange(0, 130, 26), np.arange(0, 80, 26),
                                np.arange(0, 160, 26), indexing="ij"), -1).reshape(-1, 3)
    source = ArrayPatchSource(np.zeros((1, len(grid), 32, 32, 32), np.int16), grid,
                              subject_ids=["a"], lung_fraction=rng.random((1, len(grid))))
    explorer = patch_explorer(source, "a")
    page = tmp_path / "pick.html"
    page.write_text(html_report("pick", [("explorer", go.Figure(explorer.cloud))]))
    browser.open(page)
    browser.evaluate("""(function () { var gd = document.querySelector('.js-plotly-plot');
        window.picked = []; gd.scrollIntoView();
        gd.on('plotly_click', function (e) { window.picked.push(e.points.map(function (p) {
            return p.customdata; })); }); })()""")
    halo = next(i for i, t in enumerate(explorer.cloud.data) if t.name == "pick halo")
    targets = [17, 20, 30, 44, 58]

    seen: list = []
    screen = np.array([browser.evaluate(f"({PROJECT_POINT_JS})(0, 0, {i})")
                       for i in range(len(grid))])

    def clicks_that_pick() -> int:
        hits = 0
        for landmark in targets:
            x, y = browser.evaluate(f"({PROJECT_POINT_JS})(0, 0, {landmark})")  # its marker
            browser.move(x + 60, y + 60)  # away first, as a hand comes from elsewhere
            browser.evaluate("window.picked = []")
            click = np.array([x + 6, y - 3])  # about 7 px off the marker's centre
            browser.click(*click)
            # the landmark drawn nearest the click point (a neighbour may be nearer on screen)
            nearest = int(np.argmin(np.linalg.norm(screen - click, axis=1)))
            browser.evaluate("new Promise(function (r) { setTimeout(r, 300); })")
            picked = browser.evaluate("window.picked")
            seen.append((landmark, nearest, picked))
            if picked and nearest in picked[-1]:
                hits += 1
                point = type("Points", (), {"point_inds": [nearest]})()
                explorer._on_click(explorer.cloud.data[halo], point, None)
                assert explorer.landmark == nearest
        return hits

    with_halo = clicks_that_pick()
    assert with_halo >= len(targets) - 1, f"{with_halo} of {len(targets)} near clicks picked: {seen}"
    # without the halo the same clicks miss: plotly picks only within the drawn marker
    browser.evaluate(f"Plotly.restyle(document.querySelector('.js-plotly-plot'), "
                     f"{{visible: false}}, [{halo}]).then(function () {{ return null; }})")
    assert clicks_that_pick() <= 1
