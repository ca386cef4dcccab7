"""A demo folder for the probe: real chest CTs, synthetic scans and one broken file.

Example:
    >>> demo = make_demo_folder("probe_demo")                # doctest: +SKIP
    >>> sorted(p.name for p in demo.folder.iterdir())[:2]    # doctest: +SKIP
    ['broken_scan.nii.gz', 'lung1_image.nrrd']
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import pandas as pd

__all__ = ["DemoFolder", "make_demo_folder", "truncate_file"]

log = logging.getLogger(__name__)


@dataclass
class DemoFolder:
    folder: Path                     # the scans to probe
    labels: Path                     # subject_id + labels of the synthetic scans (+ time, event)
    notes: list[str] = field(default_factory=list)   # what was left out and why


def truncate_file(source: str | os.PathLike, target: str | os.PathLike,
                  fraction: float = 0.5) -> Path:
    """Copy the first ``fraction`` of a file's bytes: a download cut short."""
    data = Path(source).read_bytes()
    target = Path(target)
    target.write_bytes(data[: int(len(data) * fraction)])
    return target


def make_demo_folder(out: str | os.PathLike, n_synthetic: int = 4,
                     real: Sequence[str] = ("lung1", "lung2"), broken: bool = True,
                     size_scale: float = 1.0, spacing: float = 3.0, seed: int = 3
                     ) -> DemoFolder:
    """``out/scans``: real chest CTs (cached from PyPI; left out, with a note, offline),
    ``n_synthetic`` synthetic scans (adult-sized at ``size_scale`` 1.0) and, with ``broken``,
    a NIfTI cut in half. ``out/labels.csv`` holds the synthetic scans' clinical labels.
    """
    from drasclr_toolkit.datasets.sample_data import SampleDataUnavailable, real_chest_ct
    from drasclr_toolkit.datasets.synthetic import make_synthetic_cohort

    out = Path(out).expanduser().absolute()
    folder = out / "scans"
    folder.mkdir(parents=True, exist_ok=True)
    notes = []
    cohort = make_synthetic_cohort(n_synthetic, out / "synthetic", seed=seed, spacing=spacing,
                                   size_scale=size_scale, n_jobs=1)
    for sid in cohort.subject_ids:
        target = folder / f"{sid}.nii.gz"
        if not target.exists():
            shutil.copyfile(cohort.image_path(sid), target)
    if broken:
        truncate_file(cohort.image_path(cohort.subject_ids[0]), folder / "broken_scan.nii.gz")
    for name in real:
        try:
            path = real_chest_ct(name)
        except SampleDataUnavailable as exc:
            notes.append(f"{name} left out: {exc}")
            continue
        target = folder / path.name
        if not target.exists():
            shutil.copyfile(path, target)
    keep = ["subject_id", "fev1_pp", "gold", "pct_emphysema", "time", "event"]
    table = cohort.table[[c for c in keep if c in cohort.table.columns]]
    labels = out / "labels.csv"
    pd.DataFrame(table).to_csv(labels, index=False)
    return DemoFolder(folder, labels, notes)
