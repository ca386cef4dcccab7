"""Every ordered notebook runs top to bottom on the tiny configuration, as `make demo` runs it."""

from __future__ import annotations

import json

import pytest

from drasclr_toolkit.notebooks.runner import ordered_notebooks, repository_notebooks_dir, run_notebook

from browser import Browser, chromium_path, figure_problems

NOTEBOOKS = ordered_notebooks(repository_notebooks_dir())


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    # One folder for the whole module: later notebooks reuse what earlier ones made.
    return tmp_path_factory.mktemp("demo")


def test_notebooks_are_found_in_order():
    names = [p.name for p in NOTEBOOKS]
    assert names and names[0] == "00_quickstart.ipynb"
    assert names == sorted(names)


@pytest.mark.notebook
@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_top_to_bottom(notebook, demo_dir):
    source = json.loads(notebook.read_text(encoding="utf-8"))
    assert all(not c.get("outputs") for c in source["cells"] if c["cell_type"] == "code"), (
        f"{notebook.name} is committed with outputs; strip them"
    )
    tagged = [c for c in source["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1, f"{notebook.name} needs exactly one cell tagged 'parameters'"

    run = run_notebook(notebook, demo_dir, {"work_dir": str(demo_dir / "work"), "config_name": "tiny"})
    assert run.ok, f"{notebook.name} failed after {run.seconds:.0f} s: {run.error}"
    assert run.html is not None and 10_000 < run.html.stat().st_size < 5_000_000, (
        f"{run.html.name} is {run.html.stat().st_size / 1e6:.1f} MB (pages must stay under 5 MB)")
    executed = json.loads(run.executed.read_text(encoding="utf-8"))
    errors = [o for c in executed["cells"] for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
    if chromium_path() is not None:  # the exported page as a person opens it (offline)
        with Browser() as browser:
            n_figures = browser.open(run.html)
            problems = figure_problems(browser.figures())
            console = list(browser.console_errors)
        assert not problems, f"{run.html.name}: " + "; ".join(problems)
        assert not console, f"{run.html.name}: console errors {console}"
        assert n_figures >= 1
