"""Phenotype probes: how well a feature set predicts each clinical target, next to chance
and a permutation null.

:func:`evaluate_phenotypes` fits one scikit-learn pipeline per (feature set, target) under
repeated cross-validation and returns one tidy row per pair:

* continuous targets (FEV1 % predicted, FEV1/FVC, %LAA-950, …):
  ``StandardScaler → [PCA] → RidgeCV`` (alpha chosen inside each training fold by RidgeCV's
  efficient leave-one-out), scored by ``r2`` and ``mae``;
* categorical targets (GOLD stage, visual CLE/PSE scores, mMRC, …):
  ``StandardScaler → [PCA] → LogisticRegressionCV`` (C chosen by an inner stratified CV in
  each training fold), scored by ``accuracy``, ``macro_f1`` and ``auc`` (binary ROC AUC, or
  the one-vs-rest macro AUC for more than two classes).

Everything that learns from data (scaling, PCA, the penalty) is fitted inside the training
folds (a Pipeline under ``RepeatedKFold`` / ``RepeatedStratifiedKFold``), so test subjects
never inform their own prediction.

How the numbers are made
    * Point estimate: each repeat gives out-of-fold predictions for every subject; the metric
      is computed on them, then averaged over repeats.
    * 95 % CI (``*_ci_low``, ``*_ci_high``): percentile bootstrap over subjects of those
      out-of-fold predictions (the same resampled subjects in every repeat, the metric
      averaged over repeats). It covers the test-set sampling variation of the estimate, not
      the variation from training on another sample of the same size.
    * Chance (``*_chance``): R² 0 and the MAE of predicting the training-fold mean (a
      DummyRegressor through the same folds); majority-class accuracy, the macro F1 of a
      guess that follows the class frequencies (1 / number of classes), AUC 0.5.
    * Null (``*_null_mean``, ``*_null_p95`` — for MAE ``mae_null_p05``, lower being better —
      and ``*_p``): the target is permuted ``n_permutations`` times and one repeat of the
      same cross-validation (re-stratified on the permuted labels) rerun with the same
      pipeline, as ``sklearn.model_selection.permutation_test_score`` does; ``p`` is
      (1 + #null ≥ observed) / (1 + n_permutations). The observed value is the mean over
      repeats, whose spread is smaller than a single repeat's, so the p-value errs on the
      conservative side. The null is made through the same out-of-fold scheme, so it also
      carries that scheme's small pessimistic bias (on pure noise, out-of-fold R² and AUC sit
      slightly below 0 and 0.5): compare a number with its null, not only with chance.

Cost: each permutation refits the pipeline once per fold; the logistic regression's inner
CV makes a categorical target about 0.2 s a fit on a CPU, so 100 permutations × 5 folds
take about 100 s per (feature set, target). Pass ``n_permutations=20`` for a quick look.
BLAS threads are limited to one inside the loops: the matrices are small and competing
threads only slow them down.
    * ``verdict``: "better than null (p=…)" when the primary metric's p ≤ ``alpha``,
      otherwise "no evidence (p=…)": a number inside its null band is not a finding.

Example:
    >>> import numpy as np, pandas as pd
    >>> rng = np.random.default_rng(0)
    >>> ids = [f"s{i:03d}" for i in range(80)]
    >>> X = pd.DataFrame(rng.normal(size=(80, 5)), index=ids)
    >>> labels = pd.DataFrame({"fev1_pp": 80 + 10 * X[0] + rng.normal(size=80),
    ...                        "noise": rng.normal(size=80)}, index=ids)
    >>> table = evaluate_phenotypes(X, labels, n_repeats=2, n_permutations=19,
    ...                             n_bootstrap=50)
    >>> table[["target", "kind", "n"]].values.tolist()
    [['fev1_pp', 'continuous', 80], ['noise', 'continuous', 80]]
    >>> bool(table.loc[0, "r2"] > 0.9), table.loc[0, "verdict"].startswith("better")
    (True, True)
"""

from __future__ import annotations

import warnings
from typing import Any, Literal, Mapping, Sequence

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits

from ._common import (align, as_feature_sets, drop_incomplete_features, permutation_p_value,
                      verdict)

__all__ = ["CATEGORICAL_METRICS", "CONTINUOUS_METRICS", "NotEnoughData",
           "evaluate_phenotypes", "infer_target_kind", "make_probe"]

