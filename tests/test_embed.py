"""Embedding extraction, the embedding store, pooling, resumption and retrieval."""

from __future__ import annotations

import os
import socket

import numpy as np
import pandas as pd
import pytest
import torch

from drasclr_toolkit.embed import EmbedConfig, Embeddings, extract_embeddings, retrieve_similar
from drasclr_toolkit.models import DrasCLREncoder
from drasclr_toolkit.models.checkpoint import official_landmark_coords, official_state_dict
from drasclr_toolkit.ssl.augment import hu_to_unit
from drasclr_toolkit.patch_source import ArrayPatchSource
from drasclr_toolkit.evaluate import pool_embeddings

TINY = dict(rep_dim=8, proj_dim=8, num_experts=2, width=0.125)
P = 32


class _Source(ArrayPatchSource):
    """ArrayPatchSource that counts subject reads and can fail on chosen subjects."""

    def __init__(self, patches: np.ndarray, landmarks: np.ndarray, fail: dict | None = None):
        lung = np.random.default_rng(1).uniform(0.1, 1, patches.shape[:2])
        super().__init__(patches, landmarks, subject_ids=[f"s{i:02d}" for i in range(len(patches))],
                         lung_fraction=lung)
        self.patches = patches  # keep the dtype given (a float test feeds NaN)
        self.fail = fail or {}
        self.reads: list[int] = []

    def read_subject(self, subject):
        index = self._subject_index(subject)
        self.reads.append(index)
        if index in self.fail:
            raise self.fail[index]
        return self.patches[index]


def make_source(n: int = 4, n_loc: int = 3, **kw) -> _Source:
    rng = np.random.default_rng(0)
    patches = rng.integers(-1100, 300, (n, n_loc, P, P, P)).astype(np.int16)
    landmarks = np.array([[26 * i, 78 + 26 * (i % 2), 52 * i] for i in range(n_loc)])
    return _Source(patches, landmarks, **kw)


def test_trainer_checkpoint_is_loaded_with_its_encoder_config(tmp_path):
    from drasclr_toolkit.train import pretrain

    src = make_source(n=4, n_loc=3)
    cfg = dict(TINY, queue_size=8, batch_size=2, max_steps=1, progress=False, device="cpu")
    final = pretrain(src, cfg, tmp_path / "run")
    emb = extract_embeddings(src, checkpoint=final, progress=False)
    assert emb.provenance["encoder_kind"] == "trained"
    assert emb.provenance["checkpoint"] == str(final.resolve())
    assert emb.provenance["encoder_config"]["width"] == TINY["width"]
    random = extract_embeddings(src, encoder_kwargs=TINY, progress=False)
    assert emb.patch.shape == random.patch.shape and not np.allclose(emb.patch, random.patch)
    state = torch.load(final, weights_only=True)
    enc = DrasCLREncoder(**state["encoder_config"]).eval()
    enc.load_state_dict(state["encoder"])
    with torch.no_grad():
        x = hu_to_unit(torch.from_numpy(src.patches[:, 0]).float())[:, None]
        h = enc.encode(x, torch.from_numpy(src.landmark_coords[0])).numpy()
    np.testing.assert_allclose(emb.patch[:, 0], h, rtol=1e-4, atol=1e-5)


def test_shapes_ids_and_values_match_the_encoder_patch_by_patch():
    src = make_source()
    # recalibrate=False: the seeded encoder as built (its statistics are checked elsewhere)
    emb = extract_embeddings(src, encoder_kwargs=TINY, seed=3, batch_size=3, progress=False,
                             recalibrate=False)
    assert emb.patch.shape == (4, 3, 8) and emb.patch.dtype == np.float32
    assert emb.subject_ids == src.subject_ids
    np.testing.assert_array_equal(emb.landmarks, src.landmarks)
    np.testing.assert_array_equal(emb.lung_fraction, src.lung_fraction)
    assert emb.provenance["encoder_kind"] == "random-init" and emb.provenance["seed"] == 3

    # Same seed, per-sample locations, one patch at a time: the batched path must agree.
    torch.manual_seed(3)
    enc = DrasCLREncoder(**TINY).eval()
    with torch.no_grad():
        x = hu_to_unit(torch.from_numpy(src.patches[2, 1]).float())[None, None]
        h = enc.encode(x, torch.from_numpy(src.landmark_coords[1:2])).numpy()
    np.testing.assert_allclose(emb.patch[2, 1], h[0], rtol=1e-4, atol=1e-5)


