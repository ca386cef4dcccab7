"""Resumed runs check that the data did not change under them (issue 8, item A3/A4)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from drasclr_toolkit.embed import extract_embeddings
from drasclr_toolkit.patch_source import ArrayPatchSource
from drasclr_toolkit.preprocess.atlas import Atlas
from drasclr_toolkit.preprocess.store import PatchStore
from drasclr_toolkit.train.loop import pretrain
from drasclr_toolkit.evaluate import pool_embeddings

L, P = 3, 20
ENCODER = dict(width=0.125, rep_dim=8, proj_dim=8, num_experts=2)
TRAIN = dict(**ENCODER, queue_size=8, batch_size=2, max_steps=2, progress=False, device="cpu",
             checkpoint_every=1, log_every=1)


def make_store(path: Path, seed: int, n: int = 3) -> PatchStore:
    atlas = Atlas(sitk.GetImageFromArray(np.ones((48, 48, 48), np.uint8)),
                  np.array([[0, 0, 0], [10, 0, 0], [0, 10, 10]]), patch_size=P)
    ids = [f"s{i}" for i in range(n)]
    store = PatchStore.create(path, ids, atlas)
    rng = np.random.default_rng(seed)
    for sid in ids:
        store.write_subject(sid, rng.integers(-1000, 240, (L, P, P, P)).astype(np.int16),
                            rng.random(L), rng.integers(0, 9, (L, 3)), {"subject_id": sid})
    return PatchStore(path)


def test_embed_into_the_same_out_with_another_store_is_refused(tmp_path):
    first, second = make_store(tmp_path / "a", seed=0), make_store(tmp_path / "b", seed=1)
    out = tmp_path / "emb.npz"
    extract_embeddings(first, encoder_kwargs=ENCODER, out_path=out, progress=False)
    with pytest.raises(ValueError, match="source checksum") as err:
        extract_embeddings(second, encoder_kwargs=ENCODER, out_path=out, progress=False)
    assert "subject s0" in str(err.value) and "recompute_changed" in str(err.value)
    redone = extract_embeddings(second, encoder_kwargs=ENCODER, out_path=out, progress=False,
                                recompute_changed=True)
    fresh = extract_embeddings(second, encoder_kwargs=ENCODER, progress=False)
    np.testing.assert_allclose(redone.patch, fresh.patch, atol=1e-6)
    assert redone.provenance["store_fingerprint"] == second.fingerprint()
    # the same store again resumes from its parts without complaint
    again = extract_embeddings(second, encoder_kwargs=ENCODER, out_path=out, progress=False)
    np.testing.assert_array_equal(again.patch, redone.patch)


def test_pretrain_refuses_to_resume_on_another_store(tmp_path):
    run = tmp_path / "run"
    pretrain(make_store(tmp_path / "a", seed=0), dict(TRAIN), run, stop_after_steps=1)
    other = make_store(tmp_path / "b", seed=1)
    with pytest.raises(ValueError, match="store_fingerprint"):
        pretrain(other, dict(TRAIN), run)
    final = pretrain(other, dict(TRAIN), run, allow_store_change=True)
    assert final.exists()


def test_pretrain_resumes_after_a_torn_metrics_line_and_cleans_temp_files(tmp_path):
    run = tmp_path / "run"
    store = make_store(tmp_path / "a", seed=0)
    pretrain(store, dict(TRAIN), run, stop_after_steps=1)
    with open(run / "metrics.jsonl", "a", encoding="utf-8") as fh:
        fh.write('{"step": 2, "loss": 1.')  # a kill in the middle of a write
    leftover = run / "checkpoints" / ".last.pt.999999999.0123abcd.tmp"
    leftover.write_bytes(b"x" * 1000)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pretrain(store, dict(TRAIN), run)
    assert not leftover.exists()
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps)) and steps[-1] == 2


def test_one_subject_is_a_clear_error_not_a_batchnorm_one(tmp_path):
    source = ArrayPatchSource(np.zeros((1, L, P, P, P), np.int16))
    with pytest.raises(ValueError, match="at least 2 subjects"):
        pretrain(source, dict(TRAIN), tmp_path / "run")


def test_extraction_carries_which_landmarks_were_inside_the_scan(tmp_path):
    store = make_store(tmp_path / "a", seed=0)
    record = store.subject_record("s1")
    record["in_scan"] = [1, 1, 0]  # a partial scan: the last landmark fell outside
    store.write_subject("s1", store.read_subject("s1"), store.lung_fraction[1],
                        store.subject_corners("s1"), record)
    emb = extract_embeddings(PatchStore(tmp_path / "a"), encoder_kwargs=ENCODER, progress=False)
    assert emb.in_scan.tolist() == [[True] * 3, [True, True, False], [True] * 3]
    expected = emb.patch[1, :2].mean(axis=0)
    np.testing.assert_allclose(pool_embeddings(emb, "mean").loc["s1"].to_numpy(), expected, rtol=1e-5)
