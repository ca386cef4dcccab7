"""Hounsfield units: is the volume CT in HU, and are its rescale slope and intercept right?

Air and soft tissue sit at known HU (about -1000 and 0 to 100): a volume without air is raw
stored values or not CT; a wrong slope stretches the gap between air and tissue, a wrong
intercept moves the air level. The messages name the header field to fix (DICOM
RescaleSlope / RescaleIntercept, NIfTI scl_slope / scl_inter) with its value.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from drasclr_toolkit.data.ct_image import CTChecks, CTLoadError
from drasclr_toolkit.data.dicom import dicom_numbers_of, is_dicom_file
from drasclr_toolkit.data.image_files import nifti_header

__all__ = ["check_hounsfield_units", "hu_calibration"]

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
    if path.is_dir() or is_dicom_file(path):
        files = [path] if path.is_file() else sorted(f for f in path.rglob("*") if f.is_file())
        values = ""
        for f in files[:50]:
            slope = dicom_numbers_of(str(f), "0028|1053")
            inter = dicom_numbers_of(str(f), "0028|1052")
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
                header = nifti_header(fh.read(540))
        except (OSError, EOFError):
            header = None
        if header is not None:  # the fields as stored (nib.load would hand them on as NaN)
            slope, inter = float(header["scl_slope"]), float(header["scl_inter"])
            values = f" (the header says scl_slope {slope:g}, scl_inter {inter:g})"
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



def check_hounsfield_units(array: np.ndarray, checks: CTChecks, subject_id: str | None,
                           path: Path) -> None:
    """CTLoadError when ``array`` is not CT in Hounsfield units or is calibrated wrongly.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> ct = np.concatenate([rng.normal(-990, 20, 4000), rng.normal(40, 15, 4000)])
        >>> check_hounsfield_units(ct.reshape(20, 20, 20), CTChecks(), "s1", Path("s1.nrrd"))
        >>> check_hounsfield_units(ct.reshape(20, 20, 20) * 10, CTChecks(), "s1", Path("s1.nrrd"))
        Traceback (most recent call last):
        ...
        drasclr_toolkit.data.ct_image.CTLoadError: subject 's1', file s1.nrrd, field 'intensity scale (slope)': the values are scaled wrongly: ...
    """
    # Values that went through a rescale (some below 0): a wrong slope or intercept is
    # named as such (RescaleSlope 10 puts air at -784, which the plain range checks would
    # only call "no air"). Values from 0 up are raw or not CT: the range checks say which.
    rescaled = float(array.min()) < 0
    if rescaled:
        _check_calibration(array, checks, subject_id, path)
    _check_hounsfield(array, checks, subject_id, path)
    if not rescaled:
        _check_calibration(array, checks, subject_id, path)
