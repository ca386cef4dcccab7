"""Reading and typing manifest tables: every cell parsed by its column's rule.

Problems are collected, not raised one by one, so a user sees every bad cell at once.
Cells read from a CSV stay text until their rule types them (``keep_default_na=False``).
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from drasclr_toolkit.io_utils import SUBJECT_ID_PATTERN

from drasclr_toolkit.data.card import PATH_COLUMNS, ColumnRule, card_rules
from drasclr_toolkit.data.dicom import is_dicom_file
from drasclr_toolkit.data.image_files import is_image_file
from drasclr_toolkit.data.problems import ManifestError, ManifestProblem

__all__ = ["read_csv_text", "raw_text", "validate_frame", "validate_table"]

# Cell texts read as a missing value.
MISSING_TOKENS = frozenset({"", "na", "nan", "n/a", "null", "none", "missing"})
_TRUE = frozenset({"1", "true", "yes", "y", "t"})
_FALSE = frozenset({"0", "false", "no", "n", "f"})


def is_missing(text: str) -> bool:
    return text.strip().lower() in MISSING_TOKENS


def _is_missing_cell(text: str, rule: ColumnRule, base_dir: Path) -> bool:
    """Whether a cell is a missing value under its column's rule.

    Only a blank cell is a missing subject id: "NA", "null" or "missing" are names that
    scanners and folder layouts do produce. A path cell reading like a missing token is a
    path when that file or folder exists (a DICOM folder named "NA").
    """
    if rule.role == "id":
        return not text.strip()
    if not is_missing(text):
        return False
    return not (text.strip() and rule.dtype == "path" and (base_dir / text.strip()).exists())


def _parse_cells(
    raw: pd.Series,
    name: str,
    rule: ColumnRule,
    ids: list[str | None],
    base_dir: Path,
    check_files: bool,
    problems: list[ManifestProblem],
) -> pd.Series:
    """Typed column from its raw text cells, recording a problem for each bad cell."""
    out: list[Any] = []
    hint = f". What to do: {rule.fix}" if rule.fix else ""

    def bad(i: int, value: str, msg: str) -> None:
        problems.append(ManifestProblem(msg + hint, row=i + 1, subject_id=ids[i], column=name,
                                        value=value))

    for i, cell in enumerate(raw.tolist()):
        text = "" if cell is None or (isinstance(cell, float) and math.isnan(cell)) else str(cell)
        text = text.strip()
        if _is_missing_cell(text, rule, base_dir):
            if rule.required:
                bad(i, text, f"is empty but required ({rule.description or name})")
            out.append(None if rule.dtype in ("str", "path", "category") else np.nan)
            continue
        if rule.dtype == "path":
            p = Path(text).expanduser()
            p = p if p.is_absolute() else base_dir / p
            p = Path(os.path.normpath(p))
            if check_files and not p.exists():
                bad(i, text, f"file not found (looked for {p}); fix the path (relative paths are "
                             "relative to the manifest's folder) or remove the row")
            elif (check_files and rule.role in ("image", "mask") and p.is_file()
                  and not is_image_file(p) and not is_dicom_file(p)):
                bad(i, text, "is not a supported scan file; give a NIfTI (.nii, .nii.gz), NRRD, "
                             "MHA/MHD file or a DICOM series folder (convert other formats)")
            out.append(str(p))
        elif rule.dtype in ("float", "int"):
            try:
                v = float(text)
            except ValueError:
                bad(i, text, f"is not a number (expected {rule.dtype})")
                out.append(np.nan)
                continue
            if not math.isfinite(v):
                bad(i, text, "is not a finite number; leave the cell empty for a missing value")
                out.append(np.nan)
                continue
            if rule.dtype == "int" and v != round(v):
                bad(i, text, "is not a whole number (expected int)")
                out.append(np.nan)
                continue
            if not _in_range(v, rule):
                bad(i, text, f"is outside the allowed values ({rule.describe_range()})")
                out.append(np.nan)
                continue
            out.append(v)
        elif rule.dtype == "bool":
            low = text.lower()
            if low in _TRUE:
                out.append(1.0)
            elif low in _FALSE:
                out.append(0.0)
            else:
                bad(i, text, "is not a yes/no value (use 1/0 or true/false)")
                out.append(np.nan)
        else:  # str, category
            if rule.allowed is not None and text not in {str(a) for a in rule.allowed}:
                bad(i, text, f"is not one of the allowed values ({rule.describe_range()})")
            out.append(text)

    series = pd.Series(out, index=raw.index, name=name, dtype=object)
    if rule.dtype in ("float", "int", "bool"):
        series = series.astype(float)
        # Whole-number columns stay int64 when complete; with gaps they are float with NaN
        # (plain numpy dtypes work everywhere downstream, nullable Int64 does not).
        if rule.dtype in ("int", "bool") and series.notna().all():
            series = series.astype(np.int64)
    return series


def _in_range(v: float, rule: ColumnRule) -> bool:
    if rule.allowed is not None and v not in {float(a) for a in rule.allowed}:
        return False
    if rule.min is not None and (v < rule.min or (rule.exclusive_min and v == rule.min)):
        return False
    if rule.max is not None and (v > rule.max or (rule.exclusive_max and v == rule.max)):
        return False
    return True


def validate_frame(
    raw: pd.DataFrame,
    card: Mapping[str, Any],
    base_dir: Path,
    check_files: bool,
    problems: list[ManifestProblem],
    rules: dict[str, ColumnRule] | None = None,
) -> pd.DataFrame:
    if rules is None:
        rules = card_rules(card, problems)
    raw = raw.rename(columns=lambda c: str(c).strip())
    dup_cols = sorted({c for c in raw.columns if list(raw.columns).count(c) > 1})
    for c in dup_cols:
        problems.append(ManifestProblem(f"column {c!r} appears more than once in the header; "
                                        "rename or remove the duplicate"))
    raw = raw.loc[:, ~raw.columns.duplicated()]
    for name, rule in rules.items():
        if rule.required and name not in raw.columns:
            problems.append(ManifestProblem(
                f"required column {name!r} is missing from the header ({rule.description}); "
                f"the header has {list(raw.columns)}"
            ))

    ids: list[str | None] = [None] * len(raw)
    if "subject_id" in raw.columns:
        ids = [str(v).strip() or None for v in raw["subject_id"].tolist()]
        seen: dict[str, int] = {}
        for i, sid in enumerate(ids):
            if sid is None:
                continue
            if not SUBJECT_ID_PATTERN.match(sid):
                problems.append(ManifestProblem(
                    "subject id has characters that are unsafe in file names; use letters, "
                    "digits, '.', '_' or '-' (starting with a letter or digit)",
                    row=i + 1, subject_id=sid, column="subject_id", value=sid,
                ))
            if sid in seen:
                problems.append(ManifestProblem(
                    f"duplicate subject id (first on row {seen[sid]}); subject ids must be "
                    "unique: rename or remove one of the rows",
                    row=i + 1, subject_id=sid, column="subject_id", value=sid,
                ))
            else:
                seen[sid] = i + 1

    table = pd.DataFrame(index=raw.index)
    for name in raw.columns:
        rule = rules.get(name)
        if rule is None:
            # Undescribed extra column: keep it, numeric when every value parses.
            col = raw[name].map(lambda v: np.nan if is_missing(str(v)) else str(v).strip())
            numeric = pd.to_numeric(col, errors="coerce")
            table[name] = numeric if numeric.notna().sum() == col.notna().sum() else col
            continue
        table[name] = _parse_cells(raw[name], name, rule, ids, base_dir, check_files, problems)
    if "image" in table.columns and "lung_mask" in rules and "lung_mask" not in table.columns:
        table["lung_mask"] = None
    first = [c for c in ("subject_id", *PATH_COLUMNS) if c in table.columns]
    table = table[first + [c for c in table.columns if c not in first]]
    return table.reset_index(drop=True)


def read_csv_text(csv_path: Path) -> pd.DataFrame:
    """Every cell as text; tolerates an Excel byte-order mark and ';' or tab separators."""
    def read(sep: str) -> pd.DataFrame:
        # utf-8-sig drops the byte-order mark Excel puts before the first column name.
        return pd.read_csv(csv_path, sep=sep, dtype=str, keep_default_na=False,
                           skipinitialspace=True, encoding="utf-8-sig", index_col=False)

    try:
        with open(csv_path, encoding="utf-8-sig", newline="") as fh:
            first = fh.readline()
        sep = ","
        if "," not in first:
            for other in (";", "\t"):
                if other in first:  # spreadsheet export with another separator
                    sep = other
                    break
        _check_field_counts(csv_path, sep)
        raw = read(sep)
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError,
            csv.Error) as exc:
        raise ManifestError(
            [ManifestProblem(f"cannot be read as CSV ({str(exc).strip()}); save it as a "
                             "comma-separated UTF-8 file with a header row")],
            csv_path,
        ) from None
    return raw


def _check_field_counts(csv_path: Path, sep: str) -> None:
    """Every row must have as many fields as the header (pandas would shift them silently)."""
    problems = []
    with open(csv_path, encoding="utf-8-sig", newline="") as fh:
        reader = csv.reader(fh, delimiter=sep)
        header = next(reader, None)
        if header is None:
            raise pd.errors.EmptyDataError("the file is empty")
        row = 0
        for fields_ in reader:
            if not fields_ or all(not f.strip() for f in fields_):
                continue  # blank line
            row += 1
            if len(fields_) != len(header):
                problems.append(ManifestProblem(
                    f"has {len(fields_)} fields but the header has {len(header)}; a value "
                    f"probably contains '{sep}' without quotes, or a cell is missing. What to "
                    "do: quote such values or fix the row",
                    row=row, subject_id=fields_[0].strip() or None, value=sep.join(fields_),
                ))
    if problems:
        raise ManifestError(problems, csv_path)


def raw_text(df: pd.DataFrame) -> pd.DataFrame:
    """Every cell as text ('' for missing), as if read from a CSV."""
    raw = df.copy().astype(object)
    raw = raw.where(df.notna(), "")
    return raw.map(lambda v: v if isinstance(v, str) else _num_text(v))


def validate_table(
    df: pd.DataFrame | None,
    columns: Mapping[str, Any],
    base_dir: str | os.PathLike | None = None,
    check_files: bool = False,
    path: str | os.PathLike | None = None,
) -> pd.DataFrame:
    """Type and check any table against card-style column rules (no built-in columns).

    For side tables such as a synthetic cohort's ``ground_truth.csv``: ``columns`` is a
    mapping like a card's ``columns`` section; with ``df=None`` the CSV at ``path`` is read.
    Columns not described are kept as they are.
    Raises :class:`ManifestError` listing every problem.

    Example:
        >>> import pandas as pd
        >>> t = validate_table(pd.DataFrame({"age": ["61", "70"]}), {"age": {"dtype": "int"}})
        >>> t["age"].tolist()
        [61, 70]
    """
    problems: list[ManifestProblem] = []
    rules = card_rules({"columns": dict(columns)}, problems, standard=False)
    raw = read_csv_text(Path(path)) if df is None else raw_text(df)
    base = Path(base_dir) if base_dir is not None else Path.cwd()
    table = validate_frame(raw, {}, base, check_files, problems, rules=rules)
    if problems:
        problems.sort(key=lambda p: -1 if p.row is None else p.row)
        raise ManifestError(problems, path)
    return table


def _num_text(v: Any) -> str:
    if isinstance(v, (bool, np.bool_)):
        return "1" if v else "0"
    if isinstance(v, (float, np.floating)) and float(v).is_integer():
        return str(int(v)) if abs(v) < 1e15 else repr(float(v))
    return str(v)
