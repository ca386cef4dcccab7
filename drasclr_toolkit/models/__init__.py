"""Models: location-conditioned convolution, the DrasCLR encoder, official-checkpoint IO.

Example:
    >>> import torch
    >>> from drasclr_toolkit.models import DrasCLREncoder
    >>> enc = DrasCLREncoder(rep_dim=16, proj_dim=8, num_experts=2, width=0.25)
    >>> h, z = enc(torch.randn(2, 1, 32, 32, 32), torch.zeros(3))
    >>> tuple(h.shape), tuple(z.shape)
    ((2, 16), (2, 8))
"""

from drasclr_toolkit.models.condconv import (CondConv3d, LocationPlan, PerSampleCondConv3d,
                                             canonical_locations, plan_locations)
from drasclr_toolkit.models.encoder import CONDITIONINGS, DrasCLREncoder, layer_specs
from drasclr_toolkit.models.routing import first_condconv, routing_weights
from drasclr_toolkit.models.checkpoint import (CHECKPOINT_FORMAT, FINAL_FORMAT, OfficialLoadReport,
                                               atomic_torch_save, load_encoder,
                                               load_official_checkpoint, official_key_map,
                                               official_landmark_coords, official_state_dict)

__all__ = [
    "CHECKPOINT_FORMAT",
    "CONDITIONINGS",
    "CondConv3d",
    "DrasCLREncoder",
    "FINAL_FORMAT",
    "LocationPlan",
    "OfficialLoadReport",
    "PerSampleCondConv3d",
    "atomic_torch_save",
    "canonical_locations",
    "first_condconv",
    "layer_specs",
    "load_encoder",
    "load_official_checkpoint",
    "official_key_map",
    "official_landmark_coords",
    "official_state_dict",
    "plan_locations",
    "routing_weights",
]
