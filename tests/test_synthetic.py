"""The synthetic cohort: anatomy, disease maps, clinical labels, ground-truth transform,
determinism, resumability, configuration and CLI (tiny sizes)."""

from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
from scipy import ndimage as ndi
from scipy.stats import spearmanr

from drasclr_toolkit.datasets.synthetic import (
    SyntheticConfig,
    gold_stage,
    load_ground_truth_affine,
    make_synthetic_cohort,
    map_points,
)

SIZE = 0.6
SPACING = 2.0


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    out = tmp_path_factory.mktemp("synthetic12")
    manifest = make_synthetic_cohort(12, out, seed=11, spacing=SPACING, size_scale=SIZE,
                                     n_jobs=2)
    truth = pd.read_csv(out / "ground_truth.csv", dtype={"subject_id": str}).set_index("subject_id")
    return out, manifest, truth


def _read(path):
    img = sitk.ReadImage(str(path))
    return img, sitk.GetArrayFromImage(img)


def _maps(out, sid):
    img, ct = _read(out / "images" / f"{sid}.nii.gz")
    _, lungs = _read(out / "ground_truth" / f"{sid}_lungs.nii.gz")
    _, disease = _read(out / "ground_truth" / f"{sid}_disease.nii.gz")
    return img, ct, lungs, disease


def test_files_follow_the_contract(cohort):
    out, manifest, truth = cohort
    assert manifest.subject_ids == [f"syn{i:03d}" for i in range(12)]
    table = pd.read_csv(out / "manifest.csv", dtype={"subject_id": str}, keep_default_na=False)
    for col in ("fev1_pp", "fev1_fvc", "gold", "pct_emphysema", "cle_score", "pse_score",
                "mmrc", "time", "event"):
        assert col in table.columns
    assert (table["lung_mask"] == "").all()
    assert (out / "dataset_card.yaml").exists()
    assert list(truth.index) == manifest.subject_ids
    for sid in manifest.subject_ids[:3]:
        img, ct, lungs, disease = _maps(out, sid)
        assert ct.dtype == np.int16
        assert img.GetDirection() == (1, 0, 0, 0, 1, 0, 0, 0, 1)
        assert img.GetSpacing() == pytest.approx((SPACING,) * 3)
        assert lungs.shape == ct.shape == disease.shape
        assert set(np.unique(lungs)) <= {0, 1, 2} and set(np.unique(disease)) <= {0, 1, 2, 3, 4}
        assert lungs.dtype == np.uint8 and disease.dtype == np.uint8
        assert int(ct.min()) >= -1024
        # air outside the body: the image corners
        corners = ct[:, :4, :4]
        assert abs(float(np.median(corners)) + 1000) < 15
        # bone exists (ribs, spine) and soft tissue dominates the body wall
        assert (ct > 400).sum() > 100
        tf = json.loads((out / "ground_truth" / f"{sid}_transform.json").read_text())
        assert np.array(tf["A"]).shape == (3, 3) and len(tf["t"]) == 3


def test_lung_volume_and_density_are_plausible(cohort):
    out, manifest, truth = cohort
    # the adult template holds about 5 L; size_scale shrinks it by SIZE**3, the affine by det
    per_template = truth["lung_volume_ml"] / (truth["scale"] ** 3 * SIZE**3) / 1000.0
    assert per_template.between(4.4, 5.8).all(), per_template
    assert truth["lung_volume_ml"].between(3.3e3 * SIZE**3, 7.5e3 * SIZE**3).all()
    # the heart notch makes the left lung the smaller one
    assert (truth["right_lung_ml"] > truth["left_lung_ml"]).mean() >= 0.75
    healthy = truth.index[(truth["panlobular_severity"] == 0)
                          & (truth["centrilobular_severity"] == 0)]
    assert len(healthy) >= 1
    _, ct, lungs, disease = _maps(out, healthy[0])
    parenchyma = ct[(lungs > 0) & (disease == 0)]
    assert -900 < float(np.median(parenchyma)) < -790


