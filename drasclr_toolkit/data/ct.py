"""Load a CT scan into a canonical, checked :class:`CTImage`.

``load_ct`` reads NIfTI, NRRD, MHA/MHD files and DICOM series folders through SimpleITK,
reorients the volume to the canonical identity direction in LPS space, converts it to int16
Hounsfield units in numpy order (z, y, x) and checks that it is a usable CT scan. Problems
raise :class:`CTLoadError` (a ``ValueError``) naming the subject, the file and the field and
saying what to do; usable but doubtful scans give a :class:`CTLoadWarning`.

Privacy: only geometry (size, spacing, origin, direction) and pixel values are kept. No
DICOM header field (patient name, id, birth date, accession number, institution, …) and no
SimpleITK metadata dictionary is copied into the result, a log line or an error message.

Example:
    >>> from drasclr_toolkit.data import load_ct
    >>> ct = load_ct("scans/case01.nii.gz", subject_id="case01")    # doctest: +SKIP
    >>> ct.array.dtype, ct.array.shape, ct.direction[:3]            # doctest: +SKIP
    (dtype('int16'), (48, 512, 512), (1.0, 0.0, 0.0))
"""

from __future__ import annotations

import gzip
import locale
import math
import os
import re
import stat
import struct
import warnings
import zlib
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from collections.abc import Sequence

import numpy as np
import SimpleITK as sitk
from pydantic import ConfigDict, Field

from ..config import Config
from ..errors import DrasclrError, InputError, error_message, where_text

__all__ = [
    "CTImage",
    "CTChecks",
    "CTLoadError",
    "CTLoadWarning",
    "DicomSeriesInfo",
    "IDENTITY_DIRECTION",
    "image_array",
    "list_dicom_series",
    "load_ct",
    "read_ct_header",
    "reorient_to_lps",
]

IDENTITY_DIRECTION: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)

# Image file suffixes SimpleITK reads that we accept as a single-file scan.
IMAGE_SUFFIXES: tuple[str, ...] = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")

# A direction this close to identity after DICOMOrient is snapped to identity (rounding
# noise from the writer); anything further is an oblique scan and is resampled.
_SNAP_TOLERANCE = 1e-4
_AIR_OUTSIDE_FOV_HU = -1024
# DICOM modalities that are certainly not CT (others, e.g. 'OT', only warn).
_NOT_CT_MODALITIES = frozenset(
    {"MR", "PT", "NM", "US", "CR", "DX", "MG", "XA", "RF", "IO", "PX", "SEG", "RTSTRUCT",
     "RTDOSE", "RTPLAN", "SR", "ECG", "OCT", "OP", "SM", "XC", "ES"}
)


class CTLoadError(DrasclrError, ValueError):
    """A scan that cannot be used, with the subject, file and field it concerns.

    Attributes ``subject_id``, ``file`` and ``field`` let a cohort runner record the failure
    and go on with the next subject.
    """

    def __init__(
        self,
        problem: str,
        *,
        subject_id: str | None = None,
        file: str | os.PathLike | None = None,
        field: str | None = None,
        fix: str | None = None,
    ) -> None:
        _describe(self, problem, subject_id, file, field, fix)


class CTLoadWarning(UserWarning):
    """A scan that loads but may give poor results (thick slices, oblique, several series).

    Like :class:`CTLoadError` it carries ``subject_id``, ``file``, ``field``, ``problem`` and
    ``fix`` as attributes, so a report reads the field instead of parsing the message.
    """

    def __init__(
        self,
        problem: str,
        subject_id: str | None = None,
        file: str | os.PathLike | None = None,
        field: str | None = None,
        fix: str | None = None,
    ) -> None:
        _describe(self, problem, subject_id, file, field, fix)


def _describe(problem_obj: Exception, problem: str, subject_id: str | None,
              file: str | os.PathLike | None, field: str | None, fix: str | None) -> None:
    """Set the fields a CT problem carries (DrasclrError's ``where``, ``problem``, ``fix``,
    and ``subject_id``, ``file``, ``field``) and its one-line message (error and warning
    alike). Subject and file are always named, as ``<unnamed>`` / ``<none>`` when unknown."""
    problem_obj.subject_id = subject_id
    problem_obj.file = None if file is None else str(file)
    problem_obj.field = field
    problem_obj.problem = problem
    problem_obj.fix = fix
    problem_obj.where = where_text(subject=repr(subject_id) if subject_id is not None
                                   else "<unnamed>",
                                   file=problem_obj.file or "<none>", field=field)
    Exception.__init__(problem_obj, error_message(problem_obj.where, problem, fix))


class CTChecks(Config):
    """Thresholds of the sanity checks in :func:`load_ct`.

    Example:
        >>> CTChecks.from_dict({"min_slices": 8}).min_slices
        8
    """

    model_config = ConfigDict(frozen=True)
    section = "CTChecks"
    key_advice = "Fix the spelling in your config."

    min_slices: int = Field(16, ge=1)                  # fewer slices along the slice axis: error
    max_slice_thickness_mm: float = Field(5.0, gt=0)  # thicker slices: warning (emphysema detail is lost)
    air_hu: float = -900.0              # a voxel at or below this is air
    min_air_fraction: float = Field(0.001, ge=0, le=1)  # a chest CT in HU always has some air (lungs, outside)
    max_hu: float = 32767.0             # values above do not fit int16
    check_hu: bool = True               # set False for phantoms that are not chest CT
    # Calibration (slope and intercept): the air level (median of the air class) and the
    # gap from it to the body's main peak (fat / soft tissue). Real chest CTs measure
    # about -1000..-960 HU and 850..1020 HU; a slope x10 or a missing/doubled intercept
    # falls far outside.
    air_level_hu: tuple[float, float] = (-1150.0, -700.0)
    tissue_gap_hu: tuple[float, float] = (500.0, 1600.0)


