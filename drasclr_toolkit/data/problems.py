"""Manifest problems: each one with its row, subject, column and value, all raised at once.

Example:
    >>> print(ManifestError([ManifestProblem("is not a number", row=2, column="age", value="x")]))
    manifest: 1 problem found; fix them all and load again:
      - row 2 (CSV line 3), column 'age', value 'x': is not a number
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from drasclr_toolkit.errors import DrasclrError

__all__ = ["ManifestError", "ManifestProblem"]


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


class ManifestError(DrasclrError, ValueError):
    """Every problem found in a manifest and its card, listed in one message."""

    def __init__(self, problems: Sequence[ManifestProblem], path: str | os.PathLike | None = None):
        self.problems = list(problems)
        self.path = None if path is None else str(path)
        n = len(self.problems)
        # DrasclrError's fields; the message lists every problem under them
        self.where = f"manifest {self.path}" if self.path else "manifest"
        self.problem = f"{n} problem{'s' if n != 1 else ''} found"
        self.fix = "fix them all and load again"
        lines = [f"{self.where}: {self.problem}; {self.fix}:"]
        lines += [f"  - {p}" for p in self.problems]
        super().__init__("\n".join(lines))
