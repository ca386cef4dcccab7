"""Fill the per-location negative queues with real keys before the first step.

Without it a location's queue is empty at its first visits (the reference filled it with
random noise instead), so the number of negatives, and with it the chance level of the
loss (``log(1 + n)``) and of the accuracy (``1 / (1 + n)``), grows during a run: the loss
of a short run rises even while the encoder learns, and early steps contrast against
almost nothing. Prefilling encodes, with the initial key encoder, enough batches of each
training location to fill its queue, so every step sees a full queue from the start.

Cost: ``ceil(queue_size / batch)`` key-encoder forward passes (no gradient) per training
location, i.e. a few percent of a training step each.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F


__all__ = ["prefill_queues"]


@torch.no_grad()
def prefill_queues(trainer: Any, dataset: Any, locations: np.ndarray, n_subjects: int,
                   batch_size: int, seed: int = 0) -> int:
    """Enqueue key-encoder keys of ``ceil(K / batch)`` batches at every training location.

    Batches are drawn like training batches (random subjects at one landmark, one augmented
    view each through the key encoder in train mode) with seeds independent of the training
    schedule, so a prefilled run and its resumed copy stay identical. Under DDP each rank
    computes the same keys (same seeds, same weights), so the queues stay in step without
    communication. Returns the number of keys written.
    """
    queues = trainer.queues
    per_batch = min(batch_size, n_subjects)
    rounds = max(1, math.ceil(queues.size / per_batch))
    rng = np.random.default_rng([int(seed), 0x5EED])
    trainer.key_encoder.train()      # as in a training step: batch statistics
    written = 0
    for loc in np.asarray(locations).tolist():
        for _ in range(rounds):
            subjects = tuple(int(s) for s in np.sort(rng.choice(n_subjects, per_batch, replace=False)))
            spec_seed = int(rng.integers(0, 2**62))
            # Only the key view is needed: augment the anchor patches once, not the query
            # view and the neighbours as a full training batch would.
            anchor = np.asarray(dataset.source.read_location(int(loc), list(subjects)))
            view2 = trainer._to_device(dataset.augmenter.view(anchor, spec_seed))
            with trainer._autocast():
                z = trainer._key_forward(view2, trainer.coords[int(loc)])[1]
            key = F.normalize(z.float(), dim=1)
            queues.enqueue(int(loc), key, ids=torch.as_tensor(subjects, device=key.device))
            written += key.shape[0]
    return written
