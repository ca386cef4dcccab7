"""The notebooks' shared work folder: products made once, in fixed places."""

from __future__ import annotations

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
