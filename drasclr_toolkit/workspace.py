"""One work folder shared by the notebooks: each stage's output in a fixed place.

Every notebook starts with ``ws = Workspace(work_dir, config_name)`` and asks it for what
it needs (``ws.cohort()``, ``ws.patch_store()``, ...). A product that is missing is made by
running its stage (which itself skips finished subjects), so a notebook runs on its own or
after the previous one, and the same notebook runs on a real cohort by passing a manifest.

Example
-------
>>> ws = Workspace("/tmp/drasclr_ws_doc", "tiny")
>>> ws.cohort_dir.name
'cohort'
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from drasclr_toolkit.config import load_config


class Workspace:
    """Paths and lazily-built stage products under one folder.

    ``manifest``: a manifest CSV of real scans; when omitted the synthetic cohort of the
    configuration's ``synthetic`` section is generated in ``work_dir/cohort``.
    """

    def __init__(self, work_dir: str | Path, config: str | Path | dict = "tiny",
                 manifest: str | Path | None = None) -> None:
        self.root = Path(work_dir).expanduser().resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.config_name = config if isinstance(config, (str, Path)) else "<dict>"
        self.config = load_config(config)
        self.manifest_path = Path(manifest).expanduser().resolve() if manifest else None

    def __repr__(self) -> str:
        source = self.manifest_path or "synthetic cohort"
        return f"Workspace({str(self.root)!r}, config={str(self.config_name)!r}, data={source})"

    def section(self, stage: str) -> dict[str, Any]:
        return dict(self.config.get(stage, {}))

    # -- locations ---------------------------------------------------------------------
    @property
    def cohort_dir(self) -> Path:
        return self.root / "cohort"

    @property
    def is_synthetic(self) -> bool:
        return self.manifest_path is None

    @property
    def preprocess_dir(self) -> Path:
        return self.root / "preprocess"

    @property
    def pretrain_dir(self) -> Path:
        return self.root / "pretrain"

    @property
    def embeddings_dir(self) -> Path:
        return self.root / "embeddings"

    @property
    def evaluate_dir(self) -> Path:
        return self.root / "evaluate"

    # -- products ----------------------------------------------------------------------
    def cohort(self):
        """The manifest: the user's, or the synthetic cohort (generated when missing)."""
        from drasclr_toolkit.data import Manifest, make_synthetic_cohort

        if self.manifest_path is not None:
            return Manifest.load(self.manifest_path)
        options = self.section("synthetic")
        n_subjects = int(options.pop("n_subjects", 12))
        return make_synthetic_cohort(n_subjects, self.cohort_dir, **options)

    def ground_truth(self):
        """Per-subject ground truth of the synthetic cohort (severities, nuisance), or None."""
        import pandas as pd

        path = self.cohort_dir / "ground_truth.csv"
        if not self.is_synthetic:
            return None
        if not path.exists():
            self.cohort()
        return pd.read_csv(path, dtype={"subject_id": str}).set_index("subject_id")

    def ground_truth_maps(self, subject_id: str) -> dict[str, Any]:
        """The synthetic subject's true lung mask and disease map, on the CT's voxel grid."""
        import SimpleITK as sitk

        if not self.is_synthetic:
            raise ValueError(
                "ground-truth maps exist only for the synthetic cohort; this workspace reads "
                f"{self.manifest_path}"
            )
        maps = {}
        for name in ("lungs", "disease"):
            path = self.cohort_dir / "ground_truth" / f"{subject_id}_{name}.nii.gz"
            if not path.exists():
                raise FileNotFoundError(
                    f"subject {subject_id}: ground-truth file {path} is missing; "
                    "regenerate the cohort with ws.cohort()"
                )
            image = sitk.DICOMOrient(sitk.ReadImage(str(path)), "LPS")
            maps[name] = sitk.GetArrayFromImage(image)
        return maps
