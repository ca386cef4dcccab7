"""The DrasCLR pretraining loop: CPU, one GPU (bf16 autocast) or many through torchrun.

:class:`DrasCLRTrainer` owns the model state and does one optimisation step on a batch;
:class:`PretrainRun` adds the data, checkpoints, metrics and progress; :func:`pretrain` is
the one-call entry point used by the CLI and the notebooks.

Files written under ``out_dir``::

    config.yaml              the resolved PretrainConfig
    metrics.jsonl            one JSON record per logged step
    checkpoints/last.pt      full training state for exact resume (every N steps, each epoch)
    checkpoints/encoder_epoch003.pt   encoder weights after each epoch (small)
    final.pt                 encoder weights + encoder_config + config (what `embed` reads)

All checkpoints are dicts of tensors and plain values: ``torch.load(p, weights_only=True)``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from torch import nn
from torch.utils.data import DataLoader

from drasclr_toolkit.errors import InputError
from drasclr_toolkit.config import ConfigError
from drasclr_toolkit.io_utils import (atomic_write_text, read_jsonl, refuse_foreign_folder,
                                      remove_stale_temp_files)
from drasclr_toolkit.locks import folder_lock
from drasclr_toolkit.models import DrasCLREncoder
from drasclr_toolkit.models.checkpoint import (CHECKPOINT_FORMAT, atomic_torch_save,
                                               read_training_checkpoint, save_encoder_checkpoint)
from drasclr_toolkit.patch_source import PatchSource, cached_source
from drasclr_toolkit.runtime import (DistInfo, all_reduce_mean, amp_dtype, autocast, barrier,
                                     concat_all_gather, init_distributed, resolve_device, shutdown)
from drasclr_toolkit.ssl import (LocalInfoNCE, LocationQueues, NeighbourInfoNCE, PatchAugmenter,
                                 contrast_accuracy, make_key_encoder, neighbour_weight,
                                 update_momentum)
from drasclr_toolkit.ssl.device_augment import DeviceAugmenter
from drasclr_toolkit.train.config import PretrainConfig
from drasclr_toolkit.train.sampler import (LocationBatchSampler, LocationPatchDataset,
                                           spread_locations)

log = logging.getLogger(__name__)

# Files whose presence marks a folder as a pretraining run of ours (resumed, not refused).
RUN_MARKERS = ("metrics.jsonl", "checkpoints", "final.pt", "previous")
# Settings that may differ when a run is resumed: they change how it is watched or how
# fast it goes, never what a step computes (every other change is refused on resume).
RESUMABLE_CHANGES = frozenset({"progress", "num_workers", "cpu_threads", "log_every",
                               "checkpoint_every", "keep_epoch_checkpoints", "device",
                               "patch_cache_mb"})


# -- small utilities -----------------------------------------------------------------------
def capture_rng_state() -> dict[str, Any]:
    """Python, numpy and torch RNG states as tensors (loadable with weights_only=True)."""
    py_version, py_state, py_gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state = {
        "python": torch.tensor(py_state, dtype=torch.int64),
        "python_version": int(py_version),
        "python_gauss": py_gauss,
        "numpy": torch.from_numpy(np_keys.astype(np.int64)),
        "numpy_pos": int(np_pos), "numpy_has_gauss": int(np_has_gauss),
        "numpy_gauss": float(np_gauss),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: Mapping[str, Any]) -> None:
    random.setstate((state["python_version"], tuple(int(v) for v in state["python"].tolist()),
                     state["python_gauss"]))
    np.random.set_state(("MT19937", state["numpy"].numpy().astype(np.uint32), state["numpy_pos"],
                         state["numpy_has_gauss"], state["numpy_gauss"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def negatives_per_anchor(mask: torch.Tensor | None, batch: int, n_candidates: int
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean number of negatives per anchor and the chance accuracy, mean of 1/(1 + n_i).

    ``mask`` is None (every candidate counts), (K,) shared or (B, K) per anchor. Chance is
    the contrast accuracy of an encoder that ranks the positive at random among its
    1 + n_i candidates.
    """
    with torch.no_grad():
        if mask is None:
            n = torch.full((batch,), float(n_candidates))
        else:
            n = mask.reshape(-1, mask.shape[-1]).expand(batch, -1).sum(dim=1).float()
        return n.mean(), (1.0 / (1.0 + n)).mean()


