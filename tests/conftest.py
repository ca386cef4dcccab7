"""Shared test fixtures: repository paths, the official reference atlas, a tiny cohort."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
# The official atlas: ../shared/reference beside the checkout, or wherever
# DRASCLR_SHARED_REFERENCE points (a git worktree or a copy elsewhere has no ../shared).
SHARED_REFERENCE = Path(os.environ.get("DRASCLR_SHARED_REFERENCE",
                                       REPO_ROOT.parent / "shared" / "reference"))

# Keep numerical libraries to the machine's cores and away from GUI backends.
os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def shared_reference() -> Path:
    """The official DrasCLR atlas files; tests that use them skip when ../shared is absent."""
    mask = SHARED_REFERENCE / "atlas_lung_mask.nii.gz"
    landmarks = SHARED_REFERENCE / "atlas_patch_loc.npy"
    if not (mask.exists() and landmarks.exists()):
        pytest.skip(f"official atlas files not found under {SHARED_REFERENCE} (../shared is absent; "
                    "set DRASCLR_SHARED_REFERENCE to their folder to run these tests)")
    return SHARED_REFERENCE


@pytest.fixture(scope="session")
def tiny_cohort(tmp_path_factory):
    """Six small synthetic subjects at 2 mm, made once per test session."""
    from drasclr_toolkit.datasets.synthetic import make_synthetic_cohort

    out = tmp_path_factory.mktemp("tiny_cohort")
    return make_synthetic_cohort(6, out, seed=7, spacing=2.0, size_scale=0.6)


@pytest.fixture()
def one_torch_thread():
    """Run a test with one torch thread: on a busy 2-core machine small 3D convolutions are
    many times faster with one thread than with two competing ones."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
