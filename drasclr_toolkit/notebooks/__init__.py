"""Notebook tooling, not the library core: :func:`setup_notebook` (called once in every
notebook's first cell) and the headless runner with HTML export (:func:`run_notebooks`,
used by ``drasclr demo`` and the notebook tests).

The ordered ``.ipynb`` files themselves are in the repository's top-level ``notebooks/``
folder (:func:`repository_notebooks_dir`), outside the package.

Example:
    >>> from drasclr_toolkit.notebooks import repository_notebooks_dir
    >>> repository_notebooks_dir().name
    'notebooks'
"""

from __future__ import annotations

from drasclr_toolkit.notebooks.runner import (NotebookRun, ensure_kernel, export_html,
                                              ordered_notebooks, repository_notebooks_dir,
                                              run_notebook, run_notebooks)
from drasclr_toolkit.notebooks.setup import setup_notebook

__all__ = [
    "NotebookRun",
    "ensure_kernel",
    "export_html",
    "ordered_notebooks",
    "repository_notebooks_dir",
    "run_notebook",
    "run_notebooks",
    "setup_notebook",
]
