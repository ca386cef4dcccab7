"""Cohort manifest: a CSV of subjects and scans, described by an optional YAML dataset card.

A manifest has one row per subject: ``subject_id``, ``image`` (a scan file or DICOM folder;
relative paths are relative to the CSV's folder), an optional ``lung_mask`` and optional
label columns (``fev1_pp``, ``fev1_fvc``, ``gold``, ``pct_emphysema``, ``cle_score``,
``pse_score``, ``mmrc``, ``time``, ``event`` have built-in rules). Other columns are allowed
and are checked against the dataset card (``dataset_card.yaml`` next to the CSV by default),
which gives each column a dtype, an allowed range or set of values, a unit, a description
and a role. :meth:`Manifest.load` collects every problem and raises one
:class:`ManifestError` listing them all (row, subject, column, value, what to do).

:func:`scan_folder` builds a manifest from a folder of scans without reading pixel data.

Example:
    >>> from drasclr_toolkit.data import Manifest
    >>> m = Manifest.load("cohort/manifest.csv")                 # doctest: +SKIP
    >>> len(m), m.subject_ids[:2], m.image_path("syn000").name   # doctest: +SKIP
    (8, ['syn000', 'syn001'], 'syn000.nii.gz')
    >>> m.labels(["fev1_pp", "gold"]).head()                     # doctest: +SKIP
"""

from __future__ import annotations

import csv
import fnmatch
import logging
import math
import os
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any
from collections.abc import Iterable, Iterator, Mapping, Sequence

import numpy as np
import pandas as pd
import yaml

from ..config import check_keys
from ..io_utils import atomic_write_text
from .ct import (
    IMAGE_SUFFIXES,
    _has_dicom_files,
    _is_dicom_file,
    _strip_image_suffix,
    is_image_file,
)

__all__ = [
    "ColumnRule",
    "Manifest",
    "ManifestError",
    "ManifestProblem",
    "STANDARD_COLUMNS",
    "check_scans",
    "load_card",
    "probe_headers",
    "scan_folder",
    "validate_table",
]

logger = logging.getLogger(__name__)

CARD_FILENAME = "dataset_card.yaml"
DTYPES = ("str", "path", "float", "int", "bool", "category")
ROLES = ("id", "image", "mask", "label", "time", "event", "covariate", "ground_truth", "other")
# Cell texts read as a missing value.
MISSING_TOKENS = frozenset({"", "na", "nan", "n/a", "null", "none", "missing"})
# Subject ids become file and group names downstream, so they must be safe there.
_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_TRUE = frozenset({"1", "true", "yes", "y", "t"})
_FALSE = frozenset({"0", "false", "no", "n", "f"})


@dataclass(frozen=True)
class ColumnRule:
    """What a manifest column may hold (built in for standard columns, else from the card).

    ``min``/``max`` bound numeric values (inclusive unless ``exclusive_min``/``exclusive_max``),
    ``allowed`` lists permitted values, ``fix`` is a hint printed with each problem.

    Example:
        >>> ColumnRule.from_dict({"dtype": "float", "min": 0, "unit": "years"}).unit
        'years'
    """

    dtype: str = "str"
    min: float | None = None
    max: float | None = None
    exclusive_min: bool = False
    exclusive_max: bool = False
    allowed: tuple[Any, ...] | None = None
    unit: str | None = None
    description: str | None = None
    role: str = "other"
    required: bool = False
    fix: str | None = None

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], base: ColumnRule | None = None) -> ColumnRule:
        """Build a rule from a card entry; keys not given keep ``base``'s values."""
        check_keys("column rule", d, [f.name for f in fields(cls)])
        values = {f.name: getattr(base, f.name) for f in fields(cls)} if base else {}
        values.update(d)
        if values.get("allowed") is not None:
            if not isinstance(values["allowed"], (list, tuple)):
                raise ValueError("'allowed' must be a list of values")
            values["allowed"] = tuple(values["allowed"])
        rule = cls(**values)
        if rule.dtype not in DTYPES:
            raise ValueError(f"dtype {rule.dtype!r} is not one of {list(DTYPES)}")
        if rule.role not in ROLES:
            raise ValueError(f"role {rule.role!r} is not one of {list(ROLES)}")
        for key in ("min", "max"):
            v = getattr(rule, key)
            if v is not None and not isinstance(v, (int, float)):
                raise ValueError(f"{key!r} must be a number, got {v!r}")
        return rule

    def to_dict(self) -> dict[str, Any]:
        """Card entry for this rule (defaults left out)."""
        out: dict[str, Any] = {}
        default = ColumnRule()
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name == "dtype" or v != getattr(default, f.name):
                out[f.name] = list(v) if isinstance(v, tuple) else v
        return out

    def describe_range(self) -> str:
        parts = []
        if self.allowed is not None:
            parts.append("one of " + ", ".join(str(a) for a in self.allowed))
        if self.min is not None:
            parts.append(f"{'>' if self.exclusive_min else '≥'} {self.min:g}")
        if self.max is not None:
            parts.append(f"{'<' if self.exclusive_max else '≤'} {self.max:g}")
        text = " and ".join(parts) or f"any {self.dtype}"
        return f"{text}, unit: {self.unit}" if self.unit else text


