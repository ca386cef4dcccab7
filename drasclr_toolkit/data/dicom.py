"""DICOM series: finding them in a folder, choosing one, reading it, and checking its
slice positions (missing, repeated or unevenly spaced slices; gantry tilt).

Only the header fields needed for that are read (Modality, ImagePositionPatient,
ImageOrientationPatient, the rescale fields for a message); no patient field is looked at
or kept.
"""

from __future__ import annotations

import locale
import os
import warnings
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from drasclr_toolkit.data.ct_image import CTLoadError, CTLoadWarning, first_line
from drasclr_toolkit.data.image_files import IMAGE_SUFFIXES

__all__ = ["DicomSeriesInfo", "list_dicom_series", "preserve_locale"]

# DICOM modalities that are certainly not CT (others, e.g. 'OT', only warn).
NOT_CT_MODALITIES = frozenset(
    {"MR", "PT", "NM", "US", "CR", "DX", "MG", "XA", "RF", "IO", "PX", "SEG", "RTSTRUCT",
     "RTDOSE", "RTPLAN", "SR", "ECG", "OCT", "OP", "SM", "XC", "ES"}
)



@dataclass(frozen=True)
class DicomSeriesInfo:
    """One DICOM series found in a folder (no patient fields, only where and how big)."""

    index: int
    series_id: str = field(repr=False)  # a DICOM UID: returned to the caller, never logged
    folder: str
    n_files: int
    files: tuple[str, ...] = field(repr=False, default=())


def is_dicom_file(path: Path) -> bool:
    if path.suffix.lower() in (".dcm", ".dicom", ".ima"):
        return True
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def has_dicom_files(folder: Path) -> bool:
    """Whether a folder directly holds DICOM files (a few files are enough to tell)."""
    try:
        names = sorted(e.name for e in os.scandir(folder) if e.is_file() and
                       not e.name.startswith("."))
    except OSError:
        return False
    names = [n for n in names if not n.lower().endswith(IMAGE_SUFFIXES)][:5]
    return any(is_dicom_file(folder / n) for n in names)


@contextmanager
def preserve_locale():
    """Keep the process locale as it was around DICOM work in SimpleITK.

    GDCM switches the C locale to "C" while it formats DICOM numbers and can leave it there,
    after which Python's default text encoding is ASCII for the rest of the process (in a
    notebook: every later ``open()`` of a UTF-8 file fails). Usable as a decorator too.
    """
    saved = locale.setlocale(locale.LC_ALL)
    try:
        yield
    finally:
        if locale.setlocale(locale.LC_ALL) != saved:
            locale.setlocale(locale.LC_ALL, saved)


@preserve_locale()
def list_dicom_series(folder: str | os.PathLike, recursive: bool = True) -> list[DicomSeriesInfo]:
    """DICOM series in ``folder`` (and its sub-folders when ``recursive``), most files first.

    Only file headers needed for grouping are read, not pixel data.

    Example:
        >>> [s.n_files for s in list_dicom_series("dicom_folder")]   # doctest: +SKIP
        [120, 3]
    """
    folder = Path(folder)
    found: list[tuple[str, str, tuple[str, ...]]] = []
    dirs = [folder]
    if recursive:
        dirs = [Path(root) for root, _, _ in os.walk(folder)]
        dirs.sort()
    for d in dirs:
        if not has_dicom_files(d):  # GDCM would print a warning for every non-DICOM folder
            continue
        try:
            ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(d))
        except RuntimeError:
            continue
        for sid in ids:
            files = tuple(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(d), sid))
            if files:
                found.append((sid, str(d), files))
    found.sort(key=lambda t: (-len(t[2]), t[1], t[0]))
    return [
        DicomSeriesInfo(index=i, series_id=sid, folder=d, n_files=len(files), files=files)
        for i, (sid, d, files) in enumerate(found)
    ]


def _pick_series(
    series: list[DicomSeriesInfo],
    series_id: str | int | None,
    *,
    subject_id: str | None,
    path: Path,
) -> DicomSeriesInfo:
    listing = "; ".join(f"index {s.index}: {s.n_files} files in {s.folder}" for s in series[:5])
    if len(series) > 5:
        listing += f"; … {len(series) - 5} more (see list_dicom_series)"
    if series_id is not None:
        for s in series:
            if (isinstance(series_id, int) and s.index == series_id) or s.series_id == series_id:
                return s
        raise CTLoadError(
            f"the requested DICOM series was not found among {len(series)} series ({listing})",
            subject_id=subject_id,
            file=path,
            field="series_id",
            fix="pass series_id as one of the indexes above or a SeriesInstanceUID from "
            "list_dicom_series(folder)",
        )
    if len(series) > 1:
        warnings.warn(
            CTLoadWarning(
                f"the folder holds {len(series)} DICOM series ({listing}); using the one with "
                f"the most slices (index 0, {series[0].n_files} files)",
                subject_id,
                str(path),
                "series",
                "pass series_id=<index or SeriesInstanceUID> to choose another, or keep one "
                "series per folder",
            ),
            stacklevel=3,
        )
    return series[0]


