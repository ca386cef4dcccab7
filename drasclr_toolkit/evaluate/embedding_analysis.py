"""What embeddings encode: rank correlations of the principal components of patient
embeddings with per-subject targets, a cross-validated ridge probe per target, how the
variance of patch embeddings splits, and the per-patch principal components and k-means
clusters that the 3D landmark views are coloured by.

Both return tidy pandas frames, so comparing a trained encoder with a random-init one (or
disease severities with a nuisance such as the scanner's noise level) is a concat and a plot.

Example:
    >>> import numpy as np, pandas as pd
    >>> rng = np.random.default_rng(0)
    >>> X = pd.DataFrame(rng.normal(size=(30, 4)), index=[f"s{i}" for i in range(30)])
    >>> y = pd.DataFrame({"signal": X[0] * 2, "noise": rng.normal(size=30)}, index=X.index)
    >>> bool(probe_scores(X, y).loc["signal", "r2"] > 0.9)
    True
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Mapping, Sequence

import numpy as np
import pandas as pd
from scipy.stats import spearmanr

from drasclr_toolkit.errors import InputError

if TYPE_CHECKING:
    from drasclr_toolkit.embed import Embeddings

__all__ = ["compare_encoders", "patch_kmeans", "patch_pca", "pc_null_band", "pc_spearman",
           "probe_scores", "variance_shares"]


def _aligned(patient: pd.DataFrame, targets: pd.DataFrame | pd.Series
             ) -> tuple[pd.DataFrame, pd.DataFrame]:
    targets = targets.to_frame() if isinstance(targets, pd.Series) else targets
    patient = patient.copy()
    patient.index = patient.index.astype(str)
    targets = targets.copy()
    targets.index = targets.index.astype(str)
    common = [i for i in patient.index if i in targets.index]
    if len(common) < 3:
        raise InputError(f"only {len(common)} subjects are in both the embeddings and the "
                         "targets; index both by subject id")
    return patient.loc[common], targets.loc[common]


def pc_spearman(patient: pd.DataFrame, targets: pd.DataFrame | pd.Series,
                n_components: int = 3) -> pd.DataFrame:
    """Spearman ρ of each principal component of the patient embeddings with each target.

    ``patient`` is ``(N, D)`` indexed by subject id (``pool_embeddings``); ``targets`` is
    indexed by subject id, one numeric column per target. PCA runs on standardised
    features. Returns columns ``component`` (``PC1`` …), ``target``, ``rho``, ``p_value``.
    A PC's sign is arbitrary, so compare ``|rho|``.
    """
    from sklearn.decomposition import PCA
    from sklearn.preprocessing import StandardScaler

    patient, targets = _aligned(patient, targets)
    X = StandardScaler().fit_transform(patient.to_numpy(np.float64))
    n_components = min(n_components, X.shape[1], len(X))
    scores = PCA(n_components=n_components).fit_transform(X)
    rows = []
    for c in range(n_components):
        for name in targets.columns:
            y = targets[name].to_numpy(np.float64)
            rho, p = spearmanr(scores[:, c], y) if np.ptp(y) > 0 else (np.nan, np.nan)
            rows.append({"component": f"PC{c + 1}", "target": name, "rho": float(rho),
                         "p_value": float(p)})
    return pd.DataFrame(rows)


def probe_scores(patient: pd.DataFrame, targets: pd.DataFrame | pd.Series, cv: int = 5,
                 seed: int = 0, alphas: Sequence[float] = tuple(np.logspace(-2, 4, 13))
                 ) -> pd.DataFrame:
    """Cross-validated ridge probe (:func:`~drasclr_toolkit.evaluate.make_probe` for a
    continuous target: standardise → RidgeCV over ``alphas``) from patient embeddings to
    each target: out-of-fold R² and Spearman ρ between out-of-fold predictions and the truth.

    Folds are shuffled with ``seed`` (``min(cv, N)`` folds); the ridge penalty is chosen
    inside each training fold. Returns a frame indexed by target with ``r2``,
    ``spearman`` and ``n``.
    """
    from sklearn.metrics import r2_score
    from sklearn.model_selection import KFold, cross_val_predict

    from drasclr_toolkit.evaluate.probes import make_probe

    patient, targets = _aligned(patient, targets)
    X = patient.to_numpy(np.float64)
    folds = KFold(n_splits=min(cv, len(X)), shuffle=True, random_state=seed)
    rows = {}
    for name in targets.columns:
        y = targets[name].to_numpy(np.float64)
        model = make_probe("continuous", alphas=alphas, seed=seed)
        pred = cross_val_predict(model, X, y, cv=folds)
        rho = spearmanr(pred, y)[0] if np.ptp(y) > 0 and np.ptp(pred) > 0 else np.nan
        rows[name] = {"r2": float(r2_score(y, pred)), "spearman": float(rho), "n": len(y)}
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("target")


def patch_pca(embeddings: Embeddings, n_components: int = 3,
              subject: int | str | None = None) -> np.ndarray:
    """Principal-component scores of every patch embedding.

    One PCA is fitted on all ``N·L`` patches (so colours are comparable across subjects
    and landmarks). Returns ``(N, L, n_components)``, or ``(L, n_components)`` for one
    ``subject``. Component signs follow scikit-learn's deterministic convention.

    Example:
        >>> from drasclr_toolkit.embed import Embeddings
        >>> emb = Embeddings(np.random.default_rng(0).normal(size=(2, 5, 4)), ["a", "b"],
        ...                  np.zeros((5, 3), int), np.zeros((5, 3)), np.ones((2, 5)))
        >>> patch_pca(emb, 2).shape, patch_pca(emb, 2, subject="b").shape
        ((2, 5, 2), (5, 2))
    """
    from sklearn.decomposition import PCA

    n, n_loc, dim = embeddings.patch.shape
    n_components = min(n_components, dim, n * n_loc)
    scores = PCA(n_components=n_components).fit_transform(
        embeddings.patch.reshape(n * n_loc, dim)).reshape(n, n_loc, n_components)
    scores = scores.astype(np.float32)
    return scores if subject is None else scores[embeddings.subject_index(subject)]


def patch_kmeans(embeddings: Embeddings, k: int = 6, seed: int = 0,
                 subject: int | str | None = None) -> np.ndarray:
    """k-means cluster of every patch embedding, ``(N, L)`` int (or ``(L,)`` for one subject).

    The vectors are L2-normalised first: contrastive training compares embeddings by
    cosine, so direction, not length, carries the meaning. Seeded, so colours are stable.
    """
    from sklearn.cluster import KMeans

    n, n_loc, dim = embeddings.patch.shape
    flat = embeddings.patch.reshape(n * n_loc, dim).astype(np.float64)
    flat = flat / np.maximum(np.linalg.norm(flat, axis=1, keepdims=True), 1e-12)
    k = min(k, len(flat))
    labels = KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(flat)
    labels = labels.reshape(n, n_loc).astype(np.int64)
    return labels if subject is None else labels[embeddings.subject_index(subject)]


def variance_shares(patch: np.ndarray, valid: np.ndarray | None = None) -> dict[str, float]:
    """How the variance of patch embeddings ``(N, L, D)`` splits: between landmarks (what
    every lung looks like at a place), between subjects (what differs between patients,
    over all places), and the rest (subject × place). Shares of the total, summed over
    features; ``valid`` ``(N, L)`` leaves missing patches out.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> place = rng.normal(size=(1, 6, 4)) * 3           # a strong landmark effect
        >>> shares = variance_shares(place + rng.normal(size=(5, 6, 4)) * 0.1)
        >>> bool(shares["between_landmarks"] > 0.9)
        True
    """
    x = np.asarray(patch, dtype=np.float64)
    mask = np.ones(x.shape[:2], bool) if valid is None else np.asarray(valid, bool)
    x = np.where(mask[..., None], x, np.nan)
    grand = np.nanmean(x, axis=(0, 1), keepdims=True)
    by_landmark = np.nanmean(x, axis=0, keepdims=True) - grand
    by_subject = np.nanmean(x, axis=1, keepdims=True) - grand
    total = np.nansum((x - grand) ** 2)
    n_cells = mask.sum()
    landmark_part = float(np.nansum(np.where(mask[..., None], by_landmark, np.nan) ** 2))
    subject_part = float(np.nansum(np.where(mask[..., None], by_subject, np.nan) ** 2))
    if total <= 0 or n_cells == 0:
        return {"between_landmarks": float("nan"), "between_subjects": float("nan"),
                "subject_x_landmark": float("nan")}
    return {"between_landmarks": float(landmark_part / total),
            "between_subjects": float(subject_part / total),
            "subject_x_landmark": float(max(0.0, 1.0 - (landmark_part + subject_part) / total))}


def pc_null_band(patient: pd.DataFrame, target: pd.Series, n_components: int = 3,
                 n_permutations: int = 200, seed: int = 0) -> dict[str, float]:
    """The largest ``|ρ|`` over the first PCs with ``target``, next to its permutation null.

    The target is shuffled ``n_permutations`` times; each time the same statistic is
    computed. Returns ``value``, ``null_mean``, ``null_p95`` and ``p`` (the share of
    shuffles at least as large, with the +1 correction). With a dozen subjects the null's
    95th percentile is about 0.7: a value below it is no evidence of a relation.
    """
    from sklearn.decomposition import PCA
    from sklearn.preprocessing import StandardScaler

    frame, y = _aligned(patient, target.rename("target"))
    yv = y["target"].to_numpy(np.float64)
    keep = np.isfinite(yv)
    X = StandardScaler().fit_transform(frame.to_numpy(np.float64)[keep])
    yv = yv[keep]
    k = min(n_components, X.shape[1], len(X))
    scores = PCA(n_components=k).fit_transform(X)

    def stat(values: np.ndarray) -> float:
        if np.ptp(values) == 0:
            return float("nan")
        return float(max(abs(spearmanr(scores[:, c], values)[0]) for c in range(k)))

    value = stat(yv)
    rng = np.random.default_rng(seed)
    null = np.array([stat(rng.permutation(yv)) for _ in range(n_permutations)])
    null = null[np.isfinite(null)]
    return {"value": value, "null_mean": float(null.mean()),
            "null_p95": float(np.percentile(null, 95)),
            "p": float((1 + np.sum(null >= value)) / (1 + len(null)))}


def compare_encoders(patients: Mapping[str, pd.DataFrame], targets: pd.DataFrame,
                     nuisance: Sequence[str] = (), n_components: int = 3, cv: int = 5,
                     seed: int = 0, n_permutations: int = 200) -> pd.DataFrame:
    """One row per (encoder, target): how strongly the patient embeddings follow it.

    ``patients`` maps an encoder name (e.g. ``"trained"``, ``"random-init"``) to its pooled
    patient embeddings. Columns: ``encoder``, ``target``, ``kind`` (``"nuisance"`` for the
    names in ``nuisance``, else ``"disease"``), ``pc_max_abs_rho`` (largest ``|ρ|`` over the
    first ``n_components`` PCs), ``best_pc``, ``probe_r2`` and ``probe_spearman``
    (:func:`probe_scores`), and the PC statistic's permutation null (``pc_null_p95``,
    ``pc_p``, :func:`pc_null_band`), its Holm-corrected p over the whole table
    (``pc_p_adj``) and a ``verdict``: "follows it" only when the corrected p ≤ 0.05 (an
    association, not a prediction; the probe columns are descriptive). Wanted: high for
    disease, low for nuisance. The test's type-I error is measured in
    ``benchmarks/bench_calibration.py``.
    """
    rows = []
    for name, patient in patients.items():
        corr = pc_spearman(patient, targets, n_components)
        corr["abs_rho"] = corr.rho.abs()
        best = corr.loc[corr.groupby("target").abs_rho.idxmax()].set_index("target")
        probe = probe_scores(patient, targets, cv=cv, seed=seed)
        for target in targets.columns:
            band = pc_null_band(patient, targets[target], n_components, n_permutations, seed)
            rows.append({"encoder": name, "target": target,
                         "kind": "nuisance" if target in nuisance else "disease",
                         "pc_max_abs_rho": float(best.loc[target, "abs_rho"]),
                         "pc_null_p95": band["null_p95"], "pc_p": band["p"],
                         "best_pc": best.loc[target, "component"],
                         "probe_r2": float(probe.loc[target, "r2"]),
                         "probe_spearman": float(probe.loc[target, "spearman"])})
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    # one family of tests: every encoder × target shown together, Holm-corrected
    from drasclr_toolkit.evaluate.stats import ALPHA, holm

    table["pc_p_adj"] = holm(table["pc_p"].to_numpy(np.float64))
    n_tests = int(np.isfinite(table["pc_p"]).sum())
    table["verdict"] = [
        (f"follows it (p={p:.2g}, Holm p={q:.2g} over {n_tests} tests)" if q <= ALPHA else
         f"no evidence (p={p:.2g}, Holm p={q:.2g} over {n_tests} tests)")
        for p, q in zip(table["pc_p"], table["pc_p_adj"])]
    return table
