"""Preprocessing: atlas grid, registration accuracy, patch store, resumable cohort runs,
failure isolation and real CT. Tiny sizes (2 mm synthetic subjects); real CT at 2 mm."""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from drasclr_toolkit.preprocess import (
    Atlas,
    PatchStore,
    PreprocessConfig,
    build_default_atlas,
    crop_patches,
    landmark_grid,
    preprocess_subject,
    qc_table,
    run_preprocessing,
    segment_lungs,
)
from drasclr_toolkit.landmarks import nearest_neighbors
from drasclr_toolkit.patch_source import PatchSource
from drasclr_toolkit.preprocess.resample import resample_isotropic

TINY = {
    "spacing": 2.0,
    "interpolator": "linear",
    "registration": {"reg_spacing": 4.0, "iterations": 100},
}
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def cohort_atlas(tiny_cohort, tmp_path_factory):
    """Default atlas (median lung volume subject) of the tiny cohort, saved once."""
    out = tmp_path_factory.mktemp("atlas_run")
    atlas = build_default_atlas(tiny_cohort, out, TINY)
    return atlas, out / "atlas"


def _sub_manifest(manifest, ids, path: Path, extra_rows=()):
    """A manifest CSV with some subjects of ``manifest`` (plus raw extra rows)."""
    rows = [{"subject_id": s, "image": str(manifest.image_path(s))} for s in ids]
    rows += list(extra_rows)
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


# ----------------------------------------------------------------------------- atlas
def test_official_atlas_grid_rule_and_geometry(shared_reference, tmp_path):
    atlas = Atlas.load(shared_reference / "atlas_lung_mask.nii.gz",
                       shared_reference / "atlas_patch_loc.npy")
    assert atlas.n_landmarks == 581
    # Our grid rule on the official mask reproduces the official landmarks.
    ours = landmark_grid(sitk.GetArrayViewFromImage(atlas.mask), 32, 26, 0.1)
    official = {tuple(p) for p in atlas.landmarks.tolist()}
    assert len(official & {tuple(p) for p in ours.tolist()}) >= 575
    # The mask keeps its flipped-y direction and landmarks map through it exactly.
    assert atlas.mask.GetDirection() == (1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)
    i = 123
    expect = atlas.mask.TransformContinuousIndexToPhysicalPoint(
        [float(v) + 15.5 for v in atlas.landmarks[i]])
    np.testing.assert_allclose(atlas.centres_mm[i], expect, atol=1e-9)
    # Save / load round trip.
    again = Atlas.load(atlas.save(tmp_path / "a"))
    np.testing.assert_array_equal(again.landmarks, atlas.landmarks)
    assert again.mask.GetDirection() == atlas.mask.GetDirection()
    np.testing.assert_allclose(again.centres_mm, atlas.centres_mm)


def test_coords_and_neighbours_are_deterministic():
    lm = np.array([[0, 0, 0], [26, 0, 0], [0, 26, 0], [0, 0, 26], [52, 52, 52]])
    nb = nearest_neighbors(lm, 2)
    # Landmark 0 has three neighbours at distance 26: ties go to the lower index.
    assert nb[0].tolist() == [1, 2]
    assert nb[1].tolist() == [0, 2]  # 0 at 26, then 2 and 3 tie at 26·√2: lower index
    m = np.zeros((80, 80, 80), np.uint8)
    m[10:70, 10:70, 10:70] = 1
    atlas = Atlas.from_mask(sitk.GetImageFromArray(m), patch_size=16, step=13)
    c = atlas.landmark_coords
    assert c.dtype == np.float32 and c.min() == -1 and c.max() == 1
    assert atlas.neighbors(3).shape == (atlas.n_landmarks, 3)


def test_crop_pads_outside_with_air_and_config_rejects_unknown_keys():
    arr = np.full((10, 10, 10), 500, np.int16)
    p = crop_patches(arr, np.array([[-2, 5, 5]]), 4)
    assert (p[0, :, :, :2] == -1024).all() and (p[0, :, :, 2:] == 500).all()
    with pytest.raises(ValueError, match="unknown key"):
        PreprocessConfig.from_dict({"spacings": 1.0})
    with pytest.raises(ValueError, match="unknown key"):
        PreprocessConfig.from_dict({"registration": {"iters": 3}})


