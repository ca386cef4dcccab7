"""The calibrated evaluation layer: verdicts that follow their numbers, paired comparisons on
common subjects, guards for thin survival data, joins by id (issue: numbers a reviewer
would accept). Type-I error and coverage themselves are measured by
benchmarks/bench_calibration.py; these tests pin the rules."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

from drasclr_toolkit.evaluate import (adjust_verdicts, comparison_text, evaluate_phenotypes,
                                      evaluate_survival, holm, multiplicity_note,
                                      nuisance_sensitivity, paired_comparisons,
                                      predictive_verdict, risk_groups, summarise)
from drasclr_toolkit.evaluate.stats import corrected_ci


def _ids(n):
    return [f"s{i:03d}" for i in range(n)]


def _quiet(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args, **kwargs)


# --------------------------------------------------------------------------- verdict rule
def test_significant_but_not_above_chance_is_an_association_not_evidence():
    words, evidence = predictive_verdict(-0.00, -0.83, 0.01, chance=-0.21, floor=0.0, p=0.02,
                                         p_adj=0.02)
    assert not evidence and words.startswith("association, no predictive gain")
    words, evidence = predictive_verdict(0.06, -0.84, 0.28, chance=-0.07, floor=0.0, p=0.04,
                                         p_adj=0.04)
    assert not evidence and "CI reaches chance" in words
    words, evidence = predictive_verdict(0.4, 0.1, 0.6, chance=-0.07, floor=0.0, p=0.001,
                                         p_adj=0.02, n_tests=12)
    assert evidence and "Holm p=0.02 over 12 tests" in words


def test_holm_matches_its_definition():
    rng = np.random.default_rng(0)
    p = rng.random(7) * 0.1
    order = np.argsort(p)
    expected = np.maximum.accumulate(np.minimum(1, (7 - np.arange(7)) * p[order]))
    got = holm(p)[order]
    assert np.allclose(got, expected)
    assert np.isnan(holm([np.nan, 0.01])[0]) and holm([np.nan, 0.01])[1] == 0.01


def test_bounded_intervals_stay_inside_zero_one():
    lo, hi = corrected_ci([1.0, 0.0, 1.0, 0.0, 1.0], 32, 8, bounds=(0, 1))
    assert 0 < lo < hi < 1
    lo, hi = corrected_ci([0.2, 0.1, -1.5, 0.3], 30, 10, bounds=(None, 1))
    assert hi <= 1


def test_too_few_permutations_for_a_corrected_claim_is_said():
    assert "no result can pass the corrected threshold" in multiplicity_note(12, 19)
    assert "allow a corrected claim" in multiplicity_note(12, 999)


# --------------------------------------------------------------------------- phenotypes
def test_feature_sets_are_scored_on_the_subjects_they_share():
    rng = np.random.default_rng(1)
    ids = _ids(40)
    z = rng.normal(size=40)
    labels = pd.DataFrame({"fev1_pp": z + rng.normal(size=40)}, index=ids)
    a = pd.DataFrame(np.column_stack([z, rng.normal(size=(40, 2))]), index=ids)
    b = a.iloc[15:] + rng.normal(size=(25, 3))  # set B lacks 15 subjects
    with pytest.warns(UserWarning, match="b lacks 15"):
        table = evaluate_phenotypes({"a": a, "b": b}, labels, ["fev1_pp"], n_repeats=1,
                                    n_permutations=0)
    assert table["n"].tolist() == [25, 25] and table["n_dropped"].tolist() == [15, 15]
    assert table["splits_id"].nunique() == 1
    pairs = paired_comparisons(summarise(table), reference="a")
    assert np.isfinite(pairs.loc[0, "p"])
    # unpaired: each set keeps its own subjects, and the comparison refuses
    table = _quiet(evaluate_phenotypes, {"a": a, "b": b}, labels, ["fev1_pp"], n_repeats=1,
                   n_permutations=0, paired=False)
    assert table["n"].tolist() == [40, 25]
    text = comparison_text(summarise(table), reference="a")
    assert any("not compared: scored on different subjects or folds (n 40 vs 25)" in t
               for t in text)


def test_identical_feature_sets_get_identical_results_and_adding_a_set_changes_nothing():
    rng = np.random.default_rng(2)
    ids = _ids(30)
    X = pd.DataFrame(rng.normal(size=(30, 3)), index=ids)
    labels = pd.DataFrame({"y": X[0] + rng.normal(size=30)}, index=ids)
    one = _quiet(evaluate_phenotypes, {"a": X}, labels, n_repeats=1, n_permutations=19)
    two = _quiet(evaluate_phenotypes, {"a": X, "copy": X.copy(),
                                       "other": pd.DataFrame(rng.normal(size=(30, 2)),
                                                             index=ids)},
                 labels, n_repeats=1, n_permutations=19)
    a, copy = two.set_index("feature_set").loc["a"], two.set_index("feature_set").loc["copy"]
    assert a["r2"] == copy["r2"] and a["r2_p"] == copy["r2_p"]
    assert a["r2_null_p95"] == one.loc[0, "r2_null_p95"] and a["r2_p"] == one.loc[0, "r2_p"]
    assert a["verdict"] == copy["verdict"]


def test_chance_r2_is_the_training_mean_predictor_through_the_same_folds():
    rng = np.random.default_rng(3)
    ids = _ids(12)
    table = _quiet(evaluate_phenotypes, pd.DataFrame(rng.normal(size=(12, 2)), index=ids),
                   pd.DataFrame({"y": rng.normal(size=12)}, index=ids), n_repeats=1,
                   n_permutations=0)
    assert table.loc[0, "r2_chance"] < -0.05  # below 0 at this size, measured, not assumed
    assert "small sample: 12 subjects" in table.loc[0, "caution"]
    assert "small sample" in table.loc[0, "verdict"]


def test_a_constant_target_is_not_evaluated_with_its_reason():
    ids = _ids(20)
    table = _quiet(evaluate_phenotypes, pd.DataFrame(np.eye(20)[:, :3], index=ids),
                   pd.DataFrame({"y": np.full(20, 0.61)}, index=ids), n_permutations=0)
    assert table.loc[0, "verdict"].startswith("not evaluated") and "same value" in \
        table.loc[0, "verdict"]


def test_duplicate_label_ids_are_refused():
    labels = pd.DataFrame({"y": [1.0, 2.0, 3.0]}, index=["a", "a", "b"])
    with pytest.raises(ValueError, match="duplicate subject ids"):
        evaluate_phenotypes(pd.DataFrame(np.zeros((2, 1)), index=["a", "b"]), labels)


def test_adjust_verdicts_covers_a_concatenated_table():
    rng = np.random.default_rng(4)
    ids = _ids(40)
    X = pd.DataFrame(rng.normal(size=(40, 2)), index=ids)
    labels = pd.DataFrame({"y": X[0] + 0.5 * rng.normal(size=40),
                           "z": rng.normal(size=40)}, index=ids)
    t1 = _quiet(evaluate_phenotypes, X, labels, ["y"], n_repeats=1, n_permutations=39)
    t2 = _quiet(evaluate_phenotypes, X, labels, ["z"], n_repeats=1, n_permutations=39)
    assert t1.loc[0, "n_tests"] == 1 and t1.loc[0, "evidence"]
    both = adjust_verdicts(pd.concat([t1, t2], ignore_index=True))
    assert (both["n_tests"] == 2).all()
    assert both.loc[0, "p_adj"] == pytest.approx(min(1, 2 * both.loc[0, "r2_p"]), abs=1e-12) \
        or both.loc[0, "p_adj"] >= both.loc[0, "r2_p"]


# --------------------------------------------------------------------------- survival
def _noise_survival(n, n_events, seed=0):
    rng = np.random.default_rng(seed)
    ids = _ids(n)
    event = np.zeros(n, bool)
    event[rng.choice(n, n_events, replace=False)] = True
    return (pd.DataFrame(rng.normal(size=(n, 3)), index=ids),
            pd.Series(rng.exponential(size=n) + 0.01, index=ids), pd.Series(event, index=ids))


def test_survival_with_two_events_is_refused_and_with_three_is_exploratory_never_a_crash():
    X, t, e = _noise_survival(40, 2)
    table = _quiet(evaluate_survival, X, t, e, models=("coxph",), n_repeats=1,
                   n_permutations=0)
    assert table.loc[0, "verdict"].startswith("not evaluated: 2 events")
    for seed in range(4):  # the old code raised on some of these draws
        X, t, e = _noise_survival(40, 3, seed=seed)
        row = _quiet(evaluate_survival, X, t, e, models=("coxph", "coxnet"), n_repeats=2,
                     n_permutations=3).iloc[0]
        assert "exploratory: 3 events" in row["verdict"]
        assert not row["evidence"]
        if np.isfinite(row["harrell_c_ci_low"]):
            assert 0 <= row["harrell_c_ci_low"] <= row["harrell_c_ci_high"] <= 1


def test_survival_with_few_events_is_exploratory_inside_zero_one_and_counts_failed_folds():
    X, t, e = _noise_survival(40, 6, seed=1)
    table = _quiet(evaluate_survival, X, t, e, models=("coxph",), n_repeats=2,
                   n_permutations=0)
    row = table.iloc[0]
    assert "exploratory: 6 events" in row["caution"] and "exploratory" in row["verdict"]
    for m in ("harrell_c", "uno_c"):
        if np.isfinite(row[f"{m}_ci_low"]):
            assert 0 <= row[f"{m}_ci_low"] <= row[f"{m}_ci_high"] <= 1
    assert isinstance(row["failed_folds"], str)


def test_a_degenerate_fit_is_named():
    X, t, e = _noise_survival(40, 20, seed=2)
    constant = pd.DataFrame(np.ones((40, 2)), index=X.index)
    table = _quiet(evaluate_survival, constant, t, e, models=("coxph",), n_repeats=1,
                   n_permutations=0)
    assert table.loc[0, "constant_risk_folds"] == 5
    assert table.loc[0, "verdict"].startswith("not evaluated: degenerate fit")


def test_bad_event_codes_are_refused_by_name():
    X, t, e = _noise_survival(30, 10)
    with pytest.raises(ValueError, match="event indicators must be 0/1"):
        evaluate_survival(X, t, e.astype(int).replace({1: 2}), models=("coxph",),
                          n_permutations=0)


def test_risk_group_p_value_comes_from_permutations_of_the_whole_grouping():
    X, t, e = _noise_survival(50, 30, seed=3)
    groups = _quiet(risk_groups, X, t, e, n_permutations=9)
    assert groups.logrank["n_permutations"] == 9
    assert groups.logrank["p_value"] in {k / 10 for k in range(1, 11)}
    assert "Simon" in groups.logrank["test"] and np.isfinite(groups.logrank["p_value_naive"])


# --------------------------------------------------------------------------- ids
def test_nuisance_is_joined_by_id_and_a_mistyped_id_is_named():
    rng = np.random.default_rng(5)
    ids = _ids(30)
    noise = pd.Series(rng.uniform(10, 60, 30), index=ids)
    table = pd.DataFrame({"laa": 0.3 * noise + rng.normal(size=30)}, index=ids)
    shuffled = noise.sample(frac=1, random_state=0)
    a = nuisance_sensitivity(table, noise, n_boot=50)
    b = nuisance_sensitivity(table, shuffled, n_boot=50)
    assert a.loc[0, "rho"] == b.loc[0, "rho"] > 0.8
    typo = shuffled.rename(index={ids[4]: "s0O4"})
    with pytest.raises(ValueError, match="s004"):
        nuisance_sensitivity(table, typo, n_boot=50)


def test_the_probe_report_shows_interval_holm_p_and_the_multiplicity_sentence():
    from drasclr_toolkit.probe.report import _phenotype_table, _tests_note

    rng = np.random.default_rng(3)
    ids = [f"s{i:02d}" for i in range(30)]
    X = pd.DataFrame(rng.normal(size=(30, 4)), index=ids)
    labels = pd.DataFrame({"a": X[0] + 0.3 * rng.normal(size=30), "b": rng.normal(size=30)},
                          index=ids)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = evaluate_phenotypes({"embedding": X}, labels, n_repeats=1, n_permutations=19)
    table = _phenotype_table(res).set_index("target")
    lo, hi = res.set_index("target").loc["a", ["r2_ci_low", "r2_ci_high"]]
    assert table.at["a", "95% CI"] == f"[{lo:.2f}, {hi:.2f}]"
    assert table.at["a", "p (Holm)"] == res.set_index("target").at["a", "p_adj"]
    assert "small sample" not in table.at["a", "caution"]  # 30 subjects is above 20
    note = _tests_note(res)
    assert note.startswith("2 tests, Holm-corrected") and "39 permutations" in note
    assert "No permutation null" in _tests_note(res.assign(n_permutations=0))
