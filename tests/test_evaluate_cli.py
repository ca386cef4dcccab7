"""`drasclr evaluate` on a small synthetic embeddings file and label table, and the pieces
the evaluation notebooks compose (comparison words, nuisance correlation, figures)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from drasclr_toolkit.cli.main import main
from drasclr_toolkit.embed import Embeddings
from drasclr_toolkit.evaluate import (comparison_table, comparison_text, evaluate_phenotypes,
                                      nuisance_sensitivity, summarise)
from drasclr_toolkit.viz.evaluation import result_figure
from drasclr_toolkit.evaluate import pool_embeddings


def _cohort(n: int = 30, seed: int = 0):
    rng = np.random.default_rng(seed)
    ids = [f"s{i:03d}" for i in range(n)]
    severity = rng.uniform(0, 1, n)
    patch = rng.normal(size=(n, 6, 8)).astype(np.float32)
    patch[:, :, 0] += 3 * severity[:, None]  # the signal lives in feature 0
    landmarks = np.array([[x, 0, z] for x in (0, 64) for z in (0, 32, 64)])
    emb = Embeddings(patch, ids, landmarks, np.zeros((6, 3)), np.ones((n, 6)))
    time = rng.exponential(np.exp(-2 * severity)) + 0.05
    labels = pd.DataFrame({"subject_id": ids, "fev1_pp": 100 - 50 * severity + rng.normal(0, 3, n),
                           "gold": (severity > 0.5).astype(int), "time": time,
                           "event": (rng.random(n) < 0.7).astype(int)})
    return emb, labels


def test_evaluate_cli_writes_tables_and_offline_figures(tmp_path, capsys):
    emb, labels = _cohort()
    emb.save(tmp_path / "trained.npz")
    noise = Embeddings(np.random.default_rng(1).normal(size=emb.patch.shape), emb.subject_ids,
                       emb.landmarks, emb.landmark_coords, emb.lung_fraction)
    noise.save(tmp_path / "random.npz")
    labels.to_csv(tmp_path / "labels.csv", index=False)
    out = tmp_path / "out"
    code = main(["evaluate", "--embeddings", str(tmp_path / "trained.npz"),
                 "--embeddings", f"random-init={tmp_path / 'random.npz'}",
                 "--labels", str(tmp_path / "labels.csv"), "--out", str(out),
                 "--n-repeats", "1", "--n-permutations", "9",
                 "--n-survival-permutations", "2", "--n-risk-group-permutations", "3",
                 "--models", "coxph"])
    assert code == 0, capsys.readouterr()
    for name in ("phenotypes.csv", "phenotypes.html", "survival.csv", "survival.html",
                 "km_trained.html", "km_random-init.html", "comparison.csv", "report.html"):
        assert (out / name).is_file(), name
    table = pd.read_csv(out / "phenotypes.csv")
    assert set(table["feature_set"]) == {"trained", "random-init"}
    assert set(table["target"]) == {"fev1_pp", "gold"}
    fev1 = table.set_index(["feature_set", "target"])["r2"]
    assert fev1[("trained", "fev1_pp")] > 0.5 > fev1[("random-init", "fev1_pp")]
    page = (out / "report.html").read_text()
    assert "drasclr-plotlyjs" in page and "https://cdn" not in page  # offline


def test_evaluate_cli_without_survival_columns_says_so(tmp_path, capsys):
    emb, labels = _cohort(20)
    emb.save(tmp_path / "e.npz")
    labels.drop(columns=["time", "event"]).to_csv(tmp_path / "labels.csv", index=False)
    code = main(["evaluate", "--embeddings", f"drasclr={tmp_path / 'e.npz'}", "--labels",
                 str(tmp_path / "labels.csv"), "--out", str(tmp_path / "o"), "--targets",
                 "fev1_pp", "--n-repeats", "1", "--n-permutations", "0"])
    assert code == 0
    assert "survival: skipped (no time/event columns)" in capsys.readouterr().out
    assert not (tmp_path / "o" / "survival.csv").exists()


def test_evaluate_cli_reports_a_missing_target_without_traceback(tmp_path, capsys):
    emb, labels = _cohort(10)
    emb.save(tmp_path / "e.npz")
    labels.to_csv(tmp_path / "labels.csv", index=False)
    code = main(["evaluate", "--embeddings", str(tmp_path / "e.npz"), "--labels",
                 str(tmp_path / "labels.csv"), "--out", str(tmp_path / "o"), "--targets", "mmrc"])
    assert code == 1
    assert "mmrc" in capsys.readouterr().err


def test_comparison_words_follow_the_numbers():
    emb, labels = _cohort(40)
    labels = labels.set_index("subject_id")
    rng = np.random.default_rng(2)
    sets = {"drasclr": pool_embeddings(emb, "mean"),
            "random-init": pd.DataFrame(rng.normal(size=(40, 8)), index=emb.subject_ids)}
    table = evaluate_phenotypes(sets, labels, ["fev1_pp"], n_repeats=1, n_permutations=39)
    long = summarise(table)
    assert long.set_index("feature_set")["evidence"].to_dict() == {"drasclr": True,
                                                                    "random-init": False}
    words, paired = comparison_text(long, reference="drasclr")
    assert "evidence for drasclr" in words and "no evidence for random-init" in words
    # "higher" only from the paired test on the same folds, never from CI overlap
    assert "paired corrected t-test" in paired and paired.endswith("drasclr higher.")
    grid = comparison_table(long)
    assert grid.loc["drasclr", "fev1_pp"].endswith("*")
    assert len(result_figure(long).data) >= 2


def test_nuisance_sensitivity_finds_a_noise_driven_measure():
    rng = np.random.default_rng(0)
    noise = pd.Series(rng.uniform(10, 60, 50), name="noise_hu")
    table = pd.DataFrame({"laa950": 0.3 * noise + rng.normal(0, 2, 50),
                          "disease": rng.normal(size=50)})
    out = nuisance_sensitivity(table, noise, n_boot=200).set_index("measure")
    assert out.loc["laa950", "ci_low"] > 0
    assert out.loc["disease", "verdict"].startswith("no evidence")


@pytest.mark.parametrize("bad", ["nope=missing.npz"])
def test_evaluate_cli_names_a_missing_embeddings_file(tmp_path, capsys, bad):
    (tmp_path / "labels.csv").write_text("subject_id,fev1_pp\na,1\n")
    code = main(["evaluate", "--embeddings", bad, "--labels", str(tmp_path / "labels.csv"),
                 "--out", str(tmp_path / "o")])
    assert code == 1 and "missing.npz" in capsys.readouterr().err


def test_a_zero_width_interval_supports_no_claim():
    long = summarise(pd.DataFrame({
        "feature_set": ["drasclr", "zones"], "model": ["coxph"] * 2, "harrell_c": [0.9, 0.0],
        "harrell_c_ci_low": [0.6, 0.0], "harrell_c_ci_high": [1.0, 0.0],
        "harrell_c_null_p95": [0.8, 0.8], "harrell_c_p": [0.3, 1.0], "verdict": ["", ""],
        "n": [12, 12]}))
    words, paired = comparison_text(long, reference="drasclr")
    assert "below chance" not in words and "no evidence for drasclr, zones" in words
    assert "not compared: no per-fold values" in paired


def test_one_label_loader_for_files_and_tables(tmp_path):
    from drasclr_toolkit.data.labels import load_labels
    from drasclr_toolkit.errors import LabelError

    assert load_labels(None) is None
    frame = pd.DataFrame({"fev1_pp": [80.0, 60.0], "event": [0, 1]},
                         index=pd.Index([1, 2], name="subject_id"))
    table = load_labels(frame)
    assert table.index.tolist() == ["1", "2"] and table["event"].tolist() == [0, 1]
    frame.reset_index().to_csv(tmp_path / "l.csv", index=False)
    pd.testing.assert_frame_equal(load_labels(tmp_path / "l.csv"), table)
    with pytest.raises(LabelError, match=r"--labels .*l2\.csv, column 'event'"):
        (tmp_path / "l2.csv").write_text("subject_id,event\na,2\n")
        load_labels(tmp_path / "l2.csv", what="--labels")