# ----------------------------------------------------------------------------- synthetic
def test_landmarks_within_3mm_of_ground_truth(tiny_cohort, cohort_atlas):
    from drasclr_toolkit.data import load_ct
    from drasclr_toolkit.datasets.synthetic import map_points

    atlas, _ = cohort_atlas
    ref = atlas.info["reference_subject"]
    gt_dir = Path(tiny_cohort.path).parent / "ground_truth"
    others = [s for s in tiny_cohort.subject_ids if s != ref][:2]
    for sid in others:
        res = preprocess_subject(load_ct(tiny_cohort.image_path(sid), subject_id=sid), atlas, TINY)
        truth = map_points(atlas.centres_mm, gt_dir / f"{ref}_transform.json",
                           gt_dir / f"{sid}_transform.json")
        err = np.linalg.norm(res.centres_mm - truth, axis=1)
        assert err.max() < 3.0, (sid, err.max())
        assert res.patches.dtype == np.int16 and res.patches.shape[1:] == (32, 32, 32)
        assert res.patches.min() >= -1024 and res.patches.max() <= 240
        assert res.qc["dice"] > 0.9
        # Segmentation agrees with the true lung mask.
        true = sitk.ReadImage(str(gt_dir / f"{sid}_lungs.nii.gz"))
        true_ml = (sitk.GetArrayViewFromImage(true) > 0).sum() * np.prod(true.GetSpacing()) / 1000
        assert abs(res.qc["lung_volume_ml"] - true_ml) < 0.05 * true_ml


def test_affine_patch_sampling(tiny_cohort, cohort_atlas):
    from drasclr_toolkit.data import load_ct
    from drasclr_toolkit.preprocess import sample_patches_affine

    atlas, _ = cohort_atlas
    sid = tiny_cohort.subject_ids[0]
    a = preprocess_subject(load_ct(tiny_cohort.image_path(sid), subject_id=sid), atlas, TINY)
    b = sample_patches_affine(a.image, atlas.mask, atlas.landmarks, 32, a.transform)
    lung = sample_patches_affine(sitk.Cast(a.mask > 0, sitk.sitkInt16), atlas.mask,
                                 atlas.landmarks, 32, a.transform, fill=0,
                                 interpolator=sitk.sitkNearestNeighbor)
    assert b.shape == a.patches.shape and b.dtype == np.int16
    # Both ways see about the same amount of lung at each landmark.
    frac_b = (lung > 0).reshape(len(lung), -1).mean(1)
    assert np.abs(a.lung_fraction - frac_b).mean() < 0.1
    # QC pictures build from the result (3 slices × image, mask outline, patch boxes).
    from drasclr_toolkit.viz import landmark_cloud, plot_overlay, plot_patches, plot_registration

    assert len(plot_overlay(a.image, a.mask, a.corners, 32).data) == 9
    cloud = landmark_cloud(a.corners, lung_fraction=a.lung_fraction, mask=a.mask)
    assert [t.type for t in cloud.data] == ["mesh3d", "scatter3d"]
    # the integer corners through the mask's geometry land within a voxel of the exact centres
    points = np.c_[cloud.data[1].x, cloud.data[1].y, cloud.data[1].z]
    assert np.abs(points - a.centres_mm).max() <= max(a.mask.GetSpacing())
    assert len(plot_registration(atlas, a.mask, a.transform).data) == 4
    assert plot_patches(a.patches, n=4).layout.annotations


# ----------------------------------------------------------------------------- cohort
def test_store_protocol_and_failures_recorded(tiny_cohort, cohort_atlas, tmp_path):
    atlas, atlas_dir = cohort_atlas
    bad = tmp_path / "corrupt.nii.gz"
    bad.write_bytes(b"this is not an image")
    ids = tiny_cohort.subject_ids[:2]
    csv = _sub_manifest(tiny_cohort, ids, tmp_path / "m.csv", [
        {"subject_id": "corrupt", "image": str(bad)},
        {"subject_id": "absent01", "image": str(tmp_path / "nowhere.nii.gz")},
    ])
    store = run_preprocessing(csv, atlas_dir, tmp_path / "out", TINY, progress=False)
    assert store.subject_ids == ids
    assert isinstance(store, PatchSource)
    L = atlas.n_landmarks
    assert store.landmarks.shape == (L, 3) and store.patch_size == 32
    assert store.landmark_coords.shape == (L, 3) and store.neighbors.shape == (L, 2)
    assert store.lung_fraction.shape == (2, L) and store.lung_fraction.dtype == np.float32
    sub = store.read_subject(1)
    assert sub.shape == (L, 32, 32, 32) and sub.dtype == np.int16
    np.testing.assert_array_equal(store.read_subject(ids[1]), sub)
    loc = store.read_location(3, [1, 0, 1])
    np.testing.assert_array_equal(loc[0], sub[3])
    np.testing.assert_array_equal(loc[2], sub[3])
    # A pickled store (as a DataLoader worker gets it) reads the same.
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(store)).read_location(3, [1])[0], sub[3])
    df = pd.read_csv(tmp_path / "out" / "qc.csv")
    by = df.set_index("subject_id")
    assert by.loc["corrupt", "status"] == "failed" and by.loc["corrupt", "stage"] == "load"
    assert by.loc["absent01", "status"] == "failed" and by.loc["absent01", "reason"]
    assert (by.loc[ids, "status"] == "ok").all() and (by.loc[ids, "dice"] > 0.9).all()
    assert set(qc_table(store)["subject_id"]) == set(ids) | {"corrupt", "absent01"}


