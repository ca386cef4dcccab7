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

How the numbers are made (each test and interval calibrated by simulation in
``benchmarks/bench_calibration.py``; see :mod:`drasclr_toolkit.evaluate.stats`)
    * Point estimate: the metric of every test fold (R² with the whole target's variance as
      denominator, so the fold mean equals the pooled out-of-fold R²), averaged over the
      ``cv × n_repeats`` folds.
    * 95 % CI (``*_ci_low``, ``*_ci_high``): the Nadeau–Bengio corrected repeated-CV t
      interval over those folds (on the logit scale for AUC, accuracy and F1, so it stays in
      [0, 1]). It is an interval for the expected performance of the procedure trained on a
      training fold's worth of subjects; its coverage is measured in the benchmark.
    * Chance (``*_chance``): the same fold metrics of a predictor without information —
      the training-fold mean for R² and MAE (negative R² at small n: about -1/(n_train)),
      the training-fold majority class for accuracy, 1 / number of classes for macro F1,
      0.5 for AUC.
    * Null (``*_null_mean``, ``*_null_p95`` — for MAE ``mae_null_p05``, lower being better —
      and ``*_p``): the target is permuted ``n_permutations`` times and one repeat of the
      same cross-validation (re-stratified on the permuted labels) rerun with the same
      pipeline, as ``sklearn.model_selection.permutation_test_score`` does; ``p`` is
      (1 + #null ≥ observed) / (1 + n_permutations). The observed value is the mean over
      repeats, whose spread is smaller than a single repeat's, so the test errs on the
      conservative side (its type-I error is measured in the benchmark). The permutations
      come from one random stream per target, shared by the feature sets.
    * Paired subjects: every feature set is scored on the subjects all sets share, through
      the same folds (``splits_id``), and keeps its per-fold values (``fold_values``) so
      :func:`~drasclr_toolkit.evaluate.compare.comparison_text` can compare two sets with a
      paired corrected t-test instead of by the overlap of their intervals.
    * ``p_adj``, ``n_tests``: Holm's correction over the table's tests.
    * ``verdict`` / ``evidence``: "evidence" needs ``p_adj ≤ alpha`` **and** a 95 % CI above
      chance (for R² above max(chance, 0)); a significant p whose value is not above chance
      reads "association, no predictive gain"; ``caution`` carries small-sample notes.

Cost: each permutation refits the pipeline once per fold; the logistic regression's inner
CV makes a categorical target about 0.04 s a fit on a CPU, so 1,000 permutations × 5 folds
take a few minutes per (feature set, target). BLAS threads are limited to one inside the
loops: the matrices are small and competing threads only slow them down.

Example:
    >>> import numpy as np, pandas as pd
    >>> rng = np.random.default_rng(0)
    >>> ids = [f"s{i:03d}" for i in range(80)]
    >>> X = pd.DataFrame(rng.normal(size=(80, 5)), index=ids)
    >>> labels = pd.DataFrame({"fev1_pp": 80 + 10 * X[0] + rng.normal(size=80),
    ...                        "noise": rng.normal(size=80)}, index=ids)
    >>> table = evaluate_phenotypes(X, labels, n_repeats=2, n_permutations=39)
    >>> table[["target", "kind", "n"]].values.tolist()
    [['fev1_pp', 'continuous', 80], ['noise', 'continuous', 80]]
    >>> bool(table.loc[0, "r2"] > 0.9), table.loc[0, "verdict"].startswith("evidence")
    (True, True)
    >>> bool(table.loc[1, "evidence"])
    False
"""

from __future__ import annotations

import warnings
from typing import Any, Literal, Mapping, Sequence

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits

from drasclr_toolkit.errors import InputError
from drasclr_toolkit.evaluate._common import (align, as_feature_sets, drop_incomplete_features,
                                              permutation_p_value)
from drasclr_toolkit.evaluate.stats import ALPHA, corrected_ci, small_sample_note, stream

__all__ = ["CATEGORICAL_METRICS", "CONTINUOUS_METRICS", "NotEnoughData", "ProbeDesign",
           "column_groups", "common_subjects", "evaluate_phenotypes", "infer_target_kind",
           "make_probe", "patch_probe_scores", "splits_fingerprint"]

ProbeDesign = Literal["linear", "zone_stack"]
TargetKind = Literal["continuous", "categorical"]
CONTINUOUS_METRICS = ("r2", "mae")
CATEGORICAL_METRICS = ("accuracy", "macro_f1", "auc")
PRIMARY_METRIC = {"continuous": "r2", "categorical": "auc"}
LOWER_IS_BETTER = {"mae"}
MIN_CLASS_SIZE = 3  # a class needs this many subjects to be stratified at all
DEFAULT_ALPHAS = np.logspace(-3, 5, 17)
DEFAULT_CS = np.logspace(-3, 1, 5)


class NotEnoughData(InputError):
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


def neg_log_loss(estimator, X, y) -> float:
    """The inner CV's score of a logistic probe: minus the mean log-loss of ``estimator`` on
    ``(X, y)``, probabilities clipped to [eps, 1 − eps] as scikit-learn's ``log_loss`` does.

    The same number as ``scoring="neg_log_loss"`` without its per-call input validation,
    which took about two thirds of a logistic probe's time (a probe with 19 permutations
    fits 100 inner searches of 3 folds × 10 C values); tests/test_evaluate.py checks the
    choices of C agree.
    """
    p = estimator.predict_proba(X)
    idx = np.searchsorted(estimator.classes_, y)
    eps = np.finfo(p.dtype).eps
    return float(np.mean(np.log(np.clip(p[np.arange(len(idx)), idx], eps, 1.0 - eps))))


def make_probe(kind: TargetKind, pca: int | float | None = None, *,
               preprocessing: Sequence[tuple[str, Any]] = (), inner_cv: int = 3,
               alphas: Sequence[float] = DEFAULT_ALPHAS, Cs: Sequence[float] = DEFAULT_CS,
               seed: int = 0, groups: Mapping[str, Sequence[int]] | None = None):
    """The probe pipeline for a target kind (unfitted).

    ``StandardScaler → preprocessing steps → [PCA(pca)] → RidgeCV`` for continuous targets,
    ``… → LogisticRegressionCV`` (L2, inner stratified ``inner_cv``-fold CV on C, log-loss)
    for categorical ones. ``preprocessing`` adds (name, transformer) steps after scaling.

    ``groups`` (name → column indices, e.g. the six lung zones of a ``zones`` pooling) makes
    a stacked probe that chooses among the groups inside the training data: one such
    pipeline per group on its own columns, their out-of-fold predictions (inner
    ``inner_cv``-fold, within the training set) combined by a non-negative linear
    regression (continuous) or a logistic regression on the groups' class probabilities
    (categorical) — sklearn's ``StackingRegressor`` / ``StackingClassifier``. A group that
    carries nothing gets a weight near zero, so six zones × D features need not be fitted
    at once by 30 subjects.

    Example:
        >>> make_probe("continuous", pca=10).steps[-1][0]
        'ridgecv'
        >>> type(make_probe("continuous", groups={"upper": [0, 1], "lower": [2, 3]})).__name__
        'StackingRegressor'
    """
    if groups is not None:
        return _stacked_probe(kind, pca, groups, preprocessing=preprocessing,
                              inner_cv=inner_cv, alphas=alphas, Cs=Cs, seed=seed)
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
            scoring=neg_log_loss, max_iter=2000, use_legacy_attributes=False)))
    else:
        raise InputError(f"target kind must be 'continuous' or 'categorical', got {kind!r}")
    return Pipeline(steps)


def _stacked_probe(kind: TargetKind, pca, groups: Mapping[str, Sequence[int]], *,
                   preprocessing, inner_cv: int, alphas, Cs, seed: int):
    """One :func:`make_probe` pipeline per column group, stacked (see ``make_probe``)."""
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import StackingClassifier, StackingRegressor
    from sklearn.linear_model import LinearRegression, LogisticRegression
    from sklearn.model_selection import KFold, StratifiedKFold
    from sklearn.pipeline import Pipeline

    if len(groups) < 2 or any(len(cols) == 0 for cols in groups.values()):
        raise InputError(f"a stacked probe needs at least two non-empty column groups, got "
                         f"{ {k: len(v) for k, v in groups.items()} }")
    estimators = []
    for name, cols in groups.items():
        inner = make_probe(kind, pca, preprocessing=preprocessing, inner_cv=inner_cv,
                           alphas=alphas, Cs=Cs, seed=seed)
        pick = ColumnTransformer([("columns", "passthrough", list(cols))], remainder="drop")
        estimators.append((str(name), Pipeline([("select", pick)] + inner.steps)))
    if kind == "continuous":
        return StackingRegressor(estimators, final_estimator=LinearRegression(positive=True),
                                 cv=KFold(inner_cv, shuffle=True, random_state=seed))
    return StackingClassifier(estimators, final_estimator=LogisticRegression(max_iter=2000),
                              cv=StratifiedKFold(inner_cv, shuffle=True, random_state=seed),
                              stack_method="predict_proba")


def column_groups(columns: Sequence[str], prefixes: Sequence[str]) -> dict[str, list[int]]:
    """Column indices by name prefix (``<prefix>_…``), in the order of ``prefixes``; prefixes
    with no column are left out.

    Example:
        >>> column_groups(["right_upper_h0", "right_upper_h1", "left_upper_h0"],
        ...               ["right_upper", "left_upper", "right_lower"])
        {'right_upper': [0, 1], 'left_upper': [2]}
    """
    out = {}
    for prefix in prefixes:
        cols = [i for i, c in enumerate(columns) if str(c).startswith(f"{prefix}_")]
        if cols:
            out[prefix] = cols
    return out


# ----------------------------------------------------------------------------- metrics
def _fold_metrics(kind: TargetKind, y: np.ndarray, pred: np.ndarray, classes, scale: float
                  ) -> dict[str, float]:
    """Metrics of one test fold. R² uses the variance of the whole target (``scale``) as
    denominator, so the mean over the folds of a repeat equals the pooled out-of-fold R²
    (for equal folds) instead of carrying the small-fold bias of a per-fold mean."""
    from sklearn.metrics import accuracy_score, f1_score, roc_auc_score

    if kind == "continuous":
        err = y - pred
        return {"r2": float(1.0 - np.mean(err ** 2) / scale) if scale > 0 else float("nan"),
                "mae": float(np.mean(np.abs(err)))}
    labels = classes[np.argmax(pred, axis=1)]
    out = {"accuracy": float(accuracy_score(y, labels)),
           "macro_f1": float(f1_score(y, labels, average="macro", labels=classes,
                                      zero_division=0))}
    present = np.unique(y)
    if len(present) < len(classes) or len(present) < 2:
        out["auc"] = float("nan")
    elif len(classes) == 2:
        out["auc"] = float(roc_auc_score(y == classes[1], pred[:, 1]))
    else:
        out["auc"] = float(roc_auc_score(y, pred, multi_class="ovr", average="macro",
                                         labels=classes))
    return out


def _run_folds(model, X: np.ndarray, y: np.ndarray, splits: list, kind: TargetKind,
               classes, scale: float) -> list[dict[str, float]]:
    """Fit on each training fold, score its test fold: one metrics dict per fold."""
    from sklearn.base import clone

    rows = []
    for train, test in splits:
        fitted = clone(model).fit(X[train], y[train])
        pred = (fitted.predict(X[test]) if kind == "continuous"
                else _aligned_proba(fitted, X[test], classes))
        rows.append(_fold_metrics(kind, y[test], pred, classes, scale))
    return rows


def _aligned_proba(fitted, X: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """Class probabilities in the order of ``classes`` (a training fold may miss a class)."""
    proba = fitted.predict_proba(X)
    seen = list(fitted.classes_)
    out = np.zeros((len(X), len(classes)))
    for j, c in enumerate(classes):
        if c in seen:
            out[:, j] = proba[:, seen.index(c)]
    return out


def _chance_folds(kind: TargetKind, y: np.ndarray, splits: list, classes, scale: float
                  ) -> list[dict[str, float]]:
    """The same fold metrics for a predictor without information: the training-fold mean
    (DummyRegressor) or the training-fold class frequencies (majority class for accuracy)."""
    rows = []
    for train, test in splits:
        if kind == "continuous":
            pred = np.full(len(test), y[train].mean())
        else:
            freq = np.array([(y[train] == c).mean() for c in classes])
            pred = np.tile(freq, (len(test), 1))
        row = _fold_metrics(kind, y[test], pred, classes, scale)
        if kind == "categorical":
            row["macro_f1"] = 1.0 / len(classes)  # a guess following the class frequencies
            row["auc"] = 0.5
        rows.append(row)
    return rows


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


def splits_fingerprint(ids: Sequence[str], splits: Sequence) -> str:
    """A short hash of the subjects and their folds: two rows with the same fingerprint were
    scored on the same subjects and folds, so their per-fold values can be paired."""
    import zlib

    crc = zlib.crc32("\x1f".join(map(str, ids)).encode("utf-8"))
    for train, test in splits:
        crc = zlib.crc32(np.asarray(test, dtype=np.int64).tobytes(), crc)
    return f"{crc:08x}"


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
    pca: int | float | None = None,
    alpha: float = ALPHA,
    inner_cv: int = 3,
    preprocessing: Sequence[tuple[str, Any]] = (),
    max_levels: int = 10,
    paired: bool = True,
    probe: ProbeDesign | Mapping[str, ProbeDesign] = "linear",
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
        seed: seeds the splits and the permutations (one stream per target, shared by the
            feature sets, so adding a set changes no other set's numbers).
        n_permutations: permutations for the null (0: no null; the verdict says so).
        pca: PCA components (int) or variance kept (float < 1), fitted in each training fold.
        alpha: level of the (Holm-corrected) tests behind the verdicts.
        inner_cv: inner folds for the logistic regression's C.
        preprocessing: extra ``(name, transformer)`` steps after the scaler (fitted in folds).
        max_levels: whole-number targets with at most this many levels are categorical.
        paired: score every feature set on the subjects they all share (default), so the
            sets can be compared fold by fold; ``False`` lets each set keep all its subjects
            (then :func:`~drasclr_toolkit.evaluate.compare.comparison_text` refuses to
            compare sets whose subjects differ).
        probe: ``"linear"`` (default: one ridge / logistic probe on all the columns) or
            ``"zone_stack"`` (one probe per lung zone, stacked inside the training folds:
            :func:`make_probe` with ``groups``; the set's columns must be a ``zones``
            pooling's ``<zone>_h<j>``), or a dict feature-set name → design (others linear).

    Returns:
        One row per (feature set, target): ``feature_set, target, kind, n, n_dropped,
        n_features, cv, n_repeats, primary_metric``, then for each metric ``m`` of the kind
        ``m, m_ci_low, m_ci_high, m_chance, m_null_mean, m_null_p95 (mae: mae_null_p05),
        m_p``, then ``ci_method``, ``fold_values`` (the primary metric per fold, for paired
        comparisons), ``splits_id``, ``n_train``, ``n_test``, ``probe``, ``caution`` (small-sample
        notes), ``p_adj``, ``n_tests``, ``evidence`` and ``verdict``. Metrics of the other
        kind are NaN. A target with too few subjects or classes to cross-validate gets a row
        whose ``verdict`` starts with "not evaluated:" and says why (and a warning).
    """
    from drasclr_toolkit.evaluate.compare import adjust_verdicts

    if not isinstance(labels, pd.DataFrame):
        raise TypeError("labels must be a pandas DataFrame indexed by subject id "
                        "(e.g. manifest.labels())")
    labels = labels.copy()
    labels.index = labels.index.astype(str)
    if labels.index.has_duplicates:
        dup = labels.index[labels.index.duplicated()].unique().tolist()[:5]
        raise InputError(f"labels have duplicate subject ids, e.g. {dup}; give one row per "
                         "subject")
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
    sets = {name: drop_incomplete_features(frame, name)
            for name, frame in as_feature_sets(features, labels.index).items()}
    all_labels = labels
    if paired:
        sets, labels = common_subjects(sets, labels)
    designs = ({name: probe.get(name, "linear") for name in sets}
               if isinstance(probe, Mapping) else dict.fromkeys(sets, probe))
    rows = []
    for set_name, frame in sets.items():
        frame, set_labels = align(frame, labels, set_name)
        groups = _probe_groups(designs[set_name], frame, set_name)
        for target in targets:
            kind = kinds.get(target) or infer_target_kind(set_labels[target], max_levels)
            try:
                row = _evaluate_one(
                    frame, set_labels[target], set_name, target, kind, cv=cv,
                    n_repeats=n_repeats, seed=seed, n_permutations=n_permutations, pca=pca,
                    inner_cv=inner_cv, preprocessing=preprocessing, groups=groups)
                row["probe"] = designs[set_name]
                # labelled subjects left out because a feature set lacks them
                valued = all_labels[target].notna()
                row["n_dropped"] += int((valued & ~all_labels.index.isin(set_labels.index)).sum())
                rows.append(row)
            except NotEnoughData as exc:  # one thin target never sinks the whole table
                warnings.warn(f"not evaluated: {exc}", stacklevel=2)
                rows.append({"feature_set": set_name, "target": target, "kind": kind,
                             "n": int(set_labels[target].notna().sum()),
                             "n_features": int(frame.shape[1]),
                             "verdict": f"not evaluated: {exc}"})
    table = pd.DataFrame(rows)
    return adjust_verdicts(table, alpha=alpha, n_permutations=n_permutations)