STANDARD_COLUMNS: dict[str, ColumnRule] = {
    "subject_id": ColumnRule(
        dtype="str", role="id", required=True,
        description="unique subject identifier (letters, digits, '.', '_', '-')",
    ),
    "image": ColumnRule(
        dtype="path", role="image", required=True,
        description="CT scan: NIfTI/NRRD/MHA file or DICOM series folder; relative paths "
        "are relative to the manifest's folder",
    ),
    "lung_mask": ColumnRule(
        dtype="path", role="mask",
        description="optional lung mask aligned with the image (empty: segment it)",
    ),
    "fev1_pp": ColumnRule(
        dtype="float", min=0, max=200, unit="% predicted", role="label",
        description="FEV1 percent predicted (post-bronchodilator)",
    ),
    "fev1_fvc": ColumnRule(
        dtype="float", min=0, max=1, unit="ratio", role="label",
        description="FEV1/FVC ratio", fix="give the ratio (e.g. 0.65), not a percentage",
    ),
    "gold": ColumnRule(
        dtype="int", min=0, max=4, role="label",
        description="GOLD spirometric stage (0 = no obstruction)",
        fix="use 0–4; describe other codes (e.g. -1 for PRISm) in the dataset card",
    ),
    "pct_emphysema": ColumnRule(
        dtype="float", min=0, max=100, unit="%", role="label",
        description="percent emphysema, %LAA-950 (lung voxels below -950 HU)",
        fix="give a percentage 0–100 (e.g. 12.5), not a fraction",
    ),
    "cle_score": ColumnRule(
        dtype="int", min=0, max=5, role="label",
        description="visual centrilobular emphysema grade (0 none – 5 advanced destructive)",
    ),
    "pse_score": ColumnRule(
        dtype="int", min=0, max=2, role="label",
        description="visual paraseptal emphysema grade (0 none, 1 mild, 2 substantial)",
    ),
    "mmrc": ColumnRule(
        dtype="int", min=0, max=4, role="label",
        description="modified MRC dyspnoea scale",
    ),
    "time": ColumnRule(
        dtype="float", min=0, exclusive_min=True, unit="years", role="time",
        description="follow-up time to event or censoring",
        fix="give a positive follow-up time in years; leave empty when unknown",
    ),
    "event": ColumnRule(
        dtype="int", allowed=(0, 1), role="event",
        description="1 = event (death) observed, 0 = censored",
        fix="use 1 for an observed event, 0 for censored; leave empty when unknown",
    ),
}
PATH_COLUMNS = ("image", "lung_mask")


@dataclass(frozen=True)
class ManifestProblem:
    """One problem: ``row`` is the 1-based data row (CSV line row + 1); None for the file."""

    message: str
    row: int | None = None
    subject_id: str | None = None
    column: str | None = None
    value: Any = None

    def __str__(self) -> str:
        where = []
        if self.row is not None:
            where.append(f"row {self.row} (CSV line {self.row + 1})")
        if self.subject_id is not None:
            where.append(f"subject {self.subject_id!r}")
        if self.column is not None:
            where.append(f"column {self.column!r}")
        if self.row is not None or self.value is not None:
            where.append(f"value {self.value!r}")
        return (", ".join(where) + ": " if where else "") + self.message


