"""Data sets that are not the library core: the synthetic phantom cohort with ground truth
(:func:`make_synthetic_cohort`) and two real sample chest CTs (:func:`real_chest_ct`).

The core stages (``data`` … ``viz``) never import this package; the notebooks, the CLI, the
probe demo and the tests do. Names are loaded on first use, so importing
``drasclr_toolkit.datasets.sample_data`` does not pull in the phantom generator.

Example:
    >>> from drasclr_toolkit.datasets import make_synthetic_cohort
    >>> make_synthetic_cohort.__module__
    'drasclr_toolkit.datasets.synthetic'
"""

from __future__ import annotations

import importlib
from typing import Any

#: public name -> module (relative to this package) that defines it
_NAMES = {
    "SyntheticConfig": "synthetic",
    "GroundTruthAffine": "synthetic",
    "check_out_folder": "synthetic",
    "gold_stage": "synthetic",
    "load_ground_truth_affine": "synthetic",
    "make_synthetic_cohort": "synthetic",
    "map_points": "synthetic",
    "SampleDataUnavailable": "sample_data",
    "default_cache_dir": "sample_data",
    "real_chest_ct": "sample_data",
}

__all__ = sorted(_NAMES)


def __getattr__(name: str) -> Any:
    module = _NAMES.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
