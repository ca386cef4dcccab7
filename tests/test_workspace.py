"""The notebooks' shared work folder: products made once, in fixed places."""

from __future__ import annotations

from pathlib import Path

import pytest

from drasclr_toolkit.workspace import Workspace

SMALL = {"synthetic": {"n_subjects": 2, "spacing": 3.0, "size_scale": 0.5, "seed": 3}}


def test_cohort_is_made_once_and_reused(tmp_path):
    ws = Workspace(tmp_path / "work", SMALL)
    first = ws.cohort()
    assert len(first) == 2 and (ws.cohort_dir / "manifest.csv").exists()
    assert ws.cohort() is first  # no second generation pass within one workspace
    again = Workspace(tmp_path / "work", SMALL).cohort()  # a new session reuses the files
    assert again.subject_ids == first.subject_ids
    maps = ws.ground_truth_maps(first.subject_ids[0])
    assert maps["lungs"].shape == maps["disease"].shape
    assert set(ws.ground_truth().index) == set(first.subject_ids)


def test_real_manifest_has_no_ground_truth(tmp_path):
    cohort = Workspace(tmp_path / "syn", SMALL).cohort()
    ws = Workspace(tmp_path / "real", SMALL, manifest=cohort.path)
    assert not ws.is_synthetic and ws.ground_truth() is None
    assert ws.cohort().subject_ids == cohort.subject_ids
    with pytest.raises(ValueError, match="only for the synthetic cohort"):
        ws.ground_truth_maps(cohort.subject_ids[0])


def test_unknown_encoder_name_is_refused(tmp_path):
    with pytest.raises(ValueError, match="'trained' or 'random-init'"):
        Workspace(tmp_path, SMALL).embeddings("pretrained")


# A whole pipeline small enough for a unit test: 3 subjects at 3 mm, a 2-step run.
PIPELINE = {
    "synthetic": {"n_subjects": 3, "spacing": 3.0, "size_scale": 0.5, "seed": 3},
    "preprocess": {"spacing": 3.0, "step": 16, "interpolator": "linear",
                   "segmentation": {"work_spacing": 3.0},
                   "registration": {"reg_spacing": 6.0, "iterations": 20, "refine_spacing": 0},
                   "qc": {"lung_volume_ml": [50, 9000], "min_frac_lung_patches": 0.0}},
    "pretrain": {"width": 0.125, "rep_dim": 8, "proj_dim": 8, "num_experts": 2,
                 "queue_size": 0, "batch_negatives": True, "batch_size": 3, "epochs": 1,
                 "max_steps": 2, "train_locations": 2, "progress": False, "device": "cpu",
                 "keep_epoch_checkpoints": False},
    "embed": {"batch_size": 16, "device": "cpu",
              "encoder": {"width": 0.125, "num_experts": 2, "rep_dim": 8, "proj_dim": 8}},
}


@pytest.fixture(scope="module")
def preprocessed(tmp_path_factory):
    """A work folder with the cohort and its patch store (made once, copied per test)."""
    work = tmp_path_factory.mktemp("pipeline") / "work"
    Workspace(work, PIPELINE).patch_store()
    return work


def _copy(work, tmp_path):
    import shutil

    return Path(shutil.copytree(work, tmp_path / "work", symlinks=True))


def test_a_changed_setting_in_02_changes_03s_embeddings(preprocessed, tmp_path, capsys,
                                                         one_torch_thread):
    import numpy as np

    work = _copy(preprocessed, tmp_path)
    nb02 = Workspace(work, PIPELINE)
    first = nb02.pretrain()                                   # 02 with its parameters as given
    before = Workspace(work, PIPELINE).embeddings("trained")  # 03, a new kernel
    changed = Workspace(work, PIPELINE).pretrain(temperature=0.05)   # 02, temperature changed
    assert changed != first and changed.parent.parent == first.parent.parent
    nb03 = Workspace(work, PIPELINE)
    assert nb03.checkpoint() == changed                       # 03 follows 02's last run
    after = nb03.embeddings("trained")
    assert not np.allclose(before.patch, after.patch)
    assert after.provenance["checkpoint_config"]["temperature"] == 0.05
    # Back to the first setting: nothing is retrained or re-extracted, and it says so.
    capsys.readouterr()
    assert Workspace(work, PIPELINE).pretrain() == first
    again = Workspace(work, PIPELINE).embeddings("trained")
    said = capsys.readouterr().out
    assert "reused" in said and "final.pt" in said and ".npz" in said
    assert np.allclose(again.patch, before.patch)


def test_an_experiment_trains_in_its_own_folder_and_leaves_the_active_run(
        preprocessed, tmp_path, one_torch_thread):
    ws = Workspace(_copy(preprocessed, tmp_path), PIPELINE)
    active = ws.pretrain()
    exp = ws.experiment("no-conditioning", conditioning="none")
    assert exp.run_dir.name.startswith("no-conditioning-") and exp.checkpoint.is_file()
    assert exp.checkpoint != active and ws.checkpoint() == active
    assert exp.config.conditioning == "none" and len(exp.metrics()) == 2
    # the same experiment again is the same folder; another setting is another folder
    assert ws.experiment("no-conditioning", conditioning="none").checkpoint == exp.checkpoint
    assert ws.run_dir("no-conditioning", conditioning="concat") != exp.run_dir
    with pytest.raises(ValueError, match="plain folder name"):
        ws.run_dir("../elsewhere")
