"""Location-routed conditional 3D convolution (CondConv), batched.

Each layer holds ``E`` expert kernels ``W_e`` of shape ``[out, in, k, k, k]``. A sample at
anatomical location ``loc`` (3 normalised coordinates) is convolved with the kernel
``sum_e sigmoid(Linear(loc))_e * W_e``; the bias is shared by all experts and is not mixed.
The routing sees only the location, never the image (DrasCLR, Yu et al. 2023).

The reference implementation loops over the batch in Python with one ``conv3d`` per sample.
Here there is no loop over the batch:

* one location for the whole batch (``loc`` of shape ``(3,)`` or ``(1, 3)``, or ``(B, 3)``
  whose rows are all equal): one mixed kernel and one ordinary ``F.conv3d``;
* per-sample locations ``(B, 3)``: one grouped convolution with ``groups=B`` on the input
  reshaped to ``(1, B*C, D, H, W)``.

Both paths are numerically the per-sample formulation (tests compare outputs and gradients
against :class:`PerSampleCondConv3d`, the straightforward loop kept as a reference).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["CondConv3d", "PerSampleCondConv3d", "canonical_locations"]


def canonical_locations(loc: torch.Tensor, batch_size: int, coord_dim: int = 3,
                        detect_shared: bool = True) -> torch.Tensor:
    """Return locations as ``(1, coord_dim)`` (shared by the batch) or ``(B, coord_dim)``.

    ``loc`` may be ``(coord_dim,)``, ``(1, coord_dim)`` or ``(B, coord_dim)``. With
    ``detect_shared`` a ``(B, coord_dim)`` tensor whose rows are all equal collapses to one
    row, so the caller can take the one-kernel fast path. On a GPU this check costs one
    device synchronisation, so callers that convolve many layers do it once (the encoder
    does) and pass ``detect_shared=False`` to each layer.

    Example:
        >>> canonical_locations(torch.zeros(3), batch_size=4).shape
        torch.Size([1, 3])
        >>> canonical_locations(torch.zeros(4, 3), batch_size=4).shape
        torch.Size([1, 3])
    """
    if not torch.is_tensor(loc):
        raise TypeError(f"loc must be a torch.Tensor of shape (B, {coord_dim}), (1, {coord_dim}) "
                        f"or ({coord_dim},); got {type(loc).__name__}")
    if loc.dim() == 1:
        loc = loc.unsqueeze(0)
    if loc.dim() != 2 or loc.shape[1] != coord_dim:
        raise ValueError(f"loc has shape {tuple(loc.shape)}; expected (B, {coord_dim}), "
                         f"(1, {coord_dim}) or ({coord_dim},) normalised coordinates")
    if loc.shape[0] not in (1, batch_size):
        raise ValueError(f"loc has {loc.shape[0]} rows but the batch has {batch_size} samples; "
                         "pass one location per sample or one shared location")
    if detect_shared and loc.shape[0] > 1 and bool((loc == loc[:1]).all()):
        loc = loc[:1]
    return loc


class CondConv3d(nn.Module):
    """3D convolution whose kernel is a location-routed mixture of expert kernels.

    Args:
        in_channels, out_channels, kernel_size, stride, padding: as ``nn.Conv3d``
            (cubic kernel, zero padding).
        num_experts: number of expert kernels ``E``.
        coord_dim: size of the location vector fed to the routing layer.
        bias: learn one bias per output channel, shared by all experts.

    Parameters: ``weight`` ``[E, out, in, k, k, k]``, ``bias`` ``[out]`` and ``routing``
    (``nn.Linear(coord_dim, E)``).

    Example:
        >>> conv = CondConv3d(1, 4, 3, num_experts=2, padding=1)
        >>> x = torch.randn(2, 1, 8, 8, 8)
        >>> conv(x, torch.zeros(3)).shape          # one location for the batch
        torch.Size([2, 4, 8, 8, 8])
        >>> conv(x, torch.rand(2, 3)).shape        # one location per sample
        torch.Size([2, 4, 8, 8, 8])
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int,
                 num_experts: int = 8, stride: int = 1, padding: int = 0,
                 coord_dim: int = 3, bias: bool = True) -> None:
        super().__init__()
        if num_experts < 1:
            raise ValueError(f"num_experts must be >= 1, got {num_experts}")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = kernel_size
        self.num_experts = num_experts
        self.stride = stride
        self.padding = padding
        self.coord_dim = coord_dim
        k = kernel_size
        self.weight = nn.Parameter(torch.empty(num_experts, out_channels, in_channels, k, k, k))
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        self.routing = nn.Linear(coord_dim, num_experts)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Initialise every expert exactly like an ``nn.Conv3d`` of the same shape.

        The reference computed the fan-in on the 6-D tensor (``out`` times too large), which
        made the experts about ``sqrt(out)`` times too small; here each expert is a 5-D conv
        weight with fan-in ``in * k^3``.
        """
        for expert in self.weight:
            nn.init.kaiming_uniform_(expert, a=math.sqrt(5))
        if self.bias is not None:
            fan_in = self.in_channels * self.kernel_size ** 3
            bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
            nn.init.uniform_(self.bias, -bound, bound)
        self.routing.reset_parameters()

    def routing_weights(self, loc: torch.Tensor) -> torch.Tensor:
        """Sigmoid routing weights ``(N, E)`` for locations ``(N, coord_dim)``."""
        return torch.sigmoid(self.routing(loc.to(self.routing.weight.dtype)))

    def mixed_kernels(self, loc: torch.Tensor) -> torch.Tensor:
        """Per-location kernels ``(N, out, in, k, k, k)`` for locations ``(N, coord_dim)``."""
        r = self.routing_weights(loc)
        # One (N, E) x (E, out*in*k^3) matmul instead of a broadcast-and-sum: less memory.
        mixed = r @ self.weight.flatten(1)
        return mixed.view(loc.shape[0], *self.weight.shape[1:])

    def forward(self, x: torch.Tensor, loc: torch.Tensor, detect_shared: bool = True) -> torch.Tensor:
        """Convolve ``x`` ``(B, in, D, H, W)`` at locations ``loc``.

        ``loc``: ``(coord_dim,)`` or ``(1, coord_dim)`` for one location shared by the
        batch, or ``(B, coord_dim)`` per sample. ``detect_shared=False`` skips the check
        that all rows are equal (see :func:`canonical_locations`).
        """
        if x.dim() != 5 or x.shape[1] != self.in_channels:
            raise ValueError(f"CondConv3d expects input (B, {self.in_channels}, D, H, W); "
                             f"got {tuple(x.shape)}")
        batch = x.shape[0]
        loc = canonical_locations(loc, batch, self.coord_dim, detect_shared=detect_shared)
        kernels = self.mixed_kernels(loc)
        if loc.shape[0] == 1:
            return F.conv3d(x, kernels[0], self.bias, self.stride, self.padding)
        # Per-sample kernels: sample b's channels form group b of one grouped convolution.
        out = F.conv3d(x.reshape(1, batch * self.in_channels, *x.shape[2:]),
                       kernels.reshape(batch * self.out_channels, *kernels.shape[2:]),
                       None if self.bias is None else self.bias.repeat(batch),
                       self.stride, self.padding, groups=batch)
        return out.view(batch, self.out_channels, *out.shape[2:])

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"num_experts={self.num_experts}, stride={self.stride}, padding={self.padding}, "
                f"coord_dim={self.coord_dim}, bias={self.bias is not None}")


class PerSampleCondConv3d(CondConv3d):
    """REFERENCE ONLY: the straightforward per-sample loop (one conv call per sample).

    Same parameters and semantics as :class:`CondConv3d`, computed the way the reference
    code does. Kept for tests and benchmarks that check the batched version against it;
    do not use it for training.

    Example:
        >>> ref = PerSampleCondConv3d(1, 4, 3, num_experts=2, padding=1)
        >>> ref(torch.randn(2, 1, 8, 8, 8), torch.rand(2, 3)).shape
        torch.Size([2, 4, 8, 8, 8])
    """

    def forward(self, x: torch.Tensor, loc: torch.Tensor, detect_shared: bool = True) -> torch.Tensor:
        batch = x.shape[0]
        loc = canonical_locations(loc, batch, self.coord_dim, detect_shared=False)
        loc = loc.expand(batch, -1)
        outputs = []
        for b in range(batch):
            r = self.routing_weights(loc[b:b + 1])[0]
            kernel = (r.view(-1, 1, 1, 1, 1, 1) * self.weight).sum(0)
            outputs.append(F.conv3d(x[b:b + 1], kernel, self.bias, self.stride, self.padding))
        return torch.cat(outputs, dim=0)
