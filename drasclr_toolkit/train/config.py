"""``PretrainConfig``: every option of a pretraining run, validated."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from drasclr_toolkit.config import Device, ModelConfig
from drasclr_toolkit.ssl.queue import QUEUE_DTYPES


class PretrainConfig(ModelConfig):
    """Options of :func:`drasclr_toolkit.train.pretrain` (the ``pretrain:`` config section).

    The encoder's architecture (``width``, ``num_experts``, ``conditioning``, ``rep_dim``,
    ``proj_dim``) is declared by :class:`~drasclr_toolkit.config.ModelConfig`, which this
    extends: in a YAML file it is the shared ``model:`` section, which
    :func:`~drasclr_toolkit.config.load_config` hands to this one. Defaults are the
    published DrasCLR settings (one GPU batch of 32 instead of 4×32).

    Example:
        >>> cfg = PretrainConfig.from_dict({"width": 0.25, "epochs": 1})
        >>> cfg.width, cfg.lr, cfg.temperature
        (0.25, 0.01, 0.2)
        >>> PretrainConfig.from_dict({"widht": 0.25})
        Traceback (most recent call last):
        ...
        drasclr_toolkit.config.ConfigError: pretrain config: unknown key(s) ['widht']; did you mean 'width'? ...
    """

    section = "pretrain config"
    yaml_section = ("pretrain",)

    # schedule
    epochs: int = Field(20, ge=1)
    max_steps: int | None = Field(None, ge=1)  # cap on total steps (the cosine schedule ends there)
    batch_size: int = Field(32, ge=1)     # global batch (split over DDP ranks)
    train_locations: int | None = Field(None, ge=1)  # anchors from this many landmarks spread over the lung (None: all)
    optimizer: Literal["sgd", "adamw"] = "sgd"  # sgd (reference) | adamw
    lr: float = Field(0.01, gt=0)
    momentum: float = Field(0.9, ge=0)    # SGD momentum (adamw: unused)
    weight_decay: float = Field(1e-4, ge=0)
    # contrastive
    key_momentum: float = Field(0.999, ge=0, le=1)
    temperature: float = Field(0.2, gt=0)
    # 0: no queue; the negatives are this step's keys of the other subjects at the same
    # location, all fresh (needs batch_negatives; best with batch_size = number of subjects).
    queue_size: int = Field(4096, ge=0)
    queue_dtype: Literal[tuple(QUEUE_DTYPES)] = "float32"  # float32 | bfloat16 | float16
    mask_unfilled_negatives: bool = True  # False: the reference's random-noise negatives
    prefill_queues: bool = False          # fill every queue with initial-encoder keys before step 1
    exclude_same_subject: bool = True     # a query's own subject's queued keys are not negatives
    batch_negatives: bool = False         # also contrast with this step's other keys (not in the reference)
    neighbours: int = Field(2, ge=0)      # k nearest landmarks in the neighbour loss (0: off)
    neighbour_reduction: Literal["sum", "mean"] = "sum"  # sum (reference) | mean
    beta: float = Field(1.0, ge=0)
    beta_warmup_steps: int = Field(0, ge=0)  # β grows linearly from 0 over these steps
    # augmentation
    augment: bool = True
    augment_translate: float | None = Field(None, ge=0)  # voxels; None: 12 × patch_size / 32
    augment_rotate_deg: float = Field(10.0, ge=0, le=180)  # max rotation about each axis (reference 10)
    augment_scale: float = Field(0.1, ge=0, lt=1)          # max relative zoom (reference ±10 %)
    augment_noise_p: float = Field(0.25, ge=0, le=1)       # probability of Gaussian noise (std up to 50 HU)
    augment_contrast_p: float = Field(0.25, ge=0, le=1)    # probability of a gamma-contrast change
    # False: geometry only (no noise, no contrast), whatever the two probabilities say; the
    # study's "intensity augmentation off" variant (invariance to intensity changes may
    # erase the density differences emphysema is made of).
    augment_intensity: bool = True
    augment_on: Literal["host", "device"] = "host"  # host (MONAI, per patch) | device (batched torch, on the training device)
    # The network's HU window: HU clipped to it and mapped to [-1, 1] (reference
    # [-1024, 240]); stored in the checkpoint, so embedding and fine-tuning use the same.
    hu_window: list[float] = Field(default_factory=lambda: [-1024.0, 240.0], min_length=2,
                                   max_length=2)
    # runtime
    num_workers: int = Field(0, ge=0)
    device: Device = "auto"
    amp: bool = True                      # bf16 autocast on CUDA (no effect on CPU)
    # bf16 autocast on the CPU too (fast where the CPU has bf16 units, AVX512-BF16/AMX;
    # losses within ~1 % of float32: tests/test_cpu_fast_path.py, benchmarks/bench_cpu_step.py)
    cpu_amp: bool = False
    channels_last: bool = False           # channels_last_3d memory format on CUDA
    compile: bool = False                 # torch.compile the query and key encoders
    cpu_threads: int | None = Field(None, ge=1)  # torch threads on CPU (None: torch's default)
    # Read every patch of the source into memory before training when they fit in this many
    # MiB (0: off): a step then never decodes or checksums the store again.
    patch_cache_mb: int = Field(0, ge=0)
    seed: int = 0
    checkpoint_every: int = Field(500, ge=1)  # steps; also written at the end of every epoch
    keep_epoch_checkpoints: bool = True   # small encoder-only file per epoch
    log_every: int = Field(1, ge=1)       # metrics.jsonl every n steps
    progress: bool = True                 # tqdm bar

    @model_validator(mode="after")
    def _queue_or_batch_negatives(self) -> "PretrainConfig":
        # Raised as ConfigError (naming section and field), which config_error passes on.
        if self.queue_size == 0 and not self.batch_negatives:
            raise self.field_error("batch_negatives", False,
                                   "with queue_size 0 leaves no negatives",
                                   "set batch_negatives: true, or a queue_size of at least 1")
        if not self.hu_window[1] > self.hu_window[0]:
            raise self.field_error("hu_window", list(self.hu_window),
                                   "has its upper end not above its lower end",
                                   "give [low, high] HU with high > low, e.g. [-1024, 240]")
        if self.queue_size == 0 and self.prefill_queues:
            raise self.field_error("prefill_queues", True, "needs a queue (queue_size is 0)",
                                   "set prefill_queues: false, or a queue_size of at least 1")
        return self

    def augment_probabilities(self) -> tuple[float, float]:
        """(p_noise, p_contrast) as applied: both 0 when ``augment_intensity`` is off."""
        if not self.augment_intensity:
            return 0.0, 0.0
        return self.augment_noise_p, self.augment_contrast_p
