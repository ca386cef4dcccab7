"""Evaluation: phenotype probes, survival models and metrics, densitometry baselines and
feature sets, each result next to chance and a null.

Example:
    >>> from drasclr_toolkit.evaluate import feature_sets, evaluate_phenotypes
    >>> sets = feature_sets({"drasclr": emb, "densitometry": dens},              # doctest: +SKIP
    ...                     ["drasclr+densitometry"])
    >>> evaluate_phenotypes(sets, labels, ["fev1_pp", "gold"])                     # doctest: +SKIP

Figures live in :mod:`drasclr_toolkit.evaluate.plots` (to move to ``viz`` later).
"""

from .densitometry import HIST_EDGES, ZONES, cohort_densitometry, densitometry, lung_zones
from .features import POOLINGS, feature_sets, landmark_zones, pool_embeddings
from .probes import evaluate_phenotypes, infer_target_kind, make_probe
from .survival import (RiskGroups, corrected_ci, default_horizons, evaluate_survival,
                       make_survival_model, risk_groups, survival_metrics, to_structured)

__all__ = [
    "HIST_EDGES", "POOLINGS", "RiskGroups", "ZONES", "cohort_densitometry", "corrected_ci",
    "default_horizons", "densitometry", "evaluate_phenotypes", "evaluate_survival",
    "feature_sets", "infer_target_kind", "landmark_zones", "lung_zones", "make_probe",
    "make_survival_model", "pool_embeddings", "risk_groups", "survival_metrics",
    "to_structured",
]