@dataclass(eq=False)
class CTImage:
    """A CT volume in Hounsfield units with its geometry.

    ``array`` is int16 HU in numpy order (z, y, x); ``spacing``/``origin`` are (x, y, z) in
    mm (SimpleITK order, LPS physical space); ``direction`` is the 3×3 direction matrix as
    9 row-major values. Only geometry and pixels are kept, never header metadata.

    Example:
        >>> import numpy as np
        >>> ct = CTImage(np.full((4, 5, 6), -1000, np.int16), (1.0, 1.0, 2.0), (0, 0, 0),
        ...              IDENTITY_DIRECTION, subject_id="s1")
        >>> ct.to_sitk().GetSize()
        (6, 5, 4)
    """

    array: np.ndarray
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...]
    source: str | None = None
    subject_id: str | None = None

    def __post_init__(self) -> None:
        arr = np.asarray(self.array)
        if arr.ndim != 3:
            raise InputError(f"CTImage.array must be 3D (z, y, x); got shape {arr.shape}")
        if arr.dtype != np.int16:
            arr = _to_int16(arr, subject_id=self.subject_id, file=self.source)
        self.array = arr
        self.spacing = tuple(float(v) for v in self.spacing)  # type: ignore[assignment]
        self.origin = tuple(float(v) for v in self.origin)  # type: ignore[assignment]
        self.direction = tuple(float(v) for v in self.direction)
        if len(self.spacing) != 3 or len(self.origin) != 3 or len(self.direction) != 9:
            raise InputError(
                "CTImage needs 3 spacing values, 3 origin values and 9 direction values; got "
                f"{len(self.spacing)}, {len(self.origin)}, {len(self.direction)}"
            )
        if self.source is not None:
            self.source = str(self.source)

    @property
    def shape(self) -> tuple[int, int, int]:
        """Array shape (z, y, x)."""
        return tuple(self.array.shape)  # type: ignore[return-value]

    @property
    def size(self) -> tuple[int, int, int]:
        """Image size (x, y, z), SimpleITK order."""
        z, y, x = self.array.shape
        return (x, y, z)

    def to_sitk(self) -> sitk.Image:
        """A SimpleITK image with the same pixels and geometry (no metadata)."""
        image = sitk.GetImageFromArray(self.array)
        image.SetSpacing(self.spacing)
        image.SetOrigin(self.origin)
        image.SetDirection(self.direction)
        return image

    @classmethod
    def from_sitk(
        cls,
        image: sitk.Image,
        source: str | os.PathLike | None = None,
        subject_id: str | None = None,
    ) -> CTImage:
        """Wrap a 3D scalar SimpleITK image; pixels are rounded to int16 (not reoriented)."""
        if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
            raise InputError(
                "CTImage.from_sitk needs a 3D scalar image; got dimension "
                f"{image.GetDimension()} with {image.GetNumberOfComponentsPerPixel()} "
                "component(s) per pixel"
            )
        return cls(
            array=_to_int16(sitk.GetArrayFromImage(image), subject_id=subject_id, file=source),
            spacing=image.GetSpacing(),
            origin=image.GetOrigin(),
            direction=image.GetDirection(),
            source=None if source is None else str(source),
            subject_id=subject_id,
        )

    def __repr__(self) -> str:
        # Short on purpose: no array dump in notebooks and logs.
        return (
            f"CTImage(subject_id={self.subject_id!r}, shape(z,y,x)={self.shape}, "
            f"spacing(x,y,z)={tuple(round(s, 4) for s in self.spacing)}, "
            f"origin={tuple(round(o, 2) for o in self.origin)}, "
            f"identity_direction={np.allclose(self.direction, IDENTITY_DIRECTION)}, "
            f"source={self.source!r})"
        )


def _to_int16(arr: np.ndarray, *, subject_id: str | None, file: Any) -> np.ndarray:
    """Round and cast to int16, refusing values that do not fit."""
    arr = np.asarray(arr)
    if arr.dtype == np.int16:
        return arr
    if arr.size:
        if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
            raise CTLoadError(
                f"{int((~np.isfinite(arr)).sum())} voxel(s) are NaN or infinite",
                subject_id=subject_id,
                file=file,
                field="pixel values",
                fix="re-export the scan without missing values (NaN), or fill them with -1024 HU",
            )
        lo, hi = float(arr.min()), float(arr.max())
        if lo < -32768 or hi > 32767:
            raise CTLoadError(
                f"values range from {lo:g} to {hi:g}, outside int16 (-32768..32767)",
                subject_id=subject_id,
                file=file,
                field="pixel values",
                fix="check that the image is CT in Hounsfield units (rescaled, not raw or scaled)",
            )
    if np.issubdtype(arr.dtype, np.floating):
        arr = np.rint(arr)
    return arr.astype(np.int16)


# --------------------------------------------------------------------------------- DICOM


@dataclass(frozen=True)
class DicomSeriesInfo:
    """One DICOM series found in a folder (no patient fields, only where and how big)."""

    index: int
    series_id: str = field(repr=False)  # a DICOM UID: returned to the caller, never logged
    folder: str
    n_files: int
    files: tuple[str, ...] = field(repr=False, default=())


