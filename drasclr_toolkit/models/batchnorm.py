"""BatchNorm running statistics re-estimated from data: an honest random-init baseline.

A freshly initialised encoder in eval mode normalises every layer with the initial
running statistics (mean 0, variance 1), which fit nothing the network actually computes:
activations grow or shrink layer by layer until the last layers see nearly constant
inputs, and an all-air patch and a soft-tissue patch get embeddings with cosine ~0.99999.
A "random-init baseline" extracted that way measures a broken network, not a random one.

:func:`recalibrate_batchnorm` resets the running statistics and re-estimates them from
real patches (cumulative average over all batches, ``momentum=None``), then puts the
encoder back in eval mode. No weight changes; only BatchNorm buffers are written. It is
also the usual fix for a trained encoder whose statistics no longer match the data (e.g.
another cohort or scanner), though a trained DrasCLR encoder normally keeps its own.
"""

from __future__ import annotations

from typing import Any, Iterable

import torch
from torch import nn

from drasclr_toolkit.errors import InputError

__all__ = ["recalibrate_batchnorm", "batchnorm_layers"]

_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


def batchnorm_layers(module: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """The BatchNorm layers (with running statistics) of ``module``."""
    return [m for m in module.modules() if isinstance(m, _BN) and m.track_running_stats]


def _unpack(batch: Any) -> tuple[torch.Tensor, Any]:
    if isinstance(batch, dict):
        return batch["x"], batch["loc"]
    x, loc = batch
    return x, loc


@torch.no_grad()
def recalibrate_batchnorm(encoder: nn.Module, batches: Iterable[Any], *,
                          device: str | torch.device | None = None,
                          max_batches: int | None = None) -> int:
    """Re-estimate every BatchNorm layer's running mean/variance from ``batches``.

    Args:
        encoder: a module called as ``encoder(x, loc)`` (e.g. :class:`DrasCLREncoder`).
        batches: iterable of ``(x, loc)`` pairs or ``{"x": ..., "loc": ...}`` dicts, ``x``
            ``(B, 1, P, P, P)`` in the network's intensity range ([-1, 1], see
            :func:`drasclr_toolkit.ssl.hu_to_unit`) and ``loc`` the normalised location(s),
            ``(3,)`` for a batch sharing one landmark (as in training) or ``(B, 3)``.
            Draw them location by location, each batch several subjects at one landmark,
            covering the landmarks: those are the statistics the encoder was built around.
        device: where to run (default: the encoder's device).
        max_batches: stop after this many batches.

    Returns the number of batches used. The encoder is left in eval mode; its BatchNorm
    momentum settings are restored. Raises ``ValueError`` when ``batches`` is empty
    (running statistics would be reset to nothing).

    Example:
        >>> from drasclr_toolkit.models import DrasCLREncoder
        >>> enc = DrasCLREncoder(rep_dim=8, proj_dim=8, num_experts=2, width=0.25).eval()
        >>> data = [(torch.rand(4, 1, 32, 32, 32) * 2 - 1, torch.zeros(3)) for _ in range(3)]
        >>> recalibrate_batchnorm(enc, data), enc.training
        (3, False)
        >>> int(enc.features[0].bn.num_batches_tracked)
        3
    """
    layers = batchnorm_layers(encoder)
    if device is None:
        param = next(encoder.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
    device = torch.device(device)
    saved = [m.momentum for m in layers]
    for m in layers:
        m.reset_running_stats()
        m.momentum = None          # cumulative moving average: every batch weighs the same
    encoder.train()
    used = 0
    try:
        for batch in batches:
            if max_batches is not None and used >= max_batches:
                break
            x, loc = _unpack(batch)
            x = torch.as_tensor(x).to(device=device, dtype=torch.float32)
            loc = torch.as_tensor(loc).to(device=device, dtype=torch.float32)
            if x.shape[0] < 2:
                continue           # one sample gives no variance
            encoder(x, loc)
            used += 1
    finally:
        for m, momentum in zip(layers, saved):
            m.momentum = momentum
        encoder.eval()
    if used == 0 and layers:
        raise InputError("recalibrate_batchnorm: no batch of at least 2 patches was given; "
                         "the running statistics were reset and are now meaningless")
    return used


def location_batches(source: Any, *, batch_size: int = 16, max_locations: int | None = None,
                     subjects: Iterable[int] | None = None, seed: int = 0,
                     window: tuple[float, float] | None = None):
    """``(x, loc)`` batches of a patch source, location by location (for recalibration).

    Each batch holds up to ``batch_size`` subjects' patches at one landmark (intensity
    mapped with :func:`~drasclr_toolkit.ssl.hu_to_unit`, no augmentation) with that
    landmark's normalised coordinates. ``max_locations`` spreads over the landmarks evenly
    (every ``L / max_locations``-th) to bound the cost; ``subjects`` restricts the subjects
    (default all; a random subset of ``batch_size`` per location, seeded, when there are more).
    ``window`` is the network's HU window (default [-1024, 240]).
    """
    import numpy as np

    from drasclr_toolkit.ssl.augment import hu_to_unit

    n_loc = len(source.landmarks)
    locs = np.arange(n_loc)
    if max_locations is not None and max_locations < n_loc:
        locs = np.unique(np.linspace(0, n_loc - 1, max_locations).round().astype(int))
    pool = np.arange(len(source.subject_ids)) if subjects is None else np.asarray(list(subjects))
    rng = np.random.default_rng(seed)
    coords = np.asarray(source.landmark_coords, np.float32)
    for loc in locs:
        chosen = pool if len(pool) <= batch_size else np.sort(rng.choice(pool, batch_size, replace=False))
        patches = np.asarray(source.read_location(int(loc), chosen.tolist()))
        x = hu_to_unit(torch.as_tensor(patches), window).unsqueeze(1)
        yield x, torch.as_tensor(coords[loc])
