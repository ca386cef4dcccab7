"""Dense emphysema truth, probes cross-validated by subject, and label efficiency."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from drasclr_toolkit.evaluate.dense import (PatchTruth, evaluate_dense, patch_truth_from_table,
                                            synthetic_patch_truth)
from drasclr_toolkit.evaluate.finetune import label_efficiency


class _Store:
    """What synthetic_patch_truth reads of a PatchStore."""

    def __init__(self, path, centres):
        self.path, self.patch_size, self.subject_ids = path, 4, ["a"]
        self.n_landmarks = len(centres)
        self._centres = centres

    def subject_record(self, sid):
        return {"centres_mm": json.dumps(self._centres.tolist())}


def test_synthetic_truth_reads_the_disease_map_around_each_patch(tmp_path):
    (tmp_path / "ground_truth").mkdir()
    lungs = np.zeros((40, 40, 40), np.uint8)
    lungs[5:35, 5:35, 5:35] = 1
    disease = np.zeros_like(lungs)
    disease[5:15, 5:15, 5:15] = 2  # paraseptal block in one corner (z, y, x)
    for name, array in (("lungs", lungs), ("disease", disease)):
        image = sitk.GetImageFromArray(array)
        image.SetSpacing((2.0, 2.0, 2.0))
        sitk.WriteImage(image, str(tmp_path / "ground_truth" / f"a_{name}.nii.gz"))
    (tmp_path / "config.json").write_text(json.dumps({"spacing": 2.0}))
    # physical (x, y, z) mm centres: inside the diseased block, healthy lung, outside the lung
    centres = np.array([[20.0, 20.0, 20.0], [50.0, 50.0, 50.0], [2.0, 2.0, 76.0]])
    truth = synthetic_patch_truth(_Store(tmp_path, centres), tmp_path)
    assert truth.label.tolist() == [[2, 0, -1]]
    assert truth.extent[0, 0] == pytest.approx(1.0) and truth.extent[0, 1] == 0.0
    assert np.isnan(truth.extent[0, 2])


def test_table_truth_names_bad_rows():
    table = pd.DataFrame({"subject_id": ["a"], "landmark": [9], "label": ["none"]})
    with pytest.raises(ValueError, match="line 2: landmark 9"):
        patch_truth_from_table(table, ["a"], 3)
    with pytest.raises(ValueError, match="columns"):
        patch_truth_from_table(table.drop(columns="label"), ["a"], 3)


def _cohort(n=12, n_loc=20, seed=0):
    rng = np.random.default_rng(seed)
    label = rng.integers(0, 3, (n, n_loc))
    return PatchTruth([f"s{i}" for i in range(n)], label, label / 3.0, ("none", "x", "y")), rng


def test_planted_patch_signal_is_found_and_noise_is_not():
    truth, rng = _cohort()
    signal = np.eye(3)[truth.label] + rng.normal(0, 0.5, truth.label.shape + (3,))
    noise = rng.normal(size=truth.label.shape + (5,))
    metrics = evaluate_dense({"signal": signal, "noise": noise}, truth, n_boot=100).metrics
    row = metrics.set_index(["features", "metric"])
    assert row.loc[("signal", "balanced_accuracy"), "value"] > 0.8
    assert row.loc[("signal", "balanced_accuracy"), "verdict"].startswith("above chance")
    assert row.loc[("signal", "r2"), "value"] > 0.5
    noise_bacc = row.loc[("noise", "balanced_accuracy")]
    assert noise_bacc.ci_low <= noise_bacc.chance <= noise_bacc.ci_high
    assert noise_bacc.verdict.startswith("no evidence")


def test_folds_never_split_a_subject():
    """Each subject's patches share one label and a subject fingerprint: a patch-wise split
    would learn the fingerprint and score near 1; a subject-wise split must stay at chance."""
    n, n_loc = 16, 30
    rng = np.random.default_rng(1)
    per_subject = rng.integers(0, 2, n)
    label = np.repeat(per_subject[:, None], n_loc, axis=1)
    fingerprint = rng.normal(size=(n, 1, 8)) * 3
    features = fingerprint + rng.normal(0, 0.1, (n, n_loc, 8))
    truth = PatchTruth([f"s{i}" for i in range(n)], label, label.astype(float))
    result = evaluate_dense(features, truth, cv=4, n_boot=50)
    bacc = result.metrics.set_index("metric").loc["balanced_accuracy", "value"]
    assert bacc < 0.75, f"subject fingerprints leaked across folds (balanced accuracy {bacc:.2f})"


def test_label_efficiency_table_is_complete_and_ordered():
    from drasclr_toolkit.patch_source import ArrayPatchSource

    rng = np.random.default_rng(0)
    n, n_loc, size = 6, 4, 17
    label = rng.integers(0, 2, (n, n_loc))
    patches = np.where(label[..., None, None, None] == 1, -950, -800) + \
        rng.normal(0, 20, (n, n_loc, size, size, size))
    source = ArrayPatchSource(patches.astype(np.int16))
    truth = PatchTruth(source.subject_ids, label, label.astype(float), ("none", "holes"))
    fractions = (0.2, 0.5, 1.0)
    table = label_efficiency(source, truth, None, fractions=fractions, seeds=(0, 1), steps=4,
                             batch_size=8, threads=1,
                             model=dict(width=0.125, num_experts=2, rep_dim=16, proj_dim=8))
    assert len(table) == 3 * len(fractions) * 2
    assert set(table.method) == {"fine-tuned", "from scratch", "linear probe"}
    for (_, _), rows in table.groupby(["method", "seed"]):
        assert rows.fraction.tolist() == list(fractions)
        assert rows.n_train_subjects.is_monotonic_increasing
    assert table.balanced_accuracy.between(0, 1).all() and (table.chance == 0.5).all()
    # the linear probe on 4 training subjects separates -950 from -800 HU patches
    best = table[(table.method == "linear probe") & (table.fraction == 1.0)]
    assert best.balanced_accuracy.mean() > 0.7
