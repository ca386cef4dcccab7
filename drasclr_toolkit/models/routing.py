"""Where an encoder's location routing sends each landmark: its experts' mixing weights."""

from __future__ import annotations

import numpy as np
import torch

from drasclr_toolkit.errors import InputError

__all__ = ["first_condconv", "routing_weights"]


def first_condconv(encoder: torch.nn.Module) -> torch.nn.Module:
    """The first location-routed convolution of an encoder (raises if it has none)."""
    for module in encoder.modules():
        if hasattr(module, "routing_weights"):
            return module
    raise InputError("this encoder has no conditional convolution (conditioning is not 'condconv')")


@torch.no_grad()
def routing_weights(encoder: torch.nn.Module, landmark_coords: np.ndarray) -> np.ndarray:
    """(L, E) routing weights of the first CondConv layer at each landmark."""
    layer = first_condconv(encoder)
    coords = torch.as_tensor(np.asarray(landmark_coords, np.float32),
                             device=next(layer.parameters()).device)
    return layer.routing_weights(coords).float().cpu().numpy()