TargetKind = Literal["continuous", "categorical"]
CONTINUOUS_METRICS = ("r2", "mae")
CATEGORICAL_METRICS = ("accuracy", "macro_f1", "auc")
PRIMARY_METRIC = {"continuous": "r2", "categorical": "auc"}
LOWER_IS_BETTER = {"mae"}
MIN_CLASS_SIZE = 3  # a class needs this many subjects to be stratified at all
DEFAULT_ALPHAS = np.logspace(-3, 5, 17)
DEFAULT_CS = np.logspace(-3, 1, 5)


class NotEnoughData(ValueError):
    """A target with too few subjects or classes to cross-validate (its row says why)."""


def infer_target_kind(values: pd.Series | np.ndarray, max_levels: int = 10) -> TargetKind:
    """``"categorical"`` for labels with few levels, else ``"continuous"``.

    Booleans, strings, pandas categoricals and whole numbers with at most ``max_levels``
    distinct values (GOLD 0–4, CLE 0–5, mMRC 0–4) are categorical; everything else
    (FEV1 % predicted, FEV1/FVC, %LAA-950) is continuous.

    Example:
        >>> infer_target_kind(pd.Series([0, 1, 2, 1, 4])), infer_target_kind([0.61, 0.72, 0.5])
        ('categorical', 'continuous')
    """
    s = pd.Series(values).dropna()
    if s.dtype == bool or isinstance(s.dtype, pd.CategoricalDtype) or s.dtype == object:
        return "categorical"
    as_float = s.astype(np.float64)
    whole = bool(np.all(np.isclose(as_float, np.round(as_float))))
    return "categorical" if whole and s.nunique() <= max_levels else "continuous"


def make_probe(kind: TargetKind, pca: int | float | None = None, *,
               preprocessing: Sequence[tuple[str, Any]] = (), inner_cv: int = 3,
               alphas: Sequence[float] = DEFAULT_ALPHAS, Cs: Sequence[float] = DEFAULT_CS,
               seed: int = 0):
    """The probe pipeline for a target kind (unfitted).

    ``StandardScaler → preprocessing steps → [PCA(pca)] → RidgeCV`` for continuous targets,
    ``… → LogisticRegressionCV`` (L2, inner stratified ``inner_cv``-fold CV on C, log-loss)
    for categorical ones. ``preprocessing`` adds (name, transformer) steps after scaling.

    Example:
        >>> make_probe("continuous", pca=10).steps[-1][0]
        'ridgecv'
    """
    from sklearn.base import clone
    from sklearn.decomposition import PCA
    from sklearn.linear_model import LogisticRegressionCV, RidgeCV
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    steps: list[tuple[str, Any]] = [("standardscaler", StandardScaler())]
    steps += [(name, clone(step)) for name, step in preprocessing]
    if pca is not None:
        steps.append(("pca", PCA(n_components=pca, random_state=seed)))
    if kind == "continuous":
        steps.append(("ridgecv", RidgeCV(alphas=np.asarray(alphas, dtype=np.float64))))
    elif kind == "categorical":
        steps.append(("logisticregressioncv", LogisticRegressionCV(
            Cs=np.asarray(Cs, dtype=np.float64), l1_ratios=(0.0,), cv=inner_cv,
            scoring="neg_log_loss", max_iter=2000, use_legacy_attributes=False)))
    else:
        raise ValueError(f"target kind must be 'continuous' or 'categorical', got {kind!r}")
    return Pipeline(steps)


# ----------------------------------------------------------------------------- metrics
def _metrics(kind: TargetKind, y: np.ndarray, pred: np.ndarray, classes: np.ndarray | None
             ) -> dict[str, float]:
    """Metrics of one set of out-of-fold predictions (``pred``: values or probabilities)."""
    from sklearn.metrics import (accuracy_score, f1_score, mean_absolute_error, r2_score,
                                 roc_auc_score)

    if kind == "continuous":
        return {"r2": float(r2_score(y, pred)), "mae": float(mean_absolute_error(y, pred))}
    assert classes is not None
    labels = classes[np.argmax(pred, axis=1)]
    out = {"accuracy": float(accuracy_score(y, labels)),
           "macro_f1": float(f1_score(y, labels, average="macro", labels=classes,
                                      zero_division=0))}
    present = np.unique(y)
    if len(present) < len(classes) or len(present) < 2:
        out["auc"] = float("nan")  # a bootstrap sample without some class
    elif len(classes) == 2:
        out["auc"] = float(roc_auc_score(y == classes[1], pred[:, 1]))
    else:
        out["auc"] = float(roc_auc_score(y, pred, multi_class="ovr", average="macro",
                                         labels=classes))
    return out


