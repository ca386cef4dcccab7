"""Intensity mapping and the DrasCLR patch augmentation (MONAI transforms).

The network sees HU clipped to a window, by default the reference's [-1024, 240] (the
``hu_window`` pretraining option can choose another, e.g. a lung window; the checkpoint
records it and embedding and fine-tuning use it), mapped linearly to [-1, 1]; missing values
(NaN, e.g. from resampling outside the scan) become -1, i.e. air, at training and at test
time alike (the reference cleaned NaN only in its training loader).

Augmentation follows the reference parameters and runs on HU + 1024 (so air is 0 and the
contrast transform sees non-negative values): RandAffine (p=1, translate ±12 voxels,
rotate ±10°, scale ±0.1, border padding), RandGaussianNoise (p=0.25, std up to 50),
RandAdjustContrast (p=0.25). The anchor patch gets two independent views; a sample's
neighbour patches get one view drawn once and applied to all of them (MONAI dictionary
transforms apply the same random parameters to every key).
"""

from __future__ import annotations

import math
import numpy as np
import torch
from monai.transforms import (
    Compose,
    RandAdjustContrastd,
    RandAffined,
    RandGaussianNoised,
)

from drasclr_toolkit.errors import InputError
from drasclr_toolkit.constants import HU_MIN, HU_WINDOW


def check_window(window: tuple[float, float] | list[float] | None) -> tuple[float, float]:
    """The network window as ``(low, high)`` HU (``None``: the reference [-1024, 240]).

    Example:
        >>> check_window(None), check_window([-1024, -500])
        ((-1024, 240), (-1024, -500))
    """
    if window is None:
        return HU_WINDOW
    low, high = (v for v in window)
    if not high > low:
        raise InputError(f"HU window {tuple(window)}: the upper end must be above the lower "
                         "one, e.g. (-1024, 240)")
    return (low, high)


def hu_to_unit(x: np.ndarray | torch.Tensor, window: tuple[float, float] | None = None
               ) -> np.ndarray | torch.Tensor:
    """Map Hounsfield units to the network's [-1, 1] range (float32).

    Clip to the window (default [-1024, 240], the reference's), then map it linearly to
    [-1, 1] (``(HU + 1024) / 632 - 1`` for the default); NaN becomes air (-1024 HU, so -1
    for every window starting at or above air).

    Example:
        >>> hu_to_unit(np.array([-2000, -1024, 240, np.nan])).tolist()
        [-1.0, -1.0, 1.0, -1.0]
        >>> hu_to_unit(np.array([-1024, -762, -500]), window=(-1024, -500)).tolist()
        [-1.0, 0.0, 1.0]
    """
    low, high = check_window(window)
    span = (high - low) / 2.0
    if isinstance(x, torch.Tensor):
        t = x.to(torch.float32) if not torch.is_floating_point(x) else x.float()
        t = torch.nan_to_num(t, nan=HU_MIN)
        return (t.clamp(low, high) - low) / span - 1.0
    a = np.asarray(x, dtype=np.float32)
    a = np.nan_to_num(a, nan=HU_MIN)
    return ((np.clip(a, low, high) - low) / span - 1.0).astype(np.float32)


def _plain(t: torch.Tensor) -> torch.Tensor:
    # MONAI returns MetaTensors; batches should carry plain tensors (cheaper to pickle
    # between data-loader workers and free of metadata tracking in the model).
    return t.as_tensor() if hasattr(t, "as_tensor") else torch.as_tensor(t)


def _pipeline(keys: list[str], translate: float, rotate_deg: float, scale: float,
              noise_std: float, p_noise: float, p_contrast: float) -> Compose:
    rot = math.radians(rotate_deg)
    return Compose([
        RandAffined(keys=keys, prob=1.0, rotate_range=(rot, rot, rot),
                    translate_range=(translate,) * 3, scale_range=(scale,) * 3,
                    padding_mode="border", mode="bilinear"),
        RandGaussianNoised(keys=keys, prob=p_noise, mean=0.0, std=noise_std),
        RandAdjustContrastd(keys=keys, prob=p_contrast),
    ])