def test_random_init_is_seeded_and_keeps_global_rng():
    src = make_source(n=2, n_loc=2)
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = extract_embeddings(src, encoder_kwargs=TINY, seed=0, progress=False)
    after = torch.rand(1)
    b = extract_embeddings(src, encoder_kwargs=TINY, seed=0, progress=False)
    c = extract_embeddings(src, encoder_kwargs=TINY, seed=1, progress=False)
    np.testing.assert_array_equal(a.patch, b.patch)
    assert not np.allclose(a.patch, c.patch)
    assert torch.equal(before, after)


def test_config_gives_the_options_and_keywords_override_it():
    src = make_source(n=2, n_loc=2)
    config = EmbedConfig.from_dict({"batch_size": 1, "seed": 1, "device": "cpu", "encoder": TINY})
    by_config = extract_embeddings(src, config=config, progress=False)
    by_keywords = extract_embeddings(src, encoder_kwargs=TINY, seed=1, batch_size=1,
                                     device="cpu", progress=False)
    np.testing.assert_array_equal(by_config.patch, by_keywords.patch)
    assert by_config.provenance["batch_size"] == 1
    overridden = extract_embeddings(src, config=config, seed=0, batch_size=2, progress=False)
    assert overridden.provenance["batch_size"] == 2 and overridden.provenance["seed"] == 0
    assert not np.allclose(overridden.patch, by_config.patch)
    with pytest.raises(ValueError, match="embed config, field 'batch_size': 0 must be >= 1"):
        extract_embeddings(src, config=config, batch_size=0, progress=False)


def test_nan_patches_are_cleaned_like_training_patches():
    src = make_source(n=2, n_loc=2)
    src.patches = src.patches.astype(np.float32)
    src.patches[0, 0, :4] = np.nan
    emb = extract_embeddings(src, encoder_kwargs=TINY, progress=False)
    assert np.isfinite(emb.patch).all()
    clean = src.patches.copy()
    clean[0, 0, :4] = -1024
    src.patches = clean
    np.testing.assert_allclose(extract_embeddings(src, encoder_kwargs=TINY, progress=False).patch,
                               emb.patch, atol=1e-6)


def _emb(n=3, n_loc=4, d=5, seed=0) -> Embeddings:
    rng = np.random.default_rng(seed)
    return Embeddings(patch=rng.normal(size=(n, n_loc, d)).astype(np.float32),
                      subject_ids=[f"p{i}" for i in range(n)],
                      landmarks=rng.integers(0, 300, (n_loc, 3)),
                      landmark_coords=rng.uniform(-1, 1, (n_loc, 3)),
                      lung_fraction=rng.uniform(0, 1, (n, n_loc)),
                      provenance={"encoder_kind": "test", "checkpoint_config": {"width": 0.5}})


def test_pooling_matches_numpy_by_hand():
    emb = _emb()
    mean = pool_embeddings(emb, "mean")
    assert isinstance(mean, pd.DataFrame) and list(mean.index) == emb.subject_ids
    assert mean.shape == (3, 5) and mean.index.name == "subject_id"
    for i in range(3):
        np.testing.assert_allclose(mean.iloc[i], sum(emb.patch[i, l] for l in range(4)) / 4,
                                   rtol=1e-5)
        np.testing.assert_allclose(pool_embeddings(emb, "max").iloc[i],
                                   [max(emb.patch[i, :, d]) for d in range(5)])
        w = emb.lung_fraction[i]
        by_hand = sum(w[l] * emb.patch[i, l] for l in range(4)) / w.sum()
        np.testing.assert_allclose(pool_embeddings(emb, "lung_weighted").iloc[i], by_hand, rtol=1e-5)
    with pytest.raises(ValueError, match="unknown pooling"):
        pool_embeddings(emb, "median")


