"""Momentum (key) encoder helpers, shared by every MoCo-style method."""

from __future__ import annotations

import copy

import torch
from torch import nn

from drasclr_toolkit.errors import InputError


def deactivate_requires_grad(model: nn.Module) -> nn.Module:
    """Freeze all parameters of ``model`` (the key encoder learns only by momentum)."""
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def make_key_encoder(query_encoder: nn.Module) -> nn.Module:
    """A frozen deep copy of the query encoder, the starting point of the key encoder.

    Example:
        >>> q = nn.Linear(2, 2); k = make_key_encoder(q)
        >>> torch.equal(q.weight, k.weight), k.weight.requires_grad
        (True, False)
    """
    return deactivate_requires_grad(copy.deepcopy(query_encoder))


@torch.no_grad()
def update_momentum(model: nn.Module, model_ema: nn.Module, m: float = 0.999) -> None:
    """``ema ← m·ema + (1 − m)·model`` for every parameter; buffers (BN running stats) are
    the key encoder's own, as in MoCo.

    Example:
        >>> a, b = nn.Linear(1, 1, bias=False), nn.Linear(1, 1, bias=False)
        >>> _ = nn.init.constant_(a.weight, 1.0); _ = nn.init.constant_(b.weight, 0.0)
        >>> update_momentum(a, b, m=0.9); round(float(b.weight), 3)
        0.1
    """
    if not 0.0 <= m <= 1.0:
        raise InputError(f"momentum m must be in [0, 1], got {m}")
    params_ema = [p for p in model_ema.parameters()]
    params = [p.detach() for p in model.parameters()]
    if len(params) != len(params_ema):
        raise InputError("model and model_ema have different parameter lists")
    torch._foreach_lerp_(params_ema, params, 1.0 - m)
