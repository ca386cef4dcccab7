"""Dense emphysema: which patches hold which emphysema pattern, predicted from patch embeddings.

Per patch (subject × landmark) a class — none, centrilobular, paraseptal, panlobular — and
an extent (the share of the patch's lung that is emphysematous). The truth comes from the
synthetic cohort's disease maps (:func:`synthetic_patch_truth`) or from any per-patch label
table (:func:`patch_truth_from_table`). Probes are cross-validated **by subject**: patches of
one subject are never split between training and test folds (neighbouring patches of one
lung overlap and share a scanner, so a patch-wise split would leak). Confidence intervals
resample subjects, for the same reason.

Example:
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> labels = rng.integers(0, 2, (8, 10))
    >>> truth = PatchTruth([f"s{i}" for i in range(8)], labels, labels * 0.5)
    >>> features = labels[..., None] + rng.normal(0, 0.3, (8, 10, 4))
    >>> result = evaluate_dense(features, truth, cv=4, n_boot=50)
    >>> float(result.metrics.query("metric == 'balanced_accuracy'").value.iloc[0]) > 0.8
    True
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from drasclr_toolkit.errors import InputError

__all__ = ["DISEASE_CLASSES", "DenseResult", "PatchTruth", "evaluate_dense", "patch_centres",
           "patch_truth_from_table", "synthetic_patch_truth"]

# Class index → name; the synthetic disease maps use 1, 2, 3 for these patterns (4, airway
# wall thickening, is not emphysema and counts as "none" here).
DISEASE_CLASSES: tuple[str, ...] = ("none", "centrilobular", "paraseptal", "panlobular")
_SYNTHETIC_LABEL_OF_CLASS = {1: 1, 2: 2, 3: 3}


@dataclass
class PatchTruth:
    """Per-patch truth of a cohort, aligned with an embeddings' subjects and landmarks.

    Attributes:
        subject_ids: N ids.
        label: ``(N, L)`` int class index into ``classes``; -1 where unknown (no lung in
            the patch, a missing landmark, a failed subject).
        extent: ``(N, L)`` float share of the patch's lung that is emphysema; NaN unknown.
        classes: class names.
    """

    subject_ids: list[str]
    label: np.ndarray
    extent: np.ndarray
    classes: tuple[str, ...] = DISEASE_CLASSES
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.subject_ids = [str(s) for s in self.subject_ids]
        self.label = np.asarray(self.label, dtype=np.int64)
        self.extent = np.asarray(self.extent, dtype=np.float64)
        if self.label.shape != self.extent.shape or self.label.ndim != 2:
            raise InputError(f"label {self.label.shape} and extent {self.extent.shape} must be "
                             "the same (N, L) shape")
        if len(self.subject_ids) != self.label.shape[0]:
            raise InputError(f"{len(self.subject_ids)} subject ids for {self.label.shape[0]} rows")

    def align(self, subject_ids: Sequence[str]) -> "PatchTruth":
        """The rows of ``subject_ids`` in that order (unknown subjects get -1 / NaN)."""
        index = {s: i for i, s in enumerate(self.subject_ids)}
        rows = [index.get(str(s), -1) for s in subject_ids]
        label = np.full((len(rows), self.label.shape[1]), -1, np.int64)
        extent = np.full(label.shape, np.nan)
        for out, row in enumerate(rows):
            if row >= 0:
                label[out], extent[out] = self.label[row], self.extent[row]
        return PatchTruth(list(subject_ids), label, extent, self.classes, dict(self.info))

    def counts(self) -> pd.Series:
        """Patches per class (unknown left out)."""
        known = self.label[self.label >= 0]
        return pd.Series(np.bincount(known, minlength=len(self.classes)), index=self.classes,
                         name="patches")


def _record_centres(record: Mapping[str, Any]) -> np.ndarray:
    centres = record.get("centres_mm")
    if isinstance(centres, str):
        centres = json.loads(centres)
    return np.asarray(centres, dtype=np.float64).reshape(-1, 3)


def patch_centres(store: Any, subject: str | int) -> np.ndarray:
    """``(L, 3)`` patch centres of one subject in its scan's LPS millimetres (from the patch
    store's record), e.g. for :func:`~drasclr_toolkit.viz.dense.dense_slice_figure`."""
    return _record_centres(store.subject_record(subject))