def test_lung_weighted_falls_back_to_mean_without_lung():
    emb = _emb()
    emb.lung_fraction[1] = 0
    with pytest.warns(UserWarning, match="p1"):
        pooled = pool_embeddings(emb, "lung_weighted")
    np.testing.assert_allclose(pooled.loc["p1"], emb.patch[1].mean(0), rtol=1e-5)


def test_save_load_round_trip(tmp_path):
    emb = _emb()
    path = emb.save(tmp_path / "emb.npz")
    back = Embeddings.load(path)
    np.testing.assert_array_equal(back.patch, emb.patch)
    np.testing.assert_array_equal(back.landmarks, emb.landmarks)
    np.testing.assert_array_equal(back.landmark_coords, emb.landmark_coords)
    np.testing.assert_array_equal(back.lung_fraction, emb.lung_fraction)
    assert back.subject_ids == emb.subject_ids and back.provenance == emb.provenance
    assert [p.name for p in tmp_path.iterdir()] == ["emb.npz"]  # no temp file left behind
    with pytest.raises(FileNotFoundError, match="drasclr embed"):
        Embeddings.load(tmp_path / "missing.npz")


def test_embeddings_validate_shapes():
    emb = _emb()
    with pytest.raises(ValueError, match="lung_fraction"):
        Embeddings(emb.patch, emb.subject_ids, emb.landmarks, emb.landmark_coords,
                   emb.lung_fraction[:, :2])
    sub = emb.subset(["p2", 0])
    assert sub.subject_ids == ["p2", "p0"]
    np.testing.assert_array_equal(sub.patch[0], emb.patch[2])


def test_resume_after_a_kill_gives_identical_arrays(tmp_path):
    full = extract_embeddings(make_source(), encoder_kwargs=TINY, batch_size=1, progress=False)

    out = tmp_path / "emb.npz"
    killed = make_source(fail={2: KeyboardInterrupt()})
    with pytest.raises(KeyboardInterrupt):
        extract_embeddings(killed, encoder_kwargs=TINY, batch_size=1, out_path=out,
                           progress=False)
    parts = out.with_name("emb.npz.parts")
    assert sorted(p.name for p in parts.glob("*.npy")) == ["s00.npy", "s01.npy"]
    assert not out.exists()

    resumed_source = make_source()
    resumed = extract_embeddings(resumed_source, encoder_kwargs=TINY, batch_size=1,
                                 out_path=out, progress=False)
    assert resumed_source.reads == [2, 3]  # finished subjects are skipped
    np.testing.assert_array_equal(resumed.patch, full.patch)
    np.testing.assert_array_equal(Embeddings.load(out).patch, full.patch)

    with pytest.raises(ValueError, match="another encoder"):
        extract_embeddings(make_source(), encoder_kwargs=TINY, seed=5, out_path=out,
                           progress=False)


def test_one_bad_subject_does_not_stop_the_cohort():
    src = make_source(fail={1: OSError("corrupt chunk")})
    emb = extract_embeddings(src, encoder_kwargs=TINY, batch_size=2, progress=False)
    assert emb.subject_ids == ["s00", "s02", "s03"]
    assert "corrupt chunk" in emb.provenance["failed"]["s01"]
    np.testing.assert_array_equal(emb.lung_fraction, src.lung_fraction[[0, 2, 3]])


def test_official_checkpoint_uses_reference_landmark_convention(tmp_path):
    torch.manual_seed(0)
    enc = DrasCLREncoder(**TINY).eval()
    path = tmp_path / "checkpoint_patch_0020.pth.tar"
    torch.save({"epoch": 20, "state_dict": official_state_dict(enc)}, path)
    src = make_source(n=2, n_loc=3)
    emb = extract_embeddings(src, checkpoint=path, progress=False)
    assert emb.provenance["encoder_kind"] == "official"
    coords = official_landmark_coords(src.landmarks)
    np.testing.assert_allclose(emb.landmark_coords, coords)
    with torch.no_grad():
        x = hu_to_unit(torch.from_numpy(src.patches[:, 2]).float())[:, None]
        h = enc.encode(x, torch.from_numpy(coords[2])).numpy()
    np.testing.assert_allclose(emb.patch[:, 2], h, rtol=1e-4, atol=1e-5)