@preserve_locale()
def read_dicom_series(
    path: Path, series_id: str | int | None, subject_id: str | None, file_hint: Path | None
) -> tuple[sitk.Image, str | None]:
    """Read one series; returns the image and the Modality (a non-identifying field)."""
    series = list_dicom_series(path, recursive=True)
    if file_hint is not None:  # a single .dcm was given: load the series that holds it
        hint = os.path.abspath(file_hint)
        series = [s for s in series if hint in {os.path.abspath(f) for f in s.files}] or series
        series = [
            DicomSeriesInfo(i, s.series_id, s.folder, s.n_files, s.files)
            for i, s in enumerate(series)
        ]
    if not series:
        raise CTLoadError(
            "the folder contains no readable DICOM series (and is not an image file)",
            subject_id=subject_id,
            file=path,
            field="file",
            fix="point to a NIfTI/NRRD/MHA file or to a folder holding the DICOM slices of one "
            "scan",
        )
    chosen = _pick_series(series, series_id, subject_id=subject_id, path=path)
    modality: str | None = None
    try:
        # Read only the header of the first slice, and from it only Modality: no patient field
        # is looked at or kept.
        info = sitk.ImageFileReader()
        info.SetFileName(chosen.files[0])
        info.ReadImageInformation()
        if info.HasMetaDataKey("0008|0060"):
            modality = info.GetMetaData("0008|0060").strip().upper() or None
        del info
        _check_slice_positions(chosen.files, subject_id, path)
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(list(chosen.files))
        reader.MetaDataDictionaryArrayUpdateOff()  # never load per-slice header dictionaries
        reader.LoadPrivateTagsOff()
        image = reader.Execute()
    except RuntimeError as exc:
        raise CTLoadError(
            f"SimpleITK could not read the DICOM series ({first_line(exc)})",
            subject_id=subject_id,
            file=path,
            field="file",
            fix="check that all slices of the series are present and not truncated; "
            "re-export the series if needed",
        ) from None
    return image, modality


def _dicom_numbers(reader: sitk.ImageFileReader, key: str) -> list[float] | None:
    if not reader.HasMetaDataKey(key):
        return None
    try:
        return [float(v) for v in reader.GetMetaData(key).strip().split("\\")]
    except ValueError:
        return None


def _check_slice_positions(
    files: Sequence[str], subject_id: str | None, path: Path
) -> None:
    """Refuse series with missing or duplicated slices; warn on uneven spacing or tilt.

    ITK stacks the slices with one spacing taken from the first ones, so a missing slice
    silently shifts all the anatomy above it. Only ImagePositionPatient (0020,0032) and
    ImageOrientationPatient (0020,0037) of each header are read.
    """
    if len(files) < 3:
        return
    reader = sitk.ImageFileReader()
    positions = []
    orientation = None
    for f in files:
        reader.SetFileName(f)
        try:
            reader.ReadImageInformation()
        except RuntimeError:
            return  # the series reader reports unreadable files
        pos = _dicom_numbers(reader, "0020|0032")
        if pos is None or len(pos) != 3:
            return  # no positions (e.g. secondary capture): nothing to check
        positions.append(pos)
        if orientation is None:
            orientation = _dicom_numbers(reader, "0020|0037")
    if orientation is None or len(orientation) != 6:
        return
    pts = np.asarray(positions, dtype=float)
    normal = np.cross(orientation[:3], orientation[3:])
    if not np.isfinite(normal).all() or np.linalg.norm(normal) < 1e-6:
        return
    normal /= np.linalg.norm(normal)
    depth = np.sort(pts @ normal)
    gaps = np.diff(depth)
    if (gaps < 1e-3).any():
        raise CTLoadError(
            f"{int((gaps < 1e-3).sum())} slice(s) share a position with another slice (two "
            "reconstructions or repeated slices in one series?)",
            subject_id=subject_id,
            file=path,
            field="slice positions (0020,0032)",
            fix="keep one reconstruction per series (separate them into folders, or pass "
            "series_id) and remove repeated slices",
        )
    step = float(np.median(gaps))
    if gaps.max() > 1.5 * step:
        missing = int(np.sum(np.rint(gaps / step) - 1))
        raise CTLoadError(
            f"slices are not evenly spaced: gaps from {gaps.min():.3g} to {gaps.max():.3g} mm "
            f"(usual {step:.3g} mm), about {missing} slice(s) missing",
            subject_id=subject_id,
            file=path,
            field="slice positions (0020,0032)",
            fix="export the complete series (all slices); a gap would shift the anatomy",
        )
    if (gaps.max() - gaps.min()) > 0.1 * step:
        warnings.warn(
            CTLoadWarning(
                f"slice spacing varies from {gaps.min():.3g} to {gaps.max():.3g} mm; the volume "
                f"uses one spacing ({step:.3g} mm)",
                subject_id, str(path), "slice positions (0020,0032)",
                "check the reconstruction; resample it to even spacing if needed",
            ),
            stacklevel=4,
        )
    travel = pts[np.argmax(pts @ normal)] - pts[np.argmin(pts @ normal)]
    cos = abs(float(travel @ normal)) / max(float(np.linalg.norm(travel)), 1e-9)
    tilt = float(np.degrees(np.arccos(min(cos, 1.0))))
    if tilt > 0.5:
        warnings.warn(
            CTLoadWarning(
                f"the slices are sheared by {tilt:.1f}° (gantry tilt); the volume is stacked "
                "as if there were no tilt, so anatomy is slightly distorted",
                subject_id, str(path), "slice positions (0020,0032)",
                "use a reconstruction corrected for gantry tilt when available",
            ),
            stacklevel=4,
        )

def dicom_numbers_of(file: str, key: str) -> list[float] | None:
    reader = sitk.ImageFileReader()
    reader.SetFileName(file)
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        return None
    return _dicom_numbers(reader, key)