class PatchAugmenter:
    """Two views of each anchor patch and one shared view of its neighbour patches.

    Works on HU arrays (any numeric dtype) and returns float32 tensors in [-1, 1]. Each
    call is reproducible from its ``seed`` alone, so a data-loader worker, a resumed run
    and an uninterrupted run all draw identical views for the same batch.

    Args:
        translate: maximum shift in voxels (reference 12 for 32³ patches).
        rotate_deg: maximum rotation about each axis in degrees.
        scale: maximum relative zoom (0.1 = ±10 %).
        noise_std: maximum standard deviation of Gaussian noise in HU.
        p_noise, p_contrast: probabilities of noise and gamma-contrast change (0 and 0:
            no intensity augmentation, geometry only).
        enabled: False gives plain intensity mapping (both views equal the patch).
        window: the network's HU window (default [-1024, 240]); augmentation works on HU
            clipped to it, then maps it to [-1, 1].

    Example:
        >>> aug = PatchAugmenter()
        >>> anchor = np.full((2, 16, 16, 16), -800, np.int16)
        >>> neigh = np.full((2, 2, 16, 16, 16), -700, np.int16)   # (k, B, P, P, P)
        >>> v1, v2, nv = aug(anchor, neigh, seed=0)
        >>> tuple(v1.shape), tuple(nv.shape)
        ((2, 1, 16, 16, 16), (2, 2, 1, 16, 16, 16))
    """

    def __init__(self, translate: float = 12.0, rotate_deg: float = 10.0, scale: float = 0.1,
                 noise_std: float = 50.0, p_noise: float = 0.25, p_contrast: float = 0.25,
                 enabled: bool = True, window: tuple[float, float] | None = None) -> None:
        self.params = dict(translate=translate, rotate_deg=rotate_deg, scale=scale,
                           noise_std=noise_std, p_noise=p_noise, p_contrast=p_contrast)
        self.enabled = enabled
        self.window = check_window(window)
        self._single = _pipeline(["x"], **self.params)
        self._multi: dict[int, Compose] = {}

    def _neighbour_pipeline(self, k: int) -> Compose:
        if k not in self._multi:
            self._multi[k] = _pipeline([f"n{i}" for i in range(k)], **self.params)
        return self._multi[k]

    def _prepare(self, patch: np.ndarray | torch.Tensor) -> torch.Tensor:
        # HU minus the window's low end (air is 0 for the default window, so the contrast
        # transform sees non-negative values), same clip/NaN clean-up as hu_to_unit.
        low, high = self.window
        t = torch.as_tensor(np.asarray(patch, dtype=np.float32))
        t = torch.nan_to_num(t, nan=HU_MIN).clamp(low, high) - low
        return t.unsqueeze(0)

    def view(self, patches: np.ndarray, seed: int) -> torch.Tensor:
        """One augmented view of each patch in ``patches`` (B, P, P, P) → (B, 1, P, P, P)."""
        if not self.enabled:
            return hu_to_unit(torch.as_tensor(np.asarray(patches)), self.window).unsqueeze(1)
        self._single.set_random_state(seed=int(seed) % (2**32))
        out = [_plain(self._single({"x": self._prepare(p)})["x"]) for p in patches]
        return hu_to_unit(torch.stack(out) + self.window[0], self.window)

    def shared_view(self, patches: np.ndarray, seed: int) -> torch.Tensor:
        """One view per sample shared by its k patches: (k, B, P, P, P) → (k, B, 1, P, P, P)."""
        patches = np.asarray(patches)
        k = patches.shape[0]
        if not self.enabled or k == 0:
            return hu_to_unit(torch.as_tensor(patches), self.window).unsqueeze(2)
        pipe = self._neighbour_pipeline(k)
        pipe.set_random_state(seed=int(seed) % (2**32))
        per_sample = []
        for b in range(patches.shape[1]):
            d = pipe({f"n{i}": self._prepare(patches[i, b]) for i in range(k)})
            per_sample.append(torch.stack([_plain(d[f"n{i}"]) for i in range(k)]))
        return hu_to_unit(torch.stack(per_sample, dim=1) + self.window[0], self.window)

    def __call__(self, anchor: np.ndarray, neighbours: np.ndarray | None, seed: int
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Views for one batch: anchor (B, P, P, P), neighbours (k, B, P, P, P) in HU.

        Returns view1, view2 (B, 1, P, P, P) and neighbour views (k, B, 1, P, P, P).
        """
        seeds = np.random.SeedSequence(int(seed) % (2**63)).generate_state(3)
        v1 = self.view(anchor, seeds[0])
        v2 = self.view(anchor, seeds[1])
        if neighbours is None or len(neighbours) == 0:
            nv = v1.new_zeros((0,) + tuple(v1.shape))
        else:
            nv = self.shared_view(neighbours, seeds[2])
        return v1, v2, nv

