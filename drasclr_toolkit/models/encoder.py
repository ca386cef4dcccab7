"""The DrasCLR patch encoder (13 conditional 3D convolutions) and its baselines.

Architecture (reference defaults, Yu et al. 2023): 13 convolutions, kernel 3, padding 1,
each followed by BatchNorm3d and ELU::

    1→8 (s1), 8→8 (s2),
    [8→16, 16→16, 16→16 (s2)], [16→32, 32→32, 32→32 (s2)], [32→64, 64→64, 64→64 (s2)],
    64→128 (s1), 128→rep_dim (s2)

A 32³ patch becomes a 1³ map with ``rep_dim`` channels, flattened to ``h``. A MoCo v2
projection head ``Linear(rep, rep) → ReLU → Linear(rep, proj)`` maps ``h`` to ``z``.

``conditioning`` picks how anatomy enters the network:

* ``"condconv"``: every convolution is a :class:`CondConv3d` routed by the location (DrasCLR);
* ``"none"``: plain ``nn.Conv3d`` everywhere, the location is ignored (MoCo baseline);
* ``"concat"``: plain convolutions, the location is concatenated to ``h`` before the
  projection head (the predecessor method, Context-Aware SSL); ``h`` itself is location-free.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from drasclr_toolkit.config import CONDITIONINGS

from drasclr_toolkit.errors import InputError
from drasclr_toolkit.models.condconv import (CondConv3d, LocationPlan, PerSampleCondConv3d,
                                             canonical_locations, plan_locations)

__all__ = ["DrasCLREncoder", "CONDITIONINGS", "layer_specs"]

COORD_DIM = 3


def layer_specs(rep_dim: int = 128, width: float = 1.0,
                in_channels: int = 1) -> list[tuple[int, int, int]]:
    """(in, out, stride) of the 13 convolutions; ``width`` scales every channel count but
    the input and the last one (which is ``rep_dim``).

    Example:
        >>> layer_specs()[:2]
        [(1, 8, 1), (8, 8, 2)]
        >>> len(layer_specs()), layer_specs()[-1]
        (13, (128, 128, 2))
    """
    if width <= 0:
        raise InputError(f"width must be > 0, got {width}")

    def ch(n: int) -> int:
        return max(1, int(round(n * width)))

    specs = [(in_channels, ch(8), 1), (ch(8), ch(8), 2)]
    prev = ch(8)
    for base in (16, 32, 64):
        c = ch(base)
        specs += [(prev, c, 1), (c, c, 1), (c, c, 2)]
        prev = c
    specs += [(prev, ch(128), 1), (ch(128), rep_dim, 2)]
    return specs


class _ConvUnit(nn.Module):
    """Convolution → BatchNorm3d → ELU; the convolution may be location-conditioned."""

    def __init__(self, conv: nn.Module, out_channels: int) -> None:
        super().__init__()
        self.conv = conv
        self.bn = nn.BatchNorm3d(out_channels)
        self.act = nn.ELU(inplace=True)

    def forward(self, x: torch.Tensor, loc: LocationPlan,
                routing: torch.Tensor | None = None) -> torch.Tensor:
        if isinstance(self.conv, CondConv3d):
            x = self.conv(x, loc, routing)
        else:
            x = self.conv(x)
        return self.act(self.bn(x))


class DrasCLREncoder(nn.Module):
    """Anatomy-conditioned 3D CNN encoder with a MoCo v2 projection head.

    Args:
        rep_dim: size of the representation ``h`` (channels of the last convolution).
        num_experts: expert kernels per conditional convolution (``condconv`` only).
        width: multiplies the channel counts (1.0 = reference; e.g. 0.25 for tiny CPU runs).
        conditioning: ``"condconv"`` (DrasCLR), ``"none"`` (plain CNN) or ``"concat"``.
        proj_dim: size of the projection ``z``.
        in_channels: input channels (1 for CT).
        reference_loop: REFERENCE ONLY (tests/benchmarks): use :class:`PerSampleCondConv3d`,
            the per-sample Python loop of the original code, instead of the batched layer.

    Inputs: ``x`` ``(B, in_channels, P, P, P)`` in [-1, 1] (P = 32 gives a 1³ map) and
    ``loc`` ``(B, 3)`` normalised coordinates, or ``(3,)`` / ``(1, 3)`` for one location
    shared by the batch (fast path: one kernel and one ordinary convolution per layer).

    Example:
        >>> enc = DrasCLREncoder(rep_dim=16, proj_dim=8, num_experts=2, width=0.25)
        >>> x = torch.randn(2, 1, 32, 32, 32)
        >>> h, z = enc(x, torch.zeros(3))
        >>> h.shape, z.shape
        (torch.Size([2, 16]), torch.Size([2, 8]))
        >>> enc.encode(x, torch.rand(2, 3) * 2 - 1).shape
        torch.Size([2, 16])
    """

    def __init__(self, rep_dim: int = 128, num_experts: int = 8, width: float = 1.0,
                 conditioning: str = "condconv", proj_dim: int = 128, in_channels: int = 1,
                 *, reference_loop: bool = False) -> None:
        super().__init__()
        if conditioning not in CONDITIONINGS:
            raise InputError(f"conditioning={conditioning!r} is not one of {CONDITIONINGS}")
        self.rep_dim = rep_dim
        self.proj_dim = proj_dim
        self.num_experts = num_experts
        self.width = width
        self.conditioning = conditioning
        self.in_channels = in_channels
        # Up to this many distinct locations in a batch run as one ordinary conv each; None:
        # 8 on CPU, 1 (off) on GPUs, where the per-location loop costs more kernel launches
        # and a device sync than one grouped convolution (measured on an H200).
        self.max_location_groups: int | None = None
        self.reference_loop = reference_loop
        conv_cls = PerSampleCondConv3d if reference_loop else CondConv3d
        units = []
        for cin, cout, stride in layer_specs(rep_dim, width, in_channels):
            if conditioning == "condconv":
                conv: nn.Module = conv_cls(cin, cout, 3, num_experts=num_experts, stride=stride,
                                           padding=1, coord_dim=COORD_DIM)
            else:
                conv = nn.Conv3d(cin, cout, 3, stride=stride, padding=1)
            units.append(_ConvUnit(conv, cout))
        self.features = nn.ModuleList(units)
        head_in = rep_dim + COORD_DIM if conditioning == "concat" else rep_dim
        self.head = nn.Sequential(nn.Linear(head_in, rep_dim), nn.ReLU(inplace=True),
                                  nn.Linear(rep_dim, proj_dim))

    def _locations(self, x: torch.Tensor, loc: torch.Tensor) -> LocationPlan:
        if x.dim() != 5 or x.shape[1] != self.in_channels:
            raise InputError(f"DrasCLREncoder expects patches (B, {self.in_channels}, P, P, P); "
                             f"got {tuple(x.shape)}")
        if not torch.is_tensor(loc):
            loc = torch.as_tensor(np.asarray(loc))
        loc = loc.to(device=x.device, dtype=torch.float32)
        if self.conditioning != "condconv":
            loc = canonical_locations(loc, x.shape[0], COORD_DIM, detect_shared=False)
            return LocationPlan(loc, loc, x.shape[0])
        # Locations are inspected once per forward pass (GPU syncs), not once per layer.
        max_groups = self.max_location_groups
        if max_groups is None:
            max_groups = 1 if x.device.type == "cuda" else 8
        return plan_locations(loc, x.shape[0], COORD_DIM, max_groups)

    def _routing_per_layer(self, plan: LocationPlan) -> list[torch.Tensor | None]:
        """All layers' routing weights from one matmul (13 tiny ops → 1 saves GPU launches)."""
        if self.conditioning != "condconv" or self.reference_loop:
            return [None] * len(self.features)
        convs = [unit.conv for unit in self.features]
        weight = torch.cat([c.routing.weight for c in convs])
        bias = torch.cat([c.routing.bias for c in convs])
        r = torch.sigmoid(F.linear(plan.locations.to(weight.dtype), weight, bias))
        return list(r.split([c.num_experts for c in convs], dim=1))

    def _encode(self, x: torch.Tensor, loc: LocationPlan) -> torch.Tensor:
        for unit, routing in zip(self.features, self._routing_per_layer(loc)):
            x = unit(x, loc, routing)
        if x.shape[2:].numel() != 1:
            raise InputError(f"patch size {tuple(x.shape[2:])} after 5 stride-2 layers is not "
                             "1³; use patches of 17–32 voxels per side (32 by default)")
        return torch.flatten(x, 1)

    def encode(self, x: torch.Tensor, loc: torch.Tensor) -> torch.Tensor:
        """Representation ``h`` ``(B, rep_dim)`` (what embeddings store)."""
        return self._encode(x, self._locations(x, loc))

    def project(self, h: torch.Tensor, loc: torch.Tensor | None = None) -> torch.Tensor:
        """Projection ``z`` ``(B, proj_dim)`` of representations ``h``.

        ``loc`` is needed only for ``conditioning="concat"``.
        """
        if self.conditioning == "concat":
            if loc is None:
                raise InputError("conditioning='concat' needs loc to project h")
            loc = canonical_locations(loc.to(h), h.shape[0], COORD_DIM, detect_shared=False)
            h = torch.cat([h, loc.expand(h.shape[0], -1)], dim=1)
        return self.head(h)

    def forward(self, x: torch.Tensor, loc: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(h, z)``: representation ``(B, rep_dim)`` and projection ``(B, proj_dim)``."""
        plan = self._locations(x, loc)
        h = self._encode(x, plan)
        return h, self.project(h, plan.per_sample)

    def num_parameters(self, trainable_only: bool = True) -> int:
        """Number of (trainable) parameters."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)
