"""Data stage: load CT scans (:func:`load_ct`) and cohort manifests (:class:`Manifest`,
:func:`scan_folder`). The synthetic cohort and the sample scans are not core: they live in
:mod:`drasclr_toolkit.datasets`.

Example:
    >>> from drasclr_toolkit.data import Manifest, load_ct
    >>> m = Manifest.load("cohort/manifest.csv")                         # doctest: +SKIP
    >>> ct = load_ct(m.image_path(m.subject_ids[0]), m.subject_ids[0])   # doctest: +SKIP
"""

from __future__ import annotations

from drasclr_toolkit.data.ct import (CTChecks, CTImage, CTLoadError, CTLoadWarning,
                                     list_dicom_series, load_ct)
from drasclr_toolkit.data.card import ColumnRule, load_card
from drasclr_toolkit.data.discovery import scan_folder
from drasclr_toolkit.data.manifest import Manifest
from drasclr_toolkit.data.problems import ManifestError, ManifestProblem
from drasclr_toolkit.data.scan_checks import check_scans, probe_headers
from drasclr_toolkit.data.validation import validate_table

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