def common_subjects(sets: dict[str, pd.DataFrame], labels: pd.DataFrame
                    ) -> tuple[dict[str, pd.DataFrame], pd.DataFrame]:
    """Every feature set and the labels cut to the subjects all of them share, by id.

    A warning names how many (and which, up to five) subjects each set lacks; no subject is
    ever matched by position.
    """
    shared = labels.index
    for frame in sets.values():
        shared = shared[shared.isin(frame.index)]
    if len(shared) == 0:
        raise InputError("the feature sets and the labels share no subject id (sets: "
                         + ", ".join(f"{n}: {f.index[:3].tolist()}" for n, f in sets.items())
                         + f"; labels: {labels.index[:3].tolist()}); index all by subject id")
    lacking = {name: labels.index[~labels.index.isin(frame.index)]
               for name, frame in sets.items()}
    lacking = {k: v for k, v in lacking.items() if len(v)}
    left = labels.loc[~labels.index.isin(shared)]
    if len(left) and len(sets) > 1:
        detail = "; ".join(f"{name} lacks {len(ids)} (e.g. {ids[:5].tolist()})"
                           for name, ids in lacking.items())
        warnings.warn(f"feature sets are compared on the {len(shared)} subjects they all "
                      f"share; {len(left)} labelled subjects are left out ({detail})",
                      stacklevel=3)
    return ({name: frame.loc[frame.index.isin(shared)] for name, frame in sets.items()},
            labels.loc[shared])