def test_retrieve_similar_ranks_by_cosine_at_the_same_landmark():
    emb = _emb(n=6, n_loc=3)
    hits = retrieve_similar(emb, "p0", landmark=1, k=3)
    assert list(hits.columns) == ["rank", "subject_id", "subject_index", "landmark", "similarity"]
    v = emb.patch[:, 1].astype(np.float64)
    cos = v @ v[0] / np.linalg.norm(v, axis=1) / np.linalg.norm(v[0])
    expected = [i for i in np.argsort(-cos) if i != 0][:3]
    assert hits.subject_index.tolist() == expected
    np.testing.assert_allclose(hits.similarity, cos[expected])
    assert "p0" in retrieve_similar(emb, "p0", 1, k=1, include_self=True).subject_id.tolist()
    centred = v - v.mean(0)
    cos_c = centred @ centred[0] / np.linalg.norm(centred, axis=1) / np.linalg.norm(centred[0])
    hits_c = retrieve_similar(emb, "p0", landmark=1, k=5, center=True)
    assert hits_c.subject_index.tolist() == [i for i in np.argsort(-cos_c) if i != 0]
    np.testing.assert_allclose(hits_c.similarity, cos_c[hits_c.subject_index])


def test_embed_config_rejects_unknown_keys():
    assert EmbedConfig.from_dict({"batch_size": 4, "encoder": {"width": 0.25}}).batch_size == 4
    with pytest.raises(ValueError, match="batchsize"):
        EmbedConfig.from_dict({"batchsize": 4})
    with pytest.raises(ValueError, match="depth"):
        EmbedConfig.from_dict({"encoder": {"depth": 3}})


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, out: str, result_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    for name, out_path in (("disk", out), ("gather", None)):
        emb = extract_embeddings(make_source(n=5, n_loc=2), encoder_kwargs=TINY, device="cpu",
                                 out_path=out_path, progress=False)
        emb.save(os.path.join(result_dir, f"{name}{rank}.npz"))


def test_distributed_ranks_share_subjects_and_merge(tmp_path):
    """Two gloo ranks (as torchrun starts them): each embeds a share, every rank returns all."""
    import torch.multiprocessing as mp

    single = extract_embeddings(make_source(n=5, n_loc=2), encoder_kwargs=TINY, progress=False)
    out = tmp_path / "emb.npz"
    # fork: the children inherit the imported modules instead of importing them again.
    mp.start_processes(_ddp_worker, args=(2, _free_port(), str(out), str(tmp_path)), nprocs=2,
                       join=True, start_method="fork")
    assert sorted(p.name for p in out.with_name("emb.npz.parts").glob("*.npy")) == [
        f"s{i:02d}.npy" for i in range(5)]
    merged_results = [Embeddings.load(tmp_path / f"{name}{rank}.npz")
                      for name in ("disk", "gather") for rank in range(2)]
    for merged in merged_results + [Embeddings.load(out)]:
        assert merged.subject_ids == single.subject_ids
        assert merged.provenance["world_size"] == 2
        assert merged.provenance["encoder_sha1"] == single.provenance["encoder_sha1"]
        np.testing.assert_allclose(merged.patch, single.patch, rtol=1e-5, atol=1e-6)


def test_cli_embed_writes_and_resumes(tmp_path, capsys):
    from drasclr_toolkit.cli.main import main

    src = make_source(n=3, n_loc=2)
    store = ArrayPatchSource(src.patches, src.landmarks, subject_ids=src.subject_ids,
                             lung_fraction=src.lung_fraction).save(tmp_path / "patches.npz")
    config = tmp_path / "cfg.yaml"
    config.write_text("embed:\n  batch_size: 2\n  seed: 4\n  encoder: {width: 0.125, rep_dim: 8, "
                      "proj_dim: 8, num_experts: 2}\n")
    out = tmp_path / "emb.npz"
    argv = ["embed", "--store", str(store), "--out", str(out), "--config", str(config),
            "--no-progress"]
    assert main(argv) == 0
    emb = Embeddings.load(out)
    assert emb.subject_ids == src.subject_ids and emb.patch.shape == (3, 2, 8)
    assert emb.provenance["encoder_kind"] == "random-init" and emb.provenance["seed"] == 4
    direct = extract_embeddings(src, encoder_kwargs=TINY, seed=4, batch_size=2, progress=False)
    np.testing.assert_array_equal(emb.patch, direct.patch)
    assert main(argv) == 0  # everything finished: resumes by reading the parts
    np.testing.assert_array_equal(Embeddings.load(out).patch, emb.patch)
    assert "embeddings:" in capsys.readouterr().out
    assert main(argv[:-1]) == 0  # with progress on and nothing left: no empty "0/0" bar
    assert "embed:" not in capsys.readouterr().err


