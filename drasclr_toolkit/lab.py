"""The teaching lab: the contrastive step opened up on one real batch, and side runs.

Notebook 02 uses these to compute, on one batch of real patches, every piece that
:func:`drasclr_toolkit.train.pretrain` hides: the queries and keys, the similarity
matrix divided by the temperature, the InfoNCE loss by hand (checked against the
library's), the softmax at several temperatures, the momentum update, the neighbour
query and the conditional convolution's mixing of expert kernels. :class:`Experiment`
(from ``ws.experiment(name, **overrides)``) is one exercise run, and
:func:`compare_to_baseline` puts its effect beside the baseline run's with each number's
reference (chance, the probe's corrected interval and permutation null, a paired test).

Example
-------
>>> from drasclr_toolkit.patch_source import ArrayPatchSource
>>> src = ArrayPatchSource.synthetic(n_subjects=4, n_locations=3, patch_size=16)
>>> step = open_contrastive_step(src, {"width": 0.125, "rep_dim": 8, "proj_dim": 8,
...                                    "num_experts": 2, "queue_size": 0,
...                                    "batch_negatives": True}, loc=1)
>>> tuple(step.similarity.shape), abs(step.loss_by_hand - step.loss_library) < 1e-5
((4, 4), True)
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from drasclr_toolkit.errors import InputError
from drasclr_toolkit.models import DrasCLREncoder
from drasclr_toolkit.patch_source import PatchSource
from drasclr_toolkit.ssl import LocalInfoNCE, NeighbourInfoNCE, make_key_encoder, update_momentum
from drasclr_toolkit.ssl.augment import PatchAugmenter
from drasclr_toolkit.evaluate.densitometry import ZONE_DENSITOMETRY, densitometry_of_values
from drasclr_toolkit.train.config import PretrainConfig

__all__ = ["ContrastiveStep", "Experiment", "compare_to_baseline", "condconv_toy",
           "fresh_contrast_accuracy", "momentum_demo", "open_contrastive_step",
           "run_augmenter", "settings_table", "softmax_at_temperatures", "lung_hu",
           "densitometry_of_values", "harrell_c_by_hand", "momentum_by_hand", "exercise",
           "live_ablation", "recorded_exercise_times", "recorded_study",
           "seed_paired_interval", "study_sentences"]


def run_augmenter(config: PretrainConfig | Mapping[str, Any], patch_size: int) -> PatchAugmenter:
    """The augmentation a pretraining run with ``config`` trains with (the same rule as
    :class:`~drasclr_toolkit.train.loop.PretrainRun`: ``augment_translate`` or, unset, 12
    voxels per 32).

    Example:
        >>> run_augmenter({"augment_translate": 1, "augment_rotate_deg": 5}, 32).params["translate"]
        1.0
    """
    from drasclr_toolkit.train.loop import run_augmenter as _run_augmenter

    return _run_augmenter(PretrainConfig.coerce(config), patch_size)


def _encoder_from(config: PretrainConfig, checkpoint: str | Path | None) -> DrasCLREncoder:
    if checkpoint is not None:
        from drasclr_toolkit.models.checkpoint import load_encoder

        return load_encoder(checkpoint)[0]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        return DrasCLREncoder(**config.encoder_kwargs())


@dataclass
class ContrastiveStep:
    """Everything one contrastive step computes on one batch (all at one landmark).

    ``query``/``key`` (B, D): L2-normalised projections of view 1 (query encoder) and view 2
    (key encoder); ``similarity`` (B, B): ``query @ key.T`` (cosines; the diagonal holds the
    positives); ``logits``: similarity / T; ``loss_by_hand``: the mean of
    ``-log softmax(logits)[i, i]``; ``loss_library``: :class:`LocalInfoNCE` on the same
    tensors (the tiny run's negatives: the other subjects' keys of this step);
    ``neighbour_query`` (B, D): the normalised sum of the k neighbour landmarks' queries;
    ``neighbour_similarity`` its cosines with the keys.
    """

    loc: int
    subject_ids: list[str]
    temperature: float
    query: torch.Tensor
    key: torch.Tensor
    similarity: torch.Tensor
    logits: torch.Tensor
    loss_by_hand: float
    loss_library: float
    neighbour_query: torch.Tensor | None
    neighbour_similarity: torch.Tensor | None
    neighbour_loss: float | None
    neighbour_locs: list[int] = field(default_factory=list)

    @property
    def accuracy(self) -> float:
        """Share of rows whose own key (the diagonal) has the highest similarity."""
        return float((self.similarity.argmax(dim=1) == torch.arange(len(self.similarity))).float().mean())

    @property
    def chance(self) -> float:
        return 1.0 / len(self.similarity)


@torch.no_grad()
def open_contrastive_step(source: PatchSource, config: PretrainConfig | Mapping[str, Any],
                          *, checkpoint: str | Path | None = None, loc: int | None = None,
                          seed: int = 0) -> ContrastiveStep:
    """Run the pieces of one training step by hand on every subject's patch at ``loc``.

    The encoder is the freshly initialised one of ``config`` (or ``checkpoint``'s); the key
    encoder starts as its copy, as in training. Both run in training mode (batch statistics,
    as in a training step) on copies, so nothing of the caller's changes.
    """
    from drasclr_toolkit.train.sampler import BatchSpec, LocationPatchDataset

    cfg = PretrainConfig.coerce(config)
    if loc is None:
        loc = int(np.asarray(source.lung_fraction).mean(axis=0).argmax())
    n = len(source.subject_ids)
    dataset = LocationPatchDataset(source, cfg.neighbours, run_augmenter(cfg, source.patch_size))
    batch = dataset[BatchSpec(0, 0, loc=int(loc), subjects=tuple(range(n)), seed=seed)]
    coords = torch.as_tensor(np.asarray(source.landmark_coords, np.float32))
    encoder = copy.deepcopy(_encoder_from(cfg, checkpoint)).train()
    key_encoder = make_key_encoder(encoder).train()
    q = F.normalize(encoder(batch["view1"], coords[loc])[1].float(), dim=1)
    k = F.normalize(key_encoder(batch["view2"], coords[loc])[1].float(), dim=1)
    similarity = q @ k.t()
    logits = similarity / cfg.temperature
    # By hand: the positive of row i is column i; cross-entropy = -log softmax at the diagonal.
    log_softmax = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    loss_by_hand = float(-log_softmax.diagonal().mean())
    # The library, as the tiny run calls it: every key of the step as a candidate negative,
    # the anchor's own subject masked out (it is the positive, in column 0).
    other = torch.arange(n)[None, :] != torch.arange(n)[:, None]
    loss_library = float(LocalInfoNCE(cfg.temperature)(q, k, k, other)[0])
    nq = nsim = nloss = None
    neighbour_locs = [int(v) for v in batch["neighbour_locs"][:cfg.neighbours]]
    if neighbour_locs:
        per_neighbour = torch.stack([
            F.normalize(encoder(batch["neighbours"][j], coords[neighbour_locs[j]])[1].float(), dim=1)
            for j in range(len(neighbour_locs))])
        nloss_fn = NeighbourInfoNCE(cfg.temperature, cfg.neighbour_reduction)
        nq = nloss_fn.combine(per_neighbour)
        nsim = nq @ k.t()
        nloss = float(nloss_fn(per_neighbour, k, k, other)[0])
    return ContrastiveStep(int(loc), [str(s) for s in source.subject_ids], float(cfg.temperature),
                           q, k, similarity, logits, loss_by_hand, loss_library, nq, nsim, nloss,
                           neighbour_locs)


def softmax_at_temperatures(similarities: Sequence[float] | torch.Tensor,
                            temperatures: Sequence[float] = (0.05, 0.2, 1.0)) -> pd.DataFrame:
    """The softmax of one row of cosine similarities at each temperature (rows: candidates,
    columns ``T=...``): a low T puts almost all the weight on the largest similarity.

    Example:
        >>> t = softmax_at_temperatures([0.9, 0.5, 0.1], (0.05, 1.0))
        >>> round(float(t["T=0.05"].iloc[0]), 3), round(float(t["T=1"].iloc[0]), 2)
        (1.0, 0.47)
    """
    s = torch.as_tensor(np.asarray(similarities, dtype=np.float64))
    return pd.DataFrame({f"T={t:g}": torch.softmax(s / t, dim=0).numpy() for t in temperatures},
                        index=pd.RangeIndex(len(s), name="candidate"))


def momentum_demo(momenta: Sequence[float] = (0.9, 0.99, 0.999), steps: int = 200,
                  seed: int = 0) -> pd.DataFrame:
    """A query weight that drifts (a random walk, as SGD moves it) and its momentum copies:
    ``key ← m·key + (1 − m)·query`` each step (:func:`update_momentum`). One row per step,
    a column per copy: how far each key trails the query (the larger m, the slower and
    smoother the key encoder).

    Example:
        >>> d = momentum_demo((0.5,), steps=3)
        >>> list(d.columns)
        ['step', 'query', 'key m=0.5']
    """
    gen = torch.Generator().manual_seed(seed)
    query = torch.nn.Linear(1, 1, bias=False)
    torch.nn.init.zeros_(query.weight)
    keys = {m: make_key_encoder(query) for m in momenta}
    rows = []
    for step in range(1, steps + 1):
        with torch.no_grad():
            query.weight.add_(0.05 + 0.1 * torch.randn(1, 1, generator=gen))
        row = {"step": step, "query": float(query.weight.detach())}
        for m, key in keys.items():
            update_momentum(query, key, m)
            row[f"key m={m:g}"] = float(key.weight.detach())
        rows.append(row)
    return pd.DataFrame(rows)


def momentum_by_hand(query: torch.nn.Module, key: torch.nn.Module, m: float) -> float:
    """Apply ``key ← m·key + (1 − m)·query`` to the first parameter by hand and through
    :func:`update_momentum`; return the largest difference between the two (about 1e-8)."""
    q0 = next(query.parameters()).detach().clone()
    k0 = next(key.parameters()).detach().clone()
    by_hand = m * k0 + (1 - m) * q0
    update_momentum(query, key, m)
    return float((next(key.parameters()) - by_hand).abs().max())


@torch.no_grad()
def condconv_toy(encoder: DrasCLREncoder, coords: Mapping[str, Sequence[float]],
                 layer: int = 0) -> dict[str, Any]:
    """How one conditional convolution makes a kernel for each of a few locations.

    Returns ``routing`` (DataFrame: location × expert, ``r = sigmoid(Linear(location))``),
    ``kernels`` (location → mixed kernel of output channel 0, input channel 0, (k, k, k)),
    the ``experts`` kernels of that channel pair (E, k, k, k) and ``max_error``: the largest
    difference between ``Σ_e r_e W_e`` computed here and the layer's own
    :meth:`~drasclr_toolkit.models.condconv.CondConv3d.mixed_kernels`.
    """
    conv = encoder.features[layer].conv
    if not hasattr(conv, "routing_weights"):
        raise InputError(f"layer {layer} of this encoder is not a conditional convolution "
                         f"(conditioning={encoder.conditioning!r})")
    names = list(coords)
    loc = torch.as_tensor(np.asarray([coords[n] for n in names], np.float32))
    r = conv.routing_weights(loc)                                  # (N, E)
    by_hand = torch.einsum("ne,eoi...->noi...", r, conv.weight)    # Σ_e r_e W_e
    library = conv.mixed_kernels(loc)
    return {
        "routing": pd.DataFrame(r.numpy(), index=names,
                                columns=[f"expert {e}" for e in range(r.shape[1])]),
        "kernels": {n: by_hand[i, 0, 0].numpy() for i, n in enumerate(names)},
        "experts": conv.weight[:, 0, 0].numpy(),
        "max_error": float((by_hand - library).abs().max()),
    }


SETTINGS_SHOWN = ("width", "num_experts", "batch_size", "epochs", "train_locations",
                  "queue_size", "batch_negatives", "temperature", "key_momentum", "beta",
                  "neighbours", "lr", "augment_translate", "augment_rotate_deg",
                  "augment_scale")


def settings_table(configs: Sequence[str] = ("tiny", "gpu"),
                   fields: Sequence[str] = SETTINGS_SHOWN) -> pd.DataFrame:
    """The pretraining settings of the named configurations beside the published DrasCLR
    settings (the defaults of :class:`PretrainConfig`), read from the files.

    Example:
        >>> t = settings_table(("tiny",), ("temperature", "num_experts"))
        >>> list(t.columns), int(t.loc["num_experts", "published"])
        (['tiny', 'published'], 8)
    """
    columns = {name: PretrainConfig.from_yaml(name).to_dict() for name in configs}
    columns["published"] = PretrainConfig().to_dict()
    table = pd.DataFrame({name: {f: values[f] for f in fields} for name, values in columns.items()})
    table.index.name = "setting"
    return table.astype(object)


# -- exercises: side runs and their effect ------------------------------------------------
@torch.no_grad()
def fresh_contrast_accuracy(source: PatchSource, checkpoint: str | Path | None,
                            config: PretrainConfig | Mapping[str, Any], *,
                            locations: Sequence[int] | None = None, seed: int = 123
                            ) -> dict[str, float]:
    """Does the encoder recognise a patch's second view among the other subjects' patches?

    At each landmark (default: 8 landmarks spread over the lung) two new views of every subject's
    patch, both through the encoder in evaluation mode; a subject counts as recognised when
    its own second view is the most similar of all subjects'. No queue, no batch statistics:
    what an encoder gained by telling stale keys from fresh ones (a training accuracy far
    above the baseline's) does not show here. Returns ``accuracy``, ``chance`` (1 / subjects) and ``trials``.
    """
    from drasclr_toolkit.train.sampler import spread_locations

    cfg = PretrainConfig.coerce(config)
    if locations is None:
        # Up to 8 of the run's anchor landmarks, spread over the lung.
        n_loc = min(8, cfg.train_locations or len(source.landmarks))
        locations = spread_locations(np.asarray(source.landmarks), n_loc)
    encoder = _encoder_from(cfg, checkpoint).eval()
    augmenter = run_augmenter(cfg, source.patch_size)
    if cfg.augment_on == "device":
        # The views the run trained on: drawn batched in torch (patch by patch with MONAI
        # these views were half of an exercise's comparison time).
        from drasclr_toolkit.ssl.device_augment import DeviceAugmenter

        augmenter = DeviceAugmenter.like(augmenter)
    coords = torch.as_tensor(np.asarray(source.landmark_coords, np.float32))
    n = len(source.subject_ids)
    hits = 0
    for i, loc in enumerate(locations):
        patches = np.asarray(source.read_location(int(loc), list(range(n))))
        v1, v2, _ = augmenter(torch.as_tensor(patches), None, seed=seed + i)
        a = F.normalize(encoder(v1, coords[int(loc)])[1].float(), dim=1)
        b = F.normalize(encoder(v2, coords[int(loc)])[1].float(), dim=1)
        hits += int(((a @ b.t()).argmax(dim=1) == torch.arange(n)).sum())
    trials = n * len(locations)
    return {"accuracy": hits / trials, "chance": 1.0 / n, "trials": trials}


class Experiment:
    """One side run of an exercise (``ws.experiment(name, **overrides)``)."""

    def __init__(self, workspace: Any, name: str, overrides: Mapping[str, Any],
                 checkpoint: Path) -> None:
        self.workspace = workspace
        self.name = name
        self.overrides = dict(overrides)
        self.checkpoint = Path(checkpoint)
        self.run_dir = self.checkpoint.parent

    def __repr__(self) -> str:
        return f"Experiment({self.name!r}, {self.overrides}, run_dir={str(self.run_dir)!r})"

    @property
    def config(self) -> PretrainConfig:
        return self.workspace.pretrain_config(**self.overrides)

    def metrics(self) -> pd.DataFrame:
        from drasclr_toolkit.train import read_metrics

        return read_metrics(self.run_dir)

    def embeddings(self):
        return self.workspace.embeddings(checkpoint=self.checkpoint)


def _baseline(workspace: Any) -> Experiment:
    return Experiment(workspace, "baseline", workspace.active_overrides(), workspace.checkpoint())


def _fresh_accuracy(workspace: Any, run: Experiment, source: PatchSource) -> dict[str, float]:
    # Cached per checkpoint file for the workspace's session: the baseline is compared often.
    cache = workspace._made.setdefault("fresh_accuracy", {})
    key = (str(run.checkpoint), run.checkpoint.stat().st_mtime_ns)
    if key not in cache:
        cache[key] = fresh_contrast_accuracy(source, run.checkpoint, run.config)
    return cache[key]


def _training_row(workspace: Any, run: Experiment, source: PatchSource) -> dict[str, Any]:
    from drasclr_toolkit.train.summary import learning_summary

    metrics = run.metrics()
    s = learning_summary(metrics)
    n = learning_summary(metrics, loss="loss_neighbour", acc="acc_neighbour")
    fresh = _fresh_accuracy(workspace, run, source)
    return {
        "run": run.name, "changed": ", ".join(f"{k}={v}" for k, v in run.overrides.items()) or "-",
        "steps": s["steps"],
        "loss first→last": f"{s['loss_first']:.2f} → {s['loss_last']:.2f} "
                           f"({-100 * s['loss_drop']:+.0f} %)",
        "train acc (chance)": f"{s['acc_last']:.2f} ({s['chance_last']:.2f})",
        "neighbour loss, acc (chance)": f"{n['loss_last']:.2f}, {n['acc_last']:.2f} "
                                        f"({n['chance_last']:.2f})",
        "fresh-view acc (chance)": f"{fresh['accuracy']:.2f} ({fresh['chance']:.2f})",
        "learning verdict": "learning visible" if s["learning"] else "no clear learning",
        "_fresh": fresh["accuracy"], "_train_acc": s["acc_last"], "_ratio": s["ratio"],
        "_drop": s["loss_drop"], "_n_loss": n["loss_last"], "_n_acc": n["acc_last"],
    }


def _difference_sentence(head: str, row: Mapping[str, Any], unit: str = "") -> str:
    """One row of :func:`~drasclr_toolkit.evaluate.compare.paired_comparisons` in words."""
    return (f"{head} = {row['diff']:+.3f}{unit} (95 % CI {row['ci_low']:+.3f} to "
            f"{row['ci_high']:+.3f}, p={row['p']:.2g}): {row['verdict']}")


def compare_to_baseline(workspace: Any, experiment: Experiment, *,
                        baseline: Experiment | None = None,
                        targets: Sequence[str] = ("pct_emphysema",)) -> dict[str, Any]:
    """The exercise's effect beside the baseline run, each number with its reference.

    Returns ``training`` (per run: the training log's local loss first and last 10 % of
    steps, contrast accuracy against chance, neighbour loss and accuracy, the fresh-view
    accuracy against chance, the learning verdict),
    ``probes`` (per run and target: the cross-validated probe of the mean-pooled
    embeddings with its Nadeau–Bengio interval, permutation p and verdict, from
    :func:`~drasclr_toolkit.evaluate.evaluate_phenotypes`), ``paired`` (the experiment
    minus the baseline on the same folds, corrected paired t-test) and ``text``
    (sentences generated from those numbers).
    """
    from drasclr_toolkit.evaluate import evaluate_phenotypes, paired_comparisons, summarise

    baseline = baseline or _baseline(workspace)
    source = workspace.patch_store()
    training = pd.DataFrame([_training_row(workspace, r, source) for r in (baseline, experiment)])
    labels = workspace.labels()
    targets = [t for t in targets if t in labels]
    budget = workspace.evaluation_budget()
    probes = paired = None
    text = []
    b, e = training.iloc[0], training.iloc[1]
    name = experiment.name
    text.append(f"training log: the local loss fell {100 * e['_drop']:.0f} % ({name}) vs "
                f"{100 * b['_drop']:.0f} % (baseline); contrast accuracy {e['_train_acc']:.2f} "
                f"= {e['_ratio']:.1f}× its chance vs {b['_train_acc']:.2f} = {b['_ratio']:.1f}×; "
                f"neighbour loss {e['_n_loss']:.2f} vs {b['_n_loss']:.2f}")
    text.append(f"fresh-view accuracy (no queue, new views): {name} {e['_fresh']:.2f} vs "
                f"baseline {b['_fresh']:.2f} (chance {1 / len(source.subject_ids):.2f})")
    if targets:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            table = evaluate_phenotypes({"baseline": baseline.embeddings(),
                                         experiment.name: experiment.embeddings()}, labels,
                                        targets, n_repeats=budget["n_repeats"],
                                        n_permutations=budget["n_permutations"])
        long = summarise(table)
        probes = long[["feature_set", "task", "metric", "value", "ci_low", "ci_high", "chance",
                       "p", "verdict"]].rename(columns={"feature_set": "run", "task": "target"})
        paired = paired_comparisons(long, reference=experiment.name, baselines=["baseline"])
        for _, r in paired.iterrows():
            if np.isfinite(r["diff"]):
                text.append(_difference_sentence(
                    f"{r['task']} probe ({r['metric']}): {experiment.name} − baseline", r))
            else:
                text.append(f"{r['task']}: not compared ({r['reason']})")
    keep = [c for c in training.columns if not c.startswith("_")]
    return {"training": training[keep], "probes": probes, "paired": paired, "text": text}


# -- concepts on toy numbers ----------------------------------------------------------------
def lung_hu(manifest: Any, subject_id: str) -> np.ndarray:
    """The HU values of one subject's lung voxels, inside the mask densitometry uses (the
    manifest's lung mask, else the preprocessing segmentation)."""
    import SimpleITK as sitk

    from drasclr_toolkit.data import load_ct
    from drasclr_toolkit.preprocess.lungmask import segment_lungs
    from drasclr_toolkit.preprocess.resample import resample_like, to_lps

    image = to_lps(load_ct(manifest.image_path(subject_id), subject_id=subject_id).to_sitk())
    mask_path = manifest.lung_mask_path(subject_id)
    if mask_path is not None and str(mask_path).strip():
        mask = resample_like(to_lps(sitk.ReadImage(str(mask_path))), image, "nearest", 0)
    else:
        mask, _ = segment_lungs(image)
    values = sitk.GetArrayFromImage(image)[sitk.GetArrayFromImage(mask) > 0]
    return values.astype(np.float64)


def harrell_c_by_hand(time: Sequence[float], event: Sequence[bool], risk: Sequence[float],
                      ids: Sequence[str] | None = None) -> tuple[pd.DataFrame, float]:
    """Harrell's C counted pair by pair: a pair is *comparable* when the subject with the
    shorter time had the event (a censored subject's true time is unknown: later than its
    time); it is *concordant* when that subject also has the higher risk (a tie counts ½).
    C = concordant / comparable. Returns one row per pair and C.

    Example:
        >>> pairs, c = harrell_c_by_hand([2, 4, 6], [True, False, True], [3, 1, 2])
        >>> int(pairs["comparable"].sum()), round(c, 3)
        (2, 1.0)
    """
    t, e, r = (np.asarray(x, dtype=np.float64) for x in (time, event, risk))
    names = list(ids) if ids is not None else [f"s{i + 1}" for i in range(len(t))]
    rows = []
    for i in range(len(t)):
        for j in range(i + 1, len(t)):
            first, second = (i, j) if t[i] < t[j] else (j, i)
            comparable = bool(e[first]) and t[first] < t[second]
            if not comparable:
                why = ("censored first: who fails first is unknown" if not e[first]
                       else "same time")
                score = np.nan
            else:
                score = 1.0 if r[first] > r[second] else 0.5 if r[first] == r[second] else 0.0
                why = {1.0: "concordant: earlier event, higher risk", 0.5: "tied risk",
                       0.0: "discordant: earlier event, lower risk"}[score]
            rows.append({"pair": f"{names[first]}–{names[second]}", "comparable": comparable,
                         "score": score, "why": why})
    pairs = pd.DataFrame(rows)
    n = int(pairs["comparable"].sum())
    c = float(pairs["score"].sum() / n) if n else float("nan")
    return pairs, c



def exercise(workspace: Any, name: str, **overrides: Any) -> dict[str, Any]:
    """One exercise in one call: train the side run (or reuse it), compare it with the
    active (baseline) run, display the tables and print the sentences; returns the
    comparison (:func:`compare_to_baseline`)."""
    import time

    from IPython.display import display

    started = time.perf_counter()
    result = compare_to_baseline(workspace, workspace.experiment(name, **overrides))
    display(result["training"])
    if result["probes"] is not None:
        display(result["probes"])
    for line in result["text"]:
        print("•", line)
    print(f"({time.perf_counter() - started:.0f} s, including the run when it was not reused)")
    return result


def recorded_exercise_times(path: str | Path | None = None) -> pd.DataFrame | None:
    """The exercises' times as ``benchmarks/bench_lab_exercises.py`` last recorded them
    (side run and comparison, wall and CPU seconds, the load average, the machine and the
    date), or None where the file is absent (an installed package without the repository).
    """
    path = Path(path) if path is not None else (
        Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "lab_exercises.json")
    if not path.is_file():
        return None
    import json

    record = json.loads(path.read_text())
    machine = record.get("machine", {})
    rows = [{"exercise": r["exercise"],
             "change": ", ".join(f"{k}={v}" for k, v in r["change"].items()),
             "side run (s)": r["train_s"], "comparison (s)": r["compare_s"],
             "total (s)": r["total_s"], "CPU total (s)": r.get("total_cpu_s"),
             "load average": r.get("load_before")} for r in record.get("rows", [])]
    table = pd.DataFrame(rows)
    table.attrs["machine"] = (f"{machine.get('cpus', '?')} CPUs, {machine.get('date', '?')}, "
                              f"commit {machine.get('commit', '?')}")
    return table



# -- the recipe study: recorded, and one ablation live ---------------------------------------
EMPHYSEMA_SEVERITIES = ("centrilobular_severity", "paraseptal_severity", "panlobular_severity")


def recorded_study(path: str | Path | None = None) -> dict[str, Any] | None:
    """The recipe study as ``benchmarks/bench_recipe.py`` last recorded it, or None where
    its files are absent (an installed package without the repository).

    Returns ``provenance`` (machine, date, commit, config, seeds, the command, pretraining
    seconds per run), ``tidy`` (every variant × seed × pooling × target row with its R²,
    interval, paired differences and its own command), ``rule`` (the selection rule applied:
    score, eligibility and why not, difference to the default and its standard error),
    ``chosen`` and ``summary`` (per variant and pooling: seeds, mean ± sd over seeds of the
    disease R² and of the nuisance R²).
    """
    base = Path(path) if path is not None else (
        Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "recipe_study")
    files = {k: base.parent / f"{base.name}{suffix}" for k, suffix in
             (("json", ".json"), ("csv", ".csv"), ("rule", "_rule.csv"))}
    if not all(f.is_file() for f in files.values()):
        return None
    import json

    provenance = json.loads(files["json"].read_text())
    tidy = pd.read_csv(files["csv"])
    rule = pd.read_csv(files["rule"], index_col=0)
    disease, nuisance = provenance["disease"], provenance["nuisance"]
    rows = []
    for (variant, pooling), part in tidy.groupby(["variant", "pooling"], sort=False):
        per_seed = part.pivot_table(index="seed", columns="target", values="r2") \
            if part["seed"].notna().any() else part.pivot_table(columns="target", values="r2")
        d = per_seed[[t for t in disease if t in per_seed]].mean(axis=1)
        n = per_seed[[t for t in nuisance if t in per_seed]].mean(axis=1)
        rows.append({"variant": variant, "pooling": pooling, "seeds": len(per_seed),
                     **{t: per_seed[t].mean() for t in disease if t in per_seed},
                     "disease mean": d.mean(), "disease sd": d.std(ddof=1),
                     "nuisance mean": n.mean()})
    summary = pd.DataFrame(rows)
    order = list(provenance.get("variants", []))
    rank = {v: (0, order.index(v)) if v in order else
            (1 if str(v).startswith("random-init") else 2, 0) for v in summary["variant"]}
    summary = summary.iloc[sorted(range(len(summary)),
                                  key=lambda i: (rank[summary["variant"].iloc[i]],
                                                 str(summary["variant"].iloc[i])))]
    return {"provenance": provenance, "tidy": tidy, "rule": rule,
            "chosen": provenance.get("chosen"), "summary": summary.reset_index(drop=True)}


def live_ablation(workspace: Any, name: str, *, targets: Sequence[str] | None = None,
                  pooling: str = "zones_lung_weighted", **overrides: Any) -> dict[str, Any]:
    """One ablation of the recipe study, live: a side run with ``overrides``
    (``ws.experiment``; reused when it exists), then probes of the disease targets from the
    baseline run, the ablation, the random-init encoder and zone densitometry, all on the
    same subjects and folds (``pooling`` for the embeddings), and paired comparisons of the
    ablation against the baseline, and of the baseline against random-init and
    densitometry. Targets: the synthetic cohort's true severities by default (a real
    cohort: pass label columns): those of the three emphysema patterns, as in the study.
    Returns ``long`` (the probes), ``paired``, ``text`` and the ``experiment``.
    """
    import warnings

    from drasclr_toolkit.evaluate import (evaluate_phenotypes, paired_comparisons,
                                          pool_embeddings, summarise)

    truth = workspace.ground_truth()
    labels = truth if truth is not None else workspace.labels()
    if targets is None:
        if truth is None:
            raise InputError("live_ablation: this cohort has no ground truth; pass "
                             f"targets= from its label columns {list(workspace.labels().columns)}")
        targets = [c for c in EMPHYSEMA_SEVERITIES if c in labels.columns]
    missing = [t for t in targets if t not in labels]
    if missing:
        raise InputError(f"live_ablation: targets {missing} are not in the labels "
                         f"{list(labels.columns)}")
    experiment = workspace.experiment(name, **overrides)
    baseline = _baseline(workspace)
    dens = workspace.densitometry()
    zone_cols = [c for c in ZONE_DENSITOMETRY if c in dens]
    sets = {"baseline": pool_embeddings(baseline.embeddings(), pooling),
            name: pool_embeddings(experiment.embeddings(), pooling),
            "random-init": pool_embeddings(workspace.embeddings("random-init"), pooling),
            "zone densitometry": dens[zone_cols]}
    budget = workspace.evaluation_budget()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        table = evaluate_phenotypes(sets, labels, list(targets),
                                    kinds={t: "continuous" for t in targets},
                                    n_repeats=budget["n_repeats"],
                                    n_permutations=budget["n_permutations"])
    long = summarise(table)
    paired = pd.concat([
        paired_comparisons(long, reference=name, baselines=["baseline"]),
        paired_comparisons(long, reference="baseline",
                           baselines=["random-init", "zone densitometry"])], ignore_index=True)
    text = []
    for _, r in paired.iterrows():
        if np.isfinite(r["diff"]):
            text.append(_difference_sentence(f"{r['task']}: {r['reference']} − {r['baseline']}",
                                             r, unit=" R²"))
        else:
            text.append(f"{r['task']}: {r['reference']} vs {r['baseline']} not compared "
                        f"({r['reason']})")
    return {"long": long, "paired": paired, "text": text, "experiment": experiment}


# What each study variant changes, in words (benchmarks/bench_recipe.py's VARIANTS).
STUDY_VARIANTS = {
    "no-conditioning": ("anatomy conditioning (CondConv kernels mixed by location, "
                        "vs one plain CNN: the MoCo baseline)", True),
    "no-neighbour-loss": ("the neighbour loss (β = 1 vs 0)", True),
    "no-intensity-aug": ("intensity augmentation (contrast and noise on vs off)", True),
    "concat": ("location concatenated into the head instead of CondConv", False),
    "lung-window": ("a lung window [-1024, -500] HU instead of [-1024, 240]", False),
    "queue-recipe": ("the earlier recipe (per-landmark queues, key momentum 0.999, "
                     "±12-voxel shifts)", False),
    "short-schedule": ("a third of the schedule (4 epochs, 384 steps, instead of 12)", False),
    "1mm": ("1 mm instead of 2 mm voxels", False),
    "96-subjects": ("96 instead of 32 subjects at equal steps", False),
}


def seed_paired_interval(diffs: Sequence[float], level: float = 0.95) -> tuple[float, float, float]:
    """Mean and ``level`` t-interval of per-seed paired differences (n − 1 degrees of
    freedom); NaN bounds with fewer than two seeds. Its type-I error is measured in
    ``tests/test_recipe_study.py`` by simulation.

    Example:
        >>> mean, low, high = seed_paired_interval([0.1, 0.2, 0.3])
        >>> round(mean, 2), round(low, 2), round(high, 2)
        (0.2, -0.05, 0.45)
    """
    from scipy import stats

    d = np.asarray([x for x in diffs if np.isfinite(x)], dtype=np.float64)
    if len(d) == 0:
        return np.nan, np.nan, np.nan
    mean = float(d.mean())
    if len(d) < 2:
        return mean, np.nan, np.nan
    half = float(stats.t.ppf(0.5 + level / 2, len(d) - 1) * d.std(ddof=1) / np.sqrt(len(d)))
    return mean, mean - half, mean + half


def _seeds_interval(n: int, low: float, high: float) -> str:
    if not np.isfinite(low):
        return f"{n} seed: no interval"
    return f"{n} seeds, 95 % CI {low:+.3f} to {high:+.3f}"


def study_sentences(study: Mapping[str, Any]) -> list[str]:
    """What each part of the method buys on the study's data, in words generated from the
    recorded numbers (:func:`recorded_study`): per variant, the baseline's disease R² minus
    the variant's, paired by seed, with its t-interval over seeds (an interval that holds
    zero is "no evidence either way"), how many seeds' fold-paired tests found it
    (Holm-adjusted p ≤ 0.05), and the baseline against random-init and zone densitometry."""
    tidy, prov = study["tidy"], study["provenance"]
    pooling, disease = prov["rule_pooling"], list(prov["disease"])
    rows = tidy[(tidy["pooling"] == pooling) & tidy["target"].isin(disease)]
    per_seed = rows.groupby(["variant", "seed"])["r2"].mean()
    if "baseline" not in per_seed.index.get_level_values(0):
        return ["the recorded study has no baseline variant"]
    base = per_seed.loc["baseline"]
    out = []

    def verdict(low, high, better, worse):
        if not np.isfinite(low):
            return "one seed: no test"
        if low > 0:
            return better
        if high < 0:
            return worse
        return "no evidence either way (the interval holds 0)"

    for variant in dict.fromkeys(rows["variant"]):
        if variant in ("baseline", "densitometry") or variant.startswith("random-init"):
            continue
        own = per_seed.loc[variant]
        what, ablation = STUDY_VARIANTS.get(variant, (variant, False))
        rand_name = rows.loc[rows["variant"] == variant, "random_init"].dropna()
        if len(rand_name) and str(rand_name.iloc[0]).endswith(" cohort)"):
            # a data variant (another cohort): against its own cohort's references only
            cohort = str(rand_name.iloc[0])[len("random-init"):]
            rand = rows.loc[rows["variant"] == str(rand_name.iloc[0]), "r2"].mean()
            dens = tidy.loc[(tidy["variant"] == f"densitometry{cohort}")
                            & tidy["target"].isin(disease), "r2"].mean()
            out.append(f"{what}: disease R² {own.mean():+.3f} ({len(own)} seed(s)) on its own "
                       f"cohort, where random-init gives {rand:+.3f} and zone "
                       f"densitometry {dens:+.3f}; not paired with the baseline (another "
                       "cohort)")
            continue
        seeds = own.index.intersection(base.index)
        # for an ablation ("no-X"), what X buys is baseline − variant; else variant − baseline
        d = (base[seeds] - own[seeds]) if ablation else (own[seeds] - base[seeds])
        mean, low, high = seed_paired_interval(d.to_numpy())
        part = tidy[(tidy["pooling"] == pooling) & (tidy["variant"] == variant)
                    & tidy["target"].isin(disease)]
        hits = (int((part.groupby("seed")["diff_p_adj_vs_baseline"].min() <= 0.05).sum())
                if "diff_p_adj_vs_baseline" in part else 0)
        sign = "what it buys" if ablation else "the change"
        out.append(f"{what}: {sign} = {mean:+.3f} disease R² (mean of the three patterns, "
                   f"{_seeds_interval(len(seeds), low, high)}) — "
                   f"{verdict(low, high, 'helps' if ablation else 'better than the baseline', 'hurts' if ablation else 'worse than the baseline')}; "
                   f"fold-paired tests found a difference on {hits} of {len(seeds)} seed(s)")
    for ref in ("random-init", "densitometry"):
        if ref == "densitometry":
            ref_rows = tidy[(tidy["variant"] == "densitometry") & tidy["target"].isin(disease)]
            ref_value = float(ref_rows["r2"].mean())
            d = base - ref_value
            label = "zone densitometry"
        else:
            ref_seed = per_seed.loc["random-init"] if "random-init" in per_seed.index.get_level_values(0) else None
            if ref_seed is None:
                continue
            seeds = ref_seed.index.intersection(base.index)
            d = base[seeds] - ref_seed[seeds]
            label = "the random-init encoder"
        mean, low, high = seed_paired_interval(d.to_numpy())
        out.append(f"baseline − {label} = {mean:+.3f} disease R² "
                   f"({_seeds_interval(len(d), low, high)}) — "
                   f"{verdict(low, high, 'the baseline is better', f'{label} is better')}")
    return out
