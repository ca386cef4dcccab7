"""Manifest / dataset card validation, scan_folder, templates and the manifest CLI."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
import yaml

from drasclr_toolkit.cli.main import main as cli_main
from drasclr_toolkit.data import Manifest, ManifestError, scan_folder
from drasclr_toolkit.data.ct import preserve_locale
from drasclr_toolkit.data import ColumnRule, check_scans, load_card, probe_headers, validate_table
from drasclr_toolkit.data.card import STANDARD_COLUMNS

REPO = Path(__file__).resolve().parent.parent
TEMPLATES = REPO / "data_manifests"


def small_ct(path: Path, seed: int = 0) -> Path:
    a = np.full((18, 12, 12), -1000, np.int16)
    a[:, 2:10, 2:10] = 40 + seed
    a[3:15, 4:8, 3:6] = -850
    img = sitk.GetImageFromArray(a)
    img.SetSpacing((1.5, 1.5, 2.0))
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(img, str(path))
    return path


def write_csv(path: Path, rows: list[dict]) -> Path:
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


@pytest.fixture
def cohort(tmp_path) -> Path:
    small_ct(tmp_path / "images" / "a.nii.gz")
    small_ct(tmp_path / "images" / "b.nrrd", 1)
    small_ct(tmp_path / "masks" / "a_lungs.nii.gz")
    rows = [
        {"subject_id": "a", "image": "images/a.nii.gz", "lung_mask": "masks/a_lungs.nii.gz",
         "fev1_pp": 55.5, "gold": 2, "time": 3.5, "event": 1, "site": "north", "age": 61},
        {"subject_id": "b", "image": str(tmp_path / "images" / "b.nrrd"), "lung_mask": "",
         "fev1_pp": "", "gold": "", "time": 7.25, "event": 0, "site": "south", "age": 70},
    ]
    write_csv(tmp_path / "manifest.csv", rows)
    card = {"name": "t", "columns": {
        "site": {"dtype": "category", "allowed": ["north", "south"], "role": "covariate"},
        "age": {"dtype": "int", "min": 18, "max": 110, "unit": "years", "role": "covariate"},
        "fev1_pp": {"description": "FEV1 % predicted, post-BD"},
    }}
    (tmp_path / "dataset_card.yaml").write_text(yaml.safe_dump(card))
    return tmp_path / "manifest.csv"


def test_load_valid_manifest(cohort):
    m = Manifest.load(cohort)
    root = cohort.parent
    assert len(m) == 2 and m.subject_ids == ["a", "b"] and m.subject_ids() == ["a", "b"]
    assert m.path == cohort and m.card["name"] == "t"  # card found next to the CSV
    assert m.image_path("a") == root / "images" / "a.nii.gz"
    assert m.image_path("b") == root / "images" / "b.nrrd"
    assert m.lung_mask_path("a") == root / "masks" / "a_lungs.nii.gz"
    assert m.lung_mask_path("b") is None
    assert list(m.table.columns[:3]) == ["subject_id", "image", "lung_mask"]
    assert m.table["event"].dtype == np.int64 and m.table["age"].dtype == np.int64
    assert m.table["gold"].dtype == np.float64 and np.isnan(m.table["gold"][1])  # missing
    labels = m.labels()
    assert list(labels.index) == ["a", "b"]
    assert set(labels.columns) == {"fev1_pp", "gold", "time", "event", "site", "age"}
    assert labels.loc["a", "fev1_pp"] == 55.5 and np.isnan(labels.loc["b", "fev1_pp"])
    assert m.labels(["time", "event"]).loc["b"].tolist() == [7.25, 0]
    rows = list(m)
    assert rows[0]["subject_id"] == "a" and rows[1]["site"] == "south"
    assert m.column_rules()["fev1_pp"].max == 200  # card description merged with built-in
    with pytest.raises(KeyError, match="zzz"):
        m.image_path("zzz")
    with pytest.raises(KeyError, match="nope"):
        m.labels(["nope"])


def test_card_path_columns_are_resolved_and_saved_relative(tmp_path):
    small_ct(tmp_path / "img" / "a.nii.gz")
    small_ct(tmp_path / "img" / "a_exp.nii.gz")
    write_csv(tmp_path / "m.csv", [{"subject_id": "a", "image": "img/a.nii.gz",
                                    "expiratory": "img/a_exp.nii.gz", "fev1_pp": 80}])
    card = {"columns": {"expiratory": {"dtype": "path", "role": "other",
                                       "description": "expiratory CT"}}}
    m = Manifest.from_dataframe(pd.read_csv(tmp_path / "m.csv"), base_dir=tmp_path, card=card)
    assert m.table.loc[0, "expiratory"] == str(tmp_path / "img" / "a_exp.nii.gz")
    assert m.label_columns() == ["fev1_pp"]
    m.save(tmp_path / "saved.csv")
    saved = pd.read_csv(tmp_path / "saved.csv")
    assert saved.loc[0, "expiratory"] == "img/a_exp.nii.gz"


def test_save_round_trip_with_relative_paths(cohort, tmp_path):
    m = Manifest.load(cohort)
    out = tmp_path / "copy" / "manifest.csv"
    moved = Manifest(m.table, m.card).subset(["b", "a"])
    moved.save(cohort.parent / "again.csv")
    text = (cohort.parent / "again.csv").read_text()
    assert "images/a.nii.gz" in text and str(cohort.parent) not in text  # relative
    again = Manifest.load(cohort.parent / "again.csv")
    assert again.subject_ids == ["b", "a"]
    assert again.image_path("a") == m.image_path("a")
    pd.testing.assert_frame_equal(again.labels().loc[["a", "b"]], m.labels().loc[["a", "b"]])
    m.save(out)  # outside the cohort folder: absolute paths, card written beside it
    assert Manifest.load(out).image_path("b") == m.image_path("b")
    assert (out.parent / "dataset_card.yaml").is_file()
    assert not list(out.parent.glob(".*tmp"))  # atomic write left no temp file


def test_every_problem_reported_at_once(tmp_path):
    small_ct(tmp_path / "ok.nii.gz")
    rows = [
        {"subject_id": "s1", "image": "ok.nii.gz", "fev1_fvc": "72", "event": "1", "time": "0",
         "gold": "2.5", "site": "north"},
        {"subject_id": "s1", "image": "missing.nii.gz", "fev1_fvc": "0.6", "event": "yes",
         "time": "3", "gold": "1", "site": "west"},
        {"subject_id": "bad id!", "image": "ok.nii.gz", "fev1_fvc": "abc", "event": "0",
         "time": "-2", "gold": "7", "site": "north"},
        {"subject_id": "", "image": "", "fev1_fvc": "", "event": "", "time": "", "gold": "",
         "site": ""},
    ]
    csv = write_csv(tmp_path / "m.csv", rows)
    card = tmp_path / "card.yaml"
    card.write_text(yaml.safe_dump({"columns": {
        "site": {"dtype": "category", "allowed": ["north", "south"]},
        "fev1_pp": {"maximum": 150},  # typo in the card: reported too
    }}))
    with pytest.raises(ManifestError) as exc:
        Manifest.load(csv, card_path=card)
    err = exc.value
    msg = str(err)
    expected = [
        # (row, column, value, words)
        (1, "fev1_fvc", "72", "not a percentage"),
        (1, "time", "0", "> 0"),
        (1, "gold", "2.5", "whole number"),
        (2, "subject_id", "s1", "duplicate"),
        (2, "image", "missing.nii.gz", "file not found"),
        (2, "event", "yes", "not a number"),
        (2, "site", "west", "north"),
        (3, "subject_id", "bad id!", "unsafe"),
        (3, "fev1_fvc", "abc", "not a number"),
        (3, "time", "-2", "> 0"),
        (3, "gold", "7", "≤ 4"),
        (4, "subject_id", "", "required"),
        (4, "image", "", "required"),
    ]
    for row, column, value, words in expected:
        hits = [p for p in err.problems if p.row == row and p.column == column]
        assert len(hits) == 1, (row, column, msg)
        assert hits[0].value == value and words in str(hits[0]), str(hits[0])
        assert f"row {row} (CSV line {row + 1})" in str(hits[0])
        assert f"column {column!r}" in str(hits[0]) and f"value {value!r}" in str(hits[0])
    assert any("maximum" in str(p) and p.row is None for p in err.problems)
    assert len(err.problems) == len(expected) + 1
    assert msg.count("\n  - ") == len(err.problems)
    assert f"{len(err.problems)} problems" in msg and str(csv) in msg
    assert "What to do" in msg
    # rows with no problem (empty labels on row 4 apart from id/image) are not reported
    assert not [p for p in err.problems if p.row == 4 and p.column in ("time", "event")]


def test_spreadsheet_exports_are_read(tmp_path):
    csv = tmp_path / "m.csv"
    csv.write_text("subject_id;image;gold\nA1;a.nii.gz;3\n", encoding="utf-8-sig")
    m = Manifest.load(csv, check_files=False)
    assert m.subject_ids == ["A1"] and m.table["gold"].tolist() == [3]
    ragged = tmp_path / "r.csv"
    ragged.write_text("subject_id,image\na,x.nii,extra,more\nb,y.nii\n")
    with pytest.raises(ManifestError) as exc:
        Manifest.load(ragged, check_files=False)
    (problem,) = exc.value.problems
    assert problem.row == 1 and "4 fields but the header has 2" in str(problem)
    assert "CSV line 2" in str(problem) and "subject 'a'" in str(problem)


def test_missing_required_column_and_bad_files(tmp_path):
    csv = write_csv(tmp_path / "m.csv", [{"subject_id": "a", "scan": "x.nii"}])
    with pytest.raises(ManifestError, match="required column 'image' is missing"):
        Manifest.load(csv)
    with pytest.raises(ManifestError, match="does not exist"):
        Manifest.load(tmp_path / "none.csv")
    bad_card = tmp_path / "bad.yaml"
    bad_card.write_text("columns: [unclosed\n")
    with pytest.raises(ManifestError, match="not valid YAML"):
        Manifest.load(csv, card_path=bad_card)
    # a file of an unsupported format is caught before any stage tries to read it
    (tmp_path / "scan.png").write_bytes(b"\x89PNG....")
    csv3 = write_csv(tmp_path / "m3.csv", [{"subject_id": "a", "image": "scan.png"}])
    with pytest.raises(ManifestError, match="not a supported scan file"):
        Manifest.load(csv3)
    # paths are not checked when asked not to
    csv2 = write_csv(tmp_path / "m2.csv", [{"subject_id": "a", "image": "later.nii.gz"}])
    assert Manifest.load(csv2, check_files=False).image_path("a") == tmp_path / "later.nii.gz"


def test_from_dataframe_and_rules():
    df = pd.DataFrame({"subject_id": ["x1", "x2"], "image": ["/a", "/b"],
                       "event": [1.0, None], "extra": [1, 2]})
    m = Manifest.from_dataframe(df, check_files=False)
    assert m.table["event"].tolist()[0] == 1 and np.isnan(m.table["event"][1])
    assert m.table["extra"].tolist() == [1, 2]
    assert STANDARD_COLUMNS["time"].exclusive_min
    assert ColumnRule.from_dict({"dtype": "int", "allowed": [0, 1]}).allowed == (0, 1)
    with pytest.raises(ValueError, match="dtype"):
        ColumnRule.from_dict({"dtype": "decimal"})


# -------------------------------------------------------------------------- templates


@pytest.mark.parametrize("name", ["generic", "copdgene_style", "synthetic_demo"])
def test_templates_parse(name):
    folder = TEMPLATES / name
    m = Manifest.load(folder / "manifest.csv")  # card found beside it
    assert len(m) == 0 and {"subject_id", "image"} <= set(m.table.columns)
    header = pd.read_csv(folder / "manifest.csv").columns.tolist()
    card = load_card(folder / "dataset_card.yaml")
    assert card.get("name") and card.get("description")
    assert set(header) == set(card["columns"]), "card must describe every header column"
    for column, spec in card["columns"].items():
        rule = ColumnRule.from_dict(spec, base=STANDARD_COLUMNS.get(column))
        assert rule.description, f"{name}: {column} has no description"
        if column in STANDARD_COLUMNS and STANDARD_COLUMNS[column].dtype != "path":
            assert rule.dtype == STANDARD_COLUMNS[column].dtype
    for spec in card.get("ground_truth_columns", {}).values():
        ColumnRule.from_dict(spec)


def test_copdgene_template_has_the_clinical_columns():
    header = pd.read_csv(TEMPLATES / "copdgene_style" / "manifest.csv").columns
    for col in ("fev1_pp", "fev1_fvc", "gold", "pct_emphysema", "cle_score", "pse_score",
                "mmrc", "time", "event"):
        assert col in header


def test_synthetic_template_matches_the_generator(tmp_path):
    synthetic = pytest.importorskip("drasclr_toolkit.datasets.synthetic")
    out = tmp_path / "syn"
    synthetic.make_synthetic_cohort(1, out, seed=3, spacing=3.0, size_scale=0.4, n_jobs=1)
    template = TEMPLATES / "synthetic_demo"
    assert (pd.read_csv(out / "manifest.csv").columns.tolist()
            == pd.read_csv(template / "manifest.csv").columns.tolist())
    card = load_card(template / "dataset_card.yaml")
    m = Manifest.load(out / "manifest.csv", card_path=template / "dataset_card.yaml")
    assert m.subject_ids == ["syn000"]
    truth = validate_table(None, card["ground_truth_columns"], path=out / "ground_truth.csv")
    assert set(truth.columns) == set(card["ground_truth_columns"])


# ------------------------------------------------------------------------ scan_folder


@preserve_locale()
def _dicom_series(folder: Path, series: int, n: int = 18) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    img = sitk.GetImageFromArray(np.full((n, 8, 8), -1000, np.int16))
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    writer.SetImageIO("GDCMImageIO")  # files have no suffix to pick the writer from
    uid = f"1.2.3.{series}"
    for k in range(n):
        sl = img[:, :, k]
        for key, value in {"0020|000e": uid, "0008|0018": f"{uid}.{k}",
                           "0020|0032": f"0\\0\\{k * 2.0}", "0020|0013": str(k),
                           "0008|0060": "CT"}.items():
            sl.SetMetaData(key, value)
        writer.SetFileName(str(folder / f"IM{k:04d}"))  # no suffix, as many exports
        writer.Execute(sl)


def test_scan_folder_files_and_dicom(tmp_path):
    root = tmp_path / "scans"
    small_ct(root / "case1.nii.gz")
    small_ct(root / "case2.nrrd")
    small_ct(root / "siteA" / "case3.mha")
    small_ct(root / "siteA" / "case1.mhd")   # same stem as root/case1: made unique
    small_ct(root / "case1_lungmask.nii.gz")  # a mask: skipped
    (root / "notes.txt").write_text("not a scan")
    (root / "broken.nii.gz").write_bytes(b"garbage")  # listed: no pixel data is read
    _dicom_series(root / "patientX" / "study1" / "series1", 1)
    _dicom_series(root / "patientY" / "study1" / "series1", 2)
    m = scan_folder(root)
    ids = m.subject_ids
    assert len(ids) == len(set(ids)) == 7
    by_id = dict(zip(ids, m.table["image"]))
    assert by_id["case2"] == str(root / "case2.nrrd")
    assert by_id["case3"] == str(root / "siteA" / "case3.mha")
    assert by_id["broken"] == str(root / "broken.nii.gz")
    assert {by_id["case1"], by_id["siteA_case1"]} == {str(root / "case1.nii.gz"),
                                                       str(root / "siteA" / "case1.mhd")}
    dicom_ids = [i for i in ids if by_id[i].endswith("series1")]
    assert sorted(dicom_ids) == ["patientX_study1_series1", "patientY_study1_series1"]
    assert not any("lungmask" in i for i in ids)
    # header-only geometry: sizes as stored, DICOM slices counted, broken file reported
    probe = probe_headers(m).set_index("subject_id")
    assert probe.loc["case2", ["size_x", "size_y", "size_z"]].tolist() == [12, 12, 18]
    assert probe.loc["case2", "spacing_z"] == 2.0 and probe.loc["case2", "kind"] == "file"
    px = probe.loc["patientX_study1_series1"]
    assert px["kind"] == "dicom" and px["size_z"] == 18 and px["spacing_z"] == pytest.approx(2.0)
    assert "'broken'" in probe.loc["broken", "error"]
    assert probe["error"].notna().sum() == 1
    # round trip through a CSV and the loader
    m.save(root / "manifest.csv")
    again = Manifest.load(root / "manifest.csv")
    assert again.subject_ids == ids
    from drasclr_toolkit.data import load_ct
    ct = load_ct(again.image_path("patientX_study1_series1"))
    assert ct.shape == (18, 8, 8)


def test_scan_folder_pattern_and_errors(tmp_path):
    small_ct(tmp_path / "a_ct.nii.gz")
    small_ct(tmp_path / "b_ct.nii.gz")
    small_ct(tmp_path / "c_pet.nii.gz")
    assert scan_folder(tmp_path, pattern="*_ct.nii.gz").subject_ids == ["a_ct", "b_ct"]
    with pytest.raises(ManifestError, match="no scans found"):
        scan_folder(tmp_path, pattern="*.dcm")
    with pytest.raises(ManifestError, match="does not exist"):
        scan_folder(tmp_path / "nope")


# -------------------------------------------------------------------- scans and CLI


def test_check_scans_isolates_failures(tmp_path):
    small_ct(tmp_path / "good.nii.gz")
    img = sitk.GetImageFromArray(np.full((18, 8, 8), 500, np.int16))  # no air: not HU
    sitk.WriteImage(img, str(tmp_path / "bad.nrrd"))
    thick = sitk.ReadImage(str(tmp_path / "good.nii.gz"))
    thick.SetSpacing((1.0, 1.0, 7.0))
    sitk.WriteImage(thick, str(tmp_path / "thick.mha"))
    m = Manifest.from_dataframe(pd.DataFrame({"subject_id": ["g", "b", "t"],
                                              "image": ["good.nii.gz", "bad.nrrd", "thick.mha"]}),
                                base_dir=tmp_path)
    report = check_scans(m)
    assert report["status"].tolist() == ["ok", "error", "warning"]
    assert report.loc[2, "field"] == "slice thickness" and "7 mm" in report.loc[2, "message"]
    assert report.loc[1, "field"] == "intensity (Hounsfield units)"
    assert "'b'" in report.loc[1, "message"] and report.loc[0, "shape"] == (18, 12, 12)


def test_cli_validate_and_scan(cohort, tmp_path, capsys):
    assert cli_main(["manifest", "validate", str(cohort)]) == 0
    assert "2 subjects" in capsys.readouterr().out
    bad = write_csv(tmp_path / "bad.csv", [{"subject_id": "a", "image": "x.nii", "gold": 9}])
    assert cli_main(["manifest", "validate", str(bad)]) == 1
    err = capsys.readouterr().err
    assert "2 problems" in err and "'gold'" in err and "x.nii" in err
    assert cli_main(["manifest", "validate", str(cohort), "--check-scans"]) == 0
    out_csv = tmp_path / "scanned" / "manifest.csv"
    assert cli_main(["manifest", "scan", str(cohort.parent / "images"), "-o", str(out_csv)]) == 0
    assert Manifest.load(out_csv).subject_ids == ["a", "b"]
    assert cli_main(["manifest", "scan", str(tmp_path / "void"), "-o", str(out_csv)]) == 1
    capsys.readouterr()
    probe_csv = tmp_path / "probe.csv"
    assert cli_main(["manifest", "probe", str(out_csv), "-o", str(probe_csv)]) == 0
    assert "spacing_z" in capsys.readouterr().out
    assert pd.read_csv(probe_csv)["size_z"].tolist() == [18, 18]


def test_ids_that_read_like_missing_values_stay_ids(tmp_path):
    # Folders named like missing-value tokens ("NA", "null", ...) are real subjects.
    names = ["NA", "null", "missing", "None"]
    for name in names:
        small_ct(tmp_path / "scans" / name / "ct.nii.gz")
    m = scan_folder(tmp_path / "scans", pattern="*/ct.nii.gz")
    ids = m.subject_ids
    assert sorted(ids) == sorted(f"{n}_ct" for n in names)  # ids are qualified by folder
    rows = [{"subject_id": n, "image": f"scans/{n}/ct.nii.gz"} for n in names]
    csv = write_csv(tmp_path / "manifest.csv", rows)
    loaded = Manifest.load(csv)
    assert loaded.subject_ids == names
    assert loaded.image_path("NA") == tmp_path / "scans" / "NA" / "ct.nii.gz"
    m.save(tmp_path / "scanned.csv")
    assert Manifest.load(tmp_path / "scanned.csv").subject_ids == ids
    # a blank id is still missing, and reported
    write_csv(tmp_path / "blank.csv", [{"subject_id": "", "image": "scans/NA/ct.nii.gz"}])
    with pytest.raises(ManifestError, match="empty but required"):
        Manifest.load(tmp_path / "blank.csv")


def test_dicom_folder_named_like_a_missing_value_round_trips(tmp_path):
    _dicom_series(tmp_path / "NA", 1)
    m = scan_folder(tmp_path)
    assert m.subject_ids == ["NA"]
    m.save(tmp_path / "manifest.csv")  # writes the relative path "NA"
    again = Manifest.load(tmp_path / "manifest.csv")
    assert again.subject_ids == ["NA"] and again.image_path("NA") == tmp_path / "NA"


def test_cli_scan_of_a_relative_folder(cohort, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cli_main(["manifest", "scan", "images", "-o", "scanned.csv"]) == 0
    m = Manifest.load(tmp_path / "scanned.csv")
    assert m.subject_ids == ["a", "b"]
    assert m.image_path("a") == tmp_path / "images" / "a.nii.gz"
