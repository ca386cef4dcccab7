"""The shared atomic writes (drasclr_toolkit.io_utils) and config key check (config.check_keys)."""

from __future__ import annotations

import os

import numpy as np
import pytest
import SimpleITK as sitk

from drasclr_toolkit.config import check_keys
from drasclr_toolkit.io_utils import (
    atomic_write,
    atomic_write_bytes,
    atomic_write_stream,
    atomic_write_text,
)


def test_text_is_written_as_utf8_bytes_and_replaces_the_old_file(tmp_path):
    target = tmp_path / "card.yaml"
    target.write_text("old\n")
    assert atomic_write_text(target, "unit: µm\r\nx\n") == target
    assert target.read_bytes() == "unit: µm\r\nx\n".encode("utf-8")
    assert os.listdir(tmp_path) == ["card.yaml"]


def test_a_failed_write_keeps_the_old_file_and_removes_its_temp_file(tmp_path):
    target = tmp_path / "ckpt.pt"
    atomic_write_bytes(target, b"old")
    seen = []

    def half_written(tmp):
        seen.append(tmp)
        tmp.write_bytes(b"half")
        raise KeyboardInterrupt  # BaseException too: a killed run leaves no litter

    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, half_written)
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["ckpt.pt"]
    # the temp file sat beside the target, hidden, ending in .tmp (invisible to "*.pt")
    tmp = seen[0]
    assert tmp.parent == tmp_path and tmp.name.startswith(".ckpt.pt.") and tmp.suffix == ".tmp"


def test_temp_names_never_collide(tmp_path):
    names = []
    for _ in range(20):
        atomic_write(tmp_path / "a.json", lambda tmp: names.append(tmp.name) or tmp.write_text("{}"))
    assert len(set(names)) == 20


def test_suffix_lets_writers_that_read_the_extension_work(tmp_path):
    # np.savez appends ".npz" to a name without it; the target need not end in .npz
    target = tmp_path / "source.bin"
    atomic_write(target, lambda tmp: np.savez(tmp, x=np.arange(4)), suffix=".tmp.npz")
    assert np.load(target)["x"].tolist() == [0, 1, 2, 3]
    # SimpleITK picks the writer (and gzip) from the extension
    image = sitk.GetImageFromArray(np.arange(24, dtype=np.int16).reshape(2, 3, 4))
    nii = tmp_path / "mask.nii.gz"
    atomic_write(nii, lambda tmp: sitk.WriteImage(image, str(tmp), True), suffix=".tmp.nii.gz")
    assert nii.read_bytes()[:2] == b"\x1f\x8b"
    assert sitk.GetArrayFromImage(sitk.ReadImage(str(nii))).tolist() == \
        sitk.GetArrayFromImage(image).tolist()
    assert sorted(os.listdir(tmp_path)) == ["mask.nii.gz", "source.bin"]


def test_stream_gets_a_handle_and_make_parents_creates_folders(tmp_path):
    target = tmp_path / "a" / "b" / "x"
    with pytest.raises(FileNotFoundError):
        atomic_write_stream(target, lambda f: np.save(f, np.ones(2)))
    atomic_write_stream(target, lambda f: np.save(f, np.ones(2)), make_parents=True)
    assert np.load(target).tolist() == [1.0, 1.0]  # handle: nothing appended to the name
    assert os.listdir(target.parent) == ["x"]


def test_check_keys_names_the_section_hints_and_lists_allowed_keys():
    check_keys("embed config", {"batch_size": 1}, ["batch_size", "device"])  # no error
    with pytest.raises(ValueError) as info:
        check_keys("preprocess config", ["spacings", "qqq"], ["step", "spacing"],
                   advice="Fix the spelling.")
    msg = str(info.value)
    assert msg.startswith("preprocess config: unknown key(s) ['qqq', 'spacings'];")
    assert "did you mean 'spacing'" in msg and "'qqq' (for" not in msg
    assert "allowed keys are ['spacing', 'step']" in msg and msg.endswith(". Fix the spelling.")
