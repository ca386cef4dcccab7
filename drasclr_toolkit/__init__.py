"""drasclr_toolkit: DrasCLR self-supervised representation learning for 3D lung CT.

Stages (each a plain function with files in and files out, a CLI sub-command and a
notebook): ``data`` → ``preprocess`` → ``train`` (with ``models`` and ``ssl``) → ``embed`` →
``viz`` / ``evaluate``.

The front door: ``import drasclr_toolkit as dt`` offers the names a notebook needs, one per
stage, loaded on first use so that the import itself stays fast (torch, MONAI and
SimpleITK are imported only when a name that needs them is touched)::

    >>> import drasclr_toolkit as dt
    >>> sorted(dt.__all__)[:4]
    ['DrasclrError', 'Embeddings', 'Manifest', 'PatchStore']
    >>> dt.evaluate_phenotypes.__module__
    'drasclr_toolkit.evaluate.probes'
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

#: name -> module that defines it (the stage it belongs to, in pipeline order)
_FRONT_DOOR = {
    # configuration, errors and the notebook workspace
    "load_config": "drasclr_toolkit.config",
    "DrasclrError": "drasclr_toolkit.errors",
    "Workspace": "drasclr_toolkit.workspace",
    # data
    "load_ct": "drasclr_toolkit.data.ct",
    "Manifest": "drasclr_toolkit.data.manifest",
    # data sets (not core: the synthetic cohort with ground truth)
    "make_synthetic_cohort": "drasclr_toolkit.datasets.synthetic",
    # preprocessing
    "run_preprocessing": "drasclr_toolkit.preprocess.pipeline",
    "PatchStore": "drasclr_toolkit.preprocess.store",
    # pretraining
    "pretrain": "drasclr_toolkit.train.loop",
    # embeddings
    "extract_embeddings": "drasclr_toolkit.embed.extract",
    "Embeddings": "drasclr_toolkit.embed.store",
    # evaluation
    "pool_embeddings": "drasclr_toolkit.evaluate.features",
    "evaluate_phenotypes": "drasclr_toolkit.evaluate.probes",
    "evaluate_survival": "drasclr_toolkit.evaluate.survival",
    "risk_groups": "drasclr_toolkit.evaluate.survival",
    # a new dataset end to end
    "probe_dataset": "drasclr_toolkit.probe.run",
}

__all__ = sorted(_FRONT_DOOR)


def __getattr__(name: str) -> Any:
    module = _FRONT_DOOR.get(name)
    if module is None:
        raise AttributeError(f"module 'drasclr_toolkit' has no attribute {name!r}; the front "
                             f"door offers {', '.join(__all__)} (the sub-packages hold the rest)")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
