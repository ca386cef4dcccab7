"""The dataset card: what each manifest column may hold (dtype, range, unit, role).

Standard columns (``subject_id``, ``image``, ``lung_mask`` and the COPD labels) have
built-in rules in :data:`STANDARD_COLUMNS`; a card (``dataset_card.yaml`` beside the CSV by
default) overrides them and describes other columns.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import ConfigDict

from drasclr_toolkit.config import Config
from drasclr_toolkit.data.problems import ManifestError, ManifestProblem

__all__ = ["CARD_FILENAME", "ColumnRule", "PATH_COLUMNS", "STANDARD_COLUMNS", "card_rules",
           "load_card"]

CARD_FILENAME = "dataset_card.yaml"
DTYPES = ("str", "path", "float", "int", "bool", "category")
ROLES = ("id", "image", "mask", "label", "time", "event", "covariate", "ground_truth", "other")


class ColumnRule(Config):
    """What a manifest column may hold (built in for standard columns, else from the card).

    ``min``/``max`` bound numeric values (inclusive unless ``exclusive_min``/``exclusive_max``),
    ``allowed`` lists permitted values, ``fix`` is a hint printed with each problem.

    Example:
        >>> ColumnRule.from_dict({"dtype": "float", "min": 0, "unit": "years"}).unit
        'years'
    """

    model_config = ConfigDict(frozen=True)
    section = "column rule"

    dtype: Literal[DTYPES] = "str"
    min: float | None = None
    max: float | None = None
    exclusive_min: bool = False
    exclusive_max: bool = False
    allowed: tuple[Any, ...] | None = None
    unit: str | None = None
    description: str | None = None
    role: Literal[ROLES] = "other"
    required: bool = False
    fix: str | None = None

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None = None,
                  base: ColumnRule | None = None) -> ColumnRule:
        """Build a rule from a card entry; keys not given keep ``base``'s values."""
        return base.replace(**dict(d or {})) if base is not None else super().from_dict(d)

    def to_dict(self) -> dict[str, Any]:
        """Card entry for this rule (defaults left out)."""
        out: dict[str, Any] = {}
        default = ColumnRule()
        for name in type(self).model_fields:
            v = getattr(self, name)
            if name == "dtype" or v != getattr(default, name):
                out[name] = list(v) if isinstance(v, tuple) else v
        return out

    def describe_range(self) -> str:
        parts = []
        if self.allowed is not None:
            parts.append("one of " + ", ".join(str(a) for a in self.allowed))
        if self.min is not None:
            parts.append(f"{'>' if self.exclusive_min else '≥'} {self.min:g}")
        if self.max is not None:
            parts.append(f"{'<' if self.exclusive_max else '≤'} {self.max:g}")
        text = " and ".join(parts) or f"any {self.dtype}"
        return f"{text}, unit: {self.unit}" if self.unit else text


STANDARD_COLUMNS: dict[str, ColumnRule] = {
    "subject_id": ColumnRule(
        dtype="str", role="id", required=True,
        description="unique subject identifier (letters, digits, '.', '_', '-')",
    ),
    "image": ColumnRule(
        dtype="path", role="image", required=True,
        description="CT scan: NIfTI/NRRD/MHA file or DICOM series folder; relative paths "
        "are relative to the manifest's folder",
    ),
    "lung_mask": ColumnRule(
        dtype="path", role="mask",
        description="optional lung mask aligned with the image (empty: segment it)",
    ),
    "fev1_pp": ColumnRule(
        dtype="float", min=0, max=200, unit="% predicted", role="label",
        description="FEV1 percent predicted (post-bronchodilator)",
    ),
    "fev1_fvc": ColumnRule(
        dtype="float", min=0, max=1, unit="ratio", role="label",
        description="FEV1/FVC ratio", fix="give the ratio (e.g. 0.65), not a percentage",
    ),
    "gold": ColumnRule(
        dtype="int", min=0, max=4, role="label",
        description="GOLD spirometric stage (0 = no obstruction)",
        fix="use 0–4; describe other codes (e.g. -1 for PRISm) in the dataset card",
    ),
    "pct_emphysema": ColumnRule(
        dtype="float", min=0, max=100, unit="%", role="label",
        description="percent emphysema, %LAA-950 (lung voxels below -950 HU)",
        fix="give a percentage 0–100 (e.g. 12.5), not a fraction",
    ),
    "cle_score": ColumnRule(
        dtype="int", min=0, max=5, role="label",
        description="visual centrilobular emphysema grade (0 none – 5 advanced destructive)",
    ),
    "pse_score": ColumnRule(
        dtype="int", min=0, max=2, role="label",
        description="visual paraseptal emphysema grade (0 none, 1 mild, 2 substantial)",
    ),
    "mmrc": ColumnRule(
        dtype="int", min=0, max=4, role="label",
        description="modified MRC dyspnoea scale",
    ),
    "time": ColumnRule(
        dtype="float", min=0, exclusive_min=True, unit="years", role="time",
        description="follow-up time to event or censoring",
        fix="give a positive follow-up time in years; leave empty when unknown",
    ),
    "event": ColumnRule(
        dtype="int", allowed=(0, 1), role="event",
        description="1 = event (death) observed, 0 = censored",
        fix="use 1 for an observed event, 0 for censored; leave empty when unknown",
    ),
}
PATH_COLUMNS = ("image", "lung_mask")



def load_card(card_path: str | os.PathLike) -> dict[str, Any]:
    """Read a dataset card (YAML mapping with a ``columns`` mapping).

    Example:
        >>> card = load_card("data_manifests/generic/dataset_card.yaml")   # doctest: +SKIP
        >>> card["columns"]["image"]["dtype"]                              # doctest: +SKIP
        'path'
    """
    path = Path(card_path)
    try:
        with open(path, encoding="utf-8") as fh:
            card = yaml.safe_load(fh)
    except FileNotFoundError:
        raise ManifestError(
            [ManifestProblem(f"dataset card {path} does not exist; check the --card path")],
            path,
        ) from None
    except yaml.YAMLError as exc:
        raise ManifestError(
            [ManifestProblem(f"dataset card {path} is not valid YAML ({exc}); fix its syntax")],
            path,
        ) from None
    if card is None:
        card = {}
    if not isinstance(card, dict):
        raise ManifestError(
            [ManifestProblem(f"dataset card {path} must be a YAML mapping with a 'columns' key")],
            path,
        )
    return card


def card_rules(
    card: Mapping[str, Any],
    problems: list[ManifestProblem],
    key: str = "columns",
    standard: bool = True,
) -> dict[str, ColumnRule]:
    """Built-in rules (when ``standard``) overridden/extended by the card's ``key`` section."""
    rules = dict(STANDARD_COLUMNS) if standard else {}
    columns = card.get(key) or {}
    if not isinstance(columns, dict):
        problems.append(ManifestProblem(
            "dataset card: 'columns' must be a mapping of column name to its description "
            "(dtype, min, max, allowed, unit, description, role); see data_manifests/README.md"
        ))
        return rules
    for name, spec in columns.items():
        if spec is None:
            spec = {}
        if not isinstance(spec, dict):
            problems.append(ManifestProblem(
                f"dataset card: column {name!r} must be a mapping (dtype, min, max, …), got "
                f"{spec!r}"
            ))
            continue
        try:
            base = STANDARD_COLUMNS.get(str(name)) if standard else None
            rules[str(name)] = ColumnRule.from_dict(spec, base=base)
        except (TypeError, ValueError) as exc:
            problems.append(ManifestProblem(
                f"dataset card: column {name!r}: {exc}; fix the card (see data_manifests/README.md)"
            ))
    return rules