def test_pc_spearman_and_probe_find_the_encoded_target_not_the_noise():
    from scipy.stats import spearmanr

    from drasclr_toolkit.evaluate import pc_spearman, probe_scores

    rng = np.random.default_rng(0)
    n = 40
    severity = rng.uniform(0, 1, n)
    ids = [f"s{i}" for i in range(n)]
    # Embeddings whose main axis of variation is the severity; the noise level is not in them.
    X = np.c_[5 * severity, 5 * severity ** 2, rng.normal(0, 0.1, (n, 3))]
    patient = pd.DataFrame(X, index=ids)
    targets = pd.DataFrame({"severity": severity, "noise_hu": rng.uniform(10, 40, n)},
                           index=ids)
    corr = pc_spearman(patient, targets.iloc[::-1], n_components=2)  # aligned by id
    assert list(corr.columns) == ["component", "target", "rho", "p_value"] and len(corr) == 4
    pc1 = corr[(corr.component == "PC1")].set_index("target").rho
    assert abs(pc1["severity"]) > 0.9 and abs(pc1["noise_hu"]) < 0.4
    from sklearn.decomposition import PCA
    from sklearn.preprocessing import StandardScaler
    scores = PCA(2).fit_transform(StandardScaler().fit_transform(X))
    assert np.isclose(pc1["severity"], spearmanr(scores[:, 0], severity)[0])

    probe = probe_scores(patient, targets, cv=5)
    assert probe.loc["severity", "r2"] > 0.8 and probe.loc["severity", "spearman"] > 0.9
    assert probe.loc["noise_hu", "r2"] < 0.2
    assert (probe.n == n).all()


def test_compare_encoders_table():
    from drasclr_toolkit.evaluate import compare_encoders, pc_spearman, probe_scores

    rng = np.random.default_rng(1)
    ids = [f"s{i}" for i in range(20)]
    truth = pd.DataFrame({"severity": rng.uniform(0, 1, 20), "noise_hu": rng.uniform(10, 40, 20)},
                         index=ids)
    good = pd.DataFrame(np.c_[truth.severity * 3, rng.normal(0, 0.1, (20, 2))], index=ids)
    bad = pd.DataFrame(rng.normal(size=(20, 3)), index=ids)
    table = compare_encoders({"good": good, "bad": bad}, truth, nuisance=["noise_hu"])
    assert len(table) == 4 and set(table.kind) == {"disease", "nuisance"}
    row = table.set_index(["encoder", "target"]).loc[("good", "severity")]
    corr = pc_spearman(good, truth)
    assert row.pc_max_abs_rho == corr[corr.target == "severity"].rho.abs().max()
    assert row.probe_r2 == probe_scores(good, truth).loc["severity", "r2"]
    assert row.pc_max_abs_rho > table.set_index(["encoder", "target"]).loc[("bad", "severity")].pc_max_abs_rho


def test_given_encoder_is_used_in_eval_mode_and_left_as_it_was():
    src = make_source(n=3, n_loc=2)
    torch.manual_seed(0)
    enc = DrasCLREncoder(**TINY)  # training mode: BatchNorm would use batch statistics
    emb = extract_embeddings(src, encoder=enc, progress=False)
    assert enc.training and emb.provenance["encoder_kind"] == "given"
    with torch.no_grad():
        x = hu_to_unit(torch.from_numpy(src.patches[:1, 1]).float())[:, None]
        h = enc.eval().encode(x, torch.from_numpy(src.landmark_coords[1])).numpy()
    np.testing.assert_allclose(emb.patch[0, 1], h[0], rtol=1e-4, atol=1e-5)


