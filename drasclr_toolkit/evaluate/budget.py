"""``EvaluateConfig``: how hard the evaluation works (the ``evaluate:`` config section).

Repeats, permutations and bootstrap draws of the probes, survival models and risk groups,
and the fine-tuning budget of the label-efficiency curve. The defaults are the thorough
budget (``small.yaml``, ``gpu.yaml``); ``tiny.yaml`` sets a quick one that a laptop runs in
minutes, with too few permutations for a Holm-corrected claim (the notebooks say so).

Example:
    >>> budget = EvaluateConfig.from_yaml("tiny")
    >>> budget.n_permutations, budget["n_permutations"]
    (19, 19)
    >>> EvaluateConfig().n_permutations     # thorough: a corrected claim over ~50 tests
    1000
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field

from drasclr_toolkit.config import Config

from drasclr_toolkit.evaluate.survival import SURVIVAL_MODELS

__all__ = ["EvaluateConfig"]

# a share of the labelled training pool
Fraction = Annotated[float, Field(gt=0, le=1)]


class EvaluateConfig(Config):
    """The evaluation budget. Read like the dict it replaces (``budget["n_repeats"]``) or
    by attribute (``budget.n_repeats``).

    Attributes:
        n_repeats: repeats of the cross-validation of each phenotype probe.
        n_permutations: permutations of each probe's null (1,000 allow a Holm-corrected
            claim over ~50 tests; 19 only an uncorrected p of 0.05).
        n_bootstrap: bootstrap draws of intervals of densitometry and nuisance checks.
        survival_models: survival models fitted (``coxph``, ``coxnet``, ``rsf``).
        survival_permutations: permutations of the survival models' null.
        risk_group_permutations: permutations of the risk groups' log-rank.
        finetune_steps, finetune_batch: fine-tuning budget of the label-efficiency curve.
        fractions: shares of labelled training subjects on that curve.
        seeds: seeds (test splits) of that curve.
        n_boot_dense: bootstrap draws of the dense emphysema maps' scores.
        min_subjects: fewest labelled subjects for a probe or survival model to run.
    """

    section = "evaluate config"
    yaml_section = ("evaluate",)

    n_repeats: int = Field(5, ge=1)
    n_permutations: int = Field(1000, ge=0)
    n_bootstrap: int = Field(1000, ge=0)
    survival_models: tuple[Literal[SURVIVAL_MODELS], ...] = ("coxph", "coxnet", "rsf")
    survival_permutations: int = Field(500, ge=0)
    risk_group_permutations: int = Field(500, ge=0)
    finetune_steps: int = Field(300, ge=1)
    finetune_batch: int = Field(32, ge=1)
    fractions: tuple[Fraction, ...] = (0.01, 0.05, 0.1, 0.25, 1.0)
    seeds: tuple[int, ...] = (0, 1, 2)
    n_boot_dense: int = Field(1000, ge=0)
    min_subjects: int = Field(20, ge=2)

    def __getitem__(self, name: str) -> Any:
        if name not in type(self).model_fields:
            raise KeyError(f"{name!r} is not an evaluation budget setting; known: "
                           f"{sorted(type(self).model_fields)}")
        return getattr(self, name)