class ManifestError(ValueError):
    """Every problem found in a manifest and its card, listed in one message."""

    def __init__(self, problems: Sequence[ManifestProblem], path: str | os.PathLike | None = None):
        self.problems = list(problems)
        self.path = None if path is None else str(path)
        head = f"manifest {self.path}" if self.path else "manifest"
        n = len(self.problems)
        lines = [f"{head}: {n} problem{'s' if n != 1 else ''} found; fix them all and load again:"]
        lines += [f"  - {p}" for p in self.problems]
        super().__init__("\n".join(lines))


class _SubjectIds(list):
    """The subject ids; also callable, so ``m.subject_ids`` and ``m.subject_ids()`` agree."""

    def __call__(self) -> list[str]:
        return list(self)


# ------------------------------------------------------------------------------------ card


def load_card(card_path: str | os.PathLike) -> dict[str, Any]:
    """Read a dataset card (YAML mapping with a ``columns`` mapping).

    Example:
        >>> card = load_card("data_manifests/generic/dataset_card.yaml")   # doctest: +SKIP
        >>> card["columns"]["image"]["dtype"]                              # doctest: +SKIP
        'path'
    """
    path = Path(card_path)
    try:
        with open(path, encoding="utf-8") as fh:
            card = yaml.safe_load(fh)
    except FileNotFoundError:
        raise ManifestError(
            [ManifestProblem(f"dataset card {path} does not exist; check the --card path")],
            path,
        ) from None
    except yaml.YAMLError as exc:
        raise ManifestError(
            [ManifestProblem(f"dataset card {path} is not valid YAML ({exc}); fix its syntax")],
            path,
        ) from None
    if card is None:
        card = {}
    if not isinstance(card, dict):
        raise ManifestError(
            [ManifestProblem(f"dataset card {path} must be a YAML mapping with a 'columns' key")],
            path,
        )
    return card


def _card_rules(
    card: Mapping[str, Any],
    problems: list[ManifestProblem],
    key: str = "columns",
    standard: bool = True,
) -> dict[str, ColumnRule]:
    """Built-in rules (when ``standard``) overridden/extended by the card's ``key`` section."""
    rules = dict(STANDARD_COLUMNS) if standard else {}
    columns = card.get(key) or {}
    if not isinstance(columns, dict):
        problems.append(ManifestProblem(
            "dataset card: 'columns' must be a mapping of column name to its description "
            "(dtype, min, max, allowed, unit, description, role); see data_manifests/README.md"
        ))
        return rules
    for name, spec in columns.items():
        if spec is None:
            spec = {}
        if not isinstance(spec, dict):
            problems.append(ManifestProblem(
                f"dataset card: column {name!r} must be a mapping (dtype, min, max, …), got "
                f"{spec!r}"
            ))
            continue
        try:
            base = STANDARD_COLUMNS.get(str(name)) if standard else None
            rules[str(name)] = ColumnRule.from_dict(spec, base=base)
        except (TypeError, ValueError) as exc:
            problems.append(ManifestProblem(
                f"dataset card: column {name!r}: {exc}; fix the card (see data_manifests/README.md)"
            ))
    return rules


# ------------------------------------------------------------------------------ validation


def _is_missing(text: str) -> bool:
    return text.strip().lower() in MISSING_TOKENS


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
        if _is_missing(text):
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
                  and not is_image_file(p) and not _is_dicom_file(p)):
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


