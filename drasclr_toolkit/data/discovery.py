"""Folder discovery: a manifest from a folder of scans, without reading pixel data."""

from __future__ import annotations

import fnmatch
import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from drasclr_toolkit.data.dicom import has_dicom_files
from drasclr_toolkit.data.image_files import IMAGE_SUFFIXES, strip_image_suffix
from drasclr_toolkit.data.manifest import Manifest
from drasclr_toolkit.data.problems import ManifestError, ManifestProblem

__all__ = ["DEFAULT_EXCLUDE", "scan_folder"]

logger = logging.getLogger(__name__)

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
    # Absolute, so image paths are not joined to a relative root a second time when the
    # manifest resolves them against its base folder.
    root = Path(directory).expanduser().absolute()
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
                found.append((here / f, strip_image_suffix(f)))
            else:
                skipped += 1
        if len(image_files) < len(filenames) and has_dicom_files(here):
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
            parts[-1] = strip_image_suffix(parts[-1])
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
