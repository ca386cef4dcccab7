"""Evaluation: phenotype probes, survival models and metrics, densitometry baselines and
feature sets, dense emphysema maps and label efficiency, each result next to chance and a
null.

Example:
    >>> from drasclr_toolkit.evaluate import feature_sets, evaluate_phenotypes
    >>> sets = feature_sets({"drasclr": emb, "densitometry": dens},              # doctest: +SKIP
    ...                     ["drasclr+densitometry"])
    >>> evaluate_phenotypes(sets, labels, ["fev1_pp", "gold"])                     # doctest: +SKIP

Figures live in :mod:`drasclr_toolkit.viz.evaluation`; :mod:`~drasclr_toolkit.evaluate.compare`
turns every result table into one comparison with the words its numbers allow.
"""

from drasclr_toolkit.evaluate.dense import (DISEASE_CLASSES, DenseResult, PatchTruth,
                                            evaluate_dense, patch_truth_from_table,
                                            synthetic_patch_truth)
from drasclr_toolkit.evaluate.compare import (adjust_verdicts, comparison_table, comparison_text,
                                              paired_comparisons, risk_group_text, summarise)
from drasclr_toolkit.evaluate.densitometry import (HIST_EDGES, ZONES, cohort_densitometry,
                                                   densitometry, densitometry_sets, lung_zones,
                                                   patch_densitometry)
from drasclr_toolkit.evaluate.finetune import LABEL_FRACTIONS, label_efficiency
from drasclr_toolkit.evaluate.embedding_analysis import (compare_encoders, patch_kmeans, patch_pca,
                                                         pc_null_band, pc_spearman, probe_scores,
                                                         variance_shares)
from drasclr_toolkit.evaluate.features import (POOLINGS, feature_sets, landmark_zones,
                                               pool_embeddings)
from drasclr_toolkit.evaluate.nuisance import nuisance_sensitivity, spearman_ci
from drasclr_toolkit.evaluate.probes import (evaluate_phenotypes, infer_target_kind, make_probe,
                                             patch_probe_scores)
from drasclr_toolkit.evaluate.stats import (corrected_ci, holm, multiplicity_note,
                                            paired_difference, predictive_verdict,
                                            small_sample_note)
from drasclr_toolkit.evaluate.survival import (RiskGroups, default_horizons, evaluate_survival,
                                               make_survival_model, risk_groups, survival_metrics,
                                               to_structured)

__all__ = [
    "DISEASE_CLASSES", "DenseResult", "LABEL_FRACTIONS", "PatchTruth", "evaluate_dense",
    "label_efficiency", "patch_truth_from_table", "synthetic_patch_truth",
    "HIST_EDGES", "POOLINGS", "RiskGroups", "ZONES", "cohort_densitometry", "corrected_ci",
    "default_horizons", "densitometry", "evaluate_phenotypes", "evaluate_survival",
    "feature_sets", "infer_target_kind", "landmark_zones", "lung_zones", "make_probe",
    "make_survival_model", "patch_probe_scores", "pool_embeddings", "risk_groups", "survival_metrics",
    "to_structured", "comparison_table", "comparison_text", "summarise", "densitometry_sets",
    "nuisance_sensitivity", "spearman_ci", "patch_densitometry", "adjust_verdicts",
    "paired_comparisons", "risk_group_text", "holm", "multiplicity_note", "paired_difference",
    "predictive_verdict", "small_sample_note",
    "compare_encoders", "patch_kmeans", "patch_pca", "pc_null_band", "pc_spearman",
    "probe_scores", "variance_shares",
]
