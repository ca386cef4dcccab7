"""Pretraining: sampler, loop, checkpoints and metrics.

Patch sources (the protocol and the in-memory :class:`ArrayPatchSource`) live in
:mod:`drasclr_toolkit.patch_source`.

Example:
    >>> from drasclr_toolkit.train import PretrainConfig, pretrain
    >>> cfg = PretrainConfig.from_yaml("tiny")      # the ``pretrain:`` section of tiny.yaml
    >>> cfg.device
    'auto'
"""

from drasclr_toolkit.train.config import PretrainConfig
from drasclr_toolkit.train.loop import DrasCLRTrainer, PretrainRun, config_summary, pretrain
from drasclr_toolkit.train.metrics import read_metrics
from drasclr_toolkit.train.sampler import BatchSpec, LocationBatchSampler, LocationPatchDataset

__all__ = [
    "PretrainConfig", "DrasCLRTrainer", "PretrainRun", "pretrain",
    "config_summary", "read_metrics", "BatchSpec", "LocationBatchSampler", "LocationPatchDataset",
]
