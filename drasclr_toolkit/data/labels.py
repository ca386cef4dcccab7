"""Label tables (outcomes per subject) checked as they are loaded.

A label table is a CSV (or DataFrame) with a ``subject_id`` column and one column per
label; ``time`` and ``event`` columns carry survival. :func:`load_labels` refuses what
would otherwise surface later as a raw pandas or scikit-learn error: duplicate or missing
ids, follow-up times that are not positive numbers, events that are not coded 0/1.

Example:
    >>> import pandas as pd
    >>> check_labels(pd.DataFrame({"subject_id": ["a", "b"], "event": [1, 2]}), "t.csv")
    Traceback (most recent call last):
    ...
    drasclr_toolkit.errors.LabelError: t.csv, column 'event': 1 value(s) are not 0 (censored) or 1 (event): row 2 (b): 2. What to do: ...
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pandas as pd

from drasclr_toolkit.errors import LabelError, MissingFileError

__all__ = ["check_labels", "load_labels"]


def load_labels(labels: str | os.PathLike | pd.DataFrame | None,
                time_col: str | None = "time", event_col: str | None = "event",
                what: str = "labels") -> pd.DataFrame | None:
    """The label table, checked (:func:`check_labels`) and indexed by ``subject_id`` (ids as
    strings): from a CSV path, or a DataFrame with a ``subject_id`` column (or index).
    ``None`` gives ``None``; ``what`` names the source in messages (e.g. ``"--labels"``).

    Example:
        >>> load_labels(pd.DataFrame({"subject_id": [1, 2], "event": [0, 1]})).index.tolist()
        ['1', '2']
    """
    if labels is None:
        return None
    if isinstance(labels, pd.DataFrame):
        table = labels
        if "subject_id" not in table.columns and table.index.name == "subject_id":
            table = table.reset_index()
        return check_labels(table, f"{what} table", time_col, event_col).set_index("subject_id")
    path = Path(labels).expanduser()
    if not path.is_file():
        raise MissingFileError(f"{what}: file {path} does not exist; check the path")
    try:
        table = pd.read_csv(path, dtype={"subject_id": str}, keep_default_na=True)
    except (ValueError, UnicodeDecodeError) as exc:
        raise LabelError(f"the label table cannot be read as CSV ({type(exc).__name__}: "
                         f"{exc})", where=f"{what} {path}",
                         fix="give a comma-separated table with a subject_id column") from None
    return check_labels(table, f"{what} {path}", time_col, event_col).set_index("subject_id")


def check_labels(table: pd.DataFrame, where: str, time_col: str | None = "time",
                 event_col: str | None = "event") -> pd.DataFrame:
    """``table`` (with a ``subject_id`` column) checked, its time/event columns numeric."""
    table = table.reset_index(drop=True).copy()
    if "subject_id" not in table.columns:
        raise LabelError("the table needs a subject_id column", where=where,
                         fix=f"add one; it has {list(table.columns)[:8]}")
    ids = table["subject_id"]
    if ids.isna().any():
        rows = ", ".join(str(i + 1) for i in ids.index[ids.isna()][:10])
        raise LabelError(f"rows without a subject id: {rows}", where=f"{where}, column "
                         "'subject_id'", fix="fill in the ids or remove those rows")
    table["subject_id"] = ids.astype(str)
    ids = table["subject_id"]
    dup = ids[ids.duplicated(keep=False)]
    if len(dup):
        shown = "; ".join(f"{sid!r} in rows {', '.join(str(i + 1) for i in dup.index[dup == sid])}"
                          for sid in list(dict.fromkeys(dup))[:5])
        raise LabelError(f"subject ids appear more than once: {shown}",
                         where=f"{where}, column 'subject_id'", fix="keep one row per subject")
    for col, rule in ((time_col, "time"), (event_col, "event")):
        if not col or col not in table.columns:
            continue
        raw = table[col]
        values = pd.to_numeric(raw, errors="coerce")
        bad = raw.notna() & values.isna()
        if rule == "event":
            bad |= values.notna() & ~values.isin([0, 1])
            expected = "0 (censored) or 1 (event)"
        else:
            bad |= values.notna() & (values <= 0)
            expected = "a positive number (follow-up time)"
        if bad.any():
            shown = ", ".join(f"row {i + 1} ({ids[i]}): {_show(raw[i])}"
                              for i in table.index[bad][:6])
            raise LabelError(f"{int(bad.sum())} value(s) are not {expected}: {shown}",
                             where=f"{where}, column {col!r}",
                             fix=f"code column {col!r} as {expected}, or leave the cell empty "
                             "where it is unknown")
        table[col] = values
    return table


def _show(value: Any) -> str:
    return repr(value) if isinstance(value, str) else f"{value:g}" if isinstance(value, float) else str(value)