def test_disease_maps_agree_with_severities(cohort):
    out, manifest, truth = cohort
    pairs = [("centrilobular_severity", "pct_centrilobular"),
             ("paraseptal_severity", "pct_paraseptal"),
             ("panlobular_severity", "pct_panlobular"),
             ("airway_severity", "airway_wall_thickened_ml")]
    for sev, frac in pairs:
        assert truth[sev].nunique() > 2, f"{sev} does not vary in the test cohort"
        rho = spearmanr(truth[sev], truth[frac]).statistic
        assert rho > 0.8, (sev, rho)
        assert (truth.loc[truth[sev] == 0, frac] == 0).all(), sev
        assert (truth.loc[truth[sev] > 0.3, frac] > 0).all(), sev


def test_disease_patterns_have_their_zones(cohort):
    out, manifest, truth = cohort
    upper = {1: [0, 0], 3: [0, 0]}  # label -> [labelled in upper third, in lower third]
    pse_depth, lung_depth = [], []
    for sid in manifest.subject_ids:
        _, ct, lungs, disease = _maps(out, sid)
        zs = np.nonzero(lungs.any(axis=(1, 2)))[0]
        third = (zs.max() - zs.min()) / 3.0
        lo_z, hi_z = zs.min() + third, zs.max() - third
        for label in upper:
            lab_z = np.nonzero(disease == label)[0]
            upper[label][0] += int((lab_z > hi_z).sum())
            upper[label][1] += int((lab_z < lo_z).sum())
        if truth.loc[sid, "paraseptal_severity"] > 0:
            depth = ndi.distance_transform_edt(lungs > 0, sampling=SPACING)
            pse_depth.append(depth[disease == 2])
            lung_depth.append(depth[lungs > 0])
        # emphysema labels are darker than the rest of the lung
        if (disease == 1).sum() > 50:
            assert np.median(ct[disease == 1]) < np.median(ct[(lungs > 0) & (disease == 0)]) - 60
    assert upper[1][0] > 2 * upper[1][1], f"centrilobular upper/lower {upper[1]}"
    assert upper[3][1] > 2 * upper[3][0], f"panlobular lower/upper {upper[3]}"
    pse = np.concatenate(pse_depth)
    assert pse.size > 0
    assert np.percentile(pse, 95) <= 12.0 and pse.mean() < 0.5 * np.concatenate(lung_depth).mean()


def test_clinical_labels_follow_the_design(cohort):
    out, manifest, truth = cohort
    labels = manifest.labels()
    for sid, row in labels.iterrows():
        assert row["gold"] == gold_stage(row["fev1_pp"], row["fev1_fvc"])
        assert ((row["fev1_fvc"] < 0.70) == (row["gold"] > 0))
    assert labels["mmrc"].between(0, 4).all() and labels["cle_score"].between(0, 5).all()
    assert labels["pse_score"].between(0, 2).all() and (labels["time"] > 0).all()
    assert set(labels["event"].unique()) <= {0, 1}
    emphysema = truth[["pct_centrilobular", "pct_paraseptal", "pct_panlobular"]].sum(axis=1)
    assert spearmanr(labels["fev1_pp"], emphysema.loc[labels.index]).statistic < -0.3
    burden = truth[["centrilobular_severity", "panlobular_severity", "airway_severity"]].sum(axis=1)
    assert spearmanr(labels["fev1_pp"], burden.loc[labels.index]).statistic < -0.6
    assert spearmanr(labels["cle_score"], truth.loc[labels.index, "centrilobular_severity"]).statistic > 0.7
    # pct_emphysema is LAA-950 measured on the written image inside the true lung mask
    sid = manifest.subject_ids[1]
    _, ct, lungs, _ = _maps(out, sid)
    laa = 100.0 * float((ct[lungs > 0] < -950).mean())
    assert labels.loc[sid, "pct_emphysema"] == pytest.approx(laa, abs=1e-3)


def _lung_centroid(out, sid):
    name = "template_lungs" if sid == "template" else f"{sid}_lungs"
    img, lungs = _read(out / "ground_truth" / f"{name}.nii.gz")
    zyx = np.argwhere(lungs > 0).mean(axis=0)
    return np.array(img.TransformContinuousIndexToPhysicalPoint(zyx[::-1].tolist()))


