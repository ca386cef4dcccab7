"""drasclr_toolkit.train: sampler, dataset with workers, config, loop, resume, metrics, CLI."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from drasclr_toolkit.patch_source import ArrayPatchSource, PatchSource
from drasclr_toolkit.ssl import hu_to_unit
from drasclr_toolkit.train import (
    BatchSpec,
    LocationBatchSampler,
    LocationPatchDataset,
    PretrainConfig,
    pretrain,
    read_metrics,
)
from drasclr_toolkit.viz import plot_training_curves

TINY = dict(width=0.125, rep_dim=16, proj_dim=16, num_experts=2, queue_size=8, batch_size=4,
            progress=False, device="cpu", cpu_threads=1, checkpoint_every=3)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def source() -> ArrayPatchSource:
    src = ArrayPatchSource.synthetic(n_subjects=8, n_locations=4, patch_size=20, seed=0)
    assert isinstance(src, PatchSource)
    return src


def coded_source(n_subjects: int = 6, n_locations: int = 5, p: int = 8) -> ArrayPatchSource:
    """Every voxel of patch (subject s, location l) holds the HU value code(s, l)."""
    codes = -1000 + 7 * (np.arange(n_subjects)[:, None] * n_locations + np.arange(n_locations))
    patches = np.broadcast_to(codes[:, :, None, None, None], (n_subjects, n_locations, p, p, p))
    landmarks = np.stack([np.arange(n_locations) * 26, np.zeros(n_locations), np.zeros(n_locations)], 1)
    return ArrayPatchSource(patches.copy(), landmarks, k_neighbors=2)


def code(s: int, l: int, n_locations: int = 5) -> float:
    return float(hu_to_unit(np.float32(-1000 + 7 * (s * n_locations + l))))


# -- sampler ---------------------------------------------------------------------------------
def test_epoch_visits_every_location_subject_pair_and_reshuffles():
    sampler = LocationBatchSampler(n_subjects=7, n_locations=5, batch_size=3, seed=4)
    sampler.set_epoch(0)
    epoch0 = list(sampler)
    assert len(epoch0) == sampler.batches_per_epoch == 5 * 3
    pairs = Counter((b.loc, s) for b in epoch0 for s in b.subjects)
    assert set(pairs) == {(l, s) for l in range(5) for s in range(7)}          # full coverage
    assert all(len(b.subjects) == 3 and len(set(b.subjects)) == 3 for b in epoch0)  # topped up, no dupes
    assert Counter(b.loc for b in epoch0) == {l: 3 for l in range(5)}
    assert [b.loc for b in epoch0] != sorted(b.loc for b in epoch0)             # locations interleaved
    sampler.set_epoch(1)
    epoch1 = list(sampler)
    assert [(b.loc, b.subjects) for b in epoch1] != [(b.loc, b.subjects) for b in epoch0]
    sampler.set_epoch(0)
    assert list(sampler) == epoch0                                              # seeded by epoch
    assert len({b.seed for b in epoch0}) == len(epoch0)


def test_resume_position_continues_the_same_epoch():
    sampler = LocationBatchSampler(n_subjects=6, n_locations=4, batch_size=4, seed=1)
    sampler.set_epoch(2)
    full = list(sampler)
    sampler.set_epoch(2, start_index=5)
    assert list(sampler) == full[5:] and len(sampler) == len(full) - 5


def test_distributed_sampler_splits_each_batch_over_ranks():
    ranks = [LocationBatchSampler(n_subjects=9, n_locations=3, batch_size=4, seed=0, rank=r,
                                  world_size=2) for r in range(2)]
    single = LocationBatchSampler(n_subjects=9, n_locations=3, batch_size=4, seed=0)
    streams = [list(s) for s in ranks]
    assert len(streams[0]) == len(streams[1]) == single.batches_per_epoch
    for a, b, whole in zip(streams[0], streams[1], single.plan(0)):
        assert a.loc == b.loc == whole[0]                       # same location on every rank
        assert len(a.subjects) == len(b.subjects) == 2
        assert set(a.subjects).isdisjoint(b.subjects)
        assert set(a.subjects) | set(b.subjects) == set(whole[1].tolist())
    with pytest.raises(ValueError, match="ranks"):
        LocationBatchSampler(n_subjects=1, n_locations=3, batch_size=4, rank=0, world_size=2)


def test_batches_come_from_their_location_with_two_workers():
    src = coded_source()
    ds = LocationPatchDataset(src, k_neighbours=2)            # no augmentation: values stay codes
    sampler = LocationBatchSampler(len(src.subject_ids), len(src.landmarks), batch_size=4, seed=3)
    loader = DataLoader(ds, sampler=sampler, batch_size=None, num_workers=2)
    seen = []
    for batch in loader:
        loc = int(batch["loc"])
        subjects = batch["subjects"].tolist()
        for i, s in enumerate(subjects):
            assert torch.allclose(batch["view1"][i], torch.tensor(code(s, loc)))
            assert torch.allclose(batch["view2"][i], torch.tensor(code(s, loc)))
            for j, n in enumerate(batch["neighbour_locs"].tolist()):
                assert n == src.neighbors[loc, j]
                assert torch.allclose(batch["neighbours"][j, i], torch.tensor(code(s, n)))
        seen.append((int(batch["index"]), loc))
    expected = [(b.index, b.loc) for b in sampler]
    assert seen == expected                                    # every batch, in sampler order


def test_dataset_rejects_too_many_neighbours(source):
    with pytest.raises(ValueError, match="neighbours"):
        LocationPatchDataset(source, k_neighbours=5)


# -- config ----------------------------------------------------------------------------------
def test_config_rejects_unknown_keys_and_bad_values(tmp_path):
    with pytest.raises(ValueError, match="did you mean 'queue_size'"):
        PretrainConfig.from_dict({"queue_sise": 10})
    with pytest.raises(ValueError, match="queue_dtype"):
        PretrainConfig.from_dict({"queue_dtype": "int8"})
    with pytest.raises(ValueError, match="temperature"):
        PretrainConfig.from_dict({"temperature": 0})
    for name in ("tiny", "gpu"):
        assert isinstance(PretrainConfig.from_yaml(name), PretrainConfig)
    path = tmp_path / "c.yaml"
    path.write_text("pretrain:\n  width: 0.5\n  epochs: 3\n")
    cfg = PretrainConfig.from_yaml(path)
    assert (cfg.width, cfg.epochs) == (0.5, 3)
    assert PretrainConfig.from_dict(cfg.to_dict()) == cfg


# -- training ----------------------------------------------------------------------------------
def test_loss_falls_on_a_tiny_synthetic_source(tmp_path):
    # Subjects differ in overall density (as emphysema does), locations in anatomy: a
    # signal that survives the augmentation, so 60 steps of a tiny encoder can learn it.
    rng = np.random.default_rng(0)
    n, n_loc, p = 8, 3, 20
    density = np.linspace(-950, -350, n)[:, None, None, None, None]
    patches = density + 60 * rng.normal(size=(1, n_loc, p, p, p)) + 20 * rng.normal(size=(n, n_loc, p, p, p))
    src = ArrayPatchSource(patches.astype(np.int16), np.array([[0, 0, 0], [26, 0, 0], [0, 26, 0]]))
    cfg = dict(TINY, max_steps=60, epochs=100, lr=0.05, key_momentum=0.99, seed=1)
    pretrain(src, cfg, tmp_path)
    df = read_metrics(tmp_path)
    # The first visits of a location meet an empty queue (masked negatives): skip them.
    early, late = df[(df.step > 10) & (df.step <= 20)], df[df.step > 50]
    assert late.loss_local.mean() < early.loss_local.mean() - 0.2, (early.loss_local.mean(),
                                                                   late.loss_local.mean())
    assert late.acc_local.mean() > early.acc_local.mean()
    assert np.isfinite(df.loss_neighbour).all()


def test_batch_negatives_give_a_signal_before_the_queue_fills(source):
    from drasclr_toolkit.train import DrasCLRTrainer
    from drasclr_toolkit.train.sampler import LocationPatchDataset

    batch = LocationPatchDataset(source, 2)[BatchSpec(0, 0, loc=1, subjects=(0, 1, 2, 3), seed=0)]
    losses = {}
    for flag in (False, True):
        cfg = PretrainConfig.from_dict(dict(TINY, batch_negatives=flag))
        trainer = DrasCLRTrainer(cfg, source.landmark_coords, total_steps=5)
        out = trainer.step(batch)
        losses[flag] = float(out["loss_local"])
    assert losses[False] == 0.0          # empty queue, everything masked: no signal
    assert losses[True] > 0.1            # 3 other subjects' keys as negatives


def test_without_a_queue_the_negatives_are_the_batch_of_fresh_keys(source, tmp_path):
    from drasclr_toolkit.config import ConfigError
    from drasclr_toolkit.train import DrasCLRTrainer
    from drasclr_toolkit.train.sampler import LocationPatchDataset

    with pytest.raises(ConfigError, match="batch_negatives") as err:
        PretrainConfig.from_dict(dict(TINY, queue_size=0))
    assert err.value.field == "batch_negatives" and "pretrain config" in str(err.value)
    with pytest.raises(ConfigError, match="prefill_queues") as err:
        PretrainConfig.from_dict(dict(TINY, queue_size=0, batch_negatives=True, prefill_queues=True))
    assert err.value.field == "prefill_queues"
    cfg = PretrainConfig.from_dict(dict(TINY, queue_size=0, batch_negatives=True))
    trainer = DrasCLRTrainer(cfg, source.landmark_coords, total_steps=5)
    assert trainer.queues is None
    batch = LocationPatchDataset(source, 2)[BatchSpec(0, 0, loc=1, subjects=(0, 1, 2, 3), seed=0)]
    first = trainer.step(batch)
    second = trainer.step(batch)
    # each anchor against the 3 other subjects' keys of this very step, at every visit
    assert float(first["n_negatives"]) == float(second["n_negatives"]) == 3.0
    assert float(first["chance_acc"]) == pytest.approx(0.25)
    assert float(first["loss_local"]) > 0.1
    # a whole run checkpoints and resumes without queue state
    final = pretrain(source, dict(TINY, queue_size=0, batch_negatives=True, max_steps=4), tmp_path)
    assert torch.load(final, weights_only=True)["step"] == 4
    df = read_metrics(tmp_path)
    assert (df.n_negatives == 3.0).all()


def test_augmentation_strength_comes_from_the_config(source, tmp_path):
    from drasclr_toolkit.train.loop import PretrainRun

    run = PretrainRun(source, dict(TINY, augment_translate=1, augment_rotate_deg=5,
                                   augment_scale=0.05, augment_noise_p=0.5), tmp_path)
    assert run.dataset.augmenter.params == dict(translate=1, rotate_deg=5, scale=0.05,
                                                noise_std=50.0, p_noise=0.5, p_contrast=0.25)
    # the reference's strength by default: ±12 voxels per 32, 10°, ±10 %, noise p 0.25
    ref = PretrainRun(source, dict(TINY), tmp_path / "ref").dataset.augmenter.params
    assert (ref["translate"], ref["rotate_deg"], ref["scale"], ref["p_noise"]) == (12 * 20 / 32, 10, 0.1, 0.25)


def test_resumed_run_matches_uninterrupted_run_exactly(source, tmp_path):
    cfg = dict(TINY, max_steps=10, epochs=5)      # 8 steps per epoch: crosses an epoch boundary
    whole = pretrain(source, cfg, tmp_path / "whole")
    stopped = pretrain(source, cfg, tmp_path / "split", stop_after_steps=5)
    assert stopped.name == "last.pt"
    assert torch.load(stopped, weights_only=True)["step"] == 5
    resumed = pretrain(source, cfg, tmp_path / "split")
    a = torch.load(whole, weights_only=True)
    b = torch.load(resumed, weights_only=True)
    assert a["step"] == b["step"] == 10
    for name, tensor in a["encoder"].items():
        assert torch.equal(tensor, b["encoder"][name]), name
    full_a = torch.load(tmp_path / "whole" / "checkpoints" / "last.pt", weights_only=True)
    full_b = torch.load(tmp_path / "split" / "checkpoints" / "last.pt", weights_only=True)
    assert torch.equal(full_a["queues"]["keys"], full_b["queues"]["keys"])
    for name, tensor in full_a["key_encoder"].items():
        assert torch.equal(tensor, full_b["key_encoder"][name]), name
    cols = ["step", "epoch", "loss", "loss_local", "loss_neighbour", "acc_local", "acc_neighbour", "lr"]
    ma, mb = read_metrics(tmp_path / "whole"), read_metrics(tmp_path / "split")
    assert len(ma) == 10
    assert ma[cols].equals(mb[cols])


def test_checkpoints_are_plain_and_feed_the_embedding_stage(source, tmp_path):
    final = pretrain(source, dict(TINY, max_steps=2, queue_dtype="bfloat16"), tmp_path)
    state = torch.load(final, weights_only=True)
    assert state["format"] == "drasclr_toolkit.encoder/1"
    assert state["encoder_config"]["width"] == 0.125 and "queues" not in state
    full = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)
    assert full["queues"]["keys"].dtype == torch.bfloat16
    assert set(full["rng"]) >= {"python", "numpy", "torch"}
    assert (tmp_path / "config.yaml").is_file()
    from drasclr_toolkit.models.checkpoint import load_encoder

    encoder, info = load_encoder(final)
    assert info["encoder_kind"] == "trained"
    for name, tensor in state["encoder"].items():
        assert torch.equal(encoder.state_dict()[name], tensor)
    # a file whose format tag the reader does not know is refused, naming the file
    for tag in ("drasclr_toolkit.encoder/2", None):
        odd = tmp_path / f"odd_{tag is None}.pt"
        torch.save({k: v for k, v in dict(state, format=tag).items() if v is not None}, odd)
        with pytest.raises(ValueError, match=rf"{odd.name}.*field 'format'"):
            load_encoder(odd)


def test_metrics_log_and_curves(source, tmp_path):
    records = []
    pretrain(source, dict(TINY, max_steps=3), tmp_path, callbacks=[records.append])
    df = read_metrics(tmp_path / "metrics.jsonl")
    assert list(df.step) == [1, 2, 3] == [r["step"] for r in records]
    assert {"epoch", "loss_local", "loss_neighbour", "acc_local", "acc_neighbour", "lr",
            "patches_per_s"} <= set(df.columns)
    assert df.lr.iloc[0] == pytest.approx(0.01) and df.lr.iloc[-1] < df.lr.iloc[0]  # cosine
    fig = plot_training_curves(df)
    assert {t.name for t in fig.data} == {"loss_local", "loss_neighbour", "acc_local",
                                          "acc_neighbour", "lr", "chance (1 / (1 + negatives))",
                                          "chance (log(1 + negatives))"}
    chance = next(t for t in fig.data if t.name.startswith("chance (1 /"))
    np.testing.assert_allclose(chance.y, 1 / (1 + df.n_negatives), rtol=0.05)  # the logged chance
    with pytest.raises(FileNotFoundError, match="metrics"):
        read_metrics(tmp_path / "nowhere")


def test_cli_trains_from_an_npz_store(source, tmp_path, capsys):
    from drasclr_toolkit.cli.main import main

    store = source.save(tmp_path / "patches.npz")
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("pretrain:\n" + "".join(f"  {k}: {json.dumps(v)}\n" for k, v in TINY.items()))
    rc = main(["pretrain", "--store", str(store), "--config", str(cfg), "--out", str(tmp_path / "run"),
               "--set", "max_steps=2"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "queues" in out and "parameters" in out and "final.pt" in out
    assert torch.load(tmp_path / "run" / "final.pt", weights_only=True)["step"] == 2


def test_device_augmentation_path_equals_host_path_without_augmentation(source, tmp_path):
    """With augmentation off both paths reduce to the intensity mapping: the same losses
    step by step prove the raw-HU plumbing (dataset → device views → step) is right."""
    cfg = dict(TINY, max_steps=4, augment=False, seed=3)
    pretrain(source, dict(cfg, augment_on="host"), tmp_path / "host")
    pretrain(source, dict(cfg, augment_on="device"), tmp_path / "device")
    host, device = read_metrics(tmp_path / "host"), read_metrics(tmp_path / "device")
    np.testing.assert_allclose(device.loss.to_numpy(), host.loss.to_numpy(), rtol=1e-5)


def test_device_augmentation_trains_and_resumes_exactly(source, tmp_path):
    cfg = dict(TINY, max_steps=6, augment_on="device", checkpoint_every=3, seed=5)
    pretrain(source, cfg, tmp_path / "whole")
    pretrain(source, cfg, tmp_path / "split", stop_after_steps=3)
    pretrain(source, cfg, tmp_path / "split")
    whole, split = read_metrics(tmp_path / "whole"), read_metrics(tmp_path / "split")
    assert len(whole) == 6 and np.isfinite(whole.loss).all()
    np.testing.assert_allclose(split.loss.to_numpy(), whole.loss.to_numpy(), rtol=1e-5)
