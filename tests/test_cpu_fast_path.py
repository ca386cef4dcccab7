"""The fast CPU path of pretraining (issue 18): bf16 autocast on the CPU, batched torch
augmentation, the patches held in memory. Same losses as the float32 path within a stated
tolerance; each switch does what it says. Speed itself is measured in
benchmarks/bench_cpu_step.py, not here."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from drasclr_toolkit.config import load_config
from drasclr_toolkit.patch_source import ArrayPatchSource, CachedPatchSource, cached_source
from drasclr_toolkit.train import PretrainConfig, pretrain, read_metrics
from drasclr_toolkit.train.loop import PretrainRun

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# 32³ patches: the encoder's real input size (bf16 error grows with depth, so test it all).
RUN = dict(width=0.25, num_experts=4, queue_size=0, batch_negatives=True, batch_size=8,
           progress=False, device="cpu", cpu_threads=1, checkpoint_every=100, lr=0.005,
           key_momentum=0.99)


@pytest.fixture(scope="module")
def source() -> ArrayPatchSource:
    return ArrayPatchSource.synthetic(n_subjects=8, n_locations=4, patch_size=32, seed=1)


class CountingSource:
    """A patch source that is not in memory as far as the trainer knows; counts reads."""

    def __init__(self, inner: ArrayPatchSource) -> None:
        self.inner, self.location_reads, self.subject_reads = inner, 0, 0

    def read_location(self, loc, subjects):
        self.location_reads += 1
        return self.inner.read_location(loc, subjects)

    def read_subject(self, subject):
        self.subject_reads += 1
        return self.inner.read_subject(subject)

    def __getattr__(self, name):
        return getattr(self.__dict__["inner"], name)


def test_bf16_on_the_cpu_gives_the_float32_losses_within_tolerance(source, tmp_path):
    """Same seed, same batches, augmentation off (so both see identical inputs). Step 1
    (identical weights) checks the forward pass, step 2 the first update (backward); after
    that the two trajectories drift apart as any two runs do (measured: single steps up to
    7 % apart by step 6), so later steps are compared on average only."""
    cfg = dict(RUN, max_steps=6, augment=False, seed=2)
    pretrain(source, cfg, tmp_path / "fp32")
    pretrain(source, dict(cfg, cpu_amp=True), tmp_path / "bf16")
    fp32, bf16 = read_metrics(tmp_path / "fp32"), read_metrics(tmp_path / "bf16")
    assert len(fp32) == len(bf16) == 6
    np.testing.assert_allclose(bf16.loss.to_numpy()[:2], fp32.loss.to_numpy()[:2], rtol=0.01)
    assert bf16.loss.mean() == pytest.approx(fp32.loss.mean(), rel=0.04)
    assert bf16.loss.iloc[0] != fp32.loss.iloc[0]   # bf16 really ran


def test_cpu_amp_is_off_unless_asked_and_named_in_the_summary(source, tmp_path, capsys):
    off = PretrainRun(source, dict(RUN, max_steps=1), tmp_path / "off")
    assert off.trainer.amp_dtype is None
    off.close()
    on = PretrainRun(source, dict(RUN, max_steps=1, cpu_amp=True), tmp_path / "on")
    assert on.trainer.amp_dtype == torch.bfloat16
    on.run()
    on.close()
    assert "amp=bf16" in capsys.readouterr().out


def test_patch_cache_reads_the_source_once_then_serves_the_same_patches(source, tmp_path):
    counting = CountingSource(source)
    run = PretrainRun(counting, dict(RUN, max_steps=3, patch_cache_mb=64), tmp_path / "run")
    assert isinstance(run.dataset.source, CachedPatchSource)
    assert counting.subject_reads == len(source.subject_ids) and counting.location_reads == 0
    run.run()
    run.close()
    assert counting.location_reads == 0          # training never went back to the source
    cached = run.dataset.source
    for loc in range(len(source.landmarks)):
        np.testing.assert_array_equal(cached.read_location(loc, [5, 1, 1]),
                                      source.read_location(loc, [5, 1, 1]))
    np.testing.assert_array_equal(cached.read_subject("s003"), source.read_subject(3))
    # too big for the limit: the source is read as before
    assert cached_source(counting, 0.5) is counting


def test_the_cache_changes_no_loss_and_may_change_on_resume(source, tmp_path):
    """Holding patches in memory changes nothing a step computes, so a run may be resumed
    with it switched on (other changes are refused)."""
    cfg = dict(RUN, max_steps=4, augment_on="device", seed=4)
    pretrain(CountingSource(source), cfg, tmp_path / "plain")
    pretrain(CountingSource(source), dict(cfg, patch_cache_mb=64), tmp_path / "split",
             stop_after_steps=2)
    pretrain(CountingSource(source), cfg, tmp_path / "split")    # resumed without the cache
    plain, split = read_metrics(tmp_path / "plain"), read_metrics(tmp_path / "split")
    np.testing.assert_allclose(split.loss.to_numpy(), plain.loss.to_numpy(), rtol=1e-6)


def test_small_config_uses_the_fast_path_and_tiny_all_of_it_but_bf16():
    small = PretrainConfig.from_dict(load_config("small")["pretrain"])
    assert (small.cpu_amp, small.augment_on, small.cpu_threads) == (True, "device", 1)
    assert small.patch_cache_mb >= 128     # the small store is 32 × 64 × 32³ int16 = 128 MiB
    tiny = PretrainConfig.from_dict(load_config("tiny")["pretrain"])
    # bf16 autocast is slow on CPUs without bf16 units (most laptops): tiny stays float32.
    assert (tiny.cpu_amp, tiny.augment_on) == (False, "device")
    assert tiny.patch_cache_mb >= 64      # the demo store: 12 × 76 × 32³ int16 ≈ 60 MB
