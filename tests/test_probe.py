"""The probe on a folder mixing good scans with broken ones: every scan reported, the report
always written, a second run reuses the finished work."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
from call_counts import CallCounter

from drasclr_toolkit.data.ct import preserve_locale
from drasclr_toolkit.probe import assess_scans, probe_dataset
from drasclr_toolkit.probe.demo import truncate_file

# The tiny phantoms hold about 1 L of lung: below the adult floor (2 L) on purpose.
TINY_THRESHOLDS = None  # the tiny config's preprocess.qc limits (child-sized phantoms)


@preserve_locale()  # GDCM's writer can leave the process in the "C" locale
def write_dicom_series(image: sitk.Image, folder: Path, series_uid: str = "1.2.3.4.5") -> None:
    """One DICOM file per slice with consistent series tags (Modality CT)."""
    folder.mkdir(parents=True, exist_ok=True)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    d = image.GetDirection()
    orientation = "\\".join(str(v) for v in (d[0], d[3], d[6], d[1], d[4], d[7]))
    for k in range(image.GetDepth()):
        one = image[:, :, k]
        position = image.TransformIndexToPhysicalPoint((0, 0, k))
        for key, value in {"0008|0060": "CT", "0020|000d": "1.2.3.4", "0020|000e": series_uid,
                           "0008|0018": f"{series_uid}.{k + 1}", "0020|0013": str(k + 1),
                           "0020|0032": "\\".join(f"{v:.6f}" for v in position),
                           "0020|0037": orientation,
                           "0018|0050": str(image.GetSpacing()[2])}.items():
            one.SetMetaData(key, value)
        writer.SetFileName(str(folder / f"slice{k:03d}.dcm"))
        writer.Execute(one)


def mr_like(reference: sitk.Image) -> sitk.Image:
    """Values 0..1000 (background 0, tissue 300-800), no air at -1000: not CT."""
    body = sitk.GetArrayFromImage(reference) > -500
    rng = np.random.default_rng(0)
    values = np.where(body, rng.uniform(300, 800, body.shape), 0).astype(np.int16)
    values.flat[0] = 1000
    image = sitk.GetImageFromArray(values)
    image.CopyInformation(reference)
    return image


@pytest.fixture(scope="module")
def mixed_folder(tmp_path_factory):
    from drasclr_toolkit.datasets.synthetic import make_synthetic_cohort

    root = tmp_path_factory.mktemp("probe")
    cohort = make_synthetic_cohort(3, root / "cohort", seed=5, spacing=3.0, size_scale=0.6,
                                   n_jobs=1)
    scans = root / "scans"
    scans.mkdir()
    syn = {sid: sitk.ReadImage(str(cohort.image_path(sid))) for sid in cohort.subject_ids}
    for sid in ("syn000", "syn001"):
        shutil.copyfile(cohort.image_path(sid), scans / f"{sid}.nii.gz")
    write_dicom_series(sitk.Cast(syn["syn002"], sitk.sitkInt16), scans / "dicom_series")
    (scans / "corrupt.nii.gz").write_bytes(os.urandom(5000))
    truncate_file(cohort.image_path("syn000"), scans / "truncated.nii.gz")
    sitk.WriteImage(mr_like(syn["syn001"]), str(scans / "mr_like.nii.gz"))
    raw = sitk.Cast(syn["syn001"], sitk.sitkInt16) + 1024   # stored values, rescale not applied
    sitk.WriteImage(raw, str(scans / "raw_no_rescale.nrrd"))
    real = []
    try:
        from drasclr_toolkit.datasets.sample_data import SampleDataUnavailable, real_chest_ct

        for name in ("lung1", "lung2"):
            shutil.copyfile(real_chest_ct(name), scans / f"{name}.nrrd")
            real.append(name)
    except SampleDataUnavailable:
        pass  # offline: the real scans are left out, the rest of the test runs
    labels = cohort.table[["subject_id", "fev1_pp", "time", "event"]].copy()
    labels["subject_id"] = labels["subject_id"].replace({"syn002": "dicom_series"})
    labels.to_csv(root / "labels.csv", index=False)
    return {"root": root, "scans": scans, "labels": root / "labels.csv", "real": real}


@pytest.fixture(scope="module")
def probe_run(mixed_folder):
    """The probe's result and its scan reads (load_ct per subject, segment_lungs calls)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with pytest.MonkeyPatch.context() as patch:
            calls = CallCounter(patch)
            result = probe_dataset(mixed_folder["scans"], mixed_folder["root"] / "out",
                                   labels=mixed_folder["labels"], config="tiny",
                                   thresholds=TINY_THRESHOLDS, n_permutations=2)
    finally:
        torch.set_num_threads(before)
    return result, calls


@pytest.fixture(scope="module")
def probed(probe_run):
    return probe_run[0]


def test_each_scan_is_read_and_segmented_once(probe_run):
    """Checks, atlas, patches, QC and the report's overlays all from one read of each scan
    (a broken one too) and one segmentation of each scan that loads."""
    result, calls = probe_run
    assert calls.loads == {sid: 1 for sid in result.qc["subject_id"]}
    loaded = (result.scan_checks["status"] != "error").sum()
    assert loaded >= 3 and calls.segmentations == loaded
    record = result.store.subject_record("syn000")
    assert record["densitometry"]["volume_ml"] > 0 and record["scan"]["status"] == "ok"
    assert not list((result.out_dir / "preprocess" / "scan_products").glob("*.mha"))