class QueryBranch(nn.Module):
    """All query-encoder passes of one step in a single ``forward`` (one DDP call).

    Returns normalised projections of the anchor view (B, D) and of the k neighbour views
    (k, B, D), each neighbour encoded with its own location.
    """

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, view1: torch.Tensor, loc: torch.Tensor, neighbours: torch.Tensor,
                neighbour_locs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        _, z = self.encoder(view1, loc)
        q = F.normalize(z.float(), dim=1)
        qn = [F.normalize(self.encoder(neighbours[j], neighbour_locs[j])[1].float(), dim=1)
              for j in range(neighbours.shape[0])]
        qn_t = torch.stack(qn) if qn else q.new_zeros((0,) + tuple(q.shape))
        return q, qn_t


# -- the trainer -----------------------------------------------------------------------------
class DrasCLRTrainer:
    """Query encoder, key encoder, per-location queues, losses, optimiser and schedule.

    Args:
        config: the run's :class:`PretrainConfig`.
        landmark_coords: (L, 3) normalised locations of the source's landmarks.
        total_steps: length of the cosine schedule.
        device: where the model lives.
        dist_info: DDP rank/world (default: a single process).

    Example:
        >>> cfg = PretrainConfig.from_dict(dict(width=0.125, rep_dim=8, proj_dim=8,
        ...                                     num_experts=2, queue_size=16, neighbours=1))
        >>> tr = DrasCLRTrainer(cfg, np.zeros((3, 3), np.float32), total_steps=10)
        >>> batch = {"view1": torch.randn(2, 1, 20, 20, 20), "view2": torch.randn(2, 1, 20, 20, 20),
        ...          "neighbours": torch.randn(1, 2, 1, 20, 20, 20), "loc": torch.tensor(0),
        ...          "neighbour_locs": torch.tensor([1])}
        >>> sorted(tr.step(batch))[:3]
        ['acc_local', 'acc_neighbour', 'beta']
        >>> int(tr.queues.filled[0]), tr.step_count
        (2, 1)
    """

    def __init__(self, config: PretrainConfig, landmark_coords: np.ndarray, total_steps: int,
                 device: str | torch.device = "cpu", dist_info: DistInfo | None = None) -> None:
        self.config = config
        self.device = torch.device(device)
        self.dist = dist_info or DistInfo()
        self.total_steps = int(total_steps)
        self.step_count = 0
        cfg = config
        # Identical initial weights on every rank (DDP also broadcasts them) without
        # touching the caller's global RNG.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            self.encoder = DrasCLREncoder(**cfg.encoder_kwargs())
        self.channels_last = cfg.channels_last and self.device.type == "cuda"
        fmt = torch.channels_last_3d if self.channels_last else torch.contiguous_format
        self.encoder.to(self.device, memory_format=fmt)
        self.key_encoder = make_key_encoder(self.encoder)
        # queue_size 0: no queue, negatives from the step's own batch only (config validated).
        self.queues: LocationQueues | None = (
            LocationQueues(len(landmark_coords), cfg.queue_size, cfg.proj_dim, cfg.queue_dtype,
                           seed=cfg.seed).to(self.device) if cfg.queue_size > 0 else None)
        self.coords = torch.as_tensor(np.asarray(landmark_coords, np.float32), device=self.device)
        # Set by PretrainRun when augment_on is "device": batches then carry int16 HU.
        self.device_augmenter: DeviceAugmenter | None = None
        self.local_loss = LocalInfoNCE(cfg.temperature)
        self.neighbour_loss = NeighbourInfoNCE(cfg.temperature, cfg.neighbour_reduction)
        if cfg.optimizer == "adamw":
            self.optimizer: torch.optim.Optimizer = torch.optim.AdamW(
                self.encoder.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        else:
            self.optimizer = torch.optim.SGD(self.encoder.parameters(), lr=cfg.lr,
                                             momentum=cfg.momentum, weight_decay=cfg.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
            self.optimizer, T_max=max(1, self.total_steps))
        branch: nn.Module = QueryBranch(self.encoder)
        key_forward: Callable = self.key_encoder
        if cfg.compile:
            branch = torch.compile(branch)
            key_forward = torch.compile(self.key_encoder)
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [self.device.index] if self.device.type == "cuda" else None
            branch = DDP(branch, device_ids=ids)
        self.query_branch = branch
        self._key_forward = key_forward
        # bf16 (on the CPU only when cpu_amp asks); float16 would need a gradient scaler
        # the loop does not have.
        wanted = cfg.amp if self.device.type == "cuda" else cfg.cpu_amp
        self.amp_dtype = amp_dtype(self.device, wanted and self.device.type in ("cuda", "cpu"),
                                   allow_float16=False)
        self.use_amp = self.amp_dtype is not None

    # -- one step ----------------------------------------------------------------------------
    def _autocast(self):
        return autocast(self.device, self.amp_dtype)

    def _device_views(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Views made on the training device from the batch's int16 HU patches."""
        if self.device_augmenter is None:
            raise InputError("this batch carries raw HU patches (augment_on: device) but the "
                             "trainer has no device augmenter; set augment_on: device")
        anchor = batch["anchor_hu"].to(self.device, non_blocking=True)
        neighbours = batch["neighbours_hu"].to(self.device, non_blocking=True)
        view1, view2, nv = self.device_augmenter(anchor, neighbours, int(batch["seed"]))
        return {"view1": view1, "view2": view2, "neighbours": nv}

    def _to_device(self, t: torch.Tensor) -> torch.Tensor:
        t = t.to(self.device, non_blocking=True)
        if self.channels_last and t.dim() == 5:
            t = t.contiguous(memory_format=torch.channels_last_3d)
        return t

    @torch.no_grad()
    def _keys(self, view2: torch.Tensor, loc: torch.Tensor) -> torch.Tensor:
        """Normalised key projections; under DDP with batch shuffling across ranks, so the
        key encoder's BatchNorm statistics cannot leak which sample is the positive."""
        if not self.dist.enabled:
            with self._autocast():
                return F.normalize(self._key_forward(view2, loc)[1].float(), dim=1)
        x_all = concat_all_gather(view2, self.dist)
        n = x_all.shape[0]
        gen = torch.Generator().manual_seed(self.config.seed * 1_000_003 + self.step_count)
        perm = torch.randperm(n, generator=gen).to(self.device)  # same on every rank
        mine = perm.view(self.dist.world_size, -1)[self.dist.rank]
        with self._autocast():
            z = F.normalize(self._key_forward(x_all[mine], loc)[1].float(), dim=1)
        z_all = concat_all_gather(z, self.dist)
        unshuffled = z_all[torch.argsort(perm)]
        return unshuffled.view(self.dist.world_size, -1, z.shape[1])[self.dist.rank]

    def step(self, batch: Mapping[str, torch.Tensor]) -> dict[str, float | torch.Tensor]:
        """One optimisation step on a batch from :class:`LocationPatchDataset`.

        Returns the step's metrics as 0-d tensors (call :func:`float` to log them; left as
        tensors so a GPU loop need not synchronise every step).
        """
        cfg = self.config
        loc = int(batch["loc"])
        if "anchor_hu" in batch:
            batch = {**batch, **self._device_views(batch)}
        k = min(cfg.neighbours, int(batch["neighbours"].shape[0]))
        view1 = self._to_device(batch["view1"])
        view2 = self._to_device(batch["view2"])
        neighbours = batch["neighbours"][:k]
        neighbours = self._to_device(neighbours) if k else view1.new_zeros((0,) + tuple(view1.shape))
        loc_coord = self.coords[loc]
        neighbour_coords = self.coords[batch["neighbour_locs"][:k].to(self.device)]

        self.encoder.train()
        self.key_encoder.train()
        with self._autocast():
            q, qn = self.query_branch(view1, loc_coord, neighbours, neighbour_coords)
        update_momentum(self.encoder, self.key_encoder, cfg.key_momentum)
        key = self._keys(view2, loc_coord)

        subjects = batch["subjects"].to(self.device) if "subjects" in batch else None
        exclude = subjects if cfg.exclude_same_subject else None
        all_keys = concat_all_gather(key, self.dist)
        all_ids = concat_all_gather(subjects, self.dist) if subjects is not None else None
        # this step's keys of the other subjects (same location)
        in_batch = all_ids[None, :] != subjects[:, None] if all_ids is not None else None
        if self.queues is None:
            # No queue: every negative is a key of another subject computed this step by the
            # current key encoder (no stale keys an encoder could tell apart by their age).
            if in_batch is None:
                raise InputError("queue_size 0 needs batches that name their subjects")
            negatives, mask = all_keys, in_batch
        else:
            negatives, mask = self.queues.negatives(loc, exclude_ids=exclude)
            if not cfg.mask_unfilled_negatives:
                # reference behaviour: unwritten (random) entries count as negatives
                written = self.queues.ids[loc] >= 0
                mask = mask | ~written if exclude is not None else None
            if cfg.batch_negatives and in_batch is not None:
                # The in-batch keys as extra negatives: a signal from the first visit of a
                # location, when its queue is still empty.
                queue_mask = (torch.ones(negatives.shape[0], dtype=torch.bool, device=self.device)
                              if mask is None else mask)
                queue_mask = queue_mask.expand(q.shape[0], -1) if queue_mask.dim() == 1 else queue_mask
                negatives = torch.cat([negatives.float(), all_keys])
                mask = torch.cat([queue_mask, in_batch], dim=1)
        loss_local, logits_local = self.local_loss(q, key, negatives, mask)
        n_neg, chance = negatives_per_anchor(mask, q.shape[0], negatives.shape[0])
        beta = neighbour_weight(self.step_count, cfg.beta, cfg.beta_warmup_steps)
        if k:
            loss_neighbour, logits_neighbour = self.neighbour_loss(qn, key, negatives, mask)
        else:
            loss_neighbour, logits_neighbour = loss_local.new_zeros(()), None
        loss = loss_local + beta * loss_neighbour

        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        lr = self.optimizer.param_groups[0]["lr"]
        self.scheduler.step()
        # Enqueue after the loss: this batch's keys are negatives for later batches only.
        if self.queues is not None:
            self.queues.enqueue(loc, all_keys, ids=all_ids)
        self.step_count += 1
        with torch.no_grad():
            acc_n = contrast_accuracy(logits_neighbour) if logits_neighbour is not None else loss.new_zeros(())
            return {"loss": loss.detach(), "loss_local": loss_local.detach(),
                    "loss_neighbour": loss_neighbour.detach(),
                    "acc_local": contrast_accuracy(logits_local), "acc_neighbour": acc_n,
                    "n_negatives": n_neg, "chance_acc": chance,
                    "lr": lr, "beta": beta}

    # -- state -------------------------------------------------------------------------------
    def encoder_config(self) -> dict[str, Any]:
        return self.config.encoder_kwargs()

    def state_dict(self) -> dict[str, Any]:
        return {
            "encoder": self.encoder.state_dict(),
            "key_encoder": self.key_encoder.state_dict(),
            "queues": self.queues.state_dict() if self.queues is not None else {},
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "step": self.step_count,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.encoder.load_state_dict(state["encoder"])
        self.key_encoder.load_state_dict(state["key_encoder"])
        if self.queues is not None:
            self.queues.load_state_dict(state["queues"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step_count = int(state["step"])


# -- the run -----------------------------------------------------------------------------------
def config_summary(config: PretrainConfig, trainer: DrasCLRTrainer, source: PatchSource,
                   sampler: LocationBatchSampler, device: torch.device, dist_info: DistInfo) -> str:
    """Human-readable summary of a run: data, model size, queue memory, schedule."""
    n_params = trainer.encoder.num_parameters()
    q = trainer.queues
    lines = [
        "DrasCLR pretraining",
        f"  data      {len(source.subject_ids)} subjects × {len(source.landmarks)} locations"
        f"{'' if len(sampler.locations) == len(source.landmarks) else f' ({len(sampler.locations)} as anchors)'}, "
        f"patch {source.patch_size}³, k={config.neighbours} neighbours",
        f"  model     DrasCLREncoder(width={config.width}, experts={config.num_experts}, "
        f"conditioning={config.conditioning}, rep={config.rep_dim}, proj={config.proj_dim}): "
        f"{n_params:,} parameters",
        (f"  queues    {q.num_locations} × {q.size} × {q.dim} {str(q.keys.dtype).replace('torch.', '')}"
         f" = {q.nbytes / 2**20:,.1f} MiB" if q is not None else
         "  queues    none (negatives: this step's other subjects at the same location)"),
        f"  batches   {sampler.global_batch} per step ({sampler.rank_batch} per rank × "
        f"{dist_info.world_size}), {sampler.batches_per_epoch} steps per epoch, "
        f"{trainer.total_steps} steps in all"
        + (f" (max_steps={config.max_steps} stops after "
           f"{trainer.total_steps / sampler.batches_per_epoch:.2f} of {config.epochs} epochs)"
           if trainer.total_steps < config.epochs * sampler.batches_per_epoch else ""),
        f"  optimiser {config.optimizer} lr={config.lr}"
        f"{f' momentum={config.momentum}' if config.optimizer == 'sgd' else ''} "
        f"wd={config.weight_decay}, cosine; "
        f"T={config.temperature}, m={config.key_momentum}, β={config.beta} "
        f"(warm-up {config.beta_warmup_steps} steps)",
        f"  runtime   device={device}, amp={'bf16' if trainer.use_amp else 'off'}, "
        f"workers={config.num_workers}, channels_last={trainer.channels_last}, "
        f"compile={config.compile}, seed={config.seed}",
    ]
    return "\n".join(lines)


def run_augmenter(cfg: PretrainConfig, patch_size: int) -> PatchAugmenter:
    """The augmentation a run with ``cfg`` trains with: ``augment_translate`` voxels (unset:
    12 per 32, the reference's), rotation, scale, noise and contrast probabilities, the HU
    window. With ``augment_on: device`` the run draws the same transforms batched in torch
    (:meth:`DeviceAugmenter.like`)."""
    translate = (cfg.augment_translate if cfg.augment_translate is not None
                 else 12.0 * patch_size / 32.0)
    p_noise, p_contrast = cfg.augment_probabilities()
    return PatchAugmenter(translate=float(translate), rotate_deg=cfg.augment_rotate_deg,
                          scale=cfg.augment_scale, p_noise=p_noise, p_contrast=p_contrast,
                          enabled=cfg.augment, window=cfg.hu_window)


class PretrainRun:
    """A pretraining run in ``out_dir``: builds everything, resumes if possible, trains.

    Use :func:`pretrain` unless you need the trainer afterwards (e.g. to inspect queues).

    Args:
        source: a patch source (PatchStore, ArrayPatchSource).
        config: PretrainConfig, dict, YAML path or packaged name.
        out_dir: run folder.
        resume: continue from ``out_dir/checkpoints/last.pt`` when it exists.
        stop_after_steps: stop (with a checkpoint) once this many steps in all are done,
            without changing the schedule: to train in sessions, or to test resume.
        callbacks: functions called with each metrics record (dict) on the main rank.
    """

    def __init__(self, source: PatchSource, config: PretrainConfig | Mapping[str, Any] | str | Path | None,
                 out_dir: str | Path, *, resume: bool = True, stop_after_steps: int | None = None,
                 callbacks: Sequence[Callable[[dict], Any]] = (),
                 allow_store_change: bool = False, overwrite: bool = False) -> None:
        self.config = PretrainConfig.coerce(config)
        self.source = source
        self.allow_store_change = allow_store_change
        if len(source.subject_ids) < 2:
            # Batches hold one location across subjects: one subject gives BatchNorm a
            # single value per channel (a raw "Expected more than 1 value" error otherwise).
            raise InputError(
                f"pretraining needs at least 2 subjects, it has {len(source.subject_ids)}",
                where=f"patch source {getattr(source, 'path', type(source).__name__)}, field "
                "'subjects'",
                fix="preprocess more subjects into it (`drasclr preprocess` resumes and adds "
                "the missing ones)")
        self.out_dir = Path(out_dir).expanduser()
        self.ckpt_dir = self.out_dir / "checkpoints"
        self.metrics_path = self.out_dir / "metrics.jsonl"
        self.stop_after_steps = stop_after_steps
        self.callbacks = list(callbacks)
        cfg = self.config
        # Settings that cannot run are refused here, before the run folder is touched.
        self.device = resolve_device(cfg.device)  # "auto" picks LOCAL_RANK's GPU under torchrun
        world = int(os.environ.get("WORLD_SIZE", "1") or 1)
        if cfg.batch_size // max(world, 1) < 2:
            raise ConfigError(
                f"pretrain config, field 'batch_size': {cfg.batch_size} gives "
                f"{cfg.batch_size // max(world, 1)} patch(es) per batch on each of {world} "
                "process(es); BatchNorm needs at least 2. What to do: set batch_size to 2 or "
                "more per process (e.g. --set batch_size=8)",
                section="pretrain", field="batch_size", value=cfg.batch_size,
                fix="set batch_size to 2 or more per process")
        self._lock = contextlib.ExitStack()
        if int(os.environ.get("RANK", "0") or 0) == 0:  # one writer per run folder
            refuse_foreign_folder(self.out_dir, RUN_MARKERS, "drasclr pretrain", overwrite)
            self._lock.enter_context(folder_lock(self.out_dir, "pretrain"))
        try:
            self._setup(source, resume)
        except BaseException:
            self._lock.close()
            raise

    def _setup(self, source: PatchSource, resume: bool) -> None:
        cfg = self.config
        self.dist = init_distributed(self.device)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)  # also outside torchrun
        self._threads_before = torch.get_num_threads()
        if self.device.type == "cpu" and cfg.cpu_threads:
            # On a shared or small machine, fewer threads than cores is often much faster;
            # restored when the run ends.
            torch.set_num_threads(cfg.cpu_threads)
        locations = (None if cfg.train_locations is None
                     else spread_locations(np.asarray(source.landmarks), cfg.train_locations))
        self.sampler = LocationBatchSampler(len(source.subject_ids), len(source.landmarks),
                                            cfg.batch_size, seed=cfg.seed, rank=self.dist.rank,
                                            world_size=self.dist.world_size, locations=locations)
        per_epoch = self.sampler.batches_per_epoch
        self.total_steps = cfg.epochs * per_epoch
        if cfg.max_steps is not None:
            self.total_steps = min(self.total_steps, cfg.max_steps)
        self.trainer = DrasCLRTrainer(cfg, np.asarray(source.landmark_coords), self.total_steps,
                                      self.device, self.dist)
        host_augmenter = run_augmenter(cfg, source.patch_size)
        on_device = cfg.augment_on == "device"
        if cfg.patch_cache_mb:
            source = cached_source(source, cfg.patch_cache_mb)
        self.dataset = LocationPatchDataset(source, cfg.neighbours, host_augmenter, raw=on_device)
        if on_device:
            self.trainer.device_augmenter = DeviceAugmenter.like(host_augmenter)
        self.epoch, self.batch_in_epoch = 0, 0
        if self.dist.is_main and self.out_dir.is_dir():
            # A kill during an atomic write (a checkpoint can be 9 MB) leaves its temp file.
            remove_stale_temp_files(self.out_dir)
        if not resume and self.dist.is_main:
            self._move_aside()
        if resume and (self.ckpt_dir / "last.pt").is_file():
            self._load(self.ckpt_dir / "last.pt")
        else:
            # No checkpoint: every step is (re)done from 1, so a record of an earlier
            # attempt killed before its first checkpoint would be a second copy.
            self._truncate_metrics(0)

    # -- checkpoints ---------------------------------------------------------------------------
    def _position(self) -> tuple[int, int]:
        if self.batch_in_epoch >= self.sampler.batches_per_epoch:
            return self.epoch + 1, 0
        return self.epoch, self.batch_in_epoch

    def checkpoint(self) -> Path:
        """Write ``checkpoints/last.pt`` (main rank), atomically."""
        path = self.ckpt_dir / "last.pt"
        if self.dist.is_main:
            epoch, index = self._position()
            state = self.trainer.state_dict()
            state.update({
                "format": CHECKPOINT_FORMAT, "config": self.config.to_dict(),
                "encoder_config": self.trainer.encoder_config(),
                "epoch": epoch, "batch_in_epoch": index, "rng": capture_rng_state(),
                "world_size": self.dist.world_size,
                "landmark_coords": torch.as_tensor(np.asarray(self.source.landmark_coords)),
                "store_fingerprint": _store_fingerprint(self.source),
            })
            atomic_torch_save(state, path)
        barrier(self.dist)
        return path

    def _move_aside(self) -> Path | None:
        """``restart``: move an earlier run's records (metrics, config, checkpoints, final.pt)
        into ``previous/<n>/`` so the new run starts clean and never mixes with them."""
        found = [p for p in (self.metrics_path, self.out_dir / "config.yaml", self.ckpt_dir,
                             self.out_dir / "final.pt") if p.exists()]
        if not found:
            return None
        previous = self.out_dir / "previous"
        n = 1
        while (previous / f"{n:03d}").exists():
            n += 1
        target = previous / f"{n:03d}"
        target.mkdir(parents=True)
        for p in found:
            os.replace(p, target / p.name)
        log.info("restart: the earlier run's records were moved to %s", target)
        return target

    def _check_same_settings(self, path: Path, state: Mapping[str, Any]) -> None:
        """Refuse to resume (or re-finish) a run with settings other than those it ran with:
        the records would then claim steps ran at settings they did not."""
        now = self.config.to_dict()
        # An option added to the toolkit after the run started is absent from its record:
        # the run used what is now that option's default.
        defaults = PretrainConfig().to_dict()
        before = {**{k: v for k, v in defaults.items() if k in now},
                  **dict(state.get("config") or {})}
        changed = sorted(k for k in set(before) | set(now)
                         if k not in RESUMABLE_CHANGES and before.get(k) != now.get(k))
        if changed:
            listed = ", ".join(f"{k}: {before.get(k)!r} then, {now.get(k)!r} now"
                               for k in changed[:6])
            raise ConfigError(
                f"checkpoint {path}: field 'config': this run was made with other settings "
                f"({listed}); resuming would record steps under settings they did not run "
                "with. What to do: run with the settings it was started with, give a new "
                "--out, or start it over with --restart (restart=True: the earlier records "
                "are moved to previous/)", section="pretrain", field=changed[0],
                value=now.get(changed[0]), fix="same settings, a new --out, or --restart")

    def close(self) -> None:
        """Release the run folder's lock (``pretrain`` does it when it returns)."""
        self._lock.close()

    def _load(self, path: Path) -> None:
        state = read_training_checkpoint(path)
        self._check_same_settings(path, state)
        if state["encoder_config"] != self.trainer.encoder_config():
            raise InputError(f"checkpoint {path}: field 'encoder_config' {state['encoder_config']} "
                             f"differs from this config's {self.trainer.encoder_config()}; use a "
                             "new out_dir or the same model options")
        before, now = state.get("store_fingerprint"), _store_fingerprint(self.source)
        if before and now and before != now and not self.allow_store_change:
            raise InputError(
                f"the patch store {getattr(self.source, 'path', '')} changed since this run "
                "started (subjects added, removed or redone), so resuming would train on a mix",
                where=f"checkpoint {path}: field 'store_fingerprint'",
                fix="use a new out_dir, or resume on purpose with allow_store_change=True "
                "(`drasclr pretrain --allow-store-change`)")
        self.trainer.load_state_dict(state)
        self.epoch, self.batch_in_epoch = int(state["epoch"]), int(state["batch_in_epoch"])
        restore_rng_state(state["rng"])
        self._truncate_metrics(self.trainer.step_count)
        log.info("resumed from %s at step %d (epoch %d, batch %d)", path,
                 self.trainer.step_count, self.epoch, self.batch_in_epoch)

    def _truncate_metrics(self, step: int) -> None:
        # Records written after the checkpoint belong to steps that will be redone.
        if not self.dist.is_main or not self.metrics_path.is_file():
            return
        # read_jsonl drops (with a warning) a last line torn by a kill during a write.
        kept = [r for r in read_jsonl(self.metrics_path) if r["step"] <= step]
        atomic_write_text(self.metrics_path, "".join(json.dumps(r) + "\n" for r in kept))

    def save_encoder(self, path: Path) -> Path:
        """Encoder-only checkpoint (what embedding reads), atomically, main rank."""
        if self.dist.is_main:
            save_encoder_checkpoint(
                path, self.trainer.encoder, self.trainer.encoder_config(),
                config=self.config.to_dict(), landmark_coords=self.source.landmark_coords,
                landmarks=self.source.landmarks, step=self.trainer.step_count,
                epoch=self._position()[0])
        barrier(self.dist)
        return path

    # -- training ---------------------------------------------------------------------------
    def _loader(self) -> DataLoader:
        cfg = self.config
        return DataLoader(self.dataset, sampler=self.sampler, batch_size=None,
                          num_workers=cfg.num_workers, pin_memory=self.device.type == "cuda",
                          prefetch_factor=4 if cfg.num_workers else None,
                          persistent_workers=False)

    def _log(self, metrics: Mapping[str, Any], n_patches: int, seconds: float) -> dict:
        keys = ("loss", "loss_local", "loss_neighbour", "acc_local", "acc_neighbour",
                "n_negatives", "chance_acc")
        values = torch.stack([torch.as_tensor(metrics[k], dtype=torch.float32).to(self.device)
                              for k in keys])
        values = all_reduce_mean(values, self.dist).tolist()
        record = {"step": self.trainer.step_count, "epoch": self.epoch,
                  **{k: round(float(v), 6) for k, v in zip(keys, values)},
                  "lr": float(metrics["lr"]), "beta": float(metrics["beta"]),
                  "patches_per_s": round(n_patches / max(seconds, 1e-9), 2)}
        if self.dist.is_main:
            with open(self.metrics_path, "a") as fh:
                fh.write(json.dumps(record) + "\n")
            for cb in self.callbacks:
                cb(record)
        return record

    def run(self) -> Path:
        """Train until the schedule (or ``stop_after_steps``) ends; return the checkpoint
        written last: ``final.pt`` when training finished, else ``checkpoints/last.pt``."""
        cfg = self.config
        self.out_dir.mkdir(parents=True, exist_ok=True)
        if self.dist.is_main:
            self.metrics_path.touch()  # first: it marks the folder as a run of ours
            atomic_write_text(self.out_dir / "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False))
            summary = config_summary(cfg, self.trainer, self.source, self.sampler, self.device, self.dist)
            print(summary, flush=True)
            log.info("\n%s", summary)
        stop = self.total_steps if self.stop_after_steps is None else min(self.total_steps,
                                                                           self.stop_after_steps)
        bar = None
        if cfg.progress and self.dist.is_main:
            from tqdm.auto import tqdm

            bar = tqdm(total=stop, initial=min(self.trainer.step_count, stop), desc="pretrain",
                       unit="step", dynamic_ncols=True)
        try:
            if cfg.prefill_queues and self.trainer.step_count == 0:
                from drasclr_toolkit.train.prefill import prefill_queues

                prefill_queues(self.trainer, self.dataset, self.sampler.locations,
                               self.sampler.n_subjects, self.sampler.global_batch, cfg.seed)
            self.epoch, self.batch_in_epoch = self._position()
            while self.trainer.step_count < stop and self.epoch < cfg.epochs:
                self.sampler.set_epoch(self.epoch, self.batch_in_epoch)
                tick, n_patches = time.perf_counter(), 0
                for batch in self._loader():
                    metrics = self.trainer.step(batch)
                    self.batch_in_epoch += 1
                    n_patches += self.sampler.global_batch
                    step = self.trainer.step_count
                    if step % cfg.log_every == 0 or step == stop:
                        record = self._log(metrics, n_patches, time.perf_counter() - tick)
                        tick, n_patches = time.perf_counter(), 0
                        if bar is not None:
                            bar.set_postfix(loss=f"{record['loss']:.3f}",
                                            acc=f"{record['acc_local']:.2f}", refresh=False)
                    if bar is not None:
                        bar.update(1)
                    if step % cfg.checkpoint_every == 0 and step < stop:
                        self.checkpoint()
                    if step >= stop:
                        break
                if self.batch_in_epoch >= self.sampler.batches_per_epoch:
                    self.checkpoint()
                    if cfg.keep_epoch_checkpoints:
                        self.save_encoder(self.ckpt_dir / f"encoder_epoch{self.epoch:03d}.pt")
                    self.epoch, self.batch_in_epoch = self.epoch + 1, 0
            last = self.checkpoint()
            if self.trainer.step_count >= self.total_steps or self.epoch >= cfg.epochs:
                return self.save_encoder(self.out_dir / "final.pt")
            return last
        finally:
            if bar is not None:
                bar.close()
            torch.set_num_threads(self._threads_before)


def _store_fingerprint(source: PatchSource) -> str | None:
    """What the source holds, as a short hash (PatchStore); None for in-memory sources."""
    fingerprint = getattr(source, "fingerprint", None)
    return fingerprint() if callable(fingerprint) else None


def pretrain(source: PatchSource, config: PretrainConfig | Mapping[str, Any] | str | Path | None,
             out_dir: str | Path, *, resume: bool = True, stop_after_steps: int | None = None,
             callbacks: Iterable[Callable[[dict], Any]] = (),
             allow_store_change: bool = False, overwrite: bool = False) -> Path:
    """Pretrain a DrasCLR encoder on a patch source; return the final checkpoint's path.

    Runs on the CPU, one GPU (bf16 autocast) or, started by ``torchrun``, many GPUs/nodes
    (DDP). Re-running with the same ``out_dir`` resumes exactly where it stopped (with
    the same settings: others are refused; ``resume=False`` starts over, the earlier
    records moved to ``previous/``). One run per ``out_dir`` at a time; a folder holding
    files that are not a run is refused unless ``overwrite=True``.

    Example:
        >>> from drasclr_toolkit.patch_source import ArrayPatchSource
        >>> import tempfile
        >>> src = ArrayPatchSource.synthetic(n_subjects=4, n_locations=3, patch_size=20)
        >>> cfg = dict(width=0.125, rep_dim=8, proj_dim=8, num_experts=2, queue_size=8,
        ...            batch_size=2, max_steps=2, progress=False, device="cpu")
        >>> path = pretrain(src, cfg, tempfile.mkdtemp())  # doctest: +ELLIPSIS
        DrasCLR pretraining...
        >>> path.name, sorted(torch.load(path, weights_only=True))[:3]
        ('final.pt', ['config', 'encoder', 'encoder_config'])
    """
    run = PretrainRun(source, config, out_dir, resume=resume, stop_after_steps=stop_after_steps,
                      callbacks=list(callbacks), allow_store_change=allow_store_change,
                      overwrite=overwrite)
    try:
        return run.run()
    finally:
        run.close()
        shutdown(run.dist)
