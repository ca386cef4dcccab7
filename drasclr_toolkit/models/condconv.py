"""Location-routed conditional 3D convolution (CondConv), batched.

Each layer holds ``E`` expert kernels ``W_e`` of shape ``[out, in, k, k, k]``. A sample at
anatomical location ``loc`` (3 normalised coordinates) is convolved with the kernel
``sum_e sigmoid(Linear(loc))_e * W_e``; the bias is shared by all experts and is not mixed.
The routing sees only the location, never the image (DrasCLR, Yu et al. 2023).

The reference implementation loops over the batch in Python with one ``conv3d`` per sample.
Here nothing loops over the batch; :func:`plan_locations` looks at the locations once and
each layer picks the cheapest exact evaluation:

* one location for the batch (``loc`` ``(3,)``/``(1, 3)``, or ``(B, 3)`` with equal rows):
  one mixed kernel and one ordinary ``F.conv3d`` — as cheap as a plain convolution;
* a few distinct locations (at most ``max_groups``, e.g. the k neighbour locations of a
  flattened neighbour batch): samples are sorted by location and each group gets one
  ordinary convolution (a loop over locations, not samples);
* many distinct locations, large outputs: one grouped convolution (``groups=B``) with the
  input reshaped to ``(1, B*C, D, H, W)`` and the B mixed kernels stacked;
* many distinct locations, tiny outputs (the last layers, 1–8 voxels): convolve with all E
  experts at once and mix the E outputs per sample (``sum_e r_be (W_e * x_b)``, the same
  linear map), which avoids materialising B large kernels.

All paths compute the per-sample formulation (tests compare outputs and gradients against
:class:`PerSampleCondConv3d`, the straightforward loop kept as a reference).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from drasclr_toolkit.errors import InputError

__all__ = ["CondConv3d", "LocationPlan", "PerSampleCondConv3d", "canonical_locations",
           "plan_locations"]


def canonical_locations(loc: torch.Tensor, batch_size: int, coord_dim: int = 3,
                        detect_shared: bool = True) -> torch.Tensor:
    """Return locations as ``(1, coord_dim)`` (shared by the batch) or ``(B, coord_dim)``.

    ``loc`` may be ``(coord_dim,)``, ``(1, coord_dim)`` or ``(B, coord_dim)``. With
    ``detect_shared`` a ``(B, coord_dim)`` tensor whose rows are all equal collapses to one
    row (on a GPU this costs one synchronisation).

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
        raise InputError(f"loc has shape {tuple(loc.shape)}; expected (B, {coord_dim}), "
                         f"(1, {coord_dim}) or ({coord_dim},) normalised coordinates")
    if loc.shape[0] not in (1, batch_size):
        raise InputError(f"loc has {loc.shape[0]} rows but the batch has {batch_size} samples; "
                         "pass one location per sample or one shared location")
    if detect_shared and loc.shape[0] > 1 and bool((loc == loc[:1]).all()):
        loc = loc[:1]
    return loc


@dataclass(frozen=True)
class LocationPlan:
    """How a batch's locations are laid out; computed once per forward pass.

    Attributes:
        locations: ``(1, d)`` one location shared by the batch; ``(U, d)`` the distinct
            locations when ``order`` is set; otherwise ``(B, d)`` one per sample.
        per_sample: ``(1, d)`` or ``(B, d)``: the locations as given (canonical shape).
        batch_size: ``B``.
        order: samples sorted by location group (``None`` unless grouped).
        restore: inverse permutation of ``order``.
        counts: group sizes in ``order``.
    """

    locations: torch.Tensor
    per_sample: torch.Tensor
    batch_size: int
    order: torch.Tensor | None = None
    restore: torch.Tensor | None = None
    counts: tuple[int, ...] | None = None

    @property
    def shared(self) -> bool:
        return self.locations.shape[0] == 1

    @property
    def grouped(self) -> bool:
        return self.order is not None


