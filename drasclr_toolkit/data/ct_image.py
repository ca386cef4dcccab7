"""The CT volume (:class:`CTImage`), the thresholds of its checks (:class:`CTChecks`) and
the problems a scan can have (:class:`CTLoadError`, :class:`CTLoadWarning`).

Privacy: a CTImage keeps only geometry (size, spacing, origin, direction) and pixel values,
never a header field.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import SimpleITK as sitk
from pydantic import ConfigDict, Field

from drasclr_toolkit.config import Config
from drasclr_toolkit.errors import DrasclrError, InputError, error_message, where_text

__all__ = ["CTChecks", "CTImage", "CTLoadError", "CTLoadWarning", "IDENTITY_DIRECTION",
           "image_array"]

IDENTITY_DIRECTION: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)


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
            arr = to_int16(arr, subject_id=self.subject_id, file=self.source)
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
            array=to_int16(sitk.GetArrayFromImage(image), subject_id=subject_id, file=source),
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


def to_int16(arr: np.ndarray, *, subject_id: str | None, file: Any) -> np.ndarray:
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


def first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    # ITK messages start with the source location; the useful part is near the end.
    useful = [t.strip() for t in text if t.strip()]
    return useful[-1] if useful else type(exc).__name__
