"""Absolute QC rules and cohort flags (preprocess.qc_rules)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from drasclr_toolkit.preprocess.qc_rules import (
    QCThresholds,
    absolute_flags,
    cohort_flags,
    robust_z,
)

GOOD = {"dice": 0.90, "lung_volume_ml": 5000.0, "right_lung_ml": 2700.0, "left_lung_ml": 2300.0,
        "frac_lung_patches": 0.75, "frac_in_scan": 1.0, "partial_coverage": False,
        "segmentation_flags": []}


def test_a_good_subject_passes_and_each_rule_says_why():
    assert absolute_flags(GOOD) == {}
    flags = absolute_flags({**GOOD, "dice": 0.81, "lung_volume_ml": 900.0, "frac_lung_patches": 0.0,
                            "frac_in_scan": 0.69, "partial_coverage": True,
                            "right_lung_ml": 800.0, "left_lung_ml": 100.0,
                            "segmentation_flags": ["single_lung_component"]})
    assert flags == {
        "dice": "dice 0.81 < 0.85",
        "lung_volume": "lung volume 900 mL outside plausible adult 2,000–9,000 mL",
        "lung_balance": "left lung holds 11 % of the lung volume (< 25 %)",
        "lung_patches": "0 % of landmark patches hold lung (≥ half lung; want ≥ 30 %)",
        "partial_coverage": "partial coverage: 31 % of landmarks outside the scan (limit 10 %)",
        "segmentation": "segmentation: single_lung_component",
    }
    # frac_missing (the per-landmark mask's share) wins over frac_in_scan; absent = not judged.
    assert "partial_coverage" in absolute_flags({"frac_missing": 0.2, "frac_in_scan": 1.0})
    assert absolute_flags({}) == {}
    assert absolute_flags({"dice": float("nan")}) == {}


def test_thresholds_are_configurable_and_checked():
    assert absolute_flags({**GOOD, "dice": 0.81}, {"min_dice": 0.8}) == {}
    assert QCThresholds.from_dict({"lung_volume_ml": [1000, 2000]}).lung_volume_ml == (1000, 2000)
    with pytest.raises(ValueError, match="min_dise"):
        QCThresholds.from_dict({"min_dise": 0.8})


def test_an_all_bad_cohort_is_flagged():
    # Every scan equally bad: robust z-scores see nothing; the absolute rules still do.
    bad = {f"s{i}": {**GOOD, "dice": 0.70 + 0.001 * i, "frac_lung_patches": 0.05}
           for i in range(8)}
    df = cohort_flags(bad)
    assert df["outlier"].all()
    assert df["qc_flags"].str.contains("dice").all()
    assert not df["qc_flags"].str.contains("_z").any()


def test_a_subject_without_lung_patches_is_flagged():
    cohort = {f"s{i}": dict(GOOD) for i in range(5)}
    cohort["s5"] = {**GOOD, "frac_lung_patches": 0.0}
    df = cohort_flags(cohort).set_index("subject_id")
    assert df.loc["s5", "outlier"] and "lung_patches" in df.loc["s5", "qc_flags"]
    assert "0 % of landmark patches hold lung" in df.loc["s5", "qc_reasons"]
    assert not df.drop(index="s5")["outlier"].any()


def test_the_atlas_subject_is_left_out_of_the_robust_statistics():
    dice = {"a": 0.88, "b": 0.89, "c": 0.90, "d": 0.91, "e": 0.86}
    cohort = {s: {**GOOD, "dice": v} for s, v in dice.items()}
    cohort["atlas"] = {**GOOD, "dice": 1.0, "frac_lung_patches": 1.0}  # registered to itself
    df = cohort_flags(cohort, reference_subject="atlas").set_index("subject_id")
    others = np.array(list(dice.values()))
    expected = robust_z(others, min_scale=0.02)  # the rule's floor for Dice
    np.testing.assert_allclose(df.loc[list(dice), "z_dice"].to_numpy(), expected)
    with_atlas = robust_z(np.r_[others, 1.0], min_scale=0.02)[:-1]
    assert not np.allclose(expected, with_atlas)  # the atlas would have moved the median
    assert df.loc["atlas", "is_reference"] and not df.drop(index="atlas")["is_reference"].any()
    # The atlas subject is still judged by the absolute rules.
    bad_atlas = {**cohort, "atlas": {**GOOD, "lung_volume_ml": 1500.0}}
    assert cohort_flags(bad_atlas, reference_subject="atlas").set_index("subject_id").loc["atlas", "outlier"]


def test_relative_rule_flags_an_outlier_and_reads_a_qc_table():
    rows = [{"subject_id": f"s{i}", "status": "ok", **GOOD, "lung_volume_ml": 5000.0 + 50 * i,
             "segmentation_flags": ""} for i in range(6)]
    rows.append({"subject_id": "big", "status": "ok", **GOOD, "lung_volume_ml": 8900.0,
                 "segmentation_flags": ""})
    rows.append({"subject_id": "broken", "status": "failed", "reason": "no lungs"})
    df = cohort_flags(pd.DataFrame(rows)).set_index("subject_id")
    assert df.loc["big", "qc_flags"] == "lung_volume_ml_z"
    assert "robust z" in df.loc["big", "qc_reasons"]
    assert not df.loc["broken", "outlier"] and np.isnan(df.loc["broken", "z_dice"])
    assert not df.loc[[f"s{i}" for i in range(6)], "outlier"].any()


def test_small_cohort_uses_absolute_rules_only():
    df = cohort_flags({"a": dict(GOOD), "b": {**GOOD, "dice": 0.5}})
    assert df["outlier"].tolist() == [False, True]
    assert df["z_dice"].isna().all()