def test_killed_run_resumes_to_the_same_outputs(tiny_cohort, cohort_atlas, tmp_path):
    _, atlas_dir = cohort_atlas
    ids = tiny_cohort.subject_ids[:3]
    csv = _sub_manifest(tiny_cohort, ids, tmp_path / "m.csv")
    tiny_yaml = tmp_path / "tiny.yaml"
    import yaml

    tiny_yaml.write_text(yaml.safe_dump({"preprocess": TINY}))
    killed = tmp_path / "killed"
    cmd = [sys.executable, "-m", "drasclr_toolkit.cli.preprocess", "--manifest", str(csv),
           "--out", str(killed), "--atlas", str(atlas_dir), "--config", str(tiny_yaml),
           "--no-progress"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + 300  # generous: the machine may be shared
    while time.time() < deadline and proc.poll() is None:
        done = list((killed / "subjects").glob("*.json")) if (killed / "subjects").exists() else []
        if len(done) >= 1:
            break
        time.sleep(0.2)
    was_running = proc.poll() is None
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    n_before = len(PatchStore(killed).subject_ids)
    assert was_running and 1 <= n_before < len(ids)
    resumed = run_preprocessing(csv, atlas_dir, killed, TINY, progress=False)
    clean = run_preprocessing(csv, atlas_dir, tmp_path / "clean", TINY, progress=False)
    assert resumed.subject_ids == clean.subject_ids == ids
    for s in ids:
        np.testing.assert_array_equal(resumed.read_subject(s), clean.read_subject(s))
        np.testing.assert_array_equal(resumed.subject_corners(s), clean.subject_corners(s))
    np.testing.assert_array_equal(resumed.lung_fraction, clean.lung_fraction)


def test_shards_split_the_cohort(tiny_cohort, cohort_atlas, tmp_path, capsys):
    _, atlas_dir = cohort_atlas
    ids = tiny_cohort.subject_ids[:2]
    csv = _sub_manifest(tiny_cohort, ids, tmp_path / "m.csv")
    out = tmp_path / "out"
    s1 = run_preprocessing(csv, atlas_dir, out, TINY, shard=(1, 2), progress=False)
    assert s1.subject_ids == [ids[1]]
    s0 = run_preprocessing(csv, atlas_dir, out, TINY, shard=(0, 2), progress=False)
    assert s0.subject_ids == ids
    capsys.readouterr()
    again = run_preprocessing(csv, atlas_dir, out, TINY, progress=True)  # nothing left to do
    assert again.subject_ids == ids
    assert "preprocess shard" not in capsys.readouterr().err  # no empty "0/0" bar


# ----------------------------------------------------------------------------- real CT
@pytest.fixture(scope="module")
def real_scans():
    from drasclr_toolkit.data import load_ct
    from drasclr_toolkit.datasets.sample_data import SampleDataUnavailable, real_chest_ct

    try:
        paths = {n: real_chest_ct(n) for n in ("lung1", "lung2")}
    except SampleDataUnavailable as exc:
        pytest.skip(f"real CT unavailable: {exc}")
    return {n: load_ct(p, subject_id=n) for n, p in paths.items()}


@pytest.mark.slow
def test_real_ct_lungs_and_landmarks(real_scans):
    cfg = PreprocessConfig.from_dict(TINY)
    # Atlas from one real scan, the other registered to it (both 5 mm slices, partial).
    atlas = Atlas.from_reference(real_scans["lung2"], spacing=cfg.spacing, interpolator="linear")
    assert 15 <= atlas.n_landmarks
    vol2 = atlas.info["segmentation"]["lung_volume_ml"]
    assert 2000 < vol2 < 7000
    res = preprocess_subject(real_scans["lung1"], atlas, cfg)
    q = res.qc
    # lung1 covers ~240 mm and cuts the lung bases: 2–6 L of lung is plausible.
    assert 2000 < q["lung_volume_ml"] < 6000, q["lung_volume_ml"]
    assert q["right_lung_ml"] > 500 and q["left_lung_ml"] > 500
    assert q["dice"] > 0.75
    inside = res.in_scan
    assert inside.sum() >= 0.5 * len(inside)
    assert (res.lung_fraction[inside] > 0).mean() >= 0.9


def test_segmentation_rejects_a_scan_without_lungs():
    from drasclr_toolkit.preprocess import LungSegmentationError

    img = sitk.GetImageFromArray(np.full((20, 40, 40), 40, np.int16))
    with pytest.raises(LungSegmentationError):
        segment_lungs(resample_isotropic(img, 2.0, "linear"))
