"""Self-supervised pieces of DrasCLR, small and composable.

- :func:`hu_to_unit`, :class:`PatchAugmenter`: intensity mapping and MONAI augmentation.
- :class:`LocationQueues`: one negative queue per anatomical location, [L, K, D].
- :class:`LocalInfoNCE`, :class:`NeighbourInfoNCE`, :func:`neighbour_weight`,
  :func:`contrast_accuracy`: the two InfoNCE terms and their weighting.
- :func:`update_momentum`, :func:`make_key_encoder`: the momentum (key) encoder.
"""

from drasclr_toolkit.ssl.augment import PatchAugmenter, hu_to_unit
from drasclr_toolkit.ssl.losses import (LocalInfoNCE, NeighbourInfoNCE, contrast_accuracy,
                                        info_nce_logits, neighbour_weight)
from drasclr_toolkit.ssl.momentum import (deactivate_requires_grad, make_key_encoder,
                                          update_momentum)
from drasclr_toolkit.ssl.queue import LocationQueues

__all__ = [
    "PatchAugmenter", "hu_to_unit", "LocationQueues", "LocalInfoNCE", "NeighbourInfoNCE",
    "contrast_accuracy", "info_nce_logits", "neighbour_weight", "update_momentum",
    "make_key_encoder", "deactivate_requires_grad",
]
