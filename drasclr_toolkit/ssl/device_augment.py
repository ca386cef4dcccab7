"""The DrasCLR patch augmentation on whole batches, on the device that trains.

:class:`~drasclr_toolkit.ssl.augment.PatchAugmenter` runs MONAI transforms one patch at a
time on the host; on a GPU its data-loader workers cap the feed far below what the model
can take. :class:`DeviceAugmenter` draws the same random transforms per sample and applies
them to a whole batch with a handful of tensor operations (one ``affine_grid`` +
``grid_sample`` for the geometry), on whatever device the patches are on. The host then
only reads int16 patches.

Same distribution as the host path (tested on CPU by comparing view statistics):

* affine, p = 1: rotation about each axis uniform in ±``rotate_deg``, per-axis scale
  ``1 + U(±scale)``, translation ``U(±translate)`` voxels, composed as MONAI does
  (rotate · translate · scale, about the patch centre), trilinear, border padding;
* Gaussian noise, p = ``p_noise``: std uniform in [0, ``noise_std``] HU;
* gamma contrast, p = ``p_contrast``: gamma uniform in ``gamma``, on each view's own
  min–max range;

all on HU + 1024, then mapped to [-1, 1] by :func:`~drasclr_toolkit.ssl.augment.hu_to_unit`.
A sample's neighbour patches share one draw (geometry, noise field and gamma), as MONAI's
dictionary transforms do.

Example:
    >>> import torch
    >>> aug = DeviceAugmenter()
    >>> anchor = torch.full((4, 16, 16, 16), -800, dtype=torch.int16)
    >>> neigh = torch.full((2, 4, 16, 16, 16), -700, dtype=torch.int16)
    >>> v1, v2, nv = aug(anchor, neigh, seed=0)
    >>> tuple(v1.shape), tuple(nv.shape), bool(v1.abs().max() <= 1)
    ((4, 1, 16, 16, 16), (2, 4, 1, 16, 16, 16), True)
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from drasclr_toolkit.constants import HU_MIN

from drasclr_toolkit.ssl.augment import PatchAugmenter, check_window, hu_to_unit

__all__ = ["DeviceAugmenter"]


def _rotation(angles: torch.Tensor) -> torch.Tensor:
    """(B, 3) angles → (B, 3, 3) rotation matrices R = Rx · Ry · Rz."""
    cx, cy, cz = torch.cos(angles).unbind(1)
    sx, sy, sz = torch.sin(angles).unbind(1)
    one, zero = torch.ones_like(cx), torch.zeros_like(cx)
    rx = torch.stack([one, zero, zero, zero, cx, -sx, zero, sx, cx], 1).view(-1, 3, 3)
    ry = torch.stack([cy, zero, sy, zero, one, zero, -sy, zero, cy], 1).view(-1, 3, 3)
    rz = torch.stack([cz, -sz, zero, sz, cz, zero, zero, zero, one], 1).view(-1, 3, 3)
    return rx @ ry @ rz


class DeviceAugmenter:
    """Batched DrasCLR augmentation in torch; the parameters of :class:`PatchAugmenter`.

    Args:
        translate, rotate_deg, scale, noise_std, p_noise, p_contrast, enabled: as in
            :class:`PatchAugmenter`.
        gamma: range of the contrast exponent (MONAI's default (0.5, 4.5)).
        window: the network's HU window, as in :class:`PatchAugmenter`.
    """

    def __init__(self, translate: float = 12.0, rotate_deg: float = 10.0, scale: float = 0.1,
                 noise_std: float = 50.0, p_noise: float = 0.25, p_contrast: float = 0.25,
                 gamma: tuple[float, float] = (0.5, 4.5), enabled: bool = True,
                 window: tuple[float, float] | None = None) -> None:
        self.params = dict(translate=translate, rotate_deg=rotate_deg, scale=scale,
                           noise_std=noise_std, p_noise=p_noise, p_contrast=p_contrast)
        self.gamma = (float(gamma[0]), float(gamma[1]))
        self.enabled = enabled
        self.window = check_window(window)

    @classmethod
    def like(cls, host: PatchAugmenter) -> "DeviceAugmenter":
        """The device twin of a host augmenter (same parameters, same on/off)."""
        return cls(**host.params, enabled=host.enabled, window=host.window)

    # -- random draws -------------------------------------------------------------------
    @staticmethod
    def _uniform(n: int, low: float, high: float, gen: torch.Generator,
                 device: torch.device) -> torch.Tensor:
        return torch.rand(n, generator=gen, device=device) * (high - low) + low

    def _draw(self, n: int, size: int, gen: torch.Generator, device: torch.device
              ) -> dict[str, torch.Tensor]:
        p = self.params
        rot = math.radians(p["rotate_deg"])
        angles = self._uniform(3 * n, -rot, rot, gen, device).view(n, 3)
        scales = self._uniform(3 * n, 1 - p["scale"], 1 + p["scale"], gen, device).view(n, 3)
        shifts = self._uniform(3 * n, -p["translate"], p["translate"], gen, device).view(n, 3)
        return {
            "angles": angles, "scales": scales, "shifts": shifts,
            "noisy": torch.rand(n, generator=gen, device=device) < p["p_noise"],
            "noise_std": self._uniform(n, 0.0, p["noise_std"], gen, device),
            "contrast": torch.rand(n, generator=gen, device=device) < p["p_contrast"],
            "gamma": self._uniform(n, *self.gamma, gen, device),
        }

    # -- the three transforms -----------------------------------------------------------
    @staticmethod
    def _affine(x: torch.Tensor, draw: dict[str, torch.Tensor]) -> torch.Tensor:
        """x: (B, C, P, P, P), C patches sharing each sample's transform."""
        b, _, size = x.shape[0], x.shape[1], x.shape[-1]
        half = (size - 1) / 2.0
        # Output voxel p (centred, array axis order) samples the input at R (S p + t):
        # MONAI's R · T · S. affine_grid orders coordinates (x, y, z) = last axis first,
        # so the matrix is conjugated by the axis reversal.
        rotation = _rotation(draw["angles"])
        linear = rotation @ torch.diag_embed(draw["scales"])
        offset = (rotation @ draw["shifts"].unsqueeze(-1)).squeeze(-1) / half
        linear, offset = linear.flip(1).flip(2), offset.flip(1)
        theta = torch.cat([linear, offset.unsqueeze(-1)], dim=2).to(x.dtype)
        grid = F.affine_grid(theta, [b, 1, size, size, size], align_corners=True)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=True)

    @staticmethod
    def _noise(x: torch.Tensor, draw: dict[str, torch.Tensor], gen: torch.Generator
               ) -> torch.Tensor:
        # One noise field per sample, shared by its C patches (MONAI's dictionary version).
        field = torch.randn((x.shape[0], 1) + tuple(x.shape[2:]), generator=gen,
                            device=x.device, dtype=x.dtype)
        std = torch.where(draw["noisy"], draw["noise_std"], torch.zeros_like(draw["noise_std"]))
        return x + field * std.view(-1, 1, 1, 1, 1).to(x.dtype)

    @staticmethod
    def _contrast(x: torch.Tensor, draw: dict[str, torch.Tensor]) -> torch.Tensor:
        flat = x.flatten(2)
        low = flat.min(dim=2).values[..., None, None, None]
        span = flat.max(dim=2).values[..., None, None, None] - low
        gamma = draw["gamma"].view(-1, 1, 1, 1, 1).to(x.dtype)
        adjusted = ((x - low) / (span + 1e-7)).clamp_min(0) ** gamma * span + low
        return torch.where(draw["contrast"].view(-1, 1, 1, 1, 1), adjusted, x)

    def _views(self, hu: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """hu: (B, C, P, P, P) in HU → augmented, in [-1, 1], same shape (float32)."""
        low, high = self.window
        x = torch.nan_to_num(hu.float(), nan=HU_MIN).clamp(low, high) - low
        if self.enabled:
            draw = self._draw(x.shape[0], x.shape[-1], gen, x.device)
            x = self._affine(x, draw)
            if self.params["p_noise"] > 0:  # no noise field drawn when noise is off
                x = self._noise(x, draw, gen)
            if self.params["p_contrast"] > 0:
                x = self._contrast(x, draw)
        return hu_to_unit(x + low, self.window)

    # -- public API, shaped like PatchAugmenter -----------------------------------------
    def view(self, patches: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """One view of each patch: (B, P, P, P) → (B, 1, P, P, P)."""
        return self._views(torch.as_tensor(patches).unsqueeze(1), gen)

    def shared_view(self, patches: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """One draw per sample shared by its k patches: (k, B, P, P, P) → (k, B, 1, P, P, P)."""
        patches = torch.as_tensor(patches)
        out = self._views(patches.transpose(0, 1), gen)  # (B, k, P, P, P)
        return out.transpose(0, 1).unsqueeze(2)

    def generator(self, seed: int, device: torch.device | str) -> torch.Generator:
        gen = torch.Generator(device=device)
        gen.manual_seed(int(seed) % (2**63))
        return gen

    def __call__(self, anchor: torch.Tensor, neighbours: torch.Tensor | None, seed: int
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Views for one batch, on the patches' device; reproducible from ``seed``.

        anchor (B, P, P, P) and neighbours (k, B, P, P, P) in HU (any dtype) →
        view1, view2 (B, 1, P, P, P) and neighbour views (k, B, 1, P, P, P), float32.
        """
        anchor = torch.as_tensor(anchor)
        gen = self.generator(seed, anchor.device)
        v1 = self.view(anchor, gen)
        v2 = self.view(anchor, gen)
        if neighbours is None or len(neighbours) == 0:
            nv = v1.new_zeros((0,) + tuple(v1.shape))
        else:
            nv = self.shared_view(torch.as_tensor(neighbours, device=anchor.device), gen)
        return v1, v2, nv

    def __repr__(self) -> str:
        inner: dict[str, Any] = {**self.params, "gamma": self.gamma, "enabled": self.enabled,
                                 "window": self.window}
        return "DeviceAugmenter(" + ", ".join(f"{k}={v}" for k, v in inner.items()) + ")"