def _probe_groups(design: str, frame: pd.DataFrame, set_name: str
                  ) -> dict[str, list[int]] | None:
    """The column groups a probe design needs (None for the linear probe)."""
    from drasclr_toolkit.preprocess.densitometry import ZONES

    if design == "linear":
        return None
    if design != "zone_stack":
        raise InputError(f"feature set {set_name!r}: unknown probe {design!r}; use 'linear' or "
                         "'zone_stack'")
    groups = column_groups(list(frame.columns), ZONES)
    if len(groups) < 2:
        raise InputError(f"feature set {set_name!r}: probe 'zone_stack' needs zone-pooled "
                         "columns named <zone>_h<j> (pool_embeddings(..., 'zones') or "
                         f"'zones_lung_weighted'); its columns start {list(frame.columns[:3])}")
    return groups


def _evaluate_one(frame: pd.DataFrame, y_all: pd.Series, set_name: str, target: str,
                  kind: TargetKind, *, cv: int, n_repeats: int, seed: int, n_permutations: int,
                  pca, inner_cv: int, preprocessing, groups=None) -> dict[str, Any]:
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
        raise InputError(f"kind of target {target!r} must be 'continuous' or 'categorical', "
                         f"got {kind!r}")
    else:
        y_series = y_series.astype(np.float64)
        if y_series.nunique() < 2:
            raise NotEnoughData(f"target {target!r} ({set_name}): every subject has the same "
                                f"value ({y_series.iloc[0]!r}); a constant cannot be predicted")
    if len(y_series) < 2 * folds:
        raise NotEnoughData(f"target {target!r} ({set_name}): only {len(y_series)} subjects with "
                         f"a value; {folds}-fold cross-validation needs at least {2 * folds}")
    X = frame.loc[y_series.index].to_numpy(np.float64)
    y = y_series.to_numpy()
    classes = np.unique(y) if kind == "categorical" else None
    scale = float(np.var(y)) if kind == "continuous" else 1.0
    repeats = _splits(kind, y, folds, n_repeats, seed)
    all_splits = [s for splits in repeats for s in splits]
    n_train_min = min(len(train) for train, _ in all_splits)
    model = make_probe(kind, _pca_size(pca, n_train_min, X.shape[1]),
                       preprocessing=preprocessing,
                       inner_cv=_inner_cv(kind, y, repeats, inner_cv), seed=seed,
                       groups=groups)
    metric_names = CONTINUOUS_METRICS if kind == "continuous" else CATEGORICAL_METRICS
    rng = stream(seed, "phenotype permutations", target)

    with warnings.catch_warnings(), threadpool_limits(limits=1):
        # LogisticRegressionCV warns once per inner fold when it stops at max_iter on
        # barely separable noise; the verdict, not that warning, is what a user needs.
        warnings.filterwarnings("ignore", message=".*lbfgs failed to converge.*")
        warnings.filterwarnings("ignore", category=UserWarning,
                                message=".*least populated class.*")
        fold_rows = pd.DataFrame(_run_folds(model, X, y, all_splits, kind, classes, scale))
        null = []
        for i in range(int(n_permutations)):
            y_perm = rng.permutation(y)
            splits = _splits(kind, y_perm, folds, 1, seed + 1 + i)[0]
            null.append(pd.DataFrame(
                _run_folds(model, X, y_perm, splits, kind, classes, scale)).mean())
    chance = pd.DataFrame(_chance_folds(kind, y, all_splits, classes, scale)).mean()
    null = pd.DataFrame(null)
    n_train = float(np.mean([len(tr) for tr, _ in all_splits]))
    n_test = float(np.mean([len(te) for _, te in all_splits]))
    row: dict[str, Any] = {"feature_set": set_name, "target": target, "kind": kind,
                           "n": int(len(y)), "n_dropped": n_dropped,
                           "n_features": int(X.shape[1]), "cv": int(folds),
                           "n_repeats": int(n_repeats), "n_permutations": int(n_permutations),
                           "primary_metric": PRIMARY_METRIC[kind]}
    for m in metric_names:
        values = fold_rows[m].to_numpy(np.float64)
        row[m] = float(np.nanmean(values)) if np.isfinite(values).any() else np.nan
        bounds = (None, 1.0) if m == "r2" else (0.0, None) if m == "mae" else (0.0, 1.0)
        row[f"{m}_ci_low"], row[f"{m}_ci_high"] = corrected_ci(values, n_train, n_test,
                                                               bounds=bounds)
        row[f"{m}_chance"] = float(chance[m])
        nv = null[m].to_numpy(np.float64) if m in null else np.array([])
        finite = nv[np.isfinite(nv)]
        lower = m in LOWER_IS_BETTER
        row[f"{m}_null_mean"] = float(finite.mean()) if len(finite) else np.nan
        row[f"{m}_null_p05" if lower else f"{m}_null_p95"] = (
            float(np.percentile(finite, 5 if lower else 95)) if len(finite) else np.nan)
        row[f"{m}_p"] = permutation_p_value(row[m], nv, greater_is_better=not lower)
    primary = PRIMARY_METRIC[kind]
    row["ci_method"] = ("Nadeau-Bengio corrected repeated-CV t interval over "
                        f"{len(all_splits)} folds" + (" (logit scale)" if primary != "r2" else ""))
    row["fold_values"] = tuple(float(v) for v in fold_rows[primary])
    row["splits_id"] = splits_fingerprint(y_series.index, all_splits)
    row["n_train"], row["n_test"] = n_train, n_test
    smallest = int(pd.Series(y).value_counts().min()) if kind == "categorical" else None
    row["caution"] = small_sample_note(len(y), smallest_class=smallest)
    if row["caution"]:
        warnings.warn(f"target {target!r} ({set_name}): {row['caution']}", stacklevel=3)
    return row


