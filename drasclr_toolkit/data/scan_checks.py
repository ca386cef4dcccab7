"""Scan checks over a whole manifest: open every scan, or read every header, one row each.

A failing scan never stops the others.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from drasclr_toolkit.data.manifest import Manifest

__all__ = ["check_scans", "probe_headers"]


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

    from drasclr_toolkit.data.ct import CTLoadError, CTLoadWarning, load_ct

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
            row.update(status="warning", message=" | ".join(str(w.message) for w in found),
                       field=getattr(found[0].message, "field", None))
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
    from drasclr_toolkit.data.ct import CTLoadError, read_ct_header

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
