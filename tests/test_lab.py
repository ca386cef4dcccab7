"""The teaching lab's computations: each hand computation agrees with the library's."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from drasclr_toolkit import lab
from drasclr_toolkit.models import DrasCLREncoder
from drasclr_toolkit.patch_source import ArrayPatchSource

SMALL = {"width": 0.125, "rep_dim": 8, "proj_dim": 8, "num_experts": 3, "queue_size": 0,
         "batch_negatives": True, "neighbours": 2, "temperature": 0.2}


@pytest.fixture(scope="module")
def source():
    return ArrayPatchSource.synthetic(n_subjects=5, n_locations=4, patch_size=16, seed=1)


def test_the_hand_loss_is_the_library_loss_at_every_temperature(source, one_torch_thread):
    for t in (0.05, 0.2, 1.0):
        step = lab.open_contrastive_step(source, {**SMALL, "temperature": t}, loc=2)
        assert step.similarity.shape == (5, 5) and step.logits.shape == (5, 5)
        assert torch.allclose(step.logits, step.similarity / t)
        assert step.loss_by_hand == pytest.approx(step.loss_library, abs=1e-5)
        # cosines of unit vectors
        assert float(step.similarity.abs().max()) <= 1.0 + 1e-5
    assert step.neighbour_query.shape == (5, 8) and len(step.neighbour_locs) == 2
    assert np.isfinite(step.neighbour_loss)


def test_a_trained_checkpoint_is_opened_with_its_own_weights(source, tmp_path, one_torch_thread):
    from drasclr_toolkit.train import pretrain

    cfg = {**SMALL, "batch_size": 5, "max_steps": 2, "progress": False, "device": "cpu"}
    final = pretrain(source, cfg, tmp_path / "run")
    fresh = lab.open_contrastive_step(source, cfg, loc=1)
    trained = lab.open_contrastive_step(source, cfg, loc=1, checkpoint=final)
    assert not torch.allclose(fresh.query, trained.query)
    acc = lab.fresh_contrast_accuracy(source, final, cfg, locations=[0, 1])
    assert acc["trials"] == 10 and acc["chance"] == pytest.approx(0.2)
    assert 0.0 <= acc["accuracy"] <= 1.0


def test_softmax_sharpens_as_the_temperature_falls():
    table = lab.softmax_at_temperatures([0.6, 0.5, 0.1], (0.05, 0.2, 1.0))
    assert np.allclose(table.sum(), 1.0)
    assert list(table.iloc[0]) == sorted(table.iloc[0], reverse=True)


def test_momentum_by_hand_matches_update_momentum_and_a_larger_m_lags_more():
    q = DrasCLREncoder(rep_dim=8, proj_dim=8, num_experts=2, width=0.125)
    k = lab.make_key_encoder(q)
    with torch.no_grad():
        next(q.parameters()).add_(1.0)
    assert lab.momentum_by_hand(q, k, 0.9) < 1e-6
    drift = lab.momentum_demo((0.9, 0.999), steps=100)
    lag = (drift["query"] - drift[["key m=0.9", "key m=0.999"]].T).T.abs().iloc[-1]
    assert lag["key m=0.999"] > lag["key m=0.9"]


def test_condconv_toy_mixes_the_layers_own_kernels():
    torch.manual_seed(0)
    enc = DrasCLREncoder(rep_dim=8, proj_dim=8, num_experts=3, width=0.125)
    toy = lab.condconv_toy(enc, {"apex": [0, 0, 1], "centre": [0, 0, 0], "base": [0, 0, -1]})
    assert toy["max_error"] < 1e-6
    assert toy["routing"].shape == (3, 3) and ((toy["routing"] > 0) & (toy["routing"] < 1)).all().all()
    assert not np.allclose(toy["kernels"]["apex"], toy["kernels"]["base"])
    with pytest.raises(ValueError, match="not a conditional convolution"):
        lab.condconv_toy(DrasCLREncoder(rep_dim=8, proj_dim=8, width=0.125, conditioning="none"),
                         {"a": [0, 0, 0]})


def test_harrell_c_by_hand_is_scikit_survivals():
    from sksurv.metrics import concordance_index_censored

    rng = np.random.default_rng(3)
    for _ in range(5):
        t = rng.uniform(1, 10, 12)
        e = rng.random(12) < 0.7
        r = rng.integers(0, 4, 12).astype(float)      # ties included
        pairs, c = lab.harrell_c_by_hand(t, e, r)
        assert len(pairs) == 66
        assert c == pytest.approx(concordance_index_censored(e, t, r)[0])


def test_settings_table_reads_the_files():
    from drasclr_toolkit.train import PretrainConfig

    table = lab.settings_table(("tiny", "gpu"))
    assert table.loc["num_experts", "tiny"] == PretrainConfig.from_yaml("tiny").num_experts
    assert table.loc["key_momentum", "published"] == 0.999
    assert lab.run_augmenter(PretrainConfig.from_yaml("tiny"), 32).params["translate"] == 1.0


def test_densitometry_of_values_is_the_library_definition():
    from drasclr_toolkit.evaluate import densitometry

    rng = np.random.default_rng(0)
    ct = rng.normal(-850, 80, (6, 8, 8))
    mask = np.ones_like(ct, dtype=np.uint8)
    lib = densitometry(ct, mask, spacing=(1, 1, 1), zones=False, histogram=False)
    mine = lab.densitometry_of_values(ct[mask > 0])
    for key in ("laa950_pct", "perc15_hu", "mld_hu"):
        assert mine[key] == pytest.approx(lib[key])


def test_worked_figures_draw(source):
    from drasclr_toolkit.viz import worked

    step = lab.open_contrastive_step(source, SMALL, loc=0)
    assert worked.similarity_heatmap(step).data[0].type == "heatmap"
    assert len(worked.softmax_figure(lab.softmax_at_temperatures([0.5, 0.1])).data) == 3
    assert len(worked.permutation_null_figure(0.3, np.linspace(-0.5, 0.5, 50)).data) == 1
    fig = worked.survival_pairs_figure([1, 2], [True, False], [0.5, 0.1], ["a", "b"])
    assert {d.name for d in fig.data if d.name} == {"event", "censored"}


def test_recorded_exercise_times_reads_the_benchmark_file_or_says_none(tmp_path):
    import json

    from drasclr_toolkit.lab import recorded_exercise_times

    assert recorded_exercise_times(tmp_path / "absent.json") is None
    path = tmp_path / "lab_exercises.json"
    path.write_text(json.dumps({"machine": {"cpus": 2, "date": "d", "commit": "c"}, "rows": [
        {"exercise": "beta-0", "change": {"beta": 0.0}, "train_s": 70.0, "compare_s": 12.5,
         "total_s": 82.5, "total_cpu_s": 80.0, "load_before": 1.2}]}))
    table = recorded_exercise_times(path)
    assert table.loc[0, "change"] == "beta=0.0" and table.loc[0, "total (s)"] == 82.5
    assert "2 CPUs" in table.attrs["machine"]
