"""What patient embeddings encode: rank correlations of their principal components with
per-subject targets, and a cross-validated ridge probe per target.

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

from typing import Mapping, Sequence

import numpy as np
import pandas as pd
from scipy.stats import spearmanr

__all__ = ["compare_encoders", "pc_spearman", "probe_scores"]


def _aligned(patient: pd.DataFrame, targets: pd.DataFrame | pd.Series
             ) -> tuple[pd.DataFrame, pd.DataFrame]:
    targets = targets.to_frame() if isinstance(targets, pd.Series) else targets
    patient = patient.copy()
    patient.index = patient.index.astype(str)
    targets = targets.copy()
    targets.index = targets.index.astype(str)
    common = [i for i in patient.index if i in targets.index]
    if len(common) < 3:
        raise ValueError(f"only {len(common)} subjects are in both the embeddings and the "
                         "targets; index both by subject id")
    return patient.loc[common], targets.loc[common]


def pc_spearman(patient: pd.DataFrame, targets: pd.DataFrame | pd.Series,
                n_components: int = 3) -> pd.DataFrame:
    """Spearman ρ of each principal component of the patient embeddings with each target.

    ``patient`` is ``(N, D)`` indexed by subject id (``Embeddings.pool``); ``targets`` is
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
    """Cross-validated ridge probe (standardise → RidgeCV) from patient embeddings to each
    target: out-of-fold R² and Spearman ρ between out-of-fold predictions and the truth.

    Folds are shuffled with ``seed`` (``min(cv, N)`` folds); the ridge penalty is chosen
    inside each training fold. Returns a frame indexed by target with ``r2``,
    ``spearman`` and ``n``.
    """
    from sklearn.linear_model import RidgeCV
    from sklearn.metrics import r2_score
    from sklearn.model_selection import KFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    patient, targets = _aligned(patient, targets)
    X = patient.to_numpy(np.float64)
    folds = KFold(n_splits=min(cv, len(X)), shuffle=True, random_state=seed)
    rows = {}
    for name in targets.columns:
        y = targets[name].to_numpy(np.float64)
        model = make_pipeline(StandardScaler(), RidgeCV(alphas=list(alphas)))
        pred = cross_val_predict(model, X, y, cv=folds)
        rho = spearmanr(pred, y)[0] if np.ptp(y) > 0 and np.ptp(pred) > 0 else np.nan
        rows[name] = {"r2": float(r2_score(y, pred)), "spearman": float(rho), "n": len(y)}
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("target")


def compare_encoders(patients: Mapping[str, pd.DataFrame], targets: pd.DataFrame,
                     nuisance: Sequence[str] = (), n_components: int = 3, cv: int = 5,
                     seed: int = 0) -> pd.DataFrame:
    """One row per (encoder, target): how strongly the patient embeddings follow it.

    ``patients`` maps an encoder name (e.g. ``"trained"``, ``"random-init"``) to its pooled
    patient embeddings. Columns: ``encoder``, ``target``, ``kind`` (``"nuisance"`` for the
    names in ``nuisance``, else ``"disease"``), ``pc_max_abs_rho`` (largest ``|ρ|`` over the
    first ``n_components`` PCs), ``best_pc``, ``probe_r2`` and ``probe_spearman``
    (:func:`probe_scores`). Wanted: high for disease, low for nuisance.
    """
    rows = []
    for name, patient in patients.items():
        corr = pc_spearman(patient, targets, n_components)
        corr["abs_rho"] = corr.rho.abs()
        best = corr.loc[corr.groupby("target").abs_rho.idxmax()].set_index("target")
        probe = probe_scores(patient, targets, cv=cv, seed=seed)
        for target in targets.columns:
            rows.append({"encoder": name, "target": target,
                         "kind": "nuisance" if target in nuisance else "disease",
                         "pc_max_abs_rho": float(best.loc[target, "abs_rho"]),
                         "best_pc": best.loc[target, "component"],
                         "probe_r2": float(probe.loc[target, "r2"]),
                         "probe_spearman": float(probe.loc[target, "spearman"])})
    return pd.DataFrame(rows)