def _oof_predictions(model, X: np.ndarray, y: np.ndarray, splits: list, kind: TargetKind,
                     n_classes: int) -> np.ndarray:
    """Out-of-fold predictions of one repeat (values, or class probabilities)."""
    from sklearn.base import clone

    out = (np.zeros(len(y)) if kind == "continuous" else np.zeros((len(y), n_classes)))
    for train, test in splits:
        fitted = clone(model).fit(X[train], y[train])
        out[test] = fitted.predict(X[test]) if kind == "continuous" \
            else fitted.predict_proba(X[test])
    return out


def _chance(kind: TargetKind, y: np.ndarray, repeats: list[list], classes) -> dict[str, float]:
    if kind == "continuous":
        mae = []
        for splits in repeats:  # the MAE of the training-fold mean, as DummyRegressor gives
            pred = np.zeros(len(y))
            for train, test in splits:
                pred[test] = y[train].mean()
            mae.append(np.mean(np.abs(y - pred)))
        return {"r2": 0.0, "mae": float(np.mean(mae))}
    freq = pd.Series(y).value_counts(normalize=True)
    return {"accuracy": float(freq.max()), "macro_f1": 1.0 / len(classes), "auc": 0.5}


def _prepare_categorical(y: pd.Series, target: str, cv: int, set_name: str
                         ) -> tuple[pd.Series, int]:
    """Drop classes too rare to stratify and reduce the folds to the rarest class's size."""
    counts = y.value_counts()
    rare = counts[counts < MIN_CLASS_SIZE]
    if len(rare):
        warnings.warn(f"target {target!r} ({set_name}): classes {rare.index.tolist()} have fewer "
                      f"than {MIN_CLASS_SIZE} subjects ({rare.tolist()}) and are left out",
                      stacklevel=4)
        y = y[~y.isin(rare.index)]
        counts = counts.drop(rare.index)
    if len(counts) < 2:
        raise NotEnoughData(f"target {target!r}: fewer than two classes with at least "
                         f"{MIN_CLASS_SIZE} subjects ({counts.to_dict()}); it cannot be probed")
    folds = int(min(cv, counts.min()))
    if folds < cv:
        warnings.warn(f"target {target!r} ({set_name}): the rarest class has {counts.min()} "
                      f"subjects, so {folds}-fold instead of {cv}-fold cross-validation",
                      stacklevel=4)
    return y, folds


def _splits(kind: TargetKind, y: np.ndarray, folds: int, n_repeats: int, seed: int) -> list:
    from sklearn.model_selection import RepeatedKFold, RepeatedStratifiedKFold

    cls = RepeatedStratifiedKFold if kind == "categorical" else RepeatedKFold
    splitter = cls(n_splits=folds, n_repeats=n_repeats, random_state=seed)
    all_splits = list(splitter.split(np.zeros(len(y)), y))
    return [all_splits[r * folds:(r + 1) * folds] for r in range(n_repeats)]


def _inner_cv(kind: TargetKind, y: np.ndarray, repeats: list, inner_cv: int) -> int:
    if kind != "categorical":
        return inner_cv
    smallest = min(pd.Series(y[train]).value_counts().min()
                   for splits in repeats for train, _ in splits)
    return int(max(2, min(inner_cv, smallest)))


def _pca_size(pca: int | float | None, n_train: int, n_features: int) -> int | float | None:
    if pca is None or isinstance(pca, float) and pca < 1:
        return pca
    limit = min(n_train, n_features)
    if int(pca) > limit:
        warnings.warn(f"pca={pca} components is more than the smallest training fold allows "
                      f"({limit}); using {limit}", stacklevel=4)
        return limit
    return int(pca)


