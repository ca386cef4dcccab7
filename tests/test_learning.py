"""Does pretraining learn, measured against chance; BatchNorm recalibration of a random encoder."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from drasclr_toolkit.patch_source import ArrayPatchSource
from drasclr_toolkit.train import PretrainConfig, pretrain, read_metrics
from drasclr_toolkit.train.loop import negatives_per_anchor
from drasclr_toolkit.train.sampler import spread_locations
from drasclr_toolkit.train.summary import format_learning_summary, learning_summary

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SMALL = dict(width=0.125, rep_dim=16, proj_dim=16, num_experts=2, queue_size=8, batch_size=4,
             progress=False, device="cpu", cpu_threads=1, checkpoint_every=100)


# -- learning_summary --------------------------------------------------------------------------
def frame(loss: np.ndarray, acc: np.ndarray, n_neg: float | None = 15.0) -> pd.DataFrame:
    df = pd.DataFrame({"step": np.arange(1, len(loss) + 1), "loss_local": loss, "acc_local": acc})
    if n_neg is not None:
        df["n_negatives"] = n_neg
        df["chance_acc"] = 1.0 / (1.0 + n_neg)
    return df


def test_summary_sees_learning_when_loss_falls_and_accuracy_beats_chance():
    s = learning_summary(frame(np.linspace(2.8, 1.5, 50), np.linspace(0.06, 0.4, 50)))
    assert s["loss_first"] == pytest.approx(np.linspace(2.8, 1.5, 50)[:5].mean())
    assert s["loss_last"] == pytest.approx(np.linspace(2.8, 1.5, 50)[-5:].mean())
    assert s["chance_last"] == pytest.approx(1 / 16)
    assert s["ratio"] == pytest.approx(np.linspace(0.06, 0.4, 50)[-5:].mean() * 16)
    assert s["loss_chance_last"] == pytest.approx(math.log(16))
    assert s["loss_falls"] and s["beats_chance"] and s["learning"]
    assert "verdict: learning visible" in format_learning_summary(s)


def test_summary_at_chance_is_no_learning():
    rng = np.random.default_rng(0)
    s = learning_summary(frame(math.log(16) + 0.02 * rng.normal(size=40), np.full(40, 1 / 16)))
    assert not s["loss_falls"] and not s["beats_chance"] and not s["learning"]
    assert s["ratio"] == pytest.approx(1.0)
    text = format_learning_summary(s)
    assert "no clear learning" in text and "learning visible" not in text


def test_summary_loss_falls_but_accuracy_near_chance_is_not_enough():
    s = learning_summary(frame(np.linspace(3, 2, 30), np.full(30, 2 / 16)))
    assert s["loss_falls"] and not s["beats_chance"] and not s["learning"]


def test_summary_of_an_old_log_without_negatives():
    s = learning_summary(frame(np.linspace(3, 2, 30), np.full(30, 0.5), n_neg=None))
    assert math.isnan(s["ratio"]) and not s["beats_chance"] and s["loss_falls"]
    with pytest.raises(ValueError, match="empty"):
        learning_summary(pd.DataFrame())


# -- what the loop logs ------------------------------------------------------------------------
def test_negatives_per_anchor_counts_masked_entries():
    n, chance = negatives_per_anchor(None, 4, 7)
    assert float(n) == 7 and float(chance) == pytest.approx(1 / 8)
    n, chance = negatives_per_anchor(torch.tensor([True, True, False]), 2, 3)
    assert float(n) == 2 and float(chance) == pytest.approx(1 / 3)
    mask = torch.tensor([[True, True, True], [False, False, False]])
    n, chance = negatives_per_anchor(mask, 2, 3)
    assert float(n) == 1.5 and float(chance) == pytest.approx((1 / 4 + 1) / 2)


def test_metrics_log_negatives_and_chance(tmp_path):
    src = ArrayPatchSource.synthetic(n_subjects=8, n_locations=3, patch_size=20, seed=0)
    cfg = dict(SMALL, max_steps=6, epochs=10, batch_negatives=True)
    pretrain(src, cfg, tmp_path)
    df = read_metrics(tmp_path)
    assert {"n_negatives", "chance_acc", "loss_local", "acc_local"} <= set(df.columns)
    # Step 1: the queue is empty, the 3 other subjects of the batch are the negatives.
    assert df.n_negatives.iloc[0] == 3 and df.chance_acc.iloc[0] == pytest.approx(0.25)
    # Later steps add queued keys of other subjects (the own subject's are excluded).
    assert df.n_negatives.iloc[-1] > 3
    assert df.chance_acc.iloc[-1] < 0.25
    assert np.allclose(df.chance_acc, 1 / (1 + df.n_negatives), atol=0.02)


# -- a subset of anchor locations and the epoch accounting -------------------------------------
def test_spread_locations_are_spread_and_deterministic():
    grid = np.stack(np.meshgrid(*[np.arange(5) * 16] * 3, indexing="ij"), -1).reshape(-1, 3)
    chosen = spread_locations(grid, 8)
    assert len(chosen) == 8 and len(set(chosen.tolist())) == 8
    assert np.array_equal(chosen, spread_locations(grid, 8))
    pts = grid[chosen]
    d = np.sqrt(((pts[:, None] - pts[None]) ** 2).sum(-1)) + np.eye(8) * 1e9
    assert d.min() >= 32          # no two chosen landmarks are grid neighbours
    assert np.array_equal(spread_locations(grid, 500), np.arange(len(grid)))


def test_train_locations_restrict_the_anchors_and_set_the_epoch(tmp_path):
    from drasclr_toolkit.train import PretrainRun

    src = ArrayPatchSource.synthetic(n_subjects=6, n_locations=8, patch_size=20, seed=0)
    run = PretrainRun(src, dict(SMALL, train_locations=3, epochs=2), tmp_path)
    assert len(run.sampler.locations) == 3
    assert run.sampler.batches_per_epoch == 3 * 2            # 6 subjects / batch 4 → 2 a location
    assert run.total_steps == 2 * run.sampler.batches_per_epoch
    assert {b.loc for b in run.sampler} <= set(run.sampler.locations.tolist())
    with pytest.raises(ValueError, match="train_locations"):
        PretrainConfig.from_dict({"train_locations": 0})


def test_tiny_config_says_what_happens(tmp_path):
    """The tiny run's length is epochs × steps per epoch: no max_steps cutting it short."""
    from drasclr_toolkit.train import PretrainRun

    cfg = PretrainConfig.from_yaml("tiny")
    assert cfg.max_steps is None
    src = ArrayPatchSource(np.zeros((12, 76, 20, 20, 20), np.int16),
                           np.stack(np.meshgrid(*[np.arange(5) * 16] * 3), -1).reshape(-1, 3)[:76])
    run = PretrainRun(src, cfg.replace(device="cpu", width=0.125), tmp_path)
    assert run.total_steps == cfg.epochs * run.sampler.batches_per_epoch