def test_stored_transform_reproduces_the_anatomy(cohort):
    out, manifest, truth = cohort
    gt = out / "ground_truth"
    sids = manifest.subject_ids[:6]
    cents = {sid: _lung_centroid(out, sid) for sid in sids}
    errors, naive = [], []
    for a, b in zip(sids, sids[1:] + sids[:1]):
        mapped = map_points(cents[a][None], gt / f"{a}_transform.json", gt / f"{b}_transform.json")[0]
        errors.append(np.linalg.norm(mapped - cents[b]))
        naive.append(np.linalg.norm(cents[a] - cents[b]))
    assert max(errors) < 3.0, errors
    assert np.mean(naive) > 2 * np.mean(errors)
    # the written template is the space of p: template -> subject through A, t alone
    template = _lung_centroid(out, "template")
    for sid in sids[:3]:
        A, t = load_ground_truth_affine(gt / f"{sid}_transform.json")
        assert np.linalg.norm(A @ template + t - cents[sid]) < 3.0
    # round trip and the shape of a pose
    a, b = sids[0], sids[1]
    pts = np.random.default_rng(0).uniform(-50, 50, (5, 3))
    back = map_points(map_points(pts, gt / f"{a}_transform.json", gt / f"{b}_transform.json"),
                      gt / f"{b}_transform.json", gt / f"{a}_transform.json")
    assert np.allclose(back, pts, atol=1e-9)
    A, t = load_ground_truth_affine(gt / f"{a}_transform.json")
    assert 0.7 < np.linalg.det(A) < 1.35 and not np.allclose(A, np.eye(3))


def test_same_seed_same_cohort_and_resume(tmp_path):
    opts = dict(seed=5, spacing=3.0, size_scale=0.4)
    m1 = make_synthetic_cohort(2, tmp_path / "a", n_jobs=1, **opts)
    m2 = make_synthetic_cohort(2, tmp_path / "b", n_jobs=2, **opts)
    pd.testing.assert_frame_equal(m1.labels(), m2.labels())
    for sid in m1.subject_ids:
        _, x = _read(tmp_path / "a" / "images" / f"{sid}.nii.gz")
        _, y = _read(tmp_path / "b" / "images" / f"{sid}.nii.gz")
        assert np.array_equal(x, y)
    other = make_synthetic_cohort(1, tmp_path / "c", **{**opts, "seed": 6})
    assert not other.labels().equals(m1.labels().iloc[:1])
    # resume: finished subjects are left alone, missing ones are made again identically
    a = tmp_path / "a"
    kept = a / "images" / "syn000.nii.gz"
    stamp = kept.stat().st_mtime_ns
    (a / "ground_truth" / "syn001_record.json").unlink()
    (a / "images" / "syn001.nii.gz").unlink()
    m3 = make_synthetic_cohort(3, a, n_jobs=1, **opts)
    assert kept.stat().st_mtime_ns == stamp
    assert len(m3) == 3
    _, x = _read(a / "images" / "syn001.nii.gz")
    _, y = _read(tmp_path / "b" / "images" / "syn001.nii.gz")
    assert np.array_equal(x, y)
    assert not any(p.name.endswith(".tmp") or ".tmp." in p.name for p in a.rglob("*"))
    from drasclr_toolkit.errors import OutputExistsError

    with pytest.raises(OutputExistsError, match=r"other options \(spacing: 3.0 there, 2.5 now\)"):
        make_synthetic_cohort(2, a, **{**opts, "spacing": 2.5})


def test_config_rejects_unknown_keys_and_reads_the_packaged_sections():
    from drasclr_toolkit.config import load_config

    with pytest.raises(ValueError, match="unknown key"):
        SyntheticConfig.from_dict({"spacng": 2.0})
    with pytest.raises(ValueError, match="spacing"):
        SyntheticConfig.from_dict({"spacing": 0.0})
    for name in ("tiny", "gpu"):
        section = load_config(name)["synthetic"]
        cfg = SyntheticConfig.from_dict(section)
        assert cfg.spacing > 0 and section["n_subjects"] >= 2


def test_cli_generates_a_cohort(tmp_path):
    from drasclr_toolkit.cli.main import main

    out = tmp_path / "cli"
    code = main(["synthetic", "--n-subjects", "1", "--out", str(out), "--spacing", "3",
                 "--seed", "2", "--size-scale", "0.4"])
    assert code == 0
    assert (out / "manifest.csv").exists() and (out / "images" / "syn000.nii.gz").exists()
    assert os.path.exists(out / "ground_truth" / "syn000_transform.json")