# ----------------------------------------------------------------------------- main
def evaluate_phenotypes(
    features: Any,
    labels: pd.DataFrame,
    targets: Sequence[str] | None = None,
    *,
    kinds: Mapping[str, TargetKind] | None = None,
    cv: int = 5,
    n_repeats: int = 5,
    seed: int = 0,
    n_permutations: int = 100,
    n_bootstrap: int = 500,
    pca: int | float | None = None,
    alpha: float = 0.05,
    inner_cv: int = 3,
    preprocessing: Sequence[tuple[str, Any]] = (),
    max_levels: int = 10,
) -> pd.DataFrame:
    """Cross-validated probes of clinical targets from feature sets (see module docstring).

    Args:
        features: one feature set (DataFrame indexed by subject id, ``Embeddings`` — mean
            pooled —, or an ``(N, D)`` array in the order of ``labels``) or a dict
            ``name → feature set``; a comparison table is one call.
        labels: DataFrame indexed by subject id, one column per target. Rows are matched
            to features by id; subjects with a missing target are left out for that target.
        targets: columns of ``labels`` to probe (default: every numeric/categorical column).
        kinds: override of the inferred kind per target (``"continuous"``/``"categorical"``).
        cv: folds (reduced, with a warning, when a class is rarer than that).
        n_repeats: repeats of the K-fold split (each with a new shuffle).
        seed: seeds the splits, the bootstrap and the permutations.
        n_permutations: permutations for the null (0: no null; ``verdict`` says so).
        n_bootstrap: bootstrap resamples for the CIs (0: no CIs).
        pca: PCA components (int) or variance kept (float < 1), fitted in each training fold.
        alpha: p-value threshold of the ``verdict``.
        inner_cv: inner folds for the logistic regression's C.
        preprocessing: extra ``(name, transformer)`` steps after the scaler (fitted in folds).
        max_levels: whole-number targets with at most this many levels are categorical.

    Returns:
        One row per (feature set, target): ``feature_set, target, kind, n, n_dropped,
        n_features, cv, n_repeats, primary_metric``, then for each metric ``m`` of the kind
        ``m, m_ci_low, m_ci_high, m_chance, m_null_mean, m_null_p95 (mae: mae_null_p05),
        m_p``, then ``ci_method`` and ``verdict``. Metrics of the other kind are NaN. A
        target with too few subjects or classes to cross-validate gets a row whose
        ``verdict`` starts with "not evaluated:" and says why (and a warning).
    """
    if not isinstance(labels, pd.DataFrame):
        raise TypeError("labels must be a pandas DataFrame indexed by subject id "
                        "(e.g. manifest.labels())")
    labels = labels.copy()
    labels.index = labels.index.astype(str)
    if targets is None:
        targets = [c for c in labels.columns
                   if pd.api.types.is_numeric_dtype(labels[c]) or labels[c].dtype == bool
                   or isinstance(labels[c].dtype, pd.CategoricalDtype)]
    else:
        targets = [targets] if isinstance(targets, str) else list(targets)
        missing = [t for t in targets if t not in labels.columns]
        if missing:
            raise KeyError(f"target column(s) {missing} are not in the labels; available "
                           f"columns: {labels.columns.tolist()}")
    kinds = dict(kinds or {})
    unknown = set(kinds) - set(targets)
    if unknown:
        raise KeyError(f"kinds names {sorted(unknown)}, which are not among the targets "
                       f"{list(targets)}")
    sets = as_feature_sets(features, labels.index)
    rng = np.random.default_rng(seed)
    rows = []
    for set_name, frame in sets.items():
        frame, set_labels = align(drop_incomplete_features(frame, set_name), labels, set_name)
        for target in targets:
            kind = kinds.get(target) or infer_target_kind(set_labels[target], max_levels)
            try:
                rows.append(_evaluate_one(
                    frame, set_labels[target], set_name, target, kind, cv=cv,
                    n_repeats=n_repeats, seed=seed, n_permutations=n_permutations,
                    n_bootstrap=n_bootstrap, pca=pca, alpha=alpha, inner_cv=inner_cv,
                    preprocessing=preprocessing, rng=rng))
            except NotEnoughData as exc:  # one thin target never sinks the whole table
                warnings.warn(f"not evaluated: {exc}", stacklevel=2)
                rows.append({"feature_set": set_name, "target": target, "kind": kind,
                             "n": int(set_labels[target].notna().sum()),
                             "n_features": int(frame.shape[1]),
                             "verdict": f"not evaluated: {exc}"})
    return pd.DataFrame(rows)


