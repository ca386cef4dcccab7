"""Execute the ordered notebooks headless (papermill) and keep HTML copies (nbconvert).

The demo (``drasclr demo``) and the test suite both run the notebooks through
:func:`run_notebooks`, so what a newcomer sees is what CI checked.

Example
-------
>>> from pathlib import Path
>>> [p.name for p in ordered_notebooks(Path("notebooks"))][:1]  # doctest: +SKIP
['00_quickstart.ipynb']
"""

from __future__ import annotations

import logging
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from drasclr_toolkit.errors import MissingFileError
from drasclr_toolkit.io_utils import atomic_write_text

log = logging.getLogger(__name__)

KERNEL_NAME = "drasclr_toolkit"


def repository_notebooks_dir() -> Path:
    """The ``notebooks/`` folder beside the package (a clone or an editable install)."""
    return Path(__file__).resolve().parents[2] / "notebooks"


def ordered_notebooks(directory: Path, only: Iterable[str] | None = None) -> list[Path]:
    """Notebooks whose names start with two digits, in order; ``only`` filters by prefix."""
    paths = sorted(p for p in Path(directory).glob("[0-9][0-9]_*.ipynb"))
    if only is not None:
        wanted = tuple(only)
        paths = [p for p in paths if p.name.startswith(wanted) or p.stem in wanted]
    return paths


def ensure_kernel() -> str:
    """Register this interpreter as a Jupyter kernel under a name no other kernel uses.

    A plain ``python3`` kernel spec in the user's folders can point at another Python; a
    project-specific name makes headless runs use the interpreter that runs them.
    """
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        spec = KernelSpecManager().get_kernel_spec(KERNEL_NAME)
        if Path(spec.argv[0]).resolve() == Path(sys.executable).resolve():
            return KERNEL_NAME
    except NoSuchKernel:
        pass
    subprocess.run(
        [sys.executable, "-m", "ipykernel", "install", "--sys-prefix", "--name", KERNEL_NAME,
         "--display-name", "Python (drasclr_toolkit)"],
        check=True, capture_output=True,
    )
    return KERNEL_NAME


@dataclass
class NotebookRun:
    notebook: str
    executed: Path
    html: Path | None
    seconds: float
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def export_html(executed: Path) -> Path:
    """Write a self-contained HTML copy beside an executed notebook.

    The page works with no network: one compressed plotly.js draws every figure, and each
    widget shows the static copy it carried when displayed (see ``viz.export``).
    """
    import nbformat

    from drasclr_toolkit.viz.export import notebook_page

    notebook = nbformat.read(executed, as_version=4)
    html = executed.with_suffix(".html")
    return atomic_write_text(html, notebook_page(notebook))


def run_notebook(
    notebook: Path,
    out_dir: Path,
    parameters: dict[str, Any],
    html: bool = True,
    timeout_s: int = 1800,
) -> NotebookRun:
    """Execute one notebook with injected parameters; never raises on a cell error."""
    import papermill

    # papermill logs every cell at INFO; our own lines say which notebook ran and how long.
    logging.getLogger("papermill").setLevel(max(logging.WARNING, log.getEffectiveLevel()))
    out_dir.mkdir(parents=True, exist_ok=True)
    executed = out_dir / notebook.name
    start = time.perf_counter()
    error = None
    try:
        papermill.execute_notebook(
            str(notebook), str(executed), parameters=parameters, kernel_name=ensure_kernel(),
            cwd=str(notebook.parent), progress_bar=False, execution_timeout=timeout_s,
        )
    except Exception as exc:  # papermill re-raises the cell's error; keep going, report it
        error = f"{type(exc).__name__}: {exc}"
    seconds = time.perf_counter() - start
    html_path = export_html(executed) if html and executed.exists() else None
    return NotebookRun(notebook.name, executed, html_path, seconds, error)


def run_notebooks(
    out_dir: str | Path,
    config_name: str = "tiny",
    notebooks_dir: str | Path | None = None,
    only: Iterable[str] | None = None,
    extra_parameters: dict[str, Any] | None = None,
    stop_on_error: bool = True,
) -> list[NotebookRun]:
    """Run the ordered notebooks into ``out_dir`` sharing one work folder ``out_dir/work``."""
    out = Path(out_dir).resolve()
    directory = Path(notebooks_dir) if notebooks_dir else repository_notebooks_dir()
    paths = ordered_notebooks(directory, only)
    if not paths:
        raise MissingFileError(f"no numbered notebooks found in {directory}")
    parameters = {"work_dir": str(out / "work"), "config_name": config_name,
                  **(extra_parameters or {})}
    runs = []
    for path in paths:
        log.info("running %s", path.name)
        run = run_notebook(path, out, parameters)
        runs.append(run)
        status = "ok" if run.ok else f"FAILED ({run.error.splitlines()[0][:200]})"
        log.info("%s: %s in %.1f s -> %s", path.name, status, run.seconds, run.html)
        if not run.ok and stop_on_error:
            break
    return runs