def _validate(
    raw: pd.DataFrame,
    card: Mapping[str, Any],
    base_dir: Path,
    check_files: bool,
    problems: list[ManifestProblem],
    rules: dict[str, ColumnRule] | None = None,
) -> pd.DataFrame:
    if rules is None:
        rules = _card_rules(card, problems)
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
        ids = [None if _is_missing(str(v)) else str(v).strip() for v in raw["subject_id"].tolist()]
        seen: dict[str, int] = {}
        for i, sid in enumerate(ids):
            if sid is None:
                continue
            if not _ID_PATTERN.match(sid):
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
            col = raw[name].map(lambda v: np.nan if _is_missing(str(v)) else str(v).strip())
            numeric = pd.to_numeric(col, errors="coerce")
            table[name] = numeric if numeric.notna().sum() == col.notna().sum() else col
            continue
        table[name] = _parse_cells(raw[name], name, rule, ids, base_dir, check_files, problems)
    if "image" in table.columns and "lung_mask" in rules and "lung_mask" not in table.columns:
        table["lung_mask"] = None
    first = [c for c in ("subject_id", *PATH_COLUMNS) if c in table.columns]
    table = table[first + [c for c in table.columns if c not in first]]
    return table.reset_index(drop=True)


def _read_csv_text(csv_path: Path) -> pd.DataFrame:
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


def _raw_text(df: pd.DataFrame) -> pd.DataFrame:
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
    rules = _card_rules({"columns": dict(columns)}, problems, standard=False)
    raw = _read_csv_text(Path(path)) if df is None else _raw_text(df)
    base = Path(base_dir) if base_dir is not None else Path.cwd()
    table = _validate(raw, {}, base, check_files, problems, rules=rules)
    if problems:
        problems.sort(key=lambda p: -1 if p.row is None else p.row)
        raise ManifestError(problems, path)
    return table


# -------------------------------------------------------------------------------- Manifest