def test_random_init_baseline_tells_air_from_tissue():
    """The random-init encoder's BatchNorm statistics are re-estimated on the cohort: with
    the initial ones every patch lands on nearly the same embedding."""
    from drasclr_toolkit.patch_source import ArrayPatchSource

    rng = np.random.default_rng(0)
    patches = np.where(rng.random((4, 3, 1, 1, 1)) < 0.5, -1000, 40) + \
        rng.normal(0, 10, (4, 3, 24, 24, 24))
    patches[0, 0], patches[1, 0] = -1000, 40  # one air patch, one soft-tissue patch
    source = ArrayPatchSource(patches.astype(np.int16))
    kwargs = dict(width=0.25, num_experts=2, rep_dim=32, proj_dim=8)

    def cosine(emb):
        a, b = emb.patch[0, 0], emb.patch[1, 0]
        return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))

    honest = extract_embeddings(source, encoder_kwargs=kwargs, progress=False)
    broken = extract_embeddings(source, encoder_kwargs=kwargs, progress=False, recalibrate=False)
    assert cosine(broken) > 0.999  # the defect: initial statistics collapse everything
    assert cosine(honest) < 0.9
    assert "recalibrated" in honest.provenance["batchnorm"]


def test_pc_null_band_separates_signal_from_noise():
    from drasclr_toolkit.evaluate import pc_null_band, variance_shares

    rng = np.random.default_rng(0)
    ids = [f"s{i}" for i in range(40)]
    signal = rng.normal(size=40)
    patient = pd.DataFrame(rng.normal(size=(40, 6)), index=ids)
    patient[0] += 3 * signal
    strong = pc_null_band(patient, pd.Series(signal, index=ids), n_permutations=100)
    assert strong["value"] > strong["null_p95"] and strong["p"] < 0.05
    noise = pc_null_band(patient, pd.Series(rng.normal(size=40), index=ids), n_permutations=100)
    assert noise["p"] > 0.05
    # variance shares add up and see a subject effect
    patch = rng.normal(size=(10, 1, 4)) * 2 + rng.normal(size=(10, 8, 4)) * 0.5
    shares = variance_shares(patch)
    assert shares["between_subjects"] > 0.7
    assert abs(sum(shares.values()) - 1) < 1e-9


def test_landmarks_outside_the_scan_are_left_out_of_pooling(tmp_path):

    patch = np.zeros((2, 3, 2), np.float32)
    patch[:, 2] = 100.0  # the air padding of a landmark outside the scan
    inside = np.array([[True, True, False], [True, True, True]])
    emb = Embeddings(patch, ["cut", "whole"], np.zeros((3, 3), int), np.zeros((3, 3)),
                     np.ones((2, 3)), in_scan=inside)
    pooled = pool_embeddings(emb, "mean")
    assert pooled.loc["cut"].tolist() == [0.0, 0.0]          # the outside landmark left out
    assert pooled.loc["whole"].tolist() == pytest.approx([100 / 3, 100 / 3])
    assert pool_embeddings(emb, "max").loc["cut"].tolist() == [0.0, 0.0]
    assert pool_embeddings(emb, "mean").loc["cut"].tolist() == [0.0, 0.0]
    again = Embeddings.load(emb.save(tmp_path / "e.npz"))
    np.testing.assert_array_equal(again.in_scan, inside)
    assert emb.subset(["cut"]).in_scan.tolist() == [[True, True, False]]


def test_a_damaged_subject_is_left_out_of_the_random_init_recalibration_too():
    from drasclr_toolkit.preprocess.store import StoreError

    damaged = StoreError("checksum mismatch", store="store", subject_id="s01")

    class _Damaged(_Source):
        def read_location(self, loc, subjects):
            if 1 in [int(s) for s in subjects]:
                raise damaged
            return super().read_location(loc, subjects)

    src = make_source(n=4)
    src.__class__ = _Damaged
    src.fail = {1: damaged}
    with pytest.warns(UserWarning, match="leaves out 1 subject.*s01"):
        emb = extract_embeddings(src, encoder_kwargs=TINY, batch_size=2, progress=False)
    assert emb.subject_ids == ["s00", "s02", "s03"]
    assert "s01" in emb.provenance["failed"]
    assert "left out unreadable s01" in str(emb.provenance)
