"""Probe a new CT dataset: scan, check, preprocess, embed, QC and report in one call.

Example:
    >>> from drasclr_toolkit.probe import probe_dataset
    >>> result = probe_dataset("scans/", "probe_out")     # doctest: +SKIP
    >>> result.summary()                                   # doctest: +SKIP
    '7 scans, 4 ok, 1 flagged, 2 failed'
"""

from drasclr_toolkit.probe.qc import QC_COLUMNS, assess_scans, load_failure_flag
from drasclr_toolkit.probe.run import ProbeResult, check_folder, probe_dataset, resolve_atlas

__all__ = ["ProbeResult", "QC_COLUMNS", "assess_scans", "check_folder", "load_failure_flag",
           "probe_dataset", "resolve_atlas"]