@dataclass
class Manifest:
    """A validated cohort table (one row per subject) with its dataset card.

    ``table`` has ``subject_id``, ``image`` and ``lung_mask`` (absolute paths; ``None`` when
    absent) and the label columns; ``card`` is the dataset card; ``path`` the CSV file.

    Example:
        >>> m = Manifest.load("cohort/manifest.csv")        # doctest: +SKIP
        >>> for row in m:                                     # doctest: +SKIP
        ...     print(row["subject_id"], row["image"])
    """

    table: pd.DataFrame
    card: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None

    # ---------------------------------------------------------------- construction
    @classmethod
    def load(
        cls,
        csv_path: str | os.PathLike,
        card_path: str | os.PathLike | None = None,
        check_files: bool = True,
    ) -> Manifest:
        """Read and validate ``csv_path`` (card: ``card_path`` or ``dataset_card.yaml`` beside it).

        Raises:
            ManifestError: listing every problem (row, subject, column, value, what to do).
        """
        csv_path = Path(csv_path).expanduser()
        if not csv_path.is_file():
            raise ManifestError(
                [ManifestProblem(f"manifest file {csv_path} does not exist; check the path")],
                csv_path,
            )
        if card_path is None and (csv_path.parent / CARD_FILENAME).is_file():
            card_path = csv_path.parent / CARD_FILENAME
        card = load_card(card_path) if card_path is not None else {}
        raw = _read_csv_text(csv_path)
        return cls.from_dataframe(raw, base_dir=csv_path.parent, card=card,
                                  check_files=check_files, path=csv_path)

    @classmethod
    def from_dataframe(
        cls,
        df: pd.DataFrame,
        base_dir: str | os.PathLike | None = None,
        card: Mapping[str, Any] | None = None,
        check_files: bool = True,
        path: str | os.PathLike | None = None,
    ) -> Manifest:
        """Validate an in-memory table (relative paths resolved against ``base_dir``).

        Example:
            >>> import pandas as pd
            >>> df = pd.DataFrame({"subject_id": ["a"], "image": ["a.nii.gz"]})
            >>> m = Manifest.from_dataframe(df, check_files=False)
            >>> m.subject_ids
            ['a']
        """
        base = Path(base_dir) if base_dir is not None else Path.cwd()
        raw = _raw_text(df)
        problems: list[ManifestProblem] = []
        table = _validate(raw, dict(card or {}), base, check_files, problems)
        if problems:
            # File-level problems first, then row by row (stable: column order within a row).
            problems.sort(key=lambda p: -1 if p.row is None else p.row)
            raise ManifestError(problems, path)
        return cls(table=table, card=dict(card or {}), path=None if path is None else Path(path))

    # ---------------------------------------------------------------------- access
    @property
    def subject_ids(self) -> list[str]:
        """Subject ids in table order (also callable: ``m.subject_ids()``)."""
        return _SubjectIds(self.table["subject_id"].tolist())

    def _row(self, subject_id: str) -> pd.Series:
        hit = self.table.index[self.table["subject_id"] == subject_id]
        if len(hit) == 0:
            raise KeyError(f"subject {subject_id!r} is not in the manifest {self.path or ''}")
        return self.table.loc[hit[0]]

    def image_path(self, subject_id: str) -> Path:
        """Absolute path of the subject's scan (file or DICOM folder)."""
        return Path(self._row(subject_id)["image"])

    def lung_mask_path(self, subject_id: str) -> Path | None:
        """Absolute path of the subject's lung mask, or None when not given."""
        v = self._row(subject_id).get("lung_mask")
        return None if v is None or (isinstance(v, float) and math.isnan(v)) else Path(v)

    def record(self, subject_id: str) -> dict[str, Any]:
        """The subject's row as a dict."""
        return self._row(subject_id).to_dict()

    def label_columns(self) -> list[str]:
        """Columns that are not the id, the image or a mask (labels, covariates, extras)."""
        rules = _card_rules(self.card, [])
        skip_roles = {"id", "image", "mask"}
        return [c for c in self.table.columns
                if c not in ("subject_id", *PATH_COLUMNS)
                and (rules.get(c) is None
                     or (rules[c].role not in skip_roles and rules[c].dtype != "path"))]

    def labels(self, columns: Sequence[str] | None = None) -> pd.DataFrame:
        """Label table indexed by subject_id (missing labels are NaN).

        Example:
            >>> m.labels(["time", "event"])        # doctest: +SKIP
        """
        cols = list(columns) if columns is not None else self.label_columns()
        missing = [c for c in cols if c not in self.table.columns]
        if missing:
            raise KeyError(
                f"column(s) {missing} not in the manifest {self.path or ''}; available: "
                f"{list(self.table.columns)}"
            )
        return self.table.set_index("subject_id")[cols].copy()

    def column_rules(self) -> dict[str, ColumnRule]:
        """Rule of every column of the table (built-in or from the card; None if undescribed)."""
        rules = _card_rules(self.card, [])
        return {c: rules.get(c) for c in self.table.columns}

    def subset(self, subject_ids: Iterable[str]) -> Manifest:
        """A manifest with only these subjects, in the given order."""
        ids = list(subject_ids)
        unknown = [s for s in ids if s not in set(self.table["subject_id"])]
        if unknown:
            raise KeyError(f"subject(s) {unknown} not in the manifest {self.path or ''}")
        t = self.table.set_index("subject_id").loc[ids].reset_index()
        return Manifest(table=t, card=dict(self.card), path=self.path)

    def __len__(self) -> int:
        return len(self.table)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self.table.to_dict("records"))

    def __repr__(self) -> str:
        return (f"Manifest({len(self)} subjects, columns={list(self.table.columns)}, "
                f"path={str(self.path) if self.path else None!r})")

    # ------------------------------------------------------------------------ save
    def save(
        self,
        csv_path: str | os.PathLike,
        card_path: str | os.PathLike | None = None,
        relative_paths: bool = True,
    ) -> Path:
        """Write the CSV atomically (and the card, to ``card_path`` or beside the CSV).

        Paths under the CSV's folder are written relative to it so the cohort folder can be
        moved. The card is written only when the manifest has one.

        Example:
            >>> m.save("out/manifest.csv")        # doctest: +SKIP
        """
        csv_path = Path(csv_path).expanduser()
        csv_path.parent.mkdir(parents=True, exist_ok=True)
        table = self.table.copy()
        base = csv_path.parent.resolve()
        rules = _card_rules(self.card, [])
        path_columns = [c for c in table.columns
                        if c in PATH_COLUMNS or (c in rules and rules[c].dtype == "path")]
        for col in path_columns:
            if col in table.columns:
                table[col] = table[col].map(lambda v: _path_text(v, base, relative_paths))
        atomic_write_text(csv_path, table.to_csv(index=False, lineterminator="\n"))
        if self.card:
            card_out = Path(card_path) if card_path else csv_path.parent / CARD_FILENAME
            atomic_write_text(card_out, yaml.safe_dump(self.card, sort_keys=False,
                                                       allow_unicode=True))
        self.path = csv_path
        return csv_path