def test_every_scan_gets_the_right_status_and_reason(probed, mixed_folder):
    qc = probed.qc.set_index("subject_id")
    expected_failed = {"corrupt": "unreadable", "truncated": "unreadable",
                       "mr_like": "not_ct", "raw_no_rescale": "wrong_hu"}
    for sid, flag in expected_failed.items():
        assert qc.at[sid, "status"] == "failed", (sid, qc.loc[sid].to_dict())
        assert qc.at[sid, "flags"] == flag, (sid, qc.loc[sid].to_dict())
    assert "truncated" in qc.at["truncated", "reasons"]
    assert "does not look like CT" in qc.at["mr_like", "reasons"]
    for sid in ["syn000", "syn001", "dicom_series"] + [f"{n}" for n in mixed_folder["real"]]:
        assert qc.at[sid, "status"] in ("ok", "flagged"), (sid, qc.loc[sid].to_dict())
        assert qc.at[sid, "status"] == "ok" or qc.at[sid, "reasons"], sid
    assert (qc["status"] == "ok").sum() >= 2
    assert probed.embeddings is not None
    assert "dicom_series" in probed.embeddings.subject_ids
    c = probed.counts()
    assert probed.summary() == (f"{c['scans']} scans, {c['ok']} ok, {c['flagged']} flagged, "
                                f"{c['failed']} failed")
    assert c["scans"] == 7 + len(mixed_folder["real"]) and c["failed"] == 4


def test_report_holds_every_section_and_names_every_input(probed, mixed_folder):
    page = probed.report.read_text(encoding="utf-8")
    for heading in ("Scans found", "Quality control", "Slice overlays", "3D landmark view",
                    "Patient embeddings"):
        assert f"<h2>{heading}</h2>" in page, heading
    assert "RANDOM-INIT encoder" in page
    assert "https://" not in page.split("drasclr-plotlyjs")[0]   # offline: no remote script
    for sid in probed.qc["subject_id"]:
        assert sid in page
    for name in os.listdir(mixed_folder["scans"]):
        assert name in page, name
    assert page.count('class="flagged"') == int((probed.qc["status"] != "ok").sum())
    assert "Phenotype probes" in page or "phenotype probes not run" in page


def test_second_run_reuses_finished_work_and_the_cli_exits_0(probed, mixed_folder, capsys):
    from drasclr_toolkit.cli.main import main

    out = mixed_folder["root"] / "out"
    markers = {p: p.stat().st_mtime_ns for p in (out / "preprocess").rglob("*.json")
               if "failures" not in p.parts and p.name != "config.json"}
    parts = {p: p.stat().st_mtime_ns for p in (out / "embeddings").rglob("*.npy")}
    assert markers and parts
    code = main(["probe", str(mixed_folder["scans"]), "--out", str(out), "--no-progress",
                 "--permutations", "0"])
    assert code == 0
    printed = capsys.readouterr().out
    assert f"report: {out / 'report.html'}" in printed
    assert " scans, " in printed and " failed" in printed
    assert {p: p.stat().st_mtime_ns for p in markers} == markers
    assert {p: p.stat().st_mtime_ns for p in parts} == parts


def test_assess_scans_flags_each_absolute_rule():
    checks = pd.DataFrame({"subject_id": list("abcde"), "status": ["ok"] * 5,
                           "field": [None] * 5, "message": [""] * 5})
    pre = pd.DataFrame({"subject_id": list("abcde"), "status": ["ok"] * 4 + ["failed"],
                        "reason": [""] * 4 + ["LungSegmentationError: no lungs"],
                        "stage": [""] * 4 + ["preprocess"],
                        "dice": [0.95, 0.6, 0.95, 0.95, np.nan],
                        "lung_volume_ml": [5000, 5000, 12000, 5000, np.nan],
                        "frac_lung_patches": [0.5, 0.5, 0.5, 0.0, np.nan],
                        "frac_in_scan": [1.0, 1.0, 1.0, 0.6, np.nan]})
    t = assess_scans(pre, checks).set_index("subject_id")
    assert t.at["a", "status"] == "ok" and t.at["a", "flags"] == ""
    assert t.at["b", "flags"] == "low_dice"
    assert t.at["c", "flags"] == "implausible_lung_volume"
    assert t.at["d", "flags"] == "little_lung; partial_coverage"
    assert t.at["e", "status"] == "failed" and "no lungs" in t.at["e", "reasons"]


def test_cli_lung_volume_replaces_only_that_qc_limit():
    import argparse

    from drasclr_toolkit.cli.probe import _thresholds

    limits = _thresholds(argparse.Namespace(lung_volume_ml=[500.0, 1500.0], config="tiny"))
    assert limits.lung_volume_ml == (500.0, 1500.0)
    assert limits.min_frac_lung_patches == 0.1  # the tiny config's, not the default 0.3
    assert _thresholds(argparse.Namespace(lung_volume_ml=None, config="tiny")) is None
