"""Cohort manifest: a CSV of subjects and scans, described by an optional YAML dataset card.

A manifest has one row per subject: ``subject_id``, ``image`` (a scan file or DICOM folder;
relative paths are relative to the CSV's folder), an optional ``lung_mask`` and optional
label columns (``fev1_pp``, ``fev1_fvc``, ``gold``, ``pct_emphysema``, ``cle_score``,
``pse_score``, ``mmrc``, ``time``, ``event`` have built-in rules). Other columns are allowed
and are checked against the dataset card (``dataset_card.yaml`` next to the CSV by default),
which gives each column a dtype, an allowed range or set of values, a unit, a description
and a role. :meth:`Manifest.load` collects every problem and raises one
:class:`ManifestError` listing them all (row, subject, column, value, what to do).

The jobs are split by module: :mod:`.card` (column rules, the YAML card),
:mod:`.validation` (reading and typing cells), this module (:class:`Manifest`, the table),
:mod:`.discovery` (:func:`scan_folder` builds a manifest from a folder of scans without
reading pixel data) and :mod:`.scan_checks` (:func:`check_scans`, :func:`probe_headers`).

Example:
    >>> from drasclr_toolkit.data import Manifest
    >>> m = Manifest.load("cohort/manifest.csv")                 # doctest: +SKIP
    >>> len(m), m.subject_ids[:2], m.image_path("syn000").name   # doctest: +SKIP
    (8, ['syn000', 'syn001'], 'syn000.nii.gz')
    >>> m.labels(["fev1_pp", "gold"]).head()                     # doctest: +SKIP
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from drasclr_toolkit.io_utils import atomic_write_text
from drasclr_toolkit.data.card import (CARD_FILENAME, PATH_COLUMNS, ColumnRule, card_rules,
                                       load_card)
from drasclr_toolkit.data.problems import ManifestError, ManifestProblem
from drasclr_toolkit.data.validation import raw_text, read_csv_text, validate_frame

__all__ = ["Manifest"]


class _SubjectIds(list):
    """The subject ids; also callable, so ``m.subject_ids`` and ``m.subject_ids()`` agree."""

    def __call__(self) -> list[str]:
        return list(self)


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
        raw = read_csv_text(csv_path)
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
        raw = raw_text(df)
        problems: list[ManifestProblem] = []
        table = validate_frame(raw, dict(card or {}), base, check_files, problems)
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
        rules = card_rules(self.card, [])
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
        rules = card_rules(self.card, [])
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
        rules = card_rules(self.card, [])
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
