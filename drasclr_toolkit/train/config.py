"""``PretrainConfig``: every option of a pretraining run, validated."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import yaml

from drasclr_toolkit.config import check_keys
from drasclr_toolkit.models import CONDITIONINGS
from drasclr_toolkit.ssl.queue import _DTYPES


@dataclass
class PretrainConfig:
    """Options of :func:`drasclr_toolkit.train.pretrain` (the ``pretrain:`` config section).

    Defaults are the published DrasCLR settings (one GPU batch of 32 instead of 4×32).

    Example:
        >>> cfg = PretrainConfig.from_dict({"width": 0.25, "epochs": 1})
        >>> cfg.width, cfg.lr, cfg.temperature
        (0.25, 0.01, 0.2)
        >>> PretrainConfig.from_dict({"widht": 0.25})
        Traceback (most recent call last):
        ...
        ValueError: pretrain config: unknown key(s) ['widht']; did you mean 'width'? ...
    """

    # schedule
    epochs: int = 20
    max_steps: int | None = None          # cap on total steps (the cosine schedule ends there)
    batch_size: int = 32                  # global batch (split over DDP ranks)
    train_locations: int | None = None    # anchors from this many landmarks spread over the lung (None: all)
    optimizer: str = "sgd"                # sgd (reference) | adamw
    lr: float = 0.01
    momentum: float = 0.9                 # SGD momentum (adamw: unused)
    weight_decay: float = 1e-4
    # contrastive
    key_momentum: float = 0.999
    temperature: float = 0.2
    queue_size: int = 4096
    queue_dtype: str = "float32"          # float32 | bfloat16 | float16
    mask_unfilled_negatives: bool = True  # False: the reference's random-noise negatives
    prefill_queues: bool = False          # fill every queue with initial-encoder keys before step 1
    exclude_same_subject: bool = True     # a query's own subject's queued keys are not negatives
    batch_negatives: bool = False         # also contrast with this step's other keys (not in the reference)
    neighbours: int = 2                   # k nearest landmarks in the neighbour loss (0: off)
    neighbour_reduction: str = "sum"      # sum (reference) | mean
    beta: float = 1.0
    beta_warmup_steps: int = 0            # β grows linearly from 0 over these steps
    # encoder
    rep_dim: int = 128
    proj_dim: int = 128
    width: float = 1.0
    num_experts: int = 8
    conditioning: str = "condconv"
    # augmentation
    augment: bool = True
    augment_translate: float | None = None  # voxels; None: 12 × patch_size / 32
    augment_on: str = "host"              # host (MONAI, data-loader workers) | device (batched torch)
    # runtime
    num_workers: int = 0
    device: str = "auto"
    amp: bool = True                      # bf16 autocast on CUDA (no effect on CPU)
    channels_last: bool = False           # channels_last_3d memory format on CUDA
    compile: bool = False                 # torch.compile the query and key encoders
    cpu_threads: int | None = None        # torch threads on CPU (None: torch's default)
    seed: int = 0
    checkpoint_every: int = 500           # steps; also written at the end of every epoch
    keep_epoch_checkpoints: bool = True   # small encoder-only file per epoch
    log_every: int = 1                    # metrics.jsonl every n steps
    progress: bool = True                 # tqdm bar

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> "PretrainConfig":
        """Build from a mapping; unknown keys and bad values raise ``ValueError``."""
        d = dict(d or {})
        check_keys("pretrain config", d, [f.name for f in dataclasses.fields(cls)])
        cfg = cls(**d)
        cfg.validate()
        return cfg

    @classmethod
    def from_yaml(cls, path: str | Path) -> "PretrainConfig":
        """Read a YAML file (or a packaged name, "tiny"/"gpu"): its ``pretrain:`` section,
        or the whole file when it has no sections."""
        from drasclr_toolkit.config import config_path

        raw = yaml.safe_load(config_path(path).read_text()) or {}
        if isinstance(raw, dict) and "pretrain" in raw:
            raw = raw["pretrain"] or {}
        if not isinstance(raw, dict):
            raise ValueError(f"pretrain config in {path}: expected a mapping, got {type(raw).__name__}")
        return cls.from_dict(raw)

    @classmethod
    def coerce(cls, config: "PretrainConfig | Mapping[str, Any] | str | Path | None") -> "PretrainConfig":
        """Accept a config, a dict, a YAML path or a packaged name."""
        if isinstance(config, cls):
            config.validate()
            return config
        if config is None or isinstance(config, Mapping):
            return cls.from_dict(config)
        return cls.from_yaml(config)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> "PretrainConfig":
        """A copy with some fields changed (validated)."""
        return PretrainConfig.from_dict({**self.to_dict(), **changes})

    def encoder_kwargs(self) -> dict[str, Any]:
        """Arguments of :class:`DrasCLREncoder` (what checkpoints store as encoder_config)."""
        return dict(rep_dim=self.rep_dim, num_experts=self.num_experts, width=self.width,
                    conditioning=self.conditioning, proj_dim=self.proj_dim, in_channels=1)

    def validate(self) -> None:
        def need(ok: bool, key: str, what: str) -> None:
            if not ok:
                raise ValueError(f"pretrain config: {key}={getattr(self, key)!r} {what}")

        need(self.epochs >= 1, "epochs", "must be >= 1")
        need(self.max_steps is None or self.max_steps >= 1, "max_steps", "must be >= 1 or null")
        need(self.batch_size >= 1, "batch_size", "must be >= 1")
        need(self.train_locations is None or self.train_locations >= 1, "train_locations",
             "must be >= 1 or null")
        need(self.lr > 0, "lr", "must be > 0")
        need(self.optimizer in ("sgd", "adamw"), "optimizer", "must be sgd or adamw")
        need(self.augment_on in ("host", "device"), "augment_on", "must be host or device")
        need(0 <= self.key_momentum <= 1, "key_momentum", "must be in [0, 1]")
        need(self.temperature > 0, "temperature", "must be > 0")
        need(self.queue_size >= 1, "queue_size", "must be >= 1")
        need(self.queue_dtype in _DTYPES, "queue_dtype", f"must be one of {sorted(_DTYPES)}")
        need(self.neighbours >= 0, "neighbours", "must be >= 0")
        need(self.neighbour_reduction in ("sum", "mean"), "neighbour_reduction", "must be sum or mean")
        need(self.beta >= 0, "beta", "must be >= 0")
        need(self.beta_warmup_steps >= 0, "beta_warmup_steps", "must be >= 0")
        need(self.width > 0, "width", "must be > 0")
        need(self.num_experts >= 1, "num_experts", "must be >= 1")
        need(self.conditioning in CONDITIONINGS, "conditioning", f"must be one of {CONDITIONINGS}")
        need(self.num_workers >= 0, "num_workers", "must be >= 0")
        need(self.cpu_threads is None or self.cpu_threads >= 1, "cpu_threads", "must be >= 1 or null")
        need(self.checkpoint_every >= 1, "checkpoint_every", "must be >= 1")
        need(self.log_every >= 1, "log_every", "must be >= 1")
        need(self.device == "auto" or self.device.split(":")[0] in ("cpu", "cuda", "mps"),
             "device", "must be auto, cpu, cuda or cuda:N")