def _num_text(v: Any) -> str:
    if isinstance(v, (bool, np.bool_)):
        return "1" if v else "0"
    if isinstance(v, (float, np.floating)) and float(v).is_integer():
        return str(int(v)) if abs(v) < 1e15 else repr(float(v))
    return str(v)


def _path_text(v: Any, base: Path, relative: bool) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)) or v == "":
        return ""
    p = Path(v)
    if relative:
        try:
            return Path(os.path.relpath(p.resolve(), base)).as_posix() if \
                p.resolve().is_relative_to(base) else str(p)
        except ValueError:  # another drive on Windows
            return str(p)
    return str(p)


# ----------------------------------------------------------------------------- scan_folder

DEFAULT_EXCLUDE: tuple[str, ...] = ("*mask*", "*label*", "*seg*")


def _safe_id(text: str) -> str:
    sid = re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._-")
    return sid or "subject"


def scan_folder(
    directory: str | os.PathLike,
    pattern: str | None = None,
    exclude: Sequence[str] = DEFAULT_EXCLUDE,
) -> Manifest:
    """Manifest of the scans in ``directory`` (searched recursively), no pixel data read.

    Each image file (.nii, .nii.gz, .nrrd, .nhdr, .mha, .mhd) is one subject, and each folder
    holding DICOM files is one subject (its series; see :func:`load_ct` when a folder holds
    several). Subject ids come from file names (suffix removed) or folder names; clashes are
    resolved with the parent folder names, then a numeric suffix. ``pattern`` (glob on the
    name or the relative path) keeps only matching scans; names matching ``exclude`` (masks,
    labels, segmentations by default) are skipped.

    Example:
        >>> m = scan_folder("scans/", pattern="*_image.nrrd")     # doctest: +SKIP
        >>> m.save("scans/manifest.csv")                          # doctest: +SKIP
    """
    root = Path(directory).expanduser()
    if not root.is_dir():
        raise ManifestError([ManifestProblem(
            f"scan folder {root} does not exist or is not a folder; check the path")], root)

    def wanted(rel: str, name: str) -> bool:
        if any(fnmatch.fnmatch(name.lower(), e.lower()) for e in exclude):
            return False
        if pattern is None:
            return True
        return fnmatch.fnmatch(name, pattern) or fnmatch.fnmatch(rel, pattern)

    found: list[tuple[Path, str]] = []  # (path, name used for the id)
    skipped = 0
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        here = Path(dirpath)
        rel_dir = here.relative_to(root).as_posix()
        image_files = [f for f in sorted(filenames) if f.lower().endswith(IMAGE_SUFFIXES)]
        for f in image_files:
            rel = f"{rel_dir}/{f}" if rel_dir != "." else f
            if wanted(rel, f):
                found.append((here / f, _strip_image_suffix(f)))
            else:
                skipped += 1
        if len(image_files) < len(filenames) and _has_dicom_files(here):
            name = here.name if here != root else root.name
            if wanted(rel_dir, name):
                found.append((here, name))
            else:
                skipped += 1
    if skipped:
        logger.info("scan_folder %s: skipped %d scan(s) not matching pattern=%r / exclude=%r",
                    root, skipped, pattern, list(exclude))
    if not found:
        raise ManifestError([ManifestProblem(
            f"no scans found in {root} (looked for {', '.join(IMAGE_SUFFIXES)} files and DICOM "
            f"folders; pattern={pattern!r}, exclude={list(exclude)}); check the folder and the "
            "pattern")], root)

    ids = _unique_ids([(p, n) for p, n in found], root)
    table = pd.DataFrame({"subject_id": ids, "image": [str(p) for p, _ in found]})
    return Manifest.from_dataframe(table, base_dir=root, card={}, check_files=True)


