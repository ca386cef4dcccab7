"""Label efficiency: how much labelled data does a pretrained encoder save?

The task is the dense emphysema class of each patch (:mod:`drasclr_toolkit.evaluate.dense`).
For each seed the labelled subjects are split once into a test set and a training pool;
growing, nested shares of the pool (1, 5, 10, 25, 100 %; at least one subject) train

* ``fine-tuned``: the pretrained encoder plus a linear head, all trained end to end;
* ``from scratch``: the same architecture from a random initialisation, trained the same way;
* ``linear probe``: a logistic regression on the frozen pretrained representation.

Each is scored by balanced accuracy on the test subjects' patches (chance: one over the
number of classes present). The result is a tidy table, one row per (method, fraction,
seed), ready for :func:`drasclr_toolkit.viz.label_efficiency_figure`.
"""

from __future__ import annotations

import copy
import math
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

from drasclr_toolkit.errors import InputError
from drasclr_toolkit.evaluate.dense import PatchTruth

__all__ = ["LABEL_FRACTIONS", "label_efficiency"]

LABEL_FRACTIONS: tuple[float, ...] = (0.01, 0.05, 0.1, 0.25, 1.0)
METHODS: tuple[str, ...] = ("fine-tuned", "from scratch", "linear probe")


def _network_input(patches: np.ndarray, window: tuple[float, float] | None = None
                   ) -> torch.Tensor:
    from drasclr_toolkit.ssl.augment import hu_to_unit

    return hu_to_unit(torch.as_tensor(patches), window).unsqueeze(1)


def _encoders(checkpoint: str | Path | None, model: Any, seed: int, n_loc: int,
              store_coords: np.ndarray
              ) -> tuple[nn.Module | None, nn.Module, np.ndarray, tuple[float, float]]:
    """(pretrained or None, random-init twin, location coordinates for the pretrained,
    the HU window the pretrained encoder was trained with: every method sees it)."""
    from drasclr_toolkit.config import ModelConfig
    from drasclr_toolkit.embed.extract import network_window
    from drasclr_toolkit.models.checkpoint import load_encoder
    from drasclr_toolkit.models import DrasCLREncoder

    coords = np.asarray(store_coords, np.float32)
    pretrained = None
    arch = ModelConfig.coerce(model).encoder_kwargs() if model is not None else {}
    window = network_window({})
    if checkpoint is not None:
        pretrained, info = load_encoder(checkpoint)
        window = network_window(info)
        arch = dict(info.get("encoder_config") or arch)
        trained_coords = info.get("trained_landmark_coords")
        if trained_coords is not None and np.shape(trained_coords) == (n_loc, 3):
            coords = np.asarray(trained_coords, np.float32)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        scratch = DrasCLREncoder(**arch) if arch or pretrained is None else \
            DrasCLREncoder(rep_dim=pretrained.rep_dim, num_experts=pretrained.num_experts,
                           width=pretrained.width, conditioning=pretrained.conditioning)
    return pretrained, scratch, coords, window


