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

The work is split by concern: :mod:`.ct_image` (the volume, its checks' thresholds and
errors), :mod:`.image_files` (scan file names, whole-file and memory checks),
:mod:`.dicom` (series selection and slice checks), :mod:`.orientation` (to LPS) and
:mod:`.hounsfield` (HU range and calibration). This module reads and puts them together.
"""

from __future__ import annotations

import math
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from drasclr_toolkit.data.ct_image import (IDENTITY_DIRECTION, CTChecks, CTImage, CTLoadError,
                                           CTLoadWarning, first_line, to_int16, image_array)
from drasclr_toolkit.data.dicom import (NOT_CT_MODALITIES, DicomSeriesInfo, dicom_numbers_of,
                                        is_dicom_file, read_dicom_series, list_dicom_series,
                                        preserve_locale)
from drasclr_toolkit.data.hounsfield import check_hounsfield_units
from drasclr_toolkit.data.image_files import (TRUNCATED_FIX, short_read, check_declared_size,
                                              check_metaimage_file, check_nifti_file,
                                              require_regular_file)
from drasclr_toolkit.data.orientation import reorient_to_lps

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
    "preserve_locale",
    "read_ct_header",
    "reorient_to_lps",
]


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
        return read_dicom_series(path, series_id, subject_id, None)
    require_regular_file(path, subject_id)
    if is_dicom_file(path):
        return read_dicom_series(path.parent, series_id, subject_id, path)
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
        short = short_read(str(exc))
        if short is not None:
            expected, got = short
            raise CTLoadError(
                f"the file is truncated: the header needs {expected:,} bytes of image data but "
                f"only {got:,} ({got / max(expected, 1):.0%}) could be read",
                subject_id=subject_id,
                file=path,
                field="file size",
                fix=TRUNCATED_FIX,
            ) from None
        raise CTLoadError(
            f"SimpleITK could not read it ({first_line(exc)})",
            subject_id=subject_id,
            file=path,
            field="file",
            fix="check that it is a complete NIfTI (.nii/.nii.gz), NRRD, MHA/MHD (with its .raw) "
            "file or a DICOM folder; re-export or re-download it if it is truncated",
        ) from None
    return image, None


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

    if modality is not None and modality in NOT_CT_MODALITIES:
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
        check_hounsfield_units(array, checks, subject_id, p)
    return CTImage(
        array=to_int16(array, subject_id=subject_id, file=p),
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
        if p.is_dir() or is_dicom_file(p):
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
                pos = [dicom_numbers_of(f, "0020|0032") for f in files[:2]]
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
        raise CTLoadError(f"SimpleITK could not read the header ({first_line(exc)})",
                          subject_id=subject_id, file=p, field="file",
                          fix="check that the file is complete and in a supported format") from None
    size = reader.GetSize()
    return {"kind": "file", "size": tuple(int(v) for v in size),
            "spacing": tuple(float(v) for v in reader.GetSpacing()),
            "pixel_type": sitk.GetPixelIDValueAsString(reader.GetPixelID()),
            "n_series": None, "modality": None}
