"""Real chest CT (pyradiomics-bhklab sample scans, fetched through pip): load_ct on real data."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from drasclr_toolkit.data import CTLoadWarning, load_ct
from drasclr_toolkit.data.ct import IDENTITY_DIRECTION
from drasclr_toolkit.datasets.sample_data import SampleDataUnavailable, real_chest_ct

pytestmark = pytest.mark.slow

# From shared/reference/README.md: size (x, y, z) and in-plane / slice spacing in mm.
EXPECTED = {
    "lung1": ((512, 512, 48), 0.5703, 5.0),
    "lung2": ((512, 512, 61), 0.6270, 5.0),
}


@pytest.fixture(scope="module", params=sorted(EXPECTED))
def real_scan(request):
    try:
        path = real_chest_ct(request.param)
    except SampleDataUnavailable as exc:  # only an unreachable registry skips
        pytest.skip(str(exc))
    return request.param, path


def test_real_chest_ct_loads_in_canonical_hu(real_scan):
    name, path = real_scan
    size, in_plane, thickness = EXPECTED[name]
    with warnings.catch_warnings():
        warnings.simplefilter("error", CTLoadWarning)  # 5 mm slices: at the limit, no warning
        ct = load_ct(path, subject_id=name)
    assert ct.size == size and ct.shape == size[::-1]
    np.testing.assert_allclose(ct.spacing, (in_plane, in_plane, thickness), atol=1e-3)
    assert ct.direction == IDENTITY_DIRECTION
    assert ct.array.dtype == np.int16 and ct.subject_id == name

    a = ct.array
    sample = a[::2, ::4, ::4]
    # air outside the body sits near -1000 HU
    corner = a[:, :20, :20]
    assert -1100 < np.median(corner) < -900
    # lungs present: a large share of voxels in the lung density range (-950..-600 HU)
    lung_fraction = np.mean((sample > -950) & (sample < -600))
    assert lung_fraction > 0.05
    # soft tissue near 0..100 HU and some bone above 300 HU: really CT in HU
    assert np.mean((sample > -100) & (sample < 100)) > 0.05
    assert a.max() > 300 and a.min() >= -1100


def test_sample_data_is_cached(real_scan):
    name, path = real_scan
    stamp = path.stat().st_mtime_ns
    assert real_chest_ct(name) == path and path.stat().st_mtime_ns == stamp


def test_unknown_sample_name():
    with pytest.raises(ValueError, match="lung1"):
        real_chest_ct("brain9")


def test_unreachable_registry_raises_sample_data_unavailable(tmp_path, monkeypatch):
    # Point pip at a closed local port and nowhere else: what an offline machine sees.
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")
    monkeypatch.setenv("PIP_EXTRA_INDEX_URL", "")
    monkeypatch.setenv("PIP_FIND_LINKS", "")
    monkeypatch.setenv("PIP_RETRIES", "0")
    monkeypatch.setenv("PIP_TIMEOUT", "5")
    with pytest.raises(SampleDataUnavailable, match="cannot download pyradiomics-bhklab"):
        real_chest_ct("lung2", cache_dir=tmp_path)
    assert not list(tmp_path.glob("*.nrrd"))


def test_cache_env_var(tmp_path, monkeypatch):
    from drasclr_toolkit.datasets.sample_data import default_cache_dir

    monkeypatch.setenv("DRASCLR_CACHE", str(tmp_path))
    assert default_cache_dir() == tmp_path / "sample_data"