def plan_locations(loc: torch.Tensor | LocationPlan, batch_size: int, coord_dim: int = 3,
                   max_groups: int = 8) -> LocationPlan:
    """Inspect locations once: shared, a few distinct ones (≤ ``max_groups``), or many.

    Deduplication uses exact equality and at most two device synchronisations; it is
    skipped when ``loc`` requires gradients (``torch.unique`` has none).

    Example:
        >>> plan = plan_locations(torch.tensor([[0., 0, 1], [1, 0, 0], [0, 0, 1]]), 3)
        >>> plan.grouped, plan.locations.shape[0], plan.counts
        (True, 2, (2, 1))
        >>> plan_locations(torch.zeros(3), 5).shared
        True
    """
    if isinstance(loc, LocationPlan):
        if loc.batch_size != batch_size:
            raise InputError(f"location plan is for a batch of {loc.batch_size}, "
                             f"input has {batch_size} samples")
        return loc
    loc = canonical_locations(loc, batch_size, coord_dim, detect_shared=False)
    if loc.shape[0] == 1 or loc.requires_grad:
        return LocationPlan(loc, loc, batch_size)
    if bool((loc == loc[:1]).all()):  # the common training case: one cheap check
        return LocationPlan(loc[:1], loc, batch_size)
    if max_groups < 2:
        return LocationPlan(loc, loc, batch_size)
    unique, inverse = torch.unique(loc, dim=0, return_inverse=True)
    if unique.shape[0] > max_groups:
        return LocationPlan(loc, loc, batch_size)
    order = torch.argsort(inverse, stable=True)
    counts = tuple(int(c) for c in torch.bincount(inverse, minlength=unique.shape[0]).tolist())
    return LocationPlan(unique, loc, batch_size, order=order, restore=torch.argsort(order),
                        counts=counts)


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

    Attributes that tune the per-sample path (not parameters, results are the same):
        per_sample_impl: ``"auto"``, ``"grouped"`` or ``"stacked"``.
        stacked_budget: ``"auto"`` uses the stacked-expert evaluation when
            ``(E - 1) * output_voxels <= stacked_budget`` (64: the last three layers of the
            encoder at 32³, where per-sample kernels cost more than E small convolutions).

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
            raise InputError(f"num_experts must be >= 1, got {num_experts}")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = kernel_size
        self.num_experts = num_experts
        self.stride = stride
        self.padding = padding
        self.coord_dim = coord_dim
        self.per_sample_impl = "auto"
        self.stacked_budget = 64
        self.max_groups = 8
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

    def mixed_kernels(self, loc: torch.Tensor, routing: torch.Tensor | None = None) -> torch.Tensor:
        """Per-location kernels ``(N, out, in, k, k, k)`` for locations ``(N, coord_dim)``.

        ``routing``: precomputed :meth:`routing_weights` ``(N, E)`` (the encoder computes all
        layers' routing in one operation, which saves GPU kernel launches).
        """
        r = self.routing_weights(loc) if routing is None else routing
        # One (N, E) x (E, out*in*k^3) matmul instead of a broadcast-and-sum: less memory.
        mixed = r @ self.weight.flatten(1).to(r.dtype)
        return mixed.view(loc.shape[0], *self.weight.shape[1:])

    def _output_voxels(self, x: torch.Tensor) -> int:
        n = 1
        for size in x.shape[2:]:
            n *= (size + 2 * self.padding - self.kernel_size) // self.stride + 1
        return n

    def forward(self, x: torch.Tensor, loc: torch.Tensor | LocationPlan,
                routing: torch.Tensor | None = None) -> torch.Tensor:
        """Convolve ``x`` ``(B, in, D, H, W)`` at locations ``loc``.

        ``loc``: ``(coord_dim,)`` or ``(1, coord_dim)`` for one location shared by the
        batch, ``(B, coord_dim)`` per sample, or a :class:`LocationPlan` made once for many
        layers (see :func:`plan_locations`). ``routing``: optional precomputed routing
        weights ``(len(plan.locations), E)``.
        """
        if x.dim() != 5 or x.shape[1] != self.in_channels:
            raise InputError(f"CondConv3d expects input (B, {self.in_channels}, D, H, W); "
                             f"got {tuple(x.shape)}")
        plan = plan_locations(loc, x.shape[0], self.coord_dim, self.max_groups)
        if routing is not None and routing.shape != (plan.locations.shape[0], self.num_experts):
            raise InputError(f"routing has shape {tuple(routing.shape)}; expected "
                             f"({plan.locations.shape[0]}, {self.num_experts})")
        if plan.shared:
            return F.conv3d(x, self.mixed_kernels(plan.locations, routing)[0], self.bias,
                            self.stride, self.padding)
        if plan.grouped:
            return self._forward_by_location(x, plan, routing)
        impl = self.per_sample_impl
        if impl == "auto":
            voxels = self._output_voxels(x)
            impl = "stacked" if (self.num_experts - 1) * voxels <= self.stacked_budget else "grouped"
        if impl == "stacked":
            return self._forward_stacked(x, plan.locations, routing)
        if impl != "grouped":
            raise InputError(f"per_sample_impl must be 'auto', 'grouped' or 'stacked', got {impl!r}")
        return self._forward_grouped(x, plan.locations, routing)

    def _forward_by_location(self, x: torch.Tensor, plan: LocationPlan,
                             routing: torch.Tensor | None) -> torch.Tensor:
        # A loop over the few distinct locations (not over samples): ordinary convolutions.
        kernels = self.mixed_kernels(plan.locations, routing)
        chunks = torch.split(x.index_select(0, plan.order), list(plan.counts))
        out = torch.cat([F.conv3d(chunk, kernels[u], self.bias, self.stride, self.padding)
                         for u, chunk in enumerate(chunks)])
        return out.index_select(0, plan.restore)

    def _forward_grouped(self, x: torch.Tensor, loc: torch.Tensor,
                         routing: torch.Tensor | None) -> torch.Tensor:
        # Sample b's channels form group b of one grouped convolution.
        batch = x.shape[0]
        kernels = self.mixed_kernels(loc, routing)
        out = F.conv3d(x.reshape(1, batch * self.in_channels, *x.shape[2:]),
                       kernels.reshape(batch * self.out_channels, *kernels.shape[2:]),
                       None if self.bias is None else self.bias.repeat(batch),
                       self.stride, self.padding, groups=batch)
        return out.view(batch, self.out_channels, *out.shape[2:])

    def _forward_stacked(self, x: torch.Tensor, loc: torch.Tensor,
                         routing: torch.Tensor | None) -> torch.Tensor:
        # sum_e r_be (W_e * x_b): all experts as one convolution, then a per-sample mix.
        batch, experts = x.shape[0], self.num_experts
        r = self.routing_weights(loc) if routing is None else routing
        y = F.conv3d(x, self.weight.flatten(0, 1), None, self.stride, self.padding)
        spatial = y.shape[2:]
        y = torch.bmm(r.unsqueeze(1).to(y.dtype), y.reshape(batch, experts, -1))
        y = y.view(batch, self.out_channels, *spatial)
        if self.bias is not None:
            y = y + self.bias.view(1, -1, 1, 1, 1).to(y.dtype)
        return y

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

    def forward(self, x: torch.Tensor, loc: torch.Tensor | LocationPlan,
                routing: torch.Tensor | None = None) -> torch.Tensor:
        # ``routing`` is ignored: the reference recomputes it per sample, as the original did.
        batch = x.shape[0]
        if isinstance(loc, LocationPlan):
            loc = loc.per_sample
        loc = canonical_locations(loc, batch, self.coord_dim, detect_shared=False)
        loc = loc.expand(batch, -1)
        outputs = []
        for b in range(batch):
            r = self.routing_weights(loc[b:b + 1])[0]
            kernel = (r.view(-1, 1, 1, 1, 1, 1) * self.weight).sum(0)
            outputs.append(F.conv3d(x[b:b + 1], kernel, self.bias, self.stride, self.padding))
        return torch.cat(outputs, dim=0)