def _evaluate_one(frame: pd.DataFrame, y_all: pd.Series, set_name: str, target: str,
                  kind: TargetKind, *, cv: int, n_repeats: int, seed: int, n_permutations: int,
                  n_bootstrap: int, pca, alpha: float, inner_cv: int, preprocessing,
                  rng: np.random.Generator) -> dict[str, Any]:
    y_series = y_all.dropna()
    n_dropped = int(len(y_all) - len(y_series))
    if n_dropped:
        warnings.warn(f"target {target!r} ({set_name}): {n_dropped} subjects have no value "
                      "and are left out", stacklevel=3)
    folds = cv
    if kind == "categorical":
        before = len(y_series)
        y_series, folds = _prepare_categorical(y_series, target, cv, set_name)
        n_dropped += before - len(y_series)
    elif kind != "continuous":
        raise ValueError(f"kind of target {target!r} must be 'continuous' or 'categorical', "
                         f"got {kind!r}")
    else:
        y_series = y_series.astype(np.float64)
    if len(y_series) < 2 * folds:
        raise NotEnoughData(f"target {target!r} ({set_name}): only {len(y_series)} subjects with "
                         f"a value; {folds}-fold cross-validation needs at least {2 * folds}")
    X = frame.loc[y_series.index].to_numpy(np.float64)
    y = y_series.to_numpy()
    classes = np.unique(y) if kind == "categorical" else None
    n_classes = 0 if classes is None else len(classes)
    repeats = _splits(kind, y, folds, n_repeats, seed)
    n_train_min = min(len(train) for splits in repeats for train, _ in splits)
    model = make_probe(kind, _pca_size(pca, n_train_min, X.shape[1]),
                       preprocessing=preprocessing,
                       inner_cv=_inner_cv(kind, y, repeats, inner_cv), seed=seed)
    metric_names = CONTINUOUS_METRICS if kind == "continuous" else CATEGORICAL_METRICS

    with warnings.catch_warnings(), threadpool_limits(limits=1):
        # LogisticRegressionCV warns once per inner fold when it stops at max_iter on
        # barely separable noise; the verdict, not that warning, is what a user needs.
        warnings.filterwarnings("ignore", message=".*lbfgs failed to converge.*")
        warnings.filterwarnings("ignore", category=UserWarning,
                                message=".*least populated class.*")
        oof = [_oof_predictions(model, X, y, splits, kind, n_classes) for splits in repeats]
        per_repeat = [_metrics(kind, y, pred, classes) for pred in oof]
        null = []
        for i in range(int(n_permutations)):
            y_perm = rng.permutation(y)
            splits = _splits(kind, y_perm, folds, 1, seed + 1 + i)[0]
            pred = _oof_predictions(model, X, y_perm, splits, kind, n_classes)
            null.append(_metrics(kind, y_perm, pred, classes))

    row: dict[str, Any] = {"feature_set": set_name, "target": target, "kind": kind,
                           "n": int(len(y)), "n_dropped": n_dropped,
                           "n_features": int(X.shape[1]), "cv": int(folds),
                           "n_repeats": int(n_repeats), "primary_metric": PRIMARY_METRIC[kind]}
    boot = _bootstrap(kind, y, oof, classes, n_bootstrap, rng)
    chance = _chance(kind, y, repeats, classes)
    for m in metric_names:
        value = float(np.nanmean([r[m] for r in per_repeat]))
        row[m] = value
        row[f"{m}_ci_low"], row[f"{m}_ci_high"] = (
            (float(np.nanpercentile(boot[m], 2.5)), float(np.nanpercentile(boot[m], 97.5)))
            if len(boot[m]) and np.isfinite(boot[m]).any() else (np.nan, np.nan))
        row[f"{m}_chance"] = chance[m]
        values = np.array([r[m] for r in null], dtype=np.float64)
        finite = values[np.isfinite(values)]
        lower = m in LOWER_IS_BETTER
        row[f"{m}_null_mean"] = float(finite.mean()) if len(finite) else np.nan
        row[f"{m}_null_p05" if lower else f"{m}_null_p95"] = (
            float(np.percentile(finite, 5 if lower else 95)) if len(finite) else np.nan)
        row[f"{m}_p"] = permutation_p_value(value, values, greater_is_better=not lower)
    row["ci_method"] = (f"bootstrap of out-of-fold predictions ({n_bootstrap} resamples)"
                        if n_bootstrap else "none")
    row["verdict"] = verdict(row[f"{PRIMARY_METRIC[kind]}_p"], alpha, int(n_permutations))
    return row


def _bootstrap(kind: TargetKind, y: np.ndarray, oof: list[np.ndarray], classes,
               n_bootstrap: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    names = CONTINUOUS_METRICS if kind == "continuous" else CATEGORICAL_METRICS
    out: dict[str, list[float]] = {m: [] for m in names}
    for _ in range(int(n_bootstrap)):
        idx = rng.integers(0, len(y), len(y))
        if kind == "categorical" and len(np.unique(y[idx])) < 2:
            continue
        per = [_metrics(kind, y[idx], pred[idx], classes) for pred in oof]
        for m in names:
            vals = [p[m] for p in per if np.isfinite(p[m])]
            out[m].append(float(np.mean(vals)) if vals else np.nan)
    return {m: np.asarray(v, dtype=np.float64) for m, v in out.items()}