def synthetic_patch_truth(store: Any, cohort_dir: str | Path, min_extent: float = 0.05,
                          spacing: float | None = None) -> PatchTruth:
    """Per-patch truth from the synthetic cohort's disease and lung maps.

    Each landmark's patch is the cube of ``patch_size × spacing`` mm around its mapped
    centre (the subject record's ``centres_mm``, LPS). Its extent is the share of true lung
    voxels inside carrying an emphysema label; its class is the most frequent pattern when
    the extent reaches ``min_extent``, else "none". Patches without lung are unknown (-1).

    Args:
        store: the cohort's PatchStore (records with ``centres_mm``; ``patch_size``).
        cohort_dir: the synthetic cohort folder (``ground_truth/<id>_disease.nii.gz`` and
            ``<id>_lungs.nii.gz``).
        spacing: preprocessing voxel size in mm (default: read from the store's
            ``config.json`` beside it, else 1 mm).
    """
    import SimpleITK as sitk

    cohort_dir = Path(cohort_dir)
    size = int(store.patch_size)
    if spacing is None:
        config = Path(store.path) / "config.json"
        spacing = json.loads(config.read_text())["spacing"] if config.exists() else 1.0
    half = size * float(spacing) / 2.0
    ids = list(store.subject_ids)
    n_loc = int(store.n_landmarks)
    label = np.full((len(ids), n_loc), -1, np.int64)
    extent = np.full((len(ids), n_loc), np.nan)
    for row, sid in enumerate(ids):
        disease_path = cohort_dir / "ground_truth" / f"{sid}_disease.nii.gz"
        lungs_path = cohort_dir / "ground_truth" / f"{sid}_lungs.nii.gz"
        if not disease_path.exists() or not lungs_path.exists():
            warnings.warn(f"subject {sid}: no ground-truth maps in {cohort_dir / 'ground_truth'};"
                          " its patches are left unknown", stacklevel=2)
            continue
        disease_img = sitk.DICOMOrient(sitk.ReadImage(str(disease_path)), "LPS")
        lungs = sitk.GetArrayFromImage(sitk.DICOMOrient(sitk.ReadImage(str(lungs_path)), "LPS")) > 0
        disease = sitk.GetArrayFromImage(disease_img)
        centres = _record_centres(store.subject_record(sid))
        in_scan = store.subject_record(sid).get("in_scan")
        if isinstance(in_scan, str):
            in_scan = json.loads(in_scan)
        for loc, centre in enumerate(centres[:n_loc]):
            if in_scan is not None and not in_scan[loc]:
                continue
            corners = np.array([[centre[0] + dx, centre[1] + dy, centre[2] + dz]
                                for dx in (-half, half) for dy in (-half, half)
                                for dz in (-half, half)])
            index = np.array([disease_img.TransformPhysicalPointToContinuousIndex(tuple(c))
                              for c in corners])
            lo = np.clip(np.ceil(index.min(axis=0) - 0.5).astype(int), 0, None)
            hi = np.minimum(np.floor(index.max(axis=0) + 0.5).astype(int),
                            np.array(disease.shape[::-1]))
            if np.any(hi <= lo):
                continue
            block = (slice(lo[2], hi[2]), slice(lo[1], hi[1]), slice(lo[0], hi[0]))
            lung = lungs[block]
            if not lung.any():
                continue
            values = disease[block][lung]
            fractions = np.array([np.mean(values == v) for v in _SYNTHETIC_LABEL_OF_CLASS.values()])
            extent[row, loc] = float(fractions.sum())
            label[row, loc] = int(np.argmax(fractions)) + 1 if fractions.sum() >= min_extent else 0
    return PatchTruth(ids, label, extent, DISEASE_CLASSES,
                      {"source": "synthetic disease maps", "min_extent": min_extent,
                       "patch_mm": 2 * half})