class _Classifier(nn.Module):
    def __init__(self, encoder: nn.Module, n_classes: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(encoder.rep_dim, n_classes)

    def forward(self, x: torch.Tensor, loc: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder.encode(x, loc))


def _train(encoder: nn.Module, patches: np.ndarray, labels: np.ndarray, locs: np.ndarray,
           coords: np.ndarray, n_classes: int, steps: int, batch_size: int,
           lr_encoder: float, lr_head: float, seed: int,
           locations_per_batch: int = 8, window: tuple[float, float] | None = None
           ) -> _Classifier:
    model = _Classifier(copy.deepcopy(encoder), n_classes)
    model.train()
    params = [{"params": model.encoder.parameters(), "lr": lr_encoder},
              {"params": model.head.parameters(), "lr": lr_head}]
    opt = torch.optim.AdamW(params, weight_decay=1e-4)
    # Class-balanced draws: rare patterns are seen as often as healthy tissue. Each batch
    # comes from a few locations only: the conditional convolution then runs one ordinary
    # convolution per location instead of a per-sample grouped one (several times faster).
    counts = np.bincount(labels, minlength=n_classes).astype(float)
    weights = 1.0 / counts[labels]
    rng = np.random.default_rng(seed)
    loss_fn = nn.CrossEntropyLoss()
    distinct = np.unique(locs)
    for _ in range(steps):
        chosen = rng.choice(distinct, size=min(locations_per_batch, len(distinct)), replace=False)
        allowed = np.isin(locs, chosen)
        p = np.where(allowed, weights, 0.0)
        pick = rng.choice(len(labels), size=min(batch_size, max(2, int(allowed.sum()))),
                          p=p / p.sum())
        x = _network_input(patches[pick], window)
        loc = torch.as_tensor(coords[locs[pick]])
        loss = loss_fn(model(x, loc), torch.as_tensor(labels[pick]))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    model.eval()
    return model


@torch.no_grad()
def _predict(model: nn.Module, patches: np.ndarray, locs: np.ndarray, coords: np.ndarray,
             batch: int = 128, window: tuple[float, float] | None = None) -> np.ndarray:
    out = []
    for start in range(0, len(locs), batch):
        sl = slice(start, start + batch)
        out.append(model(_network_input(patches[sl], window), torch.as_tensor(coords[locs[sl]])))
    return torch.cat(out).argmax(1).numpy()


@torch.no_grad()
def _represent(encoder: nn.Module, patches: np.ndarray, locs: np.ndarray, coords: np.ndarray,
               batch: int = 128, window: tuple[float, float] | None = None) -> np.ndarray:
    encoder.eval()
    out = []
    for start in range(0, len(locs), batch):
        sl = slice(start, start + batch)
        out.append(encoder.encode(_network_input(patches[sl], window),
                                  torch.as_tensor(coords[locs[sl]])))
    return torch.cat(out).numpy()


def label_efficiency(store: Any, truth: PatchTruth, checkpoint: str | Path | None,
                     fractions: Sequence[float] = LABEL_FRACTIONS, seeds: Sequence[int] = (0, 1),
                     test_fraction: float = 1 / 3, steps: int = 60, batch_size: int = 32,
                     lr_encoder: float = 3e-4, lr_head: float = 3e-3,
                     model: Any = None,
                     methods: Sequence[str] = METHODS, threads: int | None = None
                     ) -> pd.DataFrame:
    """Balanced accuracy against the share of labelled training subjects, per method and seed.

    Args:
        store: the patch source (PatchStore or ArrayPatchSource): patches and locations.
        truth: per-patch classes (e.g. :func:`synthetic_patch_truth`), aligned to the store
            by subject id.
        checkpoint: the pretrained encoder (``final.pt`` or an official checkpoint). Without
            one, "fine-tuned" and "linear probe" use the random-init encoder (said in the
            ``encoder`` column) and only show what labels alone achieve.
        fractions: shares of the training pool; each uses at least one subject, and the
            subsets are nested (a larger share contains the smaller ones).
        steps, batch_size, lr_encoder, lr_head: fine-tuning budget (the same for both
            end-to-end methods).
        model: architecture of the from-scratch encoder when there is no checkpoint: a
            :class:`~drasclr_toolkit.config.ModelConfig` (``ws.model_config()``, the
            configuration's ``model`` section), a dict of its keys or a config name;
            ``None``: the reference encoder. With a checkpoint its own architecture is used.

    Returns a tidy DataFrame: method, fraction, n_train_subjects, n_train_patches, seed,
    balanced_accuracy, chance, n_test_patches, seconds, encoder.
    """
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        raise InputError(f"methods {unknown} are not among {list(METHODS)}")
    threads_before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(int(threads))
    try:
        return _label_efficiency(store, truth, checkpoint, fractions, seeds, test_fraction, steps,
                                 batch_size, lr_encoder, lr_head, model, methods)
    finally:
        torch.set_num_threads(threads_before)


def _label_efficiency(store: Any, truth: PatchTruth, checkpoint: str | Path | None,
                      fractions: Sequence[float], seeds: Sequence[int], test_fraction: float,
                      steps: int, batch_size: int, lr_encoder: float, lr_head: float,
                      model: Any, methods: Sequence[str]
                      ) -> pd.DataFrame:
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    ids = list(store.subject_ids)
    truth = truth.align(ids)
    labelled = [i for i in range(len(ids)) if (truth.label[i] >= 0).any()]
    if len(labelled) < 3:
        raise InputError(f"label efficiency needs per-patch labels for at least 3 subjects "
                         f"(training and test); found {len(labelled)}")
    n_classes = len(truth.classes)
    n_loc = truth.label.shape[1]
    pretrained, scratch_init, coords, window = _encoders(checkpoint, model, 0, n_loc,
                                                         np.asarray(store.landmark_coords))
    base = pretrained if pretrained is not None else scratch_init
    encoder_name = "pretrained" if pretrained is not None else "random-init (no checkpoint)"
    if pretrained is None:
        # A frozen random-init encoder needs BatchNorm statistics of this cohort (the
        # initial ones collapse every patch onto one embedding); fine-tuning re-learns them.
        from drasclr_toolkit.models.batchnorm import location_batches, recalibrate_batchnorm

        base = copy.deepcopy(scratch_init)
        recalibrate_batchnorm(base, location_batches(
            store, batch_size=min(32, max(2, len(ids))), max_locations=64, window=window))

    patches = {i: np.asarray(store.read_subject(i)) for i in labelled}

    def rows_of(subjects: Sequence[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        x, y, loc = [], [], []
        for i in subjects:
            keep = np.flatnonzero(truth.label[i] >= 0)
            x.append(patches[i][keep])
            y.append(truth.label[i][keep])
            loc.append(keep)
        return np.concatenate(x), np.concatenate(y), np.concatenate(loc)

    results = []
    for seed in seeds:
        order = np.random.default_rng(seed).permutation(labelled)
        n_test = max(1, int(round(test_fraction * len(order))))
        test, pool = list(order[:n_test]), list(order[n_test:])
        x_test, y_test, loc_test = rows_of(test)
        chance = 1.0 / len(np.unique(y_test))
        frozen_test = (_represent(base, x_test, loc_test, coords, window=window)
                       if "linear probe" in methods else None)
        done: dict[tuple[int, str], dict[str, Any]] = {}
        for fraction in fractions:
            n_train = max(1, int(math.ceil(fraction * len(pool))))
            x_tr, y_tr, loc_tr = rows_of(pool[:n_train])
            for method in methods:
                start = time.perf_counter()
                if (n_train, method) in done:  # a small pool: shares that give the same subjects
                    results.append(dict(done[(n_train, method)], fraction=float(fraction)))
                    continue
                if len(np.unique(y_tr)) < 2:
                    predicted = np.full(len(y_test), y_tr[0])
                elif method == "linear probe":
                    features = _represent(base, x_tr, loc_tr, coords, window=window)
                    probe = make_pipeline(StandardScaler(), LogisticRegression(
                        C=0.1, class_weight="balanced", max_iter=2000))
                    predicted = probe.fit(features, y_tr).predict(frozen_test)
                else:
                    start_from = base if method == "fine-tuned" else scratch_init
                    lr_enc = lr_encoder if method == "fine-tuned" else lr_head
                    model = _train(start_from, x_tr, y_tr, loc_tr, coords, n_classes, steps,
                                   batch_size, lr_enc, lr_head, seed, window=window)
                    predicted = _predict(model, x_test, loc_test, coords, window=window)
                results.append(dict(
                    method=method, fraction=float(fraction), n_train_subjects=n_train,
                    n_train_patches=len(y_tr), seed=int(seed),
                    balanced_accuracy=float(balanced_accuracy_score(y_test, predicted)),
                    chance=chance, n_test_patches=len(y_test),
                    seconds=time.perf_counter() - start,
                    encoder=encoder_name if method != "from scratch" else "random-init"))
                done[(n_train, method)] = results[-1]
    return pd.DataFrame(results)
