"""The batched device augmentation draws the same distribution of views as the MONAI host path."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import ks_2samp

from drasclr_toolkit.ssl.augment import PatchAugmenter
from drasclr_toolkit.ssl.device_augment import DeviceAugmenter

P = 24
N_VIEWS = 240


def _phantom() -> np.ndarray:
    """Lung-like patch: parenchyma at -850 HU with a gradient, an off-centre vessel, a hole."""
    z, y, x = np.mgrid[0:P, 0:P, 0:P].astype(np.float32)
    patch = -850 + 3.0 * x
    patch[(z - 8) ** 2 + (y - 14) ** 2 + (x - 9) ** 2 < 16] = 40
    patch[(z - 16) ** 2 + (y - 7) ** 2 + (x - 17) ** 2 < 9] = -1000
    return patch.astype(np.int16)


def _statistics(views: np.ndarray) -> dict[str, np.ndarray]:
    """Per-view numbers that each transform moves: geometry, noise, contrast."""
    flat = views.reshape(len(views), -1)
    grid = np.mgrid[0:P, 0:P, 0:P].reshape(3, -1)
    bright = np.clip(flat - np.median(flat, axis=1, keepdims=True), 0, None) + 1e-6
    centre = (bright @ grid.T) / bright.sum(axis=1, keepdims=True)
    rough = np.abs(np.diff(views, axis=-1)).reshape(len(views), -1).mean(axis=1)
    return {"mean": flat.mean(axis=1), "std": flat.std(axis=1), "centre_z": centre[:, 0],
            "centre_x": centre[:, 2], "roughness": rough,
            "p10": np.percentile(flat, 10, axis=1)}


def _host_views(aug: PatchAugmenter) -> np.ndarray:
    batch = np.repeat(_phantom()[None], 16, axis=0)
    views = [aug.view(batch, seed=s).numpy()[:, 0] for s in range(N_VIEWS // 16)]
    return np.concatenate(views)


def _device_views(aug: DeviceAugmenter) -> np.ndarray:
    batch = torch.as_tensor(np.repeat(_phantom()[None], 16, axis=0))
    views = [aug.view(batch, aug.generator(1000 + s, "cpu")).numpy()[:, 0]
             for s in range(N_VIEWS // 16)]
    return np.concatenate(views)


@pytest.fixture(scope="module")
def host_statistics():
    torch.set_num_threads(1)
    return _statistics(_host_views(PatchAugmenter()))


def test_device_views_match_the_host_distribution(host_statistics):
    device = _statistics(_device_views(DeviceAugmenter()))
    for name, values in host_statistics.items():
        p = ks_2samp(values, device[name]).pvalue
        assert p > 1e-3, f"{name}: host and device views differ (KS p = {p:.2g})"


def test_the_comparison_has_power(host_statistics):
    # The same check must notice a device path without shifts or without noise.
    no_shift = _statistics(_device_views(DeviceAugmenter(translate=0.0)))
    assert min(ks_2samp(host_statistics[k], no_shift[k]).pvalue for k in ("centre_z", "centre_x")) < 1e-3
    no_noise = _statistics(_device_views(DeviceAugmenter(p_noise=0.0)))
    assert ks_2samp(host_statistics["roughness"], no_noise["roughness"]).pvalue < 1e-3


def test_views_are_reproducible_and_neighbours_share_one_draw():
    aug = DeviceAugmenter()
    anchor = torch.as_tensor(np.repeat(_phantom()[None], 3, axis=0))
    neighbours = torch.stack([anchor, anchor])  # (k=2, B=3, P, P, P): identical patches
    a = aug(anchor, neighbours, seed=7)
    b = aug(anchor, neighbours, seed=7)
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y)
    v1, v2, nv = a
    assert not torch.allclose(v1, v2)  # two independent views of the anchor
    torch.testing.assert_close(nv[0], nv[1])  # same patch, same shared draw
    assert not torch.allclose(nv[0, 0], nv[0, 1])  # but each sample draws its own
    assert v1.dtype == torch.float32 and float(v1.min()) >= -1 and float(v1.max()) <= 1


def test_disabled_is_plain_intensity_mapping():
    host = PatchAugmenter(enabled=False)
    device = DeviceAugmenter.like(host)
    batch = np.repeat(_phantom()[None], 2, axis=0)
    torch.testing.assert_close(device.view(torch.as_tensor(batch), device.generator(0, "cpu")),
                               host.view(batch, seed=0))


@pytest.mark.parametrize("rotate, scale, shift", [
    ((0.0, 0.0, 0.0), (1.0, 1.0, 1.1), (5.0, 0.0, 0.0)),
    ((0.1, -0.15, 0.12), (0.95, 1.08, 1.02), (3.0, -4.0, 6.0)),
])
def test_geometry_equals_monai_affine_for_the_same_parameters(rotate, scale, shift):
    from monai.transforms import Affine

    hu = torch.as_tensor(_phantom()).float() + 1024
    expected = Affine(rotate_params=rotate, scale_params=scale, translate_params=shift,
                      padding_mode="border", mode="bilinear")(hu[None])[0][0]
    expected = expected.as_tensor() if hasattr(expected, "as_tensor") else expected
    draw = {"angles": torch.tensor([rotate]), "scales": torch.tensor([scale]),
            "shifts": torch.tensor([shift])}
    ours = DeviceAugmenter._affine(hu[None, None], draw)[0, 0]
    assert float((ours - expected).abs().max()) < 0.05  # HU