def _unique_ids(found: list[tuple[Path, str]], root: Path) -> list[str]:
    ids = [_safe_id(n) for _, n in found]
    counts = pd.Series(ids).value_counts()
    for i, (p, _) in enumerate(found):
        if counts[ids[i]] > 1:
            # Qualify with the parent folders (e.g. patient/study names) to tell them apart.
            rel = p.relative_to(root) if p != root else Path(p.name)
            parts = list(rel.parts)
            parts[-1] = _strip_image_suffix(parts[-1])
            ids[i] = _safe_id("_".join(parts))
    seen: dict[str, int] = {}
    out = []
    for sid in ids:
        if sid in seen:
            seen[sid] += 1
            new = f"{sid}_{seen[sid]}"
            while new in seen:
                seen[sid] += 1
                new = f"{sid}_{seen[sid]}"
            seen[new] = 1
            out.append(new)
        else:
            seen[sid] = 1
            out.append(sid)
    return out


# ----------------------------------------------------------------------------- check_scans


def check_scans(manifest: Manifest, checks: Any = None) -> pd.DataFrame:
    """Open every scan with :func:`load_ct` and report, one row per subject, what happened.

    A failing scan never stops the others. Columns: ``subject_id``, ``status`` ('ok',
    'warning', 'error'), ``field`` (of the first problem), ``message``, ``shape`` (z, y, x)
    and ``spacing`` (x, y, z mm) of the loaded scan.

    Example:
        >>> report = check_scans(Manifest.load("cohort/manifest.csv"))   # doctest: +SKIP
        >>> report[report.status != "ok"]                                 # doctest: +SKIP
    """
    import warnings

    from .ct import CTLoadError, CTLoadWarning, load_ct

    rows = []
    for sid in manifest.subject_ids:
        row: dict[str, Any] = {"subject_id": sid, "status": "ok", "field": None,
                               "message": "", "shape": None, "spacing": None}
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", CTLoadWarning)
            try:
                ct = load_ct(manifest.image_path(sid), subject_id=sid, checks=checks)
                row["shape"], row["spacing"] = ct.shape, ct.spacing
                del ct
            except CTLoadError as exc:
                row.update(status="error", field=exc.field, message=str(exc))
        found = [w for w in caught if issubclass(w.category, CTLoadWarning)]
        if found and row["status"] == "ok":
            row.update(status="warning", message=" | ".join(str(w.message) for w in found))
            field_match = re.search(r"field '([^']+)'", row["message"])
            row["field"] = field_match.group(1) if field_match else None
        rows.append(row)
    return pd.DataFrame(rows, columns=["subject_id", "status", "field", "message", "shape",
                                       "spacing"])


def probe_headers(manifest: Manifest) -> pd.DataFrame:
    """Header-only geometry of every scan (fast; no pixel data), one row per subject.

    Columns: ``subject_id``, ``kind``, ``size_x``, ``size_y``, ``size_z``, ``spacing_x``,
    ``spacing_y``, ``spacing_z`` (mm, as stored), ``pixel_type``, ``n_series``, ``error``.
    Use it to spot thick slices or short scans in a large cohort before preprocessing.

    Example:
        >>> probe_headers(scan_folder("scans/"))            # doctest: +SKIP
    """
    from .ct import CTLoadError, read_ct_header

    rows = []
    for sid in manifest.subject_ids:
        row: dict[str, Any] = {"subject_id": sid, "error": None}
        try:
            h = read_ct_header(manifest.image_path(sid), subject_id=sid)
            row["kind"] = h["kind"]
            size = list(h["size"]) + [None] * 3
            spacing = list(h["spacing"]) + [None] * 3
            for i, axis in enumerate("xyz"):
                row[f"size_{axis}"] = size[i]
                row[f"spacing_{axis}"] = spacing[i]
            row["pixel_type"], row["n_series"] = h["pixel_type"], h["n_series"]
        except CTLoadError as exc:
            row["error"] = str(exc)
        rows.append(row)
    columns = ["subject_id", "kind", "size_x", "size_y", "size_z", "spacing_x", "spacing_y",
               "spacing_z", "pixel_type", "n_series", "error"]
    return pd.DataFrame(rows).reindex(columns=columns)