def _is_dicom_file(path: Path) -> bool:
    if path.suffix.lower() in (".dcm", ".dicom", ".ima"):
        return True
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def _has_dicom_files(folder: Path) -> bool:
    """Whether a folder directly holds DICOM files (a few files are enough to tell)."""
    try:
        names = sorted(e.name for e in os.scandir(folder) if e.is_file() and
                       not e.name.startswith("."))
    except OSError:
        return False
    names = [n for n in names if not n.lower().endswith(IMAGE_SUFFIXES)][:5]
    return any(_is_dicom_file(folder / n) for n in names)


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
        if not _has_dicom_files(d):  # GDCM would print a warning for every non-DICOM folder
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
def _read_dicom_series(
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
            f"SimpleITK could not read the DICOM series ({_first_line(exc)})",
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


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    # ITK messages start with the source location; the useful part is near the end.
    useful = [t.strip() for t in text if t.strip()]
    return useful[-1] if useful else type(exc).__name__


# ------------------------------------------------------------------------------ orientation


def reorient_to_lps(image: sitk.Image) -> tuple[sitk.Image, bool]:
    """Return ``image`` with identity direction in LPS and whether it had to be resampled.

    Axis permutations and flips are exact (``sitk.DICOMOrient``); an oblique scan (direction
    not a signed permutation) is resampled with linear interpolation onto an identity grid
    covering the same physical box (outside the scan: -1024 HU).

    Example:
        >>> img = sitk.Image(4, 5, 6, sitk.sitkInt16)
        >>> img.SetDirection((-1, 0, 0, 0, -1, 0, 0, 0, 1))
        >>> out, resampled = reorient_to_lps(img)
        >>> out.GetDirection() == IDENTITY_DIRECTION, resampled
        (True, False)
    """
    out = sitk.DICOMOrient(image, "LPS")
    d = np.asarray(out.GetDirection(), dtype=float)
    if np.allclose(d, IDENTITY_DIRECTION, atol=_SNAP_TOLERANCE):
        out.SetDirection(IDENTITY_DIRECTION)
        return out, False
    # Oblique: bounding box of the corners in physical space, same spacing per axis.
    sx, sy, sz = (float(n - 1) for n in out.GetSize())
    corners = [
        out.TransformContinuousIndexToPhysicalPoint((cx, cy, cz))
        for cx in (0.0, sx)
        for cy in (0.0, sy)
        for cz in (0.0, sz)
    ]
    corners_arr = np.asarray(corners)
    lo, hi = corners_arr.min(axis=0), corners_arr.max(axis=0)
    spacing = np.asarray(out.GetSpacing(), dtype=float)
    new_size = [int(math.floor((hi[i] - lo[i]) / spacing[i] + 1e-6)) + 1 for i in range(3)]
    resampled = sitk.Resample(
        sitk.Cast(out, sitk.sitkFloat32),
        new_size,
        sitk.Transform(),
        sitk.sitkLinear,
        tuple(lo.tolist()),
        tuple(spacing.tolist()),
        IDENTITY_DIRECTION,
        float(_AIR_OUTSIDE_FOV_HU),
        sitk.sitkFloat32,
    )
    return resampled, True


# ---------------------------------------------------------------------------------- loader


def require_regular_file(path: Path, subject_id: str | None) -> None:
    """CTLoadError for a path that is not a regular file or folder (a FIFO, socket or
    device would block or never end when read); checked without opening it."""
    mode = path.stat().st_mode
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        kind = ("a named pipe (FIFO)" if stat.S_ISFIFO(mode) else "a socket" if
                stat.S_ISSOCK(mode) else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
                else "not a regular file")
        raise CTLoadError(f"the path is {kind}, not a scan file; it is not opened",
                          subject_id=subject_id, file=path, field="file",
                          fix="point the manifest at the scan file itself (or its DICOM folder)")


def _available_memory() -> int | None:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


# Bytes per voxel while loading: the file's voxel read, a float working copy, the int16
# result, and a copy made by reorientation (measured peaks are about this).
_COPIES_WHILE_LOADING = 3


def check_declared_size(path: Path, subject_id: str | None,
                        available: int | None = None) -> None:
    """CTLoadError when the image the header declares would not fit in the memory that is
    available (checked from the header, before any voxel is read), instead of a
    MemoryError or a machine that swaps."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        return  # the reader below says what is wrong with the file
    size = [int(v) for v in reader.GetSize()]
    n_voxels = math.prod(size) * max(int(reader.GetNumberOfComponents()), 1)
    name = sitk.GetPixelIDValueAsString(reader.GetPixelID())
    bits = next((b for b in (64, 32, 16, 8) if f"{b}-bit" in name), 32)
    need = n_voxels * (bits // 8 + 4 * _COPIES_WHILE_LOADING - 2)
    available = _available_memory() if available is None else available
    if available is not None and need > available:
        raise CTLoadError(
            f"the header declares {' x '.join(map(str, size))} voxels of {name}; loading it "
            f"needs about {need / 2**30:,.1f} GiB of memory and {available / 2**30:,.1f} GiB "
            "are available, so it is not read",
            subject_id=subject_id, file=path, field="image size",
            fix="check the header (a damaged size field?), crop or downsample the scan, or "
            "load it on a machine with more memory")


def _read_image(
    path: Path, series_id: str | int | None, subject_id: str | None
) -> tuple[sitk.Image, str | None]:
    if not path.exists():
        raise CTLoadError(
            "the file or folder does not exist",
            subject_id=subject_id,
            file=path,
            field="file",
            fix="check the path (manifest paths are relative to the manifest's folder)",
        )
    if path.is_dir():
        return _read_dicom_series(path, series_id, subject_id, None)
    require_regular_file(path, subject_id)
    if _is_dicom_file(path):
        return _read_dicom_series(path.parent, series_id, subject_id, path)
    check_declared_size(path, subject_id)
    if path.name.lower().endswith((".nii", ".nii.gz")):
        check_nifti_file(path, subject_id)
    elif path.suffix.lower() in (".mha", ".mhd"):
        check_metaimage_file(path, subject_id)
    try:
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        image = reader.Execute()
    except RuntimeError as exc:
        short = _short_read(str(exc))
        if short is not None:
            expected, got = short
            raise CTLoadError(
                f"the file is truncated: the header needs {expected:,} bytes of image data but "
                f"only {got:,} ({got / max(expected, 1):.0%}) could be read",
                subject_id=subject_id,
                file=path,
                field="file size",
                fix=_TRUNCATED_FIX,
            ) from None
        raise CTLoadError(
            f"SimpleITK could not read it ({_first_line(exc)})",
            subject_id=subject_id,
            file=path,
            field="file",
            fix="check that it is a complete NIfTI (.nii/.nii.gz), NRRD, MHA/MHD (with its .raw) "
            "file or a DICOM folder; re-export or re-download it if it is truncated",
        ) from None
    return image, None


_TRUNCATED_FIX = ("copy or download the file again and compare its size or checksum with the "
                  "source, or re-export it from the original scan")
# SimpleITK's NRRD and MetaImage readers say how much data they expected and got.
_SHORT_READ = (
    re.compile(r"expected (\d+) bytes but received (\d+)"),
    re.compile(r"ideal\s*=\s*(\d+)\s*:\s*actual\s*=\s*(\d+)"),
)
_NIFTI_FLOAT_TYPES = {16: "f4", 64: "f8"}  # NIfTI datatype codes of float32 / float64
_STREAM_BLOCK = 8 << 20


def _short_read(message: str) -> tuple[int, int] | None:
    for pattern in _SHORT_READ:
        m = pattern.search(message)
        if m:
            return int(m.group(1)), int(m.group(2))
    return None


def _nifti_header(head: bytes, subject_id: str | None, path: Path) -> tuple[int, int, str, int]:
    """(data offset, data bytes, endianness, datatype) from a NIfTI-1 or NIfTI-2 header."""
    for endian in ("<", ">"):
        if len(head) >= 4 and struct.unpack(endian + "i", head[:4])[0] == 348 and len(head) >= 348:
            ndim = struct.unpack(endian + "h", head[40:42])[0]
            dims = struct.unpack(endian + "8h", head[40:56])
            datatype, bitpix = struct.unpack(endian + "2h", head[70:74])
            offset = int(struct.unpack(endian + "f", head[108:112])[0])
            single_file = head[344:348] in (b"n+1\0", b"n+2\0")
            break
        if len(head) >= 540 and struct.unpack(endian + "i", head[:4])[0] == 540:
            datatype, bitpix = struct.unpack(endian + "2h", head[12:16])
            dims = struct.unpack(endian + "8q", head[16:80])
            ndim = dims[0]
            offset = int(struct.unpack(endian + "q", head[168:176])[0])
            single_file = True
            break
    else:
        raise CTLoadError(
            "the NIfTI header is missing or damaged (its first field is not 348 or 540)",
            subject_id=subject_id, file=path, field="NIfTI header", fix=_TRUNCATED_FIX,
        )
    if not single_file:
        offset = 0  # .hdr/.img pair: SimpleITK reports a missing .img itself
    if not 1 <= ndim <= 7 or bitpix <= 0:
        raise CTLoadError(
            f"the NIfTI header is damaged (dim[0] = {ndim}, bitpix = {bitpix})",
            subject_id=subject_id, file=path, field="NIfTI header", fix=_TRUNCATED_FIX,
        )
    n_voxels = int(np.prod([max(int(d), 1) for d in dims[1:ndim + 1]], dtype=np.int64))
    return max(offset, 0), n_voxels * int(bitpix) // 8, endian, int(datatype)


def _decompressed_blocks(path: Path, gz: bool):
    """Blocks of the file's (decompressed) bytes; raises EOFError when a gzip stream ends
    early and zlib.error when its data or checksum is damaged."""
    with open(path, "rb") as fh:
        if not gz:
            while block := fh.read(_STREAM_BLOCK):
                yield block
            return
        inflater = zlib.decompressobj(wbits=31)  # gzip header and CRC-32/size trailer checked
        while True:
            raw = fh.read(_STREAM_BLOCK)
            if not raw:
                break
            while raw:
                out = inflater.decompress(raw)
                if out:
                    yield out
                if inflater.eof:  # a member ended; another may follow (concatenated gzip)
                    raw = inflater.unused_data
                    inflater = zlib.decompressobj(wbits=31)
                    if not raw.strip(b"\0"):
                        raw = b""
                        inflater = None
                        break
                else:
                    raw = b""
            if inflater is None:
                return
        if not inflater.eof:
            yield inflater.flush()
            raise EOFError("compressed file ended before the end-of-stream marker")


def check_nifti_file(path: str | os.PathLike, subject_id: str | None = None) -> None:
    """Refuse a truncated or damaged NIfTI file and one whose float voxels are NaN.

    SimpleITK reads a cut ``.nii``/``.nii.gz`` without complaint (missing voxels become 0
    HU) and turns NaN voxels into 0, so this reads the (decompressed) stream once: its
    length must reach what the header promises, the gzip checksum must match, and float
    data must be finite. Raises :class:`CTLoadError` with field ``file size``,
    ``file`` (damaged gzip data) or ``pixel values``.

    Example:
        >>> check_nifti_file("case01.nii.gz", "case01")     # doctest: +SKIP
    """
    path = Path(path)
    gz = path.name.lower().endswith(".gz")
    header = b""
    data_start = data_bytes = 0
    dtype = None
    n_bad = n_seen = total = 0
    carry = b""
    try:
        for block in _decompressed_blocks(path, gz):
            start, total = total, total + len(block)
            if dtype is None and data_bytes == 0:
                header += block[: max(0, 540 - len(header))]
                if len(header) < 540 and start + len(block) < 540:
                    continue
                data_start, data_bytes, endian, datatype = _nifti_header(header, subject_id, path)
                if datatype in _NIFTI_FLOAT_TYPES:
                    dtype = np.dtype(endian + _NIFTI_FLOAT_TYPES[datatype])
                elif not gz:
                    total = path.stat().st_size  # plain file without floats: size is enough
                    break
            if dtype is not None:
                # The part of this block inside the voxel data, whole items only.
                lo = max(data_start - start, 0)
                hi = min(data_start + data_bytes - start, len(block))
                if hi > lo:
                    buf = carry + block[lo:hi]
                    usable = len(buf) - len(buf) % dtype.itemsize
                    values = np.frombuffer(buf[:usable], dtype)
                    n_bad += int(values.size - np.count_nonzero(np.isfinite(values)))
                    n_seen += values.size
                    carry = buf[usable:]
    except CTLoadError:
        raise
    except EOFError:
        needed = data_start + data_bytes
        raise CTLoadError(
            "the file is truncated: its gzip stream ends early, after "
            + (f"{total:,} of the {needed:,} decompressed bytes the header needs ({total / needed:.0%})"
               if needed else f"{total:,} decompressed bytes")
            + "; the missing voxels would silently read as 0 HU",
            subject_id=subject_id, file=path, field="file size", fix=_TRUNCATED_FIX,
        ) from None
    except (zlib.error, OSError) as exc:
        raise CTLoadError(
            f"the compressed data is damaged ({exc})",
            subject_id=subject_id, file=path, field="file", fix=_TRUNCATED_FIX,
        ) from None
    if data_bytes == 0 and dtype is None:  # a file shorter than 540 bytes (or empty)
        data_start, data_bytes, _, _ = _nifti_header(header, subject_id, path)
    needed = data_start + data_bytes
    if total < needed:
        raise CTLoadError(
            f"the file is truncated: the header needs {needed:,} bytes ({data_bytes:,} of voxel "
            f"data from offset {data_start}) but the {'decompressed ' if gz else ''}file has "
            f"{total:,} ({total / max(needed, 1):.0%}); the missing voxels would silently read "
            "as 0 HU",
            subject_id=subject_id, file=path, field="file size", fix=_TRUNCATED_FIX,
        )
    if n_bad:
        raise CTLoadError(
            f"{n_bad:,} of {n_seen:,} voxel(s) ({n_bad / max(n_seen, 1):.1%}) are NaN or infinite"
            + ("; a large part of the scan is missing" if n_bad > 0.05 * n_seen else "")
            + " (SimpleITK would read them as 0 HU)",
            subject_id=subject_id, file=path, field="pixel values",
            fix="re-export the scan without missing values (NaN), or fill them with -1024 HU",
        )


_MET_TYPE_BYTES = {"MET_CHAR": 1, "MET_UCHAR": 1, "MET_SHORT": 2, "MET_USHORT": 2,
                   "MET_INT": 4, "MET_UINT": 4, "MET_LONG": 4, "MET_ULONG": 4,
                   "MET_LONG_LONG": 8, "MET_ULONG_LONG": 8, "MET_FLOAT": 4, "MET_DOUBLE": 8}


def check_metaimage_file(path: str | os.PathLike, subject_id: str | None = None) -> None:
    """Refuse a truncated MHA/MHD file: the data must be as long as the header says.

    Only the text header is parsed and file sizes compared (no pixel data is read);
    SimpleITK's own message for a short file is misleading ("No such file or directory").
    """
    path = Path(path)
    with open(path, "rb") as fh:
        head = fh.read(65536)
    fields_: dict[str, str] = {}
    header_len = None
    pos = 0
    for line in head.split(b"\n"):
        pos += len(line) + 1
        key, sep, value = line.decode("latin-1").partition("=")
        if not sep:
            continue
        fields_[key.strip()] = value.strip()
        if key.strip() == "ElementDataFile":
            header_len = pos
            break
    data_name = fields_.get("ElementDataFile")
    if header_len is None or not data_name:
        return  # not a header we understand: SimpleITK reports it
    try:
        dims = [int(v) for v in fields_["DimSize"].split()]
        item = _MET_TYPE_BYTES[fields_["ElementType"]]
        channels = int(fields_.get("ElementNumberOfChannels", "1"))
    except (KeyError, ValueError):
        return
    if data_name == "LOCAL":
        data_file, available = path, path.stat().st_size - header_len
    elif data_name.startswith("LIST") or "%" in data_name:
        return  # one file per slice: SimpleITK reports missing ones
    else:
        data_file = path.parent / data_name
        if not data_file.exists():
            return
        available = data_file.stat().st_size
    compressed = fields_.get("CompressedData", "False").lower() == "true"
    if compressed and "CompressedDataSize" not in fields_:
        return
    needed = (int(fields_["CompressedDataSize"]) if compressed
              else int(np.prod(dims, dtype=np.int64)) * item * channels)
    if available < needed:
        raise CTLoadError(
            f"the file is truncated: the header needs {needed:,} bytes of "
            f"{'compressed ' if compressed else ''}image data but {data_file.name} holds "
            f"{max(available, 0):,} ({max(available, 0) / max(needed, 1):.0%})",
            subject_id=subject_id, file=path, field="file size", fix=_TRUNCATED_FIX,
        )


def _check_shape(image: sitk.Image, subject_id: str | None, path: Path) -> sitk.Image:
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise CTLoadError(
            f"pixels have {image.GetNumberOfComponentsPerPixel()} components (colour or vector "
            "image), a CT scan has one",
            subject_id=subject_id,
            file=path,
            field="pixel type",
            fix="give the original grey-value CT, not a screenshot, RGB rendering or "
            "vector field",
        )
    dim = image.GetDimension()
    if dim == 4 and image.GetSize()[3] == 1:
        image = image[:, :, :, 0]  # a 4D file holding one 3D volume
        dim = 3
    if dim != 3:
        raise CTLoadError(
            f"the image is {dim}D with size {image.GetSize()}; a CT volume is 3D",
            subject_id=subject_id,
            file=path,
            field="dimensions",
            fix="give the whole 3D scan (all slices: a DICOM folder or one volume file), "
            "not a single slice or a time series",
        )
    spacing = image.GetSpacing()
    if not all(math.isfinite(s) and s > 0 for s in spacing):
        raise CTLoadError(
            f"voxel spacing {spacing} is not positive",
            subject_id=subject_id,
            file=path,
            field="spacing",
            fix="fix the header's voxel spacing (pixdim / space directions) when exporting",
        )
    return image


def image_array(image: Any) -> np.ndarray:
    """The (z, y, x) voxel array of a SimpleITK image, a :class:`CTImage` or an array.

    Example:
        >>> image_array(sitk.Image(4, 3, 2, sitk.sitkUInt8)).shape
        (2, 3, 4)
    """
    if isinstance(image, sitk.Image):
        return sitk.GetArrayFromImage(image)
    if hasattr(image, "array"):
        return np.asarray(image.array)
    return np.asarray(image)


def load_ct(
    path: str | os.PathLike,
    subject_id: str | None = None,
    *,
    series_id: str | int | None = None,
    checks: CTChecks | None = None,
) -> CTImage:
    """Load a CT scan as int16 HU (z, y, x) in canonical LPS orientation, with checks.

    Args:
        path: a NIfTI/NRRD/MHA/MHD file, a DICOM series folder (searched recursively), or
            one DICOM file (its series is loaded).
        subject_id: used in error messages and stored on the result.
        series_id: which DICOM series to load when a folder holds several: an index from
            :func:`list_dicom_series` or a SeriesInstanceUID. By default the one with the
            most slices, with a :class:`CTLoadWarning`.
        checks: thresholds of the sanity checks (:class:`CTChecks`).

    Raises:
        CTLoadError: missing/unreadable file, not 3D, too few slices, NaN values, values not
            in Hounsfield units, not CT. The message names subject, file and field.

    Example:
        >>> ct = load_ct("case01.nrrd", subject_id="case01")       # doctest: +SKIP
        >>> ct.direction == IDENTITY_DIRECTION                      # doctest: +SKIP
        True
    """
    checks = checks or CTChecks()
    p = Path(path).expanduser()
    image, modality = _read_image(p, series_id, subject_id)
    image = _check_shape(image, subject_id, p)

    if modality is not None and modality in _NOT_CT_MODALITIES:
        raise CTLoadError(
            f"DICOM Modality is {modality!r}, not 'CT'",
            subject_id=subject_id,
            file=p,
            field="Modality (0008,0060)",
            fix="give a CT series; MR, PET and other modalities are not supported",
        )
    if modality is not None and modality != "CT":
        # 'OT' (other) or secondary captures are often converted CT: the HU checks decide.
        warnings.warn(
            CTLoadWarning(
                f"DICOM Modality is {modality!r}, not 'CT'; loading it as CT",
                subject_id,
                str(p),
                "Modality (0008,0060)",
                "check that this series is a CT reconstruction",
            ),
            stacklevel=2,
        )

    # The slice axis is the file's third axis (the DICOM stacking axis): count and
    # thickness are judged there, before reorientation permutes axes.
    n_slices = image.GetSize()[2]
    thickness = image.GetSpacing()[2]
    if n_slices < checks.min_slices:
        raise CTLoadError(
            f"only {n_slices} slice(s) along the slice axis (at least {checks.min_slices} needed)",
            subject_id=subject_id,
            file=p,
            field="number of slices",
            fix="give the complete scan (all slices of the series), or lower "
            "CTChecks.min_slices if this small volume is intended",
        )
    if thickness > checks.max_slice_thickness_mm + 1e-6:
        warnings.warn(
            CTLoadWarning(
                f"slice spacing is {thickness:g} mm (> {checks.max_slice_thickness_mm:g} mm); "
                "fine lung detail such as emphysema is poorly resolved",
                subject_id,
                str(p),
                "slice thickness",
                "use a thin-slice reconstruction (≤ 1.25 mm is typical for lung studies) when "
                "one exists",
            ),
            stacklevel=2,
        )

    image, resampled = reorient_to_lps(image)
    if resampled:
        warnings.warn(
            CTLoadWarning(
                "the scan is oblique (direction not aligned with the patient axes) and was "
                "resampled with linear interpolation onto an axis-aligned grid",
                subject_id,
                str(p),
                "direction",
                "nothing if the result looks right; otherwise reconstruct the scan without "
                "gantry tilt",
            ),
            stacklevel=2,
        )

    array = sitk.GetArrayFromImage(image)
    if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
        n_bad = int((~np.isfinite(array)).sum())
        raise CTLoadError(
            f"{n_bad:,} of {array.size:,} voxel(s) ({n_bad / array.size:.1%}) are NaN or infinite"
            + ("; a large part of the scan is missing" if n_bad > 0.05 * array.size else ""),
            subject_id=subject_id,
            file=p,
            field="pixel values",
            fix="re-export the scan without missing values (NaN), or fill them with -1024 HU",
        )
    if checks.check_hu:
        # Values that went through a rescale (some below 0): a wrong slope or intercept is
        # named as such (RescaleSlope 10 puts air at -784, which the plain range checks would
        # only call "no air"). Values from 0 up are raw or not CT: the range checks say which.
        rescaled = float(array.min()) < 0
        if rescaled:
            _check_calibration(array, checks, subject_id, p)
        _check_hounsfield(array, checks, subject_id, p)
        if not rescaled:
            _check_calibration(array, checks, subject_id, p)
    return CTImage(
        array=_to_int16(array, subject_id=subject_id, file=p),
        spacing=image.GetSpacing(),
        origin=image.GetOrigin(),
        direction=image.GetDirection(),
        source=str(p),
        subject_id=subject_id,
    )


def read_ct_header(path: str | os.PathLike, subject_id: str | None = None) -> dict[str, Any]:
    """Geometry of a scan from its header only (no pixel data): cheap probing of a cohort.

    Returns ``kind`` ('file' or 'dicom'), ``size`` (x, y, z), ``spacing`` (x, y, z) mm,
    ``pixel_type`` and, for DICOM, ``n_series`` (series found) and ``modality``. Sizes are
    as stored (before reorientation). Raises :class:`CTLoadError` for a missing or
    unreadable scan.

    Example:
        >>> read_ct_header("case01.nrrd")["size"]            # doctest: +SKIP
        (512, 512, 48)
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise CTLoadError("the file or folder does not exist", subject_id=subject_id, file=p,
                          field="file", fix="check the path")
    require_regular_file(p, subject_id)
    reader = sitk.ImageFileReader()
    try:
        if p.is_dir() or _is_dicom_file(p):
            folder = p if p.is_dir() else p.parent
            series = list_dicom_series(folder)
            if not series:
                raise CTLoadError("no DICOM series found", subject_id=subject_id, file=p,
                                  field="file", fix="point to a folder of DICOM slices")
            files = series[0].files
            reader.SetFileName(files[0])
            reader.ReadImageInformation()
            cols, rows = reader.GetSize()[:2]
            spacing = list(reader.GetSpacing()[:2]) + [float("nan")]
            if len(files) > 1:
                pos = [_dicom_numbers_of(f, "0020|0032") for f in files[:2]]
                if pos[0] and pos[1]:
                    spacing[2] = float(np.linalg.norm(np.subtract(pos[1], pos[0])))
            modality = (reader.GetMetaData("0008|0060").strip()
                        if reader.HasMetaDataKey("0008|0060") else None)
            return {"kind": "dicom", "size": (int(cols), int(rows), len(files)),
                    "spacing": tuple(float(v) for v in spacing),
                    "pixel_type": sitk.GetPixelIDValueAsString(reader.GetPixelID()),
                    "n_series": len(series), "modality": modality}
        reader.SetFileName(str(p))
        reader.ReadImageInformation()
    except RuntimeError as exc:
        raise CTLoadError(f"SimpleITK could not read the header ({_first_line(exc)})",
                          subject_id=subject_id, file=p, field="file",
                          fix="check that the file is complete and in a supported format") from None
    size = reader.GetSize()
    return {"kind": "file", "size": tuple(int(v) for v in size),
            "spacing": tuple(float(v) for v in reader.GetSpacing()),
            "pixel_type": sitk.GetPixelIDValueAsString(reader.GetPixelID()),
            "n_series": None, "modality": None}


def _dicom_numbers_of(file: str, key: str) -> list[float] | None:
    reader = sitk.ImageFileReader()
    reader.SetFileName(file)
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        return None
    return _dicom_numbers(reader, key)


def _check_hounsfield(
    array: np.ndarray, checks: CTChecks, subject_id: str | None, path: Path
) -> None:
    lo, hi = float(array.min()), float(array.max())
    # A strided sample is plenty for fractions and keeps this cheap on 500-slice scans.
    sample = array[::2, ::4, ::4].astype(np.float32, copy=False)
    air_fraction = float(np.mean(sample <= checks.air_hu))
    if lo >= 0:
        # Raw CT without rescale: air stored near 0 and soft tissue near 1024.
        near_zero = float(np.mean(sample < 150))
        near_water = float(np.mean((sample > 850) & (sample < 1250)))
        if near_zero > 0.02 and near_water > 0.02 and hi <= 5000:
            raise CTLoadError(
                f"values range from {lo:g} to {hi:g} with no air (nothing at or below "
                f"{checks.air_hu:g}); these look like stored CT values without the rescale to "
                "Hounsfield units",
                subject_id=subject_id,
                file=path,
                field="intensity (Hounsfield units)",
                fix="apply HU = value × RescaleSlope + RescaleIntercept (usually slope 1, "
                "intercept -1024) when exporting, or give the original DICOM series whose "
                "RescaleIntercept SimpleITK applies",
            )
        raise CTLoadError(
            f"values range from {lo:g} to {hi:g} with no air (nothing at or below "
            f"{checks.air_hu:g} HU); this does not look like CT in Hounsfield units (MR or a "
            "normalised image?)",
            subject_id=subject_id,
            file=path,
            field="intensity (Hounsfield units)",
            fix="give a CT scan in Hounsfield units (air -1000, water 0); MR and intensity-"
            "normalised images are not supported",
        )
    if hi > checks.max_hu:
        raise CTLoadError(
            f"maximum value {hi:g} is above {checks.max_hu:g}",
            subject_id=subject_id,
            file=path,
            field="intensity (Hounsfield units)",
            fix="check the rescale slope/intercept of the export",
        )
    if air_fraction < checks.min_air_fraction:
        raise CTLoadError(
            f"values range from {lo:g} to {hi:g} but only {air_fraction:.3%} of voxels are air "
            f"(≤ {checks.air_hu:g} HU); a chest CT in Hounsfield units has air in the lungs and "
            "around the body",
            subject_id=subject_id,
            file=path,
            field="intensity (Hounsfield units)",
            fix="check that this is a chest CT in Hounsfield units (not MR, not normalised or "
            "windowed); for a non-chest phantom pass CTChecks(check_hu=False)",
        )


def _otsu(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of ``values`` (between-class variance maximised on a histogram)."""
    hist, edges = np.histogram(values, bins=bins)
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist).astype(np.float64)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centres) / np.maximum(w0, 1)
    m1 = (np.sum(hist * centres) - np.cumsum(hist * centres)) / np.maximum(w1, 1)
    return float(centres[int(np.argmax(w0 * w1 * (m0 - m1) ** 2))])


def hu_calibration(array: np.ndarray) -> tuple[float, float | None]:
    """``(air level, gap to the body's main peak)`` of a CT volume, in its own units (the
    gap None when the volume has no second class to measure it on).

    The air level is the median of the lower Otsu class (outside air and lungs); the gap
    runs from it to the histogram mode of the upper class (fat and soft tissue). A padding
    value below -1000 that fills the corners outside the field of view is left out.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> a = np.concatenate([rng.normal(-990, 20, 4000), rng.normal(40, 15, 4000)])
        >>> air, gap = hu_calibration(a.reshape(20, 20, 20))
        >>> -1010 < air < -970 and 980 < gap < 1080
        True
    """
    s = np.asarray(array)[::2, ::4, ::4].astype(np.float32, copy=False).ravel()
    if s.size < 1000:
        s = np.asarray(array, np.float32).ravel()
    lo = float(s.min())
    if lo < -1000 and np.mean(s == lo) > 0.01:  # the padding outside the field of view
        s = s[s != lo]
    p_lo, p_hi = np.percentile(s, [0.5, 99.5])
    s = s[(s >= p_lo) & (s <= p_hi)]
    if s.size < 10 or p_hi - p_lo < 300:
        return float(np.median(s)), None  # nearly one value (a test phantom): no two classes
    threshold = _otsu(s)
    low, high = s[s <= threshold], s[s > threshold]
    air = float(np.median(low))
    if high.size < 0.02 * s.size:
        return air, None  # almost no body in the field: nothing to measure the gap on
    hist, edges = np.histogram(high, bins=200)
    k = int(np.argmax(hist))
    return air, float((edges[k] + edges[k + 1]) / 2) - air


def _scaling_fields(path: Path) -> tuple[str, str, str]:
    """(slope field, intercept field, their values in the header) for the message."""
    name = path.name.lower()
    if path.is_dir() or _is_dicom_file(path):
        files = [path] if path.is_file() else sorted(f for f in path.rglob("*") if f.is_file())
        values = ""
        for f in files[:50]:
            slope = _dicom_numbers_of(str(f), "0028|1053")
            inter = _dicom_numbers_of(str(f), "0028|1052")
            if slope is not None or inter is not None:
                values = f" (the header says RescaleSlope {slope and slope[0]}, " \
                         f"RescaleIntercept {inter and inter[0]})"
                break
        return "RescaleSlope (0028,1053)", "RescaleIntercept (0028,1052)", values
    if name.endswith((".nii", ".nii.gz")):
        values = ""
        try:
            opener = gzip.open if name.endswith(".gz") else open
            with opener(path, "rb") as fh:
                head = fh.read(348)
            for endian in ("<", ">"):
                if struct.unpack(endian + "i", head[:4])[0] == 348:
                    slope, inter = struct.unpack(endian + "2f", head[112:120])
                    values = f" (the header says scl_slope {slope:g}, scl_inter {inter:g})"
                    break
        except (OSError, EOFError, struct.error):
            pass
        return "scl_slope", "scl_inter", values
    return "intensity scale (slope)", "intensity offset (intercept)", ""


def _check_calibration(array: np.ndarray, checks: CTChecks, subject_id: str | None,
                       path: Path) -> None:
    """CTLoadError when air and soft tissue are not where Hounsfield units put them: a
    wrong rescale slope (the gap between them) or intercept (the air level)."""
    air, gap = hu_calibration(array)
    if gap is None:
        return
    slope_field, inter_field, said = _scaling_fields(path)
    lo_gap, hi_gap = checks.tissue_gap_hu
    if not lo_gap <= gap <= hi_gap:
        factor = gap / 1000.0
        raise CTLoadError(
            f"the values are scaled wrongly: air lies at {air:,.0f} and the body's main peak "
            f"{gap:,.0f} above it, about {factor:.2g} times the ~1,000 HU of a CT in Hounsfield "
            f"units{said}; the slope looks wrong by a factor of about {factor:.2g}",
            subject_id=subject_id, file=path, field=slope_field,
            fix=f"fix {slope_field} in the export (usually 1) or re-export the scan in "
            "Hounsfield units; for a non-CT phantom pass CTChecks(check_hu=False)")
    lo_air, hi_air = checks.air_level_hu
    if not lo_air <= air <= hi_air:
        raise CTLoadError(
            f"the values are offset: air lies at {air:,.0f} instead of about -1,000 HU and the "
            f"body's main peak at {air + gap:,.0f} instead of about 0{said}; the intercept "
            f"looks off by about {air + 980:+,.0f}",
            subject_id=subject_id, file=path, field=inter_field,
            fix=f"fix {inter_field} in the export (usually -1024 for stored values 0..4095, "
            "0 for values already in HU), or re-export the scan in Hounsfield units")


def _strip_image_suffix(name: str) -> str:
    low = name.lower()
    for suffix in IMAGE_SUFFIXES:
        if low.endswith(suffix):
            return name[: -len(suffix)]
    return name


def is_image_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` has a single-file image suffix load_ct reads."""
    return str(path).lower().endswith(IMAGE_SUFFIXES)