def patch_probe_scores(embeddings: Any, target: pd.Series, cv: int = 5, seed: int = 0
                       ) -> np.ndarray:
    """``(N, L)``: a continuous target's probe applied to each patch alone, out of fold.

    The probe (:func:`make_probe` ``"continuous"``: standardise → RidgeCV) is fitted on the
    mean-pooled embeddings of the training subjects (``min(cv, n)`` shuffled folds of the
    subjects with a finite target) and applied to every patch of the held-out subjects;
    subjects without a target get the probe fitted on all labelled ones. The pipeline is
    linear, so a subject's mean patch score over its in-scan landmarks is its out-of-fold
    prediction from mean pooling: the map shows where that prediction comes from, in the
    target's own unit. NaN where a patch is missing or outside the scan.

    Example:
        >>> from drasclr_toolkit.embed import Embeddings
        >>> rng = np.random.default_rng(0)
        >>> ids = [f"s{i}" for i in range(20)]
        >>> patch = rng.normal(size=(20, 4, 3))
        >>> emb = Embeddings(patch, ids, np.zeros((4, 3)), np.zeros((4, 3)), np.ones((20, 4)))
        >>> y = pd.Series(patch[:, :, 0].mean(1) * 10, index=ids)
        >>> scores = patch_probe_scores(emb, y)
        >>> scores.shape, bool(np.allclose(scores.mean(1), y, atol=0.5))
        ((20, 4), True)
    """
    from sklearn.base import clone
    from sklearn.model_selection import KFold

    from drasclr_toolkit.evaluate.features import pool_embeddings

    patch = np.asarray(embeddings.patch, np.float64)
    ids = [str(s) for s in embeddings.subject_ids]
    valid = np.isfinite(patch).all(axis=2)
    in_scan = getattr(embeddings, "in_scan", None)
    if in_scan is not None:
        valid &= np.asarray(in_scan, bool)
    pooled = pool_embeddings(embeddings, "mean").to_numpy(np.float64)
    y = pd.Series(target).astype(np.float64).reindex(ids).to_numpy()
    labelled = np.flatnonzero(np.isfinite(y) & np.isfinite(pooled).all(axis=1))
    if len(labelled) < 3:
        raise NotEnoughData(f"{len(labelled)} subjects with embeddings and the target "
                            f"{target.name!r}; a per-patch probe needs at least 3")
    probe = make_probe("continuous")
    scores = np.full(valid.shape, np.nan)

    def apply(model, rows) -> None:
        for row in rows:
            keep = valid[row]
            if keep.any():
                scores[row, keep] = model.predict(patch[row, keep])

    with threadpool_limits(1):
        folds = KFold(n_splits=min(cv, len(labelled)), shuffle=True, random_state=seed)
        for train, test in folds.split(labelled):
            rows = labelled[train]
            apply(clone(probe).fit(pooled[rows], y[rows]), labelled[test])
        rest = np.setdiff1d(np.arange(len(ids)), labelled)
        if len(rest):
            apply(clone(probe).fit(pooled[labelled], y[labelled]), rest)
    return scores