def patch_truth_from_table(table: pd.DataFrame, subject_ids: Sequence[str], n_landmarks: int,
                           classes: Sequence[str] = DISEASE_CLASSES) -> PatchTruth:
    """Per-patch truth from a long table with columns ``subject_id``, ``landmark``,
    ``label`` (a class name or index) and optionally ``extent``.

    Example:
        >>> t = pd.DataFrame({"subject_id": ["a", "a"], "landmark": [0, 2],
        ...                   "label": ["paraseptal", "none"]})
        >>> patch_truth_from_table(t, ["a"], 3).label.tolist()
        [[2, -1, 0]]
    """
    missing = {"subject_id", "landmark", "label"} - set(table.columns)
    if missing:
        raise InputError(f"per-patch label table: columns {sorted(missing)} are missing; it "
                         "needs subject_id, landmark, label (and optionally extent)")
    classes = tuple(classes)
    index = {str(s): i for i, s in enumerate(subject_ids)}
    label = np.full((len(index), n_landmarks), -1, np.int64)
    extent = np.full(label.shape, np.nan)
    for row_number, row in enumerate(table.itertuples(index=False), start=2):
        sid = str(row.subject_id)
        if sid not in index:
            continue
        landmark = int(row.landmark)
        if not 0 <= landmark < n_landmarks:
            raise InputError(f"per-patch label table, line {row_number}: landmark {landmark} "
                             f"outside 0..{n_landmarks - 1} (subject {sid})")
        value = row.label
        if isinstance(value, str):
            if value not in classes:
                raise InputError(f"per-patch label table, line {row_number}: label {value!r} "
                                 f"(subject {sid}) is not one of {list(classes)}")
            value = classes.index(value)
        label[index[sid], landmark] = int(value)
        if "extent" in table.columns:
            extent[index[sid], landmark] = float(getattr(row, "extent"))
    return PatchTruth(list(index), label, extent, classes, {"source": "table"})


@dataclass
class DenseResult:
    """What :func:`evaluate_dense` measured.

    Attributes:
        metrics: tidy table, one row per (features, task, metric): value, an interval from
            a subject bootstrap (``ci_method`` says what it covers), the chance reference and
            a verdict.
        predicted_label: ``{features: (N, L)}`` out-of-fold class (-1 where unknown).
        predicted_extent: ``{features: (N, L)}`` out-of-fold extent (NaN where unknown).
        truth: the aligned truth.
    """

    metrics: pd.DataFrame
    predicted_label: dict[str, np.ndarray]
    predicted_extent: dict[str, np.ndarray]
    truth: PatchTruth


def _bootstrap_by_subject(metric, groups: np.ndarray, y_true: np.ndarray, y_pred: np.ndarray,
                          n_boot: int, rng: np.random.Generator) -> tuple[float, float]:
    subjects = np.unique(groups)
    rows_of = {s: np.flatnonzero(groups == s) for s in subjects}
    values = []
    for _ in range(n_boot):
        pick = rng.choice(subjects, size=len(subjects), replace=True)
        rows = np.concatenate([rows_of[s] for s in pick])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                value = metric(y_true[rows], y_pred[rows])
            except ValueError:  # e.g. one class only in this resample
                continue
        if np.isfinite(value):
            values.append(value)
    if len(values) < max(10, n_boot // 4):
        return float("nan"), float("nan")
    return float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))


#: What the dense maps' interval is: resampling subjects of fixed out-of-fold predictions
#: covers the test-set sampling only, not the variation from training on another sample (the
#: same kind of interval covered 71 % instead of 95 % for the phenotype probes; see
#: benchmarks/README.md, calibration), so its verdicts say "subject-bootstrap interval".
DENSE_CI_METHOD = ("subject-bootstrap percentile interval of fixed out-of-fold predictions "
                   "(test-set variation only; narrower than a 95 % interval for the procedure)")


def _verdict(value: float, low: float, high: float, chance: float) -> str:
    if not np.isfinite(low):
        return "not enough data for an interval"
    if low > chance:
        return "above chance (subject-bootstrap interval excludes it)"
    if high < chance:
        return "below chance (subject-bootstrap interval excludes it)"
    return "no evidence (subject-bootstrap interval includes chance)"


def _as_feature_sets(features: Any) -> dict[str, np.ndarray]:
    if isinstance(features, Mapping):
        return {str(k): np.asarray(v, dtype=np.float64) for k, v in features.items()}
    return {"features": np.asarray(features, dtype=np.float64)}