# -- BatchNorm recalibration: an honest random-init baseline --------------------------------
def test_recalibrated_random_encoder_tells_air_from_soft_tissue():
    from drasclr_toolkit.models import DrasCLREncoder
    from drasclr_toolkit.models.batchnorm import location_batches, recalibrate_batchnorm
    from drasclr_toolkit.ssl import hu_to_unit

    torch.manual_seed(0)
    enc = DrasCLREncoder(width=0.25, num_experts=4).eval()
    src = ArrayPatchSource.synthetic(n_subjects=8, n_locations=4, patch_size=32, seed=0)
    air = hu_to_unit(torch.full((1, 1, 32, 32, 32), -1000.0))
    soft = hu_to_unit(torch.full((1, 1, 32, 32, 32), 40.0))
    loc = torch.as_tensor(src.landmark_coords[1])

    def cosine() -> float:
        with torch.no_grad():
            return float(F.cosine_similarity(enc.encode(air, loc), enc.encode(soft, loc)))

    # The defect: initial running statistics (0, 1) make every input look alike.
    assert cosine() > 0.999
    weights = {k: v.clone() for k, v in enc.state_dict().items() if "running" not in k
               and "num_batches" not in k}
    used = recalibrate_batchnorm(enc, location_batches(src, batch_size=8))
    assert used == 4 and not enc.training
    assert cosine() < 0.9
    for k, v in weights.items():                             # only BN buffers changed
        assert torch.equal(enc.state_dict()[k], v), k
    bn = enc.features[0].bn
    assert bn.momentum == 0.1 and int(bn.num_batches_tracked) == 4
    with pytest.raises(ValueError, match="no batch"):
        recalibrate_batchnorm(enc, [])


