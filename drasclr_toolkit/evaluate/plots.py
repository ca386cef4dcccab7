"""Moved: the evaluation figures live in :mod:`drasclr_toolkit.viz.evaluation`.

Kept so that ``from drasclr_toolkit.evaluate.plots import km_figure`` still works.
"""

from drasclr_toolkit.viz.evaluation import km_figure

__all__ = ["km_figure"]