def evaluate_dense(features: Any, truth: PatchTruth, cv: int = 5, seed: int = 0,
                   n_boot: int = 200, subject_ids: Sequence[str] | None = None) -> DenseResult:
    """Per-patch emphysema class and extent from patch embeddings, cross-validated by subject.

    Args:
        features: ``(N, L, D)`` patch features (e.g. ``embeddings.patch``) or a dict
            name → such an array (a comparison in one call).
        truth: per-patch truth; aligned by ``subject_ids`` when given (e.g.
            ``embeddings.subject_ids``), else assumed in the same order.
        cv: folds of subjects (GroupKFold; at most the number of subjects).
        n_boot: subject-bootstrap resamples for the 95 % intervals.

    Returns a :class:`DenseResult`. Classification: standardise → multinomial logistic
    regression (balanced class weights); metrics balanced accuracy (chance 1 / number of
    classes present), macro F1 and accuracy (chance: the majority class share). Extent:
    standardise → RidgeCV; metrics R² (chance 0) and Spearman ρ (chance 0).
    """
    from scipy.stats import spearmanr
    from sklearn.linear_model import LogisticRegression, RidgeCV
    from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score, r2_score
    from sklearn.model_selection import GroupKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if subject_ids is not None:
        truth = truth.align(subject_ids)
    sets = _as_feature_sets(features)
    rng = np.random.default_rng(seed)
    rows: list[dict[str, Any]] = []
    predicted_label: dict[str, np.ndarray] = {}
    predicted_extent: dict[str, np.ndarray] = {}
    known = truth.label >= 0
    n, n_loc = truth.label.shape
    groups_all = np.repeat(np.arange(n), n_loc).reshape(n, n_loc)
    subjects_with_labels = np.unique(groups_all[known])
    if len(subjects_with_labels) < 2:
        raise InputError("dense evaluation needs per-patch labels for at least 2 subjects; "
                         f"found {len(subjects_with_labels)}")
    folds = min(cv, len(subjects_with_labels))
    splitter = GroupKFold(n_splits=folds)
    for name, feats in sets.items():
        if feats.shape[:2] != (n, n_loc):
            raise InputError(f"features {name!r} have shape {feats.shape}; expected "
                             f"({n}, {n_loc}, D) to match the truth")
        usable = known & np.all(np.isfinite(feats), axis=2)
        X, y = feats[usable], truth.label[usable]
        extent = truth.extent[usable]
        groups = groups_all[usable]
        oof_label = np.full(len(y), -1)
        oof_extent = np.full(len(y), np.nan)
        for train, test in splitter.split(X, y, groups):
            if len(np.unique(y[train])) > 1:
                clf = make_pipeline(StandardScaler(), LogisticRegression(
                    C=0.1, class_weight="balanced", max_iter=2000))
                clf.fit(X[train], y[train])
                oof_label[test] = clf.predict(X[test])
            else:
                oof_label[test] = y[train][0]
            fit = np.isfinite(extent[train])
            if fit.sum() > 2:
                reg = make_pipeline(StandardScaler(), RidgeCV(alphas=np.logspace(-2, 4, 13)))
                reg.fit(X[train][fit], extent[train][fit])
                oof_extent[test] = reg.predict(X[test])
        full_label = np.full((n, n_loc), -1)
        full_label[usable] = oof_label
        full_extent = np.full((n, n_loc), np.nan)
        full_extent[usable] = oof_extent
        predicted_label[name], predicted_extent[name] = full_label, full_extent

        present = np.unique(y)
        majority = float(np.max(np.bincount(y)) / len(y))
        classification = [
            ("balanced_accuracy", balanced_accuracy_score, 1.0 / len(present)),
            ("macro_f1", lambda a, b: f1_score(a, b, average="macro", labels=present), np.nan),
            ("accuracy", accuracy_score, majority),
        ]
        for metric, fn, chance in classification:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                value = float(fn(y, oof_label))
            low, high = _bootstrap_by_subject(fn, groups, y, oof_label, n_boot, rng)
            rows.append(dict(features=name, task="class", metric=metric, value=value,
                             ci_low=low, ci_high=high, chance=chance,
                             verdict=_verdict(value, low, high, chance) if np.isfinite(chance) else "",
                             n_patches=len(y), n_subjects=len(np.unique(groups))))
        ok = np.isfinite(oof_extent) & np.isfinite(extent)
        if ok.sum() > 2:
            regression = [("r2", r2_score), ("spearman", lambda a, b: spearmanr(a, b)[0])]
            for metric, fn in regression:
                value = float(fn(extent[ok], oof_extent[ok]))
                low, high = _bootstrap_by_subject(fn, groups[ok], extent[ok], oof_extent[ok],
                                                  n_boot, rng)
                rows.append(dict(features=name, task="extent", metric=metric, value=value,
                                 ci_low=low, ci_high=high, chance=0.0,
                                 verdict=_verdict(value, low, high, 0.0), n_patches=int(ok.sum()),
                                 n_subjects=len(np.unique(groups[ok]))))
    metrics = pd.DataFrame(rows)
    if not metrics.empty:
        metrics["ci_method"] = DENSE_CI_METHOD
    return DenseResult(metrics, predicted_label, predicted_extent, truth)