# -- prefilled queues: a constant chance level from the first step -----------------------------
def test_prefilled_queues_give_full_negatives_from_step_one_and_resume_exactly(tmp_path):
    src = ArrayPatchSource.synthetic(n_subjects=8, n_locations=3, patch_size=20, seed=0)
    cfg = dict(SMALL, max_steps=6, epochs=10, batch_negatives=True, prefill_queues=True)
    whole = pretrain(src, cfg, tmp_path / "whole")
    df = read_metrics(tmp_path / "whole")
    # 8 queued keys (batches of 4: two other-subject keys a batch less the own subject's)
    # plus 3 in-batch keys, from the first step on.
    assert df.n_negatives.iloc[0] > 3 + 4
    assert abs(df.n_negatives.iloc[0] - df.n_negatives.iloc[-1]) <= 2
    pretrain(src, cfg, tmp_path / "split", stop_after_steps=3)
    resumed = pretrain(src, cfg, tmp_path / "split")
    a, b = torch.load(whole, weights_only=True), torch.load(resumed, weights_only=True)
    for name, tensor in a["encoder"].items():
        assert torch.equal(tensor, b["encoder"][name]), name


# -- end to end: the tiny defaults learn --------------------------------------------------------
def test_tiny_defaults_learn_on_a_small_synthetic_store(tmp_path):
    """tiny.yaml's learning settings (no queue: fresh batch negatives; lr, key momentum,
    temperature, augmentation strength) on a small in-memory store where each subject's
    patch carries its own smooth tissue texture (what tells subjects apart at a landmark;
    ``ArrayPatchSource.synthetic`` alone differs only by hole density, too little for 100
    steps): the loss falls and the accuracy beats chance by the notebook's margins. 20³
    patches and 4 anchor landmarks: ~25 s. Measured: loss −36 % / −26 %, accuracy 4.8× /
    3.7× chance for seeds 0 / 1; this test runs seed 0 (deterministic)."""
    from scipy.ndimage import gaussian_filter

    base = ArrayPatchSource.synthetic(n_subjects=8, n_locations=6, patch_size=20, seed=0)
    rng = np.random.default_rng(1)
    texture = np.stack([[gaussian_filter(rng.normal(size=(20,) * 3), 2.0) for _ in range(6)]
                        for _ in range(8)])
    patches = base.patches.astype(np.float32) + 100.0 * texture / texture.std()
    src = ArrayPatchSource(np.clip(patches, -1024, 240).astype(np.int16), base.landmarks, k_neighbors=2)
    cfg = PretrainConfig.from_yaml("tiny").replace(
        device="cpu", progress=False, train_locations=4, epochs=25, checkpoint_every=10_000,
        keep_epoch_checkpoints=False)
    pretrain(src, cfg, tmp_path)
    s = learning_summary(read_metrics(tmp_path))   # the notebook's bounds: -5 %, 3x chance
    text = format_learning_summary(s)
    assert s["steps"] == 100, text
    assert s["loss_falls"], text
    assert s["beats_chance"], text


def test_small_config_is_packaged_and_says_what_happens():
    from drasclr_toolkit.config import load_config

    config = load_config("small")
    assert {"synthetic", "preprocess", "pretrain", "embed"} <= set(config)
    cfg = PretrainConfig.from_yaml("small")
    # fresh negatives (no queue) from the whole batch, as tiny (benchmarks/learning.md)
    assert cfg.max_steps is None and cfg.queue_size == 0 and cfg.batch_negatives and cfg.train_locations


def test_small_benchmark_overrides_make_the_seed_and_length_runs_reproducible(repo_root):
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "bench_small_config", repo_root / "benchmarks" / "bench_small_config.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    cfg, label = bench.with_overrides("small", ["pretrain.seed=1", "pretrain.epochs=20"])
    assert cfg["pretrain"]["seed"] == 1 and cfg["pretrain"]["epochs"] == 20
    assert cfg["pretrain"]["lr"] == PretrainConfig.from_yaml("small").lr  # the rest unchanged
    assert label == "small + pretrain.seed=1, pretrain.epochs=20"
    assert bench.with_overrides("small", []) == ("small", "small")
    with pytest.raises(SystemExit, match="SECTION.KEY=VALUE"):
        bench.with_overrides("small", ["seed=1"])


# -- identical-views check: is the learning rate safe for the encoder? -------------------------
def test_identical_views_check_flags_a_learning_rate_that_undoes_the_encoder():
    from drasclr_toolkit.train.diagnostics import identical_views_check

    src = ArrayPatchSource.synthetic(n_subjects=8, n_locations=4, patch_size=20, seed=0)
    base = dict(width=0.25, num_experts=4, rep_dim=32, proj_dim=32, cpu_threads=1)
    safe, ok_safe = identical_views_check(src, dict(base, lr=0.001), steps=6, batch_size=8)
    bad, ok_bad = identical_views_check(src, dict(base, lr=0.5), steps=6, batch_size=8)
    assert safe["acc_local"].iloc[0] == 1.0 and ok_safe, safe
    assert not ok_bad and bad["acc_local"].iloc[-3:].mean() < 0.5, bad
