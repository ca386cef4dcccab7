"""Read the training log (``metrics.jsonl``); the curves are drawn by :mod:`drasclr_toolkit.viz.training`."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from drasclr_toolkit.errors import MissingFileError


def read_metrics(path: str | Path) -> pd.DataFrame:
    """The metrics log of a run as a DataFrame, one row per logged step.

    ``path`` is ``metrics.jsonl`` or the run folder holding it. A half-written last line
    (a run killed mid-write) is skipped with a warning; a damaged line before the last is
    not an interrupted write and raises ValueError naming the file and line.

    Example:
        >>> import tempfile, pathlib, warnings
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "metrics.jsonl"
        >>> _ = p.write_text('{"step": 1, "loss_local": 2.0}\\n{"step": 2, "loss_')
        >>> with warnings.catch_warnings():
        ...     warnings.simplefilter("ignore")
        ...     read_metrics(p).to_dict("records")
        [{'step': 1, 'loss_local': 2.0}]
    """
    from drasclr_toolkit.io_utils import read_jsonl

    path = Path(path)
    if path.is_dir():
        path = path / "metrics.jsonl"
    if not path.is_file():
        raise MissingFileError(f"no metrics log at {path}; has the run logged a step yet?")
    records = read_jsonl(path, stacklevel=3)
    frame = pd.DataFrame.from_records(records)
    if not frame.empty:
        frame = frame.drop_duplicates("step", keep="last").sort_values("step").reset_index(drop=True)
    return frame
