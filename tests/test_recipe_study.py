"""The recipe study's own parts (issue 18): the probe that chooses lung zones inside the
training folds, and the selection rule of benchmarks/selection_rule.md as code."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from drasclr_toolkit.errors import InputError
from drasclr_toolkit.evaluate.probes import column_groups, evaluate_phenotypes
from drasclr_toolkit.preprocess.densitometry import ZONES


def _bench_recipe():
    path = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_recipe.py"
    spec = importlib.util.spec_from_file_location("bench_recipe_rule", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _zone_cohort(n: int = 32, d: int = 64, seed: int = 0):
    """Six zones × d features for n subjects; the target is carried by one zone only,
    spread over all its features (as a zone's mean embedding would carry it)."""
    rng = np.random.default_rng(seed)
    latent = rng.normal(size=n)
    X = 2.0 * rng.normal(size=(n, 6 * d))
    X[:, :d] += np.outer(latent, rng.normal(size=d))          # the first zone
    ids = [f"s{i:02d}" for i in range(n)]
    frame = pd.DataFrame(X, index=ids, columns=[f"{z}_h{j}" for z in ZONES for j in range(d)])
    labels = pd.DataFrame({"severity": latent + 0.3 * rng.normal(size=n),
                           "noise": rng.normal(size=n)}, index=ids)
    return frame, labels


def test_zone_stack_finds_the_one_zone_that_carries_the_target():
    frame, labels = _zone_cohort()
    table = evaluate_phenotypes({"linear": frame, "stacked": frame}, labels,
                                ["severity", "noise"], n_repeats=2, n_permutations=0,
                                probe={"stacked": "zone_stack"}).set_index(["feature_set", "target"])
    assert table.loc[("stacked", "severity"), "probe"] == "zone_stack"
    assert table.loc[("linear", "severity"), "probe"] == "linear"
    stacked, linear = table.loc[("stacked", "severity"), "r2"], table.loc[("linear", "severity"), "r2"]
    # all 384 columns at once dilute the one zone; choosing inside the folds does not
    assert stacked > linear + 0.2, (stacked, linear)
    assert table.loc[("stacked", "severity"), "r2_ci_low"] > 0.3
    # and a target no zone carries is not found
    assert table.loc[("stacked", "noise"), "r2_ci_low"] < 0
    assert table.loc[("stacked", "noise"), "r2"] < 0.1
    # same subjects and folds: the two designs can be compared fold by fold
    assert table.loc[("stacked", "severity"), "splits_id"] == table.loc[("linear", "severity"), "splits_id"]


def test_zone_stack_names_the_set_when_its_columns_are_not_zones():
    frame, labels = _zone_cohort(d=4)
    plain = frame.set_axis([f"h{j}" for j in range(frame.shape[1])], axis=1)
    with pytest.raises(InputError, match="'mean pooled'.*zone_stack.*<zone>_h<j>"):
        evaluate_phenotypes({"mean pooled": plain}, labels, ["severity"], n_repeats=1,
                            n_permutations=0, probe="zone_stack")
    with pytest.raises(InputError, match="unknown probe 'lasso'"):
        evaluate_phenotypes(frame, labels, ["severity"], n_repeats=1, n_permutations=0,
                            probe="lasso")


def test_column_groups_keep_the_zone_order_and_skip_absent_zones():
    cols = ["left_upper_h0", "right_upper_h0", "right_upper_h1", "other"]
    assert column_groups(cols, ZONES) == {"right_upper": [1, 2], "left_upper": [0]}


def _rule_rows(scores: dict[str, list[float]], nuisance: dict[str, float] | None = None,
               learning: dict[str, list[bool]] | None = None) -> pd.DataFrame:
    mod = _bench_recipe()
    rows = []
    for variant, per_seed in scores.items():
        for seed, score in enumerate(per_seed):
            for target in mod.DISEASE + mod.NUISANCE:
                rows.append(dict(
                    variant=variant, seed=seed, pooling=mod.RULE_POOLING, target=target,
                    r2=score if target in mod.DISEASE else (nuisance or {}).get(variant, 0.0),
                    learning=(learning or {}).get(variant, [True] * 3)[seed]
                    if not variant.startswith("random") else None,
                    random_init="random-init"))
    return pd.DataFrame(rows)


def test_rule_keeps_the_default_when_the_lead_is_within_seed_noise():
    mod = _bench_recipe()
    # "noisy" leads by 0.03 on average, but its paired differences are +0.3, -0.2, 0
    tidy = _rule_rows({"baseline": [0.5, 0.5, 0.5], "noisy": [0.8, 0.3, 0.49],
                       "random-init": [0.0, 0.0, 0.0]})
    table, chosen = mod.apply_rule(tidy)
    assert table.loc["noisy", "score"] > table.loc["baseline", "score"]
    assert table.loc["noisy", "diff"] < table.loc["noisy", "se_diff"]
    assert chosen == "baseline"


def test_rule_excludes_nuisance_learners_short_runs_and_non_learners():
    mod = _bench_recipe()
    tidy = _rule_rows({"baseline": [0.3, 0.3, 0.3], "scanner": [0.9, 0.9, 0.9],
                       "stalled": [0.9, 0.9, 0.9], "one-seed": [0.9],
                       "random-init": [0.0, 0.0, 0.0]},
                      nuisance={"scanner": 0.2, "random-init": 0.1},
                      learning={"stalled": [True, False, True]})
    table, chosen = mod.apply_rule(tidy, timings={("baseline", 0): 500.0})
    assert chosen == "baseline"
    assert "nuisance" in table.loc["scanner", "why_not"]
    assert "not learning" in table.loc["stalled", "why_not"]
    assert "1 seed(s)" in table.loc["one-seed", "why_not"]
    assert table.loc["baseline", "pretrain_max_s"] == 500.0
    # a run over the 15-minute budget is out too
    table, chosen = mod.apply_rule(tidy, timings={("baseline", 0): 1000.0})
    assert chosen is None and "budget" in table.loc["baseline", "why_not"]


def test_seed_interval_holds_its_type_one_error_and_coverage():
    """The t-interval over seeds that study_sentences prints: under no difference (normal
    per-seed differences, 3 seeds, as in the study) it excludes 0 about 5 % of the time,
    and it covers a true shift about 95 % of the time."""
    from drasclr_toolkit.lab import seed_paired_interval

    rng = np.random.default_rng(7)
    draws = rng.normal(scale=0.05, size=(4000, 3))
    null = [seed_paired_interval(d) for d in draws]
    rejections = np.mean([low > 0 or high < 0 for _, low, high in null])
    assert 0.04 <= rejections <= 0.06, rejections
    covered = np.mean([low <= 0.1 <= high for _, low, high in
                       (seed_paired_interval(d + 0.1) for d in draws)])
    assert 0.94 <= covered <= 0.96, covered
    assert np.isnan(seed_paired_interval([0.2])[1])


def _write_study(base: Path, tidy: pd.DataFrame) -> None:
    import json

    mod = _bench_recipe()
    rule, chosen = mod.apply_rule(tidy)
    tidy.to_csv(base.with_suffix(".csv"), index=False)
    rule.to_csv(base.parent / f"{base.name}_rule.csv")
    base.with_suffix(".json").write_text(json.dumps({
        "config": "small", "seeds": [0, 1, 2], "rule_pooling": mod.RULE_POOLING,
        "chosen": chosen, "date": "2026-12-07", "machine": "x86_64, 2 cores", "commit": "abc",
        "command": "python benchmarks/bench_recipe.py", "disease": list(mod.DISEASE),
        "nuisance": list(mod.NUISANCE)}))


def test_recorded_study_reads_the_files_and_says_what_each_part_buys(tmp_path):
    from drasclr_toolkit.lab import recorded_study, study_sentences
    from drasclr_toolkit.viz.compare import study_figure

    assert recorded_study(tmp_path / "absent") is None
    tidy = _rule_rows({"baseline": [0.50, 0.52, 0.48],
                       "no-conditioning": [0.30, 0.31, 0.29],       # conditioning helps
                       "no-neighbour-loss": [0.55, 0.45, 0.50],     # within seed noise
                       "random-init": [0.10, 0.12, 0.08]})
    dens = _rule_rows({"densitometry": [0.60]}).assign(seed=np.nan, pooling="zones")
    _write_study(tmp_path / "study", pd.concat([tidy, dens], ignore_index=True))
    study = recorded_study(tmp_path / "study")
    assert study["chosen"] == "baseline" and study["provenance"]["commit"] == "abc"
    summary = study["summary"].set_index(["variant", "pooling"])
    assert summary.loc[("no-conditioning", "zones_lung_weighted"), "seeds"] == 3
    assert summary.loc[("baseline", "zones_lung_weighted"), "disease mean"] == pytest.approx(0.5)
    text = study_sentences(study)
    cond = next(t for t in text if t.startswith("anatomy conditioning"))
    assert "+0.200" in cond and "helps" in cond
    neighbour = next(t for t in text if t.startswith("the neighbour loss"))
    assert "no evidence either way" in neighbour
    assert any(t.startswith("baseline − the random-init encoder = +0.400") and
               "the baseline is better" in t for t in text)
    assert any(t.startswith("baseline − zone densitometry = -0.100") for t in text)
    fig = study_figure(study["tidy"], study["provenance"]["disease"], pooling="zones_lung_weighted")
    names = {t.name for t in fig.data if t.name}
    assert {"random-init (mean)", "zone densitometry"} <= names
    assert "R²" in fig.layout.yaxis.title.text


def test_live_ablation_asks_for_targets_on_a_cohort_without_ground_truth(tmp_path):
    from drasclr_toolkit.lab import live_ablation
    from drasclr_toolkit.workspace import Workspace

    small = {"synthetic": {"n_subjects": 2, "spacing": 3.0, "size_scale": 0.5, "seed": 3}}
    cohort = Workspace(tmp_path / "syn", small).cohort()
    real = Workspace(tmp_path / "real", small, manifest=cohort.path)
    with pytest.raises(InputError, match="no ground truth; pass targets="):
        live_ablation(real, "no-conditioning", conditioning="none")
    with pytest.raises(InputError, match=r"targets \['nope'\] are not in the labels"):
        live_ablation(real, "no-conditioning", targets=["nope"], conditioning="none")
