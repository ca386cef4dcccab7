"""Data stage: load CT scans (:func:`load_ct`), cohort manifests (:class:`Manifest`,
:func:`scan_folder`) and the synthetic phantom cohort (:func:`make_synthetic_cohort`).

Example:
    >>> from drasclr_toolkit.data import Manifest, load_ct
    >>> m = Manifest.load("cohort/manifest.csv")                         # doctest: +SKIP
    >>> ct = load_ct(m.image_path(m.subject_ids[0]), m.subject_ids[0])   # doctest: +SKIP
"""

from __future__ import annotations

import importlib.util
from typing import Any

from .ct import CTChecks, CTImage, CTLoadError, CTLoadWarning, list_dicom_series, load_ct
from .card import ColumnRule, load_card
from .discovery import scan_folder
from .manifest import Manifest
from .problems import ManifestError, ManifestProblem
from .scan_checks import check_scans, probe_headers
from .validation import validate_table

__all__ = [
    "CTChecks",
    "CTImage",
    "CTLoadError",
    "CTLoadWarning",
    "ColumnRule",
    "Manifest",
    "ManifestError",
    "ManifestProblem",
    "check_scans",
    "list_dicom_series",
    "load_card",
    "load_ct",
    "probe_headers",
    "scan_folder",
    "validate_table",
]

# Listed for ``import *`` only when the module exists, so a star import never fails.
if importlib.util.find_spec(f"{__name__}.synthetic") is not None:
    __all__.append("make_synthetic_cohort")


def __getattr__(name: str) -> Any:
    # The synthetic cohort is imported on first use, so this package imports even where
    # the synthetic module (and its heavier dependencies) is absent or broken.
    if name == "make_synthetic_cohort":
        from .synthetic import make_synthetic_cohort

        return make_synthetic_cohort
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
