"""Damaged inputs and interrupted runs (issue 8 part A): the patch store's checksums,
subject ids that would escape the output folder, torn logs, leftover temporary files,
workers that outlive a killed parent, and the CLI's one error path."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from drasclr_toolkit.io_utils import (
    UnsafeSubjectIdError,
    atomic_write_bytes,
    read_jsonl,
    remove_stale_temp_files,
    subject_file,
)
from drasclr_toolkit.preprocess.atlas import Atlas
from drasclr_toolkit.preprocess.store import PatchStore, StoreError

REPO = Path(__file__).resolve().parent.parent
L, P = 5, 8


def make_store(path: Path, n: int = 3) -> PatchStore:
    """A small store with random patches (no preprocessing: an atlas from a stub mask)."""
    atlas = Atlas(sitk.GetImageFromArray(np.ones((16, 16, 16), np.uint8)),
                  np.arange(L * 3).reshape(L, 3), patch_size=P)
    ids = [f"s{i}" for i in range(n)]
    store = PatchStore.create(path, ids, atlas)
    rng = np.random.default_rng(0)
    for sid in ids:
        store.write_subject(sid, rng.integers(-1000, 240, (L, P, P, P)).astype(np.int16),
                            rng.random(L), rng.integers(0, 9, (L, 3)), {"subject_id": sid})
    return PatchStore(path)


def _assert_names(err: StoreError, store: PatchStore, sid: str, array: str) -> None:
    msg = str(err)
    assert f"subject {sid!r}" in msg and str(store.chunk_file(array, sid)) in msg, msg
    assert f"field {array!r}" in msg and "What to do" in msg and "drasclr preprocess" in msg, msg
    assert err.subject_id == sid and err.field == array


def _damage(file: Path, how: str) -> None:
    data = file.read_bytes()
    if how == "delete":
        file.unlink()
    elif how == "empty":
        file.write_bytes(b"")
    elif how == "flip":
        flipped = bytearray(data)
        flipped[len(data) // 3] ^= 0x04
        file.write_bytes(bytes(flipped))
    elif how == "cut":
        file.write_bytes(data[: len(data) // 2])


def test_an_intact_store_reads_and_verifies(tmp_path):
    store = make_store(tmp_path / "s")
    assert store.read_location(2, [0, 1, 2]).shape == (3, P, P, P)
    assert store.read_subject("s1").shape == (L, P, P, P)
    assert store.lung_fraction.shape == (3, L)
    assert [r["status"] for r in store.verify()] == ["ok"] * 4
    assert "checksums" in store.subject_record("s0")


@pytest.mark.parametrize("how", ["delete", "empty", "flip", "cut"])
def test_a_damaged_patch_shard_raises_store_error_naming_subject_and_file(tmp_path, how):
    # Before: a deleted or emptied shard read as all -1024 HU, a flipped bit silently
    # changed voxels, a cut file raised a codec error naming neither subject nor file.
    store = make_store(tmp_path / "s")
    _damage(store.chunk_file("patches", "s1"), how)
    store = PatchStore(tmp_path / "s")
    with pytest.raises(StoreError) as exc:
        store.read_subject("s1")
    _assert_names(exc.value, store, "s1", "patches")
    store.read_subject("s0")  # the others are fine
    rows = {r["subject"]: r["status"] for r in store.verify()}
    assert rows == {"(atlas landmarks)": "ok", "s0": "ok", "s1": "damaged", "s2": "ok"}


@pytest.mark.parametrize("how", ["delete", "empty", "cut"])
def test_location_major_reads_catch_damage_too(tmp_path, how):
    store = make_store(tmp_path / "s")
    _damage(store.chunk_file("patches", "s2"), how)
    store = PatchStore(tmp_path / "s")
    with pytest.raises(StoreError) as exc:
        store.read_location(3, [0, 2, 1])
    _assert_names(exc.value, store, "s2", "patches")


def test_a_flipped_bit_is_caught_at_the_location_it_changed(tmp_path):
    store = make_store(tmp_path / "s")
    clean = store.read_subject("s1")
    _damage(store.chunk_file("patches", "s1"), "flip")
    store = PatchStore(tmp_path / "s")
    with pytest.raises(StoreError) as exc:
        store.read_subject("s1")
    bad = [loc for loc in range(L) if not _reads_clean(store, loc, clean[loc])]
    assert bad and f"location(s) ({bad[0]}" in str(exc.value)


def _reads_clean(store, loc, expected) -> bool:
    try:
        return np.array_equal(store.read_location(loc, [1])[0], expected)
    except StoreError:
        return False


@pytest.mark.parametrize("array", ["lung_fraction", "corners"])
def test_deleted_lung_fraction_or_corners_is_caught(tmp_path, array):
    # Before: a deleted lung-fraction file read as zeros.
    store = make_store(tmp_path / "s")
    store.chunk_file(array, "s2").unlink()
    store = PatchStore(tmp_path / "s")
    with pytest.raises(StoreError) as exc:
        store.lung_fraction if array == "lung_fraction" else store.subject_corners("s2")
    _assert_names(exc.value, store, "s2", array)
    assert "deleted or emptied" in str(exc.value)


def test_changed_atlas_landmarks_are_caught(tmp_path):
    store = make_store(tmp_path / "s")
    np.save(tmp_path / "s" / "atlas" / "landmarks.npy", np.arange(L * 3).reshape(L, 3) + 1)
    with pytest.raises(StoreError, match="atlas landmarks"):
        PatchStore(tmp_path / "s").landmarks


def test_forget_and_fingerprint(tmp_path):
    store = make_store(tmp_path / "s")
    before = store.fingerprint()
    store.forget("s1")
    assert store.subject_ids == ["s0", "s2"] and store.fingerprint() != before


def test_records_without_checksums_are_read_unchecked(tmp_path):
    store = make_store(tmp_path / "s")
    marker = tmp_path / "s" / "subjects" / "s0.json"
    rec = json.loads(marker.read_text())
    del rec["checksums"], rec["record_checksum"]  # as written before either existed
    marker.write_text(json.dumps(rec))
    store = PatchStore(tmp_path / "s")
    store.read_subject("s0")
    assert store.verify()[1]["status"] == "unverified"


def test_one_subject_store_is_refused_for_pretraining(tmp_path):
    store = make_store(tmp_path / "s", n=1)
    with pytest.raises(StoreError, match="at least 2") as exc:
        store.require_subjects(2, "pretraining")
    assert str(tmp_path / "s") in str(exc.value)


# ------------------------------------------------------------------------- subject ids


def test_unsafe_subject_ids_are_refused_where_files_are_named(tmp_path):
    for bad in ("../../escape", "a/b", ".hidden", "", "a b"):
        with pytest.raises(UnsafeSubjectIdError):
            subject_file(tmp_path, bad, ".json")
    assert subject_file(tmp_path, "syn001", ".json") == tmp_path / "syn001.json"


def test_run_preprocessing_with_a_python_table_cannot_write_outside_out(tmp_path):
    # Before: Manifest(table=...) built in Python skipped the id check and
    # failures/../../escape.json was written outside the output folder.
    from drasclr_toolkit.data.manifest import Manifest
    from drasclr_toolkit.preprocess.pipeline import run_preprocessing

    atlas = Atlas(sitk.GetImageFromArray(np.ones((16, 16, 16), np.uint8)),
                  np.arange(L * 3).reshape(L, 3), patch_size=P)
    table = pd.DataFrame({"subject_id": ["../../escape"], "image": [str(tmp_path / "x.nii.gz")]})
    out = tmp_path / "deep" / "er" / "out"
    with pytest.raises(UnsafeSubjectIdError, match="escape"):
        run_preprocessing(Manifest(table=table), atlas, out, progress=False)
    written = {p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file()}
    assert all(str(p).startswith("deep/er/out") for p in written), written


# --------------------------------------------------------------- logs and temporary files


def test_torn_last_metrics_line_is_ignored_with_a_warning(tmp_path):
    from drasclr_toolkit.train.metrics import read_metrics

    log = tmp_path / "metrics.jsonl"
    log.write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "loss": 1.5}\n{"step": 3, "lo')
    with pytest.warns(RuntimeWarning, match="line 3"):
        frame = read_metrics(log)
    assert frame["step"].tolist() == [1, 2]


def test_corruption_in_the_middle_of_the_metrics_fails_clearly(tmp_path):
    from drasclr_toolkit.train.metrics import read_metrics

    log = tmp_path / "metrics.jsonl"
    log.write_text('{"step": 1}\n{"step": 2, "lo\n{"step": 3}\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl, line 2 of 3"):
        read_metrics(log)
    with pytest.raises(ValueError, match="line 2"):
        read_jsonl(log)


def test_leftover_temp_files_of_dead_writers_are_removed(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    (tmp_path / "checkpoints").mkdir()
    stale = tmp_path / "checkpoints" / f".last.pt.{dead}.0123abcd.tmp"
    stale.write_bytes(b"\0" * 1024)
    live = tmp_path / f".qc.csv.{os.getppid()}.89abcdef.tmp"  # a live process's write
    live.write_bytes(b"x")
    user_file = tmp_path / "notes.tmp"
    user_file.write_bytes(b"mine")
    atomic_write_bytes(tmp_path / "ok.bin", b"1")
    assert remove_stale_temp_files(tmp_path) == [stale]
    assert live.exists() and user_file.exists() and not stale.exists()


# ---------------------------------------------------------------------------------- CLI


def test_cli_prints_known_errors_without_traceback_and_debug_shows_it(tmp_path, capsys):
    from drasclr_toolkit.cli.main import is_known_error, main

    assert main(["store", "verify", str(tmp_path / "nowhere")]) == 1
    err = capsys.readouterr().err
    assert "not a patch store" in err and "Traceback" not in err and "--debug" in err
    with pytest.raises(StoreError):
        main(["--debug", "store", "verify", str(tmp_path / "nowhere")])
    from drasclr_toolkit.errors import InputError, MissingFileError

    assert not is_known_error(KeyError("a bug")) and not is_known_error(ValueError("a bug"))
    assert is_known_error(MissingFileError("x")) and is_known_error(InputError("y"))
    # a path the operating system did not find is said in words, not a traceback
    assert is_known_error(FileNotFoundError(2, "No such file or directory", "x.csv"))


def test_cli_store_verify_prints_a_table_and_can_forget_damaged_subjects(tmp_path, capsys):
    from drasclr_toolkit.cli.main import main

    store = make_store(tmp_path / "s")
    assert main(["store", "verify", str(tmp_path / "s")]) == 0
    store.chunk_file("patches", "s2").unlink()
    assert main(["store", "verify", str(tmp_path / "s")]) == 1
    out = capsys.readouterr().out
    assert out.splitlines()[0].split() == ["subject", "status", "reason"]
    assert any(line.startswith("s2") and "damaged" in line for line in out.splitlines())
    assert main(["store", "verify", str(tmp_path / "s"), "--forget-damaged"]) == 1
    assert PatchStore(tmp_path / "s").subject_ids == ["s0", "s1"]
    assert main(["store", "verify", str(tmp_path / "s")]) == 0  # s2 is now 'not done'


def test_synthetic_refuses_a_folder_with_other_files_unless_forced(tmp_path):
    import yaml

    from drasclr_toolkit.datasets.synthetic import check_out_folder
    from drasclr_toolkit.datasets.synthetic import SyntheticConfig

    config = SyntheticConfig()
    check_out_folder(tmp_path / "new", config)  # missing folder
    user = tmp_path / "user"
    (user / "images").mkdir(parents=True)
    (user / "manifest.csv").write_text("subject_id,image\nmine,images/mine.nii.gz\n")
    with pytest.raises(FileExistsError, match="--force"):
        check_out_folder(user, config)
    check_out_folder(user, config, force=True)
    # an interrupted synthetic run: only its own files
    partial = tmp_path / "partial"
    (partial / "images").mkdir(parents=True)
    (partial / "images" / "syn000.nii.gz").write_bytes(b"")
    (partial / "ground_truth").mkdir()
    (partial / "ground_truth" / "syn000_record.json").write_text("{}")
    check_out_folder(partial, config)
    (partial / "images" / "patient7.nii.gz").write_bytes(b"")
    with pytest.raises(FileExistsError, match="patient7"):
        check_out_folder(partial, config)
    # a finished cohort: reused with the same options, refused with others
    done = tmp_path / "done"
    done.mkdir()
    (done / "manifest.csv").write_text("subject_id,image\n")
    (done / "dataset_card.yaml").write_text(yaml.safe_dump(
        {"source": "synthetic", "options": config.fingerprint()}))
    check_out_folder(done, config)
    with pytest.raises(FileExistsError, match="spacing"):
        check_out_folder(done, SyntheticConfig(spacing=3.0))
