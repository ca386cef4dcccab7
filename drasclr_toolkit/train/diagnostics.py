"""Is the learning rate safe for this encoder? The identical-views check.

With augmentation off, the two views of a patch are the same image, and a freshly built
encoder and its momentum copy already rank every query's own key first (contrast accuracy
1.0). A learning rate that is too large for the encoder moves the query encoder so far in
a step or two that its momentum copy no longer recognises the same input, and the accuracy
collapses towards chance: then a real run cannot learn either, whatever its loss curve
says (``benchmarks/learning.md``: SGD at 0.03 on the width-0.25 encoder lost it within two
steps; 0.003 kept it). The check takes seconds to a minute on a CPU, so it can run before
a long GPU run.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import pandas as pd
import torch

from drasclr_toolkit.errors import InputError
from drasclr_toolkit.patch_source import PatchSource
from drasclr_toolkit.ssl.augment import PatchAugmenter
from drasclr_toolkit.train.config import PretrainConfig
from drasclr_toolkit.train.loop import DrasCLRTrainer
from drasclr_toolkit.train.sampler import BatchSpec, LocationPatchDataset

__all__ = ["identical_views_check"]


def identical_views_check(source: PatchSource, config: PretrainConfig | Mapping[str, Any] | str,
                          *, steps: int = 8, batch_size: int | None = None, device: str = "cpu",
                          seed: int = 0, keep: float = 0.8) -> tuple[pd.DataFrame, bool]:
    """Train ``steps`` steps on identical views and watch the contrast accuracy.

    The run uses ``config`` (optimiser, learning rate, encoder size, key momentum,
    temperature, neighbours) with augmentation off and fresh batch negatives only (no
    queue), at random landmarks and subjects of ``source``.

    Returns:
        One row per step (``step``, ``acc_local``, ``loss_local``, ``grad_norm``) and
        whether the accuracy stayed at or above ``keep`` at every step (it starts at 1.0
        for a healthy encoder: two identical inputs give identical embeddings).

    Example:
        >>> from drasclr_toolkit.patch_source import ArrayPatchSource
        >>> src = ArrayPatchSource.synthetic(n_subjects=6, n_locations=3, patch_size=16)
        >>> cfg = dict(width=0.125, rep_dim=16, proj_dim=16, num_experts=2, lr=0.001)
        >>> table, ok = identical_views_check(src, cfg, steps=2, batch_size=4)
        >>> list(table.columns), float(table.acc_local[0])   # step 1: every key recognised
        (['step', 'acc_local', 'loss_local', 'grad_norm'], 1.0)
    """
    cfg = PretrainConfig.coerce(config)
    n_subjects = len(source.subject_ids)
    batch = min(int(batch_size or cfg.batch_size), n_subjects)
    if batch < 2:
        raise InputError(f"the identical-views check needs at least 2 subjects a batch, "
                         f"the source has {n_subjects}")
    cfg = cfg.replace(augment=False, queue_size=0, prefill_queues=False, batch_negatives=True,
                      batch_size=batch, beta_warmup_steps=0, device=device, progress=False)
    neighbours = min(cfg.neighbours, len(source.landmarks) - 1)
    dataset = LocationPatchDataset(source, neighbours, PatchAugmenter(enabled=False))
    trainer = DrasCLRTrainer(cfg, np.asarray(source.landmark_coords), total_steps=max(1, steps),
                             device=device)
    rng = np.random.default_rng(seed)
    rows = []
    for step in range(int(steps)):
        loc = int(rng.integers(0, len(source.landmarks)))
        subjects = tuple(int(s) for s in np.sort(rng.choice(n_subjects, batch, replace=False)))
        out = trainer.step(dataset[BatchSpec(0, step, loc=loc, subjects=subjects, seed=step)])
        grads = [p.grad.detach().float().norm() for p in trainer.encoder.parameters()
                 if p.grad is not None]
        rows.append({"step": step + 1, "acc_local": float(out["acc_local"]),
                     "loss_local": float(out["loss_local"]),
                     "grad_norm": float(torch.stack(grads).norm()) if grads else 0.0})
    table = pd.DataFrame(rows, columns=["step", "acc_local", "loss_local", "grad_norm"])
    return table, bool((table["acc_local"] >= keep).all())
