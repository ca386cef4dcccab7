"""load_ct / CTImage: round trips, DICOM privacy, canonical orientation, clear errors."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from drasclr_toolkit.data import CTChecks, CTImage, CTLoadError, CTLoadWarning, load_ct
from drasclr_toolkit.data.ct import IDENTITY_DIRECTION, list_dicom_series, preserve_locale, reorient_to_lps

SPACING = (0.8, 0.7, 1.25)
ORIGIN = (-12.0, 30.5, -100.0)

# Identifying DICOM fields written into test files; none may come back out.
PHI = {
    "0010|0010": "Doe^Jane",          # PatientName
    "0010|0020": "PID-48213",         # PatientID
    "0010|0030": "19450317",          # PatientBirthDate
    "0008|0050": "ACC-777123",        # AccessionNumber
    "0008|0080": "Example General",   # InstitutionName
    "0008|0090": "Smith^Referrer",    # ReferringPhysicianName
}
PHI_STRINGS = ["Doe", "Jane", "PID-48213", "19450317", "ACC-777123", "Example General", "Smith"]


def chest_like(shape=(20, 24, 28), seed=0) -> np.ndarray:
    """Air around a soft-tissue body with two low-density 'lungs' and a bright marker."""
    rng = np.random.default_rng(seed)
    z, y, x = shape
    a = np.full(shape, -1000, np.int16)
    a[:, 3 : y - 3, 3 : x - 3] = 40
    a[2 : z - 2, 6 : y - 6, 5 : x // 2 - 1] = -850
    a[2 : z - 2, 6 : y - 6, x // 2 + 1 : x - 5] = -860
    a += rng.integers(-5, 6, size=shape).astype(np.int16)
    a[3, 4, 6] = 1500  # asymmetric marker: catches flips and axis swaps
    return a


def to_image(a: np.ndarray, spacing=SPACING, origin=ORIGIN, direction=IDENTITY_DIRECTION):
    img = sitk.GetImageFromArray(a)
    img.SetSpacing(spacing)
    img.SetOrigin(origin)
    img.SetDirection(direction)
    return img


@preserve_locale()
def write_dicom_series(img: sitk.Image, folder: Path, series_uid: str, modality="CT",
                       phi: dict | None = None, extra: dict | None = None,
                       skip: tuple[int, ...] = (), z_of=None) -> None:
    """Write a 3D image as one DICOM slice per file, with consistent series tags."""
    folder.mkdir(parents=True, exist_ok=True)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    d = img.GetDirection()
    orientation = "\\".join(str(v) for v in (d[0], d[3], d[6], d[1], d[4], d[7]))
    for k in range(img.GetDepth()):
        if k in skip:
            continue
        sl = img[:, :, k]
        pos = img.TransformIndexToPhysicalPoint((0, 0, k if z_of is None else z_of(k)))
        tags = {
            "0008|0060": modality,
            "0020|000d": "1.2.826.0.1.3680043.2.1125.1",
            "0020|000e": series_uid,
            "0008|0018": f"{series_uid}.{k + 1}",
            "0020|0013": str(k + 1),
            "0020|0032": "\\".join(f"{v:.6f}" for v in pos),
            "0020|0037": orientation,
            "0018|0050": str(img.GetSpacing()[2]),
            **(phi or {}),
            **(extra or {}),
        }
        for key, value in tags.items():
            sl.SetMetaData(key, value)
        writer.SetFileName(str(folder / f"slice{k:03d}.dcm"))
        writer.Execute(sl)


def write(tmp_path: Path, name: str, img: sitk.Image) -> Path:
    path = tmp_path / name
    sitk.WriteImage(img, str(path))
    return path


# ------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd", ".mha"])
def test_round_trip_files(tmp_path, suffix):
    a = chest_like()
    path = write(tmp_path, "case" + suffix, to_image(a))
    ct = load_ct(path, subject_id="case")
    assert ct.array.dtype == np.int16
    np.testing.assert_array_equal(ct.array, a)
    np.testing.assert_allclose(ct.spacing, SPACING, rtol=1e-6)
    np.testing.assert_allclose(ct.origin, ORIGIN, atol=1e-4)
    assert ct.direction == IDENTITY_DIRECTION
    assert ct.subject_id == "case" and ct.source == str(path)
    back = ct.to_sitk()
    assert back.GetSize() == (28, 24, 20)
    again = CTImage.from_sitk(back, source="x", subject_id="case")
    np.testing.assert_array_equal(again.array, a)


def test_float_image_is_rounded_to_int16(tmp_path):
    a = chest_like().astype(np.float32) + 0.4
    ct = load_ct(write(tmp_path, "f.nii.gz", to_image(a)))
    assert ct.array.dtype == np.int16
    np.testing.assert_array_equal(ct.array, np.rint(a).astype(np.int16))


def test_dicom_series_round_trip_keeps_no_identifiers(tmp_path, caplog):
    a = chest_like()
    folder = tmp_path / "exam" / "series1"
    write_dicom_series(to_image(a), folder, "1.2.826.0.1.3680043.2.1125.2", phi=PHI)
    # The identifiers really are in the files, so the assertions below can fail.
    probe = sitk.ImageFileReader()
    probe.SetFileName(str(folder / "slice000.dcm"))
    probe.ReadImageInformation()
    assert "Doe" in probe.GetMetaData("0010|0010")

    caplog.set_level(logging.DEBUG)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ct = load_ct(tmp_path / "exam", subject_id="s01")  # found recursively
    np.testing.assert_array_equal(ct.array, a)
    np.testing.assert_allclose(ct.spacing, SPACING, rtol=1e-5)
    np.testing.assert_allclose(ct.origin, ORIGIN, atol=1e-3)
    assert ct.direction == IDENTITY_DIRECTION

    everything = " ".join(
        [repr(ct), str(vars(ct)), caplog.text] + [str(w.message) for w in caught]
    )
    for key in vars(ct):
        assert key in {"array", "spacing", "origin", "direction", "source", "subject_id"}
    for secret in PHI_STRINGS:
        assert secret not in everything
        assert secret.encode() not in ct.array.tobytes()
    assert not hasattr(ct, "metadata")
    assert ct.to_sitk().GetMetaDataKeys() == ()


def test_dicom_rescale_intercept_gives_hu(tmp_path):
    pydicom = pytest.importorskip("pydicom")
    a = chest_like()
    # ITK stores (HU - intercept) / slope and the reader applies the rescale back.
    write_dicom_series(to_image(a), tmp_path / "r", "1.2.3.77",
                       extra={"0028|1052": "-1024", "0028|1053": "1"})
    stored = pydicom.dcmread(tmp_path / "r" / "slice005.dcm").pixel_array
    assert stored.min() >= 0  # really raw values in the file
    np.testing.assert_array_equal(stored.astype(np.int32) - 1024, a[5])
    ct = load_ct(tmp_path / "r")
    np.testing.assert_array_equal(ct.array, a)


def test_dicom_missing_and_duplicate_slices(tmp_path):
    a = chest_like()
    write_dicom_series(to_image(a), tmp_path / "gap", "1.2.3.50", skip=(9, 10))
    with pytest.raises(CTLoadError) as exc:
        load_ct(tmp_path / "gap", subject_id="s9")
    _assert_names(exc.value, tmp_path / "gap", "slice positions (0020,0032)")
    assert "2 slice(s) missing" in str(exc.value)
    write_dicom_series(to_image(a), tmp_path / "dup", "1.2.3.51",
                       z_of=lambda k: 3 if k == 4 else k)
    with pytest.raises(CTLoadError, match="share a position"):
        load_ct(tmp_path / "dup", subject_id="s9")


def test_single_dicom_file_loads_its_series(tmp_path):
    a = chest_like()
    write_dicom_series(to_image(a), tmp_path / "s", "1.2.3.4.5")
    ct = load_ct(tmp_path / "s" / "slice007.dcm")
    np.testing.assert_array_equal(ct.array, a)


def test_folder_with_two_series_picks_largest_and_warns(tmp_path):
    big, small = chest_like((20, 24, 28)), chest_like((6, 24, 28), seed=1)
    write_dicom_series(to_image(big), tmp_path / "a", "1.2.3.100")
    write_dicom_series(to_image(small), tmp_path / "b", "1.2.3.200")
    with pytest.warns(CTLoadWarning, match="2 DICOM series") as rec:
        ct = load_ct(tmp_path, subject_id="two")
    assert "'series'" in str(rec[0].message) and str(tmp_path) in str(rec[0].message)
    assert ct.shape == big.shape
    series = list_dicom_series(tmp_path)
    assert [s.n_files for s in series] == [20, 6]
    other = load_ct(tmp_path, series_id=series[1].series_id, checks=CTChecks(min_slices=4))
    np.testing.assert_array_equal(other.array, small)
    by_index = load_ct(tmp_path, series_id=1, checks=CTChecks(min_slices=4))
    assert by_index.shape == small.shape
    with pytest.raises(CTLoadError, match="series_id"):
        load_ct(tmp_path, series_id="9.9.9")


# ------------------------------------------------------------------------ orientation


def _marker_point(ct: CTImage) -> np.ndarray:
    z, y, x = np.argwhere(ct.array == ct.array.max())[0]
    return np.array(ct.to_sitk().TransformIndexToPhysicalPoint((int(x), int(y), int(z))))


@pytest.mark.parametrize(
    "direction",
    [
        (-1, 0, 0, 0, -1, 0, 0, 0, 1),   # RAS-like flip (typical NIfTI from scanners)
        (1, 0, 0, 0, 1, 0, 0, 0, -1),    # slices stored head to feet
        (0, 1, 0, 1, 0, 0, 0, 0, -1),    # x and y swapped
        (1, 0, 0, 0, 0, 1, 0, -1, 0),    # coronal acquisition
    ],
)
def test_orientation_is_canonical_and_anatomy_stays(tmp_path, direction):
    a = chest_like()
    img = to_image(a, direction=tuple(float(v) for v in direction))
    idx = np.argwhere(a == a.max())[0]
    expected = np.array(img.TransformIndexToPhysicalPoint(tuple(int(v) for v in idx[::-1])))
    ct = load_ct(write(tmp_path, "flip.nii.gz", img), checks=CTChecks(min_slices=16))
    assert ct.direction == IDENTITY_DIRECTION
    np.testing.assert_allclose(_marker_point(ct), expected, atol=1e-3)
    assert sorted(ct.array.shape) == sorted(a.shape)
    assert np.bincount((ct.array.ravel() + 2000)).tolist() == np.bincount(
        (a.ravel() + 2000)).tolist()  # same voxels, only rearranged


def test_oblique_scan_is_resampled_with_warning(tmp_path):
    a = chest_like((24, 24, 28))
    a[a == 1500] = 40
    a[10:13, 10:13, 12:15] = 1500  # a small block survives linear interpolation
    t = np.deg2rad(12)
    rot = (np.cos(t), -np.sin(t), 0, np.sin(t), np.cos(t), 0, 0, 0, 1)
    img = to_image(a, spacing=(1.0, 1.0, 1.0), direction=rot)
    centre = np.array(img.TransformContinuousIndexToPhysicalPoint((13.0, 11.0, 11.0)))
    with pytest.warns(CTLoadWarning, match="oblique") as rec:
        ct = load_ct(write(tmp_path, "obl.mha", img))
    assert "'direction'" in str(rec[0].message)
    warning = rec[0].message  # the field travels as an attribute, not only in the text
    assert (warning.field, warning.file) == ("direction", str(tmp_path / "obl.mha"))
    assert ct.direction == IDENTITY_DIRECTION
    zyx = np.argwhere(ct.array > 1000).mean(axis=0)
    found = np.array(ct.to_sitk().TransformContinuousIndexToPhysicalPoint(
        tuple(float(v) for v in zyx[::-1])))
    assert np.linalg.norm(found - centre) < 1.0


def test_reorient_helper_is_exact_for_flips():
    img = to_image(chest_like(), direction=(-1.0, 0, 0, 0, -1.0, 0, 0, 0, 1.0))
    out, resampled = reorient_to_lps(img)
    assert not resampled and out.GetDirection() == IDENTITY_DIRECTION
    np.testing.assert_array_equal(sitk.GetArrayFromImage(out)[:, ::-1, ::-1],
                                  sitk.GetArrayFromImage(img))


# ------------------------------------------------------------------------------ errors


def _assert_names(err: CTLoadError, path: Path, field: str, subject: str | None = "s9"):
    msg = str(err)
    assert str(path) in msg, msg
    assert repr(field) in msg, msg
    assert "What to do" in msg, msg
    assert err.field == field and err.file == str(path)
    if subject is not None:
        assert err.subject_id == subject and repr(subject) in msg
    assert isinstance(err, ValueError)


def test_missing_file(tmp_path):
    path = tmp_path / "nope.nii.gz"
    with pytest.raises(CTLoadError) as exc:
        load_ct(path, subject_id="s9")
    _assert_names(exc.value, path, "file")
    assert "does not exist" in str(exc.value)


def test_unreadable_file(tmp_path):
    path = tmp_path / "broken.nii.gz"
    path.write_bytes(b"this is not an image" * 10)
    with pytest.raises(CTLoadError) as exc:
        load_ct(path, subject_id="s9")
    _assert_names(exc.value, path, "file")


def test_folder_without_dicom(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(CTLoadError) as exc:
        load_ct(tmp_path, subject_id="s9")
    _assert_names(exc.value, tmp_path, "file")


def test_raw_values_without_rescale(tmp_path):
    raw = chest_like().astype(np.int32) + 1024  # stored values: air ~24, tissue ~1064
    path = write(tmp_path, "raw.nrrd", to_image(raw.astype(np.uint16)))
    with pytest.raises(CTLoadError) as exc:
        load_ct(path, subject_id="s9")
    _assert_names(exc.value, path, "intensity (Hounsfield units)")
    assert "rescale" in str(exc.value).lower() and "RescaleIntercept" in str(exc.value)


def test_mr_like_image(tmp_path):
    rng = np.random.default_rng(3)
    mr = rng.normal(300, 60, size=(20, 24, 28)).clip(0, 700).astype(np.int16)
    mr[:, :3, :] = 0  # dark background, but nothing near CT soft tissue or air in HU
    path = write(tmp_path, "t1.nii.gz", to_image(mr))
    with pytest.raises(CTLoadError) as exc:
        load_ct(path, subject_id="s9")
    _assert_names(exc.value, path, "intensity (Hounsfield units)")
    assert "does not look like CT" in str(exc.value)


def test_normalised_image_without_air(tmp_path):
    norm = (chest_like().astype(np.float32) / 1000.0)  # -1..1.5 instead of HU
    path = write(tmp_path, "norm.nii.gz", to_image(norm))
    with pytest.raises(CTLoadError) as exc:
        load_ct(path, subject_id="s9")
    _assert_names(exc.value, path, "intensity (Hounsfield units)")
    # a phantom that is knowingly not a chest CT loads with the HU check off
    ct = load_ct(path, checks=CTChecks(check_hu=False))
    assert ct.array.dtype == np.int16


def test_dicom_mr_modality(tmp_path):
    write_dicom_series(to_image(chest_like()), tmp_path / "mr", "1.2.3.9", modality="MR")
    with pytest.raises(CTLoadError) as exc:
        load_ct(tmp_path / "mr", subject_id="s9")
    _assert_names(exc.value, tmp_path / "mr", "Modality (0008,0060)")


def test_too_few_slices(tmp_path):
    path = write(tmp_path, "thin.mha", to_image(chest_like((8, 24, 28))))
    with pytest.raises(CTLoadError) as exc:
        load_ct(path, subject_id="s9")
    _assert_names(exc.value, path, "number of slices")
    assert "8 slice" in str(exc.value)
    assert load_ct(path, checks=CTChecks(min_slices=8)).shape == (8, 24, 28)


def test_thick_slices_warn(tmp_path):
    path = write(tmp_path, "thick.nrrd", to_image(chest_like(), spacing=(0.7, 0.7, 6.0)))
    with pytest.warns(CTLoadWarning) as rec:
        ct = load_ct(path, subject_id="s9")
    msg = str(rec[0].message)
    assert "'slice thickness'" in msg and str(path) in msg and "6 mm" in msg
    assert ct.spacing[2] == 6.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # exactly 5 mm is accepted silently
        load_ct(write(tmp_path, "five.nrrd", to_image(chest_like(), spacing=(0.7, 0.7, 5.0))))


def test_nan_values(tmp_path):
    a = chest_like().astype(np.float32)
    a[4, 5, 6] = np.nan
    path = write(tmp_path, "nan.nrrd", to_image(a))  # (ITK's NIfTI writer drops NaN)
    with pytest.raises(CTLoadError) as exc:
        load_ct(path, subject_id="s9")
    _assert_names(exc.value, path, "pixel values")
    assert "NaN" in str(exc.value)


def test_4d_file_with_one_volume_loads(tmp_path):
    a = chest_like()
    img = sitk.JoinSeries([to_image(a)])  # 4D, one time point
    assert img.GetDimension() == 4
    ct = load_ct(write(tmp_path, "one.nii.gz", img))
    np.testing.assert_array_equal(ct.array, a)
    two = sitk.JoinSeries([to_image(a), to_image(a)])
    path = write(tmp_path, "two.nii.gz", two)
    with pytest.raises(CTLoadError) as exc:
        load_ct(path, subject_id="s9")
    _assert_names(exc.value, path, "dimensions")


def test_mhd_without_raw_is_unreadable(tmp_path):
    path = write(tmp_path, "case.mhd", to_image(chest_like()))
    for raw in tmp_path.glob("case.*raw*"):
        raw.unlink()
    with pytest.raises(CTLoadError) as exc:
        load_ct(path, subject_id="s9")
    _assert_names(exc.value, path, "file")


def test_2d_image(tmp_path):
    img = sitk.GetImageFromArray(chest_like()[5])
    path = write(tmp_path, "slice.nrrd", img)
    with pytest.raises(CTLoadError) as exc:
        load_ct(path, subject_id="s9")
    _assert_names(exc.value, path, "dimensions")
    assert "2D" in str(exc.value)


def test_rgb_image(tmp_path):
    img = sitk.GetImageFromArray(np.zeros((20, 8, 8, 3), np.uint8), isVector=True)
    path = write(tmp_path, "rgb.mha", img)
    with pytest.raises(CTLoadError) as exc:
        load_ct(path, subject_id="s9")
    _assert_names(exc.value, path, "pixel type")


def test_ctimage_contract():
    a = chest_like()
    ct = CTImage(a, SPACING, ORIGIN, IDENTITY_DIRECTION, subject_id="x")
    assert ct.shape == a.shape and ct.size == a.shape[::-1]
    assert "array(" not in repr(ct) and "x" in repr(ct)
    with pytest.raises(ValueError, match="3D"):
        CTImage(a[0], SPACING, ORIGIN, IDENTITY_DIRECTION)
    with pytest.raises(ValueError, match="unknown key"):
        CTChecks.from_dict({"min_slice": 3})


def test_dicom_work_leaves_the_process_locale_alone(tmp_path):
    import locale

    before = (locale.setlocale(locale.LC_ALL), locale.getpreferredencoding(False))
    write_dicom_series(to_image(chest_like()), tmp_path / "s", "1.2.3.99", phi=PHI)
    load_ct(tmp_path / "s")
    assert (locale.setlocale(locale.LC_ALL), locale.getpreferredencoding(False)) == before


# ----------------------------------------------------------- damaged files (issue 8, item 1)


def _cut(src: Path, dst: Path, fraction: float) -> Path:
    data = src.read_bytes()
    dst.write_bytes(data[: int(len(data) * fraction)])
    return dst


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii"])
@pytest.mark.parametrize("fraction", [0.5, 0.9])
def test_truncated_nifti_is_refused_naming_the_file_size(tmp_path, suffix, fraction):
    # Before: SimpleITK read the cut file, the missing voxels became 0 HU, and the scan
    # preprocessed as 'ok' (or failed later with an error blaming the anatomy).
    whole = tmp_path / f"whole{suffix}"
    sitk.WriteImage(to_image(chest_like((40, 32, 36))), str(whole))
    load_ct(whole, subject_id="s9")  # the whole file is fine
    cut = _cut(whole, tmp_path / f"cut{suffix}", fraction)
    with pytest.raises(CTLoadError) as exc:
        load_ct(cut, subject_id="s9")
    _assert_names(exc.value, cut, "file size")
    assert "truncated" in str(exc.value) and "What to do" in str(exc.value)


def test_flipped_bit_in_nifti_gz_is_caught_by_the_gzip_checksum(tmp_path):
    whole = tmp_path / "whole.nii.gz"
    sitk.WriteImage(to_image(chest_like((40, 32, 36))), str(whole))
    data = bytearray(whole.read_bytes())
    data[len(data) // 2] ^= 0x08
    damaged = tmp_path / "flip.nii.gz"
    damaged.write_bytes(bytes(data))
    with pytest.raises(CTLoadError) as exc:
        load_ct(damaged, subject_id="s9")
    _assert_names(exc.value, damaged, "file")


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".nrrd", ".mha"])
def test_nan_voxels_are_refused_in_every_format(tmp_path, suffix):
    # Before: SimpleITK's NIfTI reader turned NaN into 0, so 12 % missing voxels loaded.
    a = chest_like((20, 24, 28)).astype(np.float32)
    a[np.random.default_rng(1).random(a.shape) < 0.12] = np.nan
    path = tmp_path / f"nan{suffix}"
    sitk.WriteImage(to_image(a), str(path))
    with pytest.raises(CTLoadError) as exc:
        load_ct(path, subject_id="s9")
    _assert_names(exc.value, path, "pixel values")
    assert "NaN" in str(exc.value) and "large part" in str(exc.value)


def test_a_single_nan_voxel_in_nifti_is_refused(tmp_path):
    a = chest_like((20, 24, 28)).astype(np.float64)
    a[4, 5, 6] = np.nan
    path = tmp_path / "one_nan.nii.gz"
    sitk.WriteImage(to_image(a), str(path))
    with pytest.raises(CTLoadError, match="1 of"):
        load_ct(path, subject_id="s9")


@pytest.mark.parametrize("kind", ["big-endian NIfTI-1", "NIfTI-2"])
def test_nifti_checks_read_big_endian_and_nifti2_headers(tmp_path, kind):
    # The header is read by nibabel: byte order and the NIfTI-2 layout are its business.
    import nibabel as nib

    from drasclr_toolkit.data.image_files import check_nifti_file

    a = np.full((8, 9, 10), -1000, np.float32)
    a[1, 2, 3] = np.nan
    image = (nib.Nifti1Image(a, np.eye(4), header=nib.Nifti1Header(endianness=">"))
             if kind.startswith("big") else nib.Nifti2Image(a, np.eye(4)))
    path = tmp_path / "a.nii"
    nib.save(image, path)
    with pytest.raises(CTLoadError, match="1 of 720 voxel") as exc:
        check_nifti_file(path, "s9")
    _assert_names(exc.value, path, "pixel values")
    cut = _cut(path, tmp_path / "cut.nii", 0.6)
    with pytest.raises(CTLoadError) as exc:
        check_nifti_file(cut, "s9")
    _assert_names(exc.value, cut, "file size")


@pytest.mark.parametrize("suffix", [".nrrd", ".mha"])
def test_truncated_compressed_nrrd_and_mha_name_the_file_size(tmp_path, suffix):
    whole = tmp_path / f"whole{suffix}"
    sitk.WriteImage(to_image(chest_like((40, 32, 36))), str(whole), useCompression=True)
    cut = _cut(whole, tmp_path / f"cut{suffix}", 0.5)
    with pytest.raises(CTLoadError) as exc:
        load_ct(cut, subject_id="s9")
    _assert_names(exc.value, cut, "file size")
