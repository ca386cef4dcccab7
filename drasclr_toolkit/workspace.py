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

import hashlib
import json
from pathlib import Path
from typing import Any, Callable, Iterable

from drasclr_toolkit.errors import InputError, MissingFileError
from drasclr_toolkit.config import load_config

#: The file naming the workspace's active pretraining run (written by ``ws.pretrain``).
ACTIVE_RUN_FILE = "active_run.json"


def product_key(*parts: Any) -> str:
    """A short hash of what made a product (JSON-able parts: options, fingerprints).

    Example:
        >>> product_key({"temperature": 0.2}, "abc") == product_key({"temperature": 0.2}, "abc")
        True
        >>> product_key({"temperature": 0.2}, "abc") == product_key({"temperature": 0.1}, "abc")
        False
    """
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.blake2b(text.encode("utf-8"), digest_size=5).hexdigest()


def file_fingerprint(path: str | Path) -> str:
    """A short hash of a file's bytes (a checkpoint: what the encoder's weights are)."""
    h = hashlib.blake2b(digest_size=8)
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class Workspace:
    """Paths and lazily-built stage products under one folder.

    ``manifest``: a manifest CSV of real scans; when omitted the synthetic cohort of the
    configuration's ``synthetic`` section is generated in ``work_dir/cohort``.
    """

    def __init__(self, work_dir: str | Path, config: str | Path | dict = "tiny",
                 manifest: str | Path | None = None, *, verbose: bool = True) -> None:
        self.root = Path(work_dir).expanduser().resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.config_name = config if isinstance(config, (str, Path)) else "<dict>"
        self.config = load_config(config)
        self.manifest_path = Path(manifest).expanduser().resolve() if manifest else None
        # Products already made or checked in this session: each stage runs once per Workspace.
        self._made: dict[str, Any] = {}
        self.verbose = verbose  # one line when a cached product is reused

    def _say(self, text: str) -> None:
        if self.verbose:
            print(text, flush=True)

    def _rel(self, path: Path) -> str:
        try:
            return str(path.relative_to(self.root))
        except ValueError:
            return str(path)

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
        from drasclr_toolkit.data import Manifest
        from drasclr_toolkit.datasets import make_synthetic_cohort

        if "cohort" not in self._made:
            if self.manifest_path is not None:
                self._made["cohort"] = Manifest.load(self.manifest_path)
            else:
                options = self.section("synthetic")
                n_subjects = int(options.pop("n_subjects", 12))
                self._made["cohort"] = make_synthetic_cohort(n_subjects, self.cohort_dir, **options)
        return self._made["cohort"]

    def ground_truth(self):
        """Per-subject ground truth of the synthetic cohort (severities, nuisance), or None."""
        import pandas as pd

        path = self.cohort_dir / "ground_truth.csv"
        if not self.is_synthetic:
            return None
        if not path.exists():
            self.cohort()
        # A converter keeps ids such as "NA" as text; pandas would read them as missing.
        return pd.read_csv(path, converters={"subject_id": str}).set_index("subject_id")

    def ground_truth_maps(self, subject_id: str) -> dict[str, Any]:
        """The synthetic subject's true lung mask and disease map, on the CT's voxel grid."""
        import SimpleITK as sitk

        if not self.is_synthetic:
            raise InputError(
                "ground-truth maps exist only for the synthetic cohort; this workspace reads "
                f"{self.manifest_path}"
            )
        maps = {}
        for name in ("lungs", "disease"):
            path = self.cohort_dir / "ground_truth" / f"{subject_id}_{name}.nii.gz"
            if not path.exists():
                raise MissingFileError(
                    f"subject {subject_id}: ground-truth file {path} is missing; "
                    "regenerate the cohort with ws.cohort()"
                )
            image = sitk.DICOMOrient(sitk.ReadImage(str(path)), "LPS")
            maps[name] = sitk.GetArrayFromImage(image)
        return maps

    # -- later stages ------------------------------------------------------------------
    @property
    def jobs(self) -> int:
        """Worker processes for per-subject stages (the machine's cores, at most 4)."""
        import os

        return max(1, min(4, os.cpu_count() or 1))

    def atlas(self):
        """The atlas: the cohort subject with the median lung volume (built once, cached)."""
        from drasclr_toolkit.preprocess.pipeline import build_default_atlas

        if "atlas" not in self._made:
            self._made["atlas"] = build_default_atlas(self.cohort(), self.preprocess_dir,
                                                      self.section("preprocess"),
                                                      n_jobs=self.jobs)
        return self._made["atlas"]

    def patch_store(self):
        """The patch store of the cohort; subjects already preprocessed are skipped."""
        from drasclr_toolkit.preprocess.pipeline import run_preprocessing

        if "patch_store" not in self._made:
            self._made["patch_store"] = run_preprocessing(
                self.cohort(), self.atlas(), self.preprocess_dir,
                config=self.section("preprocess"), n_jobs=self.jobs,
            )
        return self._made["patch_store"]

    # -- pretraining runs, keyed on what makes them ---------------------------------------
    def pretrain_config(self, **overrides: Any):
        """The configuration's ``pretrain`` options with ``overrides`` (validated)."""
        from drasclr_toolkit.train import PretrainConfig

        return PretrainConfig.from_dict({**self.section("pretrain"), **overrides})

    def run_key(self, config) -> str:
        """The key of a pretraining run: its options (all but those that only change how it
        is watched or how fast it goes) and the patch store's fingerprint."""
        from drasclr_toolkit.train.loop import RESUMABLE_CHANGES

        options = {k: v for k, v in config.to_dict().items() if k not in RESUMABLE_CHANGES}
        return product_key("pretrain", options, self.patch_store().fingerprint())

    def run_dir(self, name: str = "run", **overrides: Any) -> Path:
        """The folder of the run with these settings: ``pretrain/<name>-<key>``."""
        if not name or any(c in name for c in "/\\") or name.startswith("."):
            raise InputError(f"run name {name!r}: give a plain folder name such as "
                             "'no-conditioning'")
        return self.pretrain_dir / f"{name}-{self.run_key(self.pretrain_config(**overrides))}"

    def _train(self, name: str, overrides: dict[str, Any],
               callbacks: Iterable[Callable[[dict], Any]] = ()) -> Path:
        from drasclr_toolkit.train.loop import pretrain

        config = self.pretrain_config(**overrides)
        run_dir = self.run_dir(name, **overrides)
        final = run_dir / "final.pt"
        if final.is_file():
            self._say(f"reused {self._rel(final)}: trained before with these exact settings "
                      "on this patch store")
            return final
        return pretrain(self.patch_store(), config, run_dir, callbacks=list(callbacks))

    def pretrain(self, callbacks: Iterable[Callable[[dict], Any]] = (),
                 **overrides: Any) -> Path:
        """Train the encoder with the configuration's ``pretrain`` options and
        ``overrides`` (e.g. ``temperature=0.1``), or reuse the run that has exactly these
        settings; make it the workspace's active encoder; return its ``final.pt``.

        A run stopped half-way resumes in its folder; a changed setting trains in a new one.
        """
        final = self._train("run", overrides, callbacks)
        self._write_active({"name": "run", "overrides": overrides})
        self._made["checkpoint"] = final
        return final

    def _active_path(self) -> Path:
        return self.pretrain_dir / ACTIVE_RUN_FILE

    def _write_active(self, record: dict[str, Any]) -> None:
        from drasclr_toolkit.io_utils import atomic_write_text

        atomic_write_text(self._active_path(), json.dumps(record, sort_keys=True, default=str),
                          make_parents=True)

    def active_overrides(self) -> dict[str, Any]:
        """The overrides of the active run (``{}``: the configuration's own settings)."""
        path = self._active_path()
        if not path.is_file():
            return {}
        try:
            record = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            return {}
        return dict(record.get("overrides") or {})

    def checkpoint(self) -> Path:
        """The active pretrained encoder's ``final.pt``: the run notebook 02 trained last
        (``ws.pretrain``), or the configuration's own settings when none was chosen; trained
        when missing (a stopped run resumes where it stopped)."""
        overrides = self.active_overrides()
        if overrides:
            self._say(f"active encoder: pretraining with {overrides} (set in notebook 02)")
        return self._train("run", overrides)

    def experiment(self, name: str, *, steps: int | None = None, **overrides: Any):
        """A side run: the configuration's pretraining with ``overrides``, trained in its own
        folder ``pretrain/<name>-<key>`` (reused when it exists) without changing the active
        encoder. ``steps`` cuts the run short (``max_steps``). Returns a
        :class:`drasclr_toolkit.lab.Experiment` (checkpoint, metrics, embeddings).

        Example: ``ws.experiment("no-conditioning", conditioning="none")``.
        """
        from drasclr_toolkit.lab import Experiment

        if steps is not None:
            overrides = {**overrides, "max_steps": int(steps)}
        final = self._train(name, overrides)
        return Experiment(self, name, overrides, final)

    def embeddings(self, encoder: str = "trained", checkpoint: str | Path | None = None):
        """Patch embeddings of the cohort from the ``trained`` (active) or the
        ``random-init`` encoder, or from ``checkpoint``; cached under a key of the
        checkpoint's content, the ``embed`` options and the patch store."""
        from drasclr_toolkit.embed import Embeddings, EmbedConfig, extract_embeddings

        if encoder not in ("trained", "random-init"):
            raise InputError(f"encoder must be 'trained' or 'random-init', got {encoder!r}")
        store = self.patch_store()
        embed_options = self.section("embed")
        if encoder == "trained" and checkpoint is None:
            checkpoint = self.checkpoint()
        ckpt_key = file_fingerprint(checkpoint) if checkpoint is not None else None
        key = product_key("embed", encoder, ckpt_key, embed_options, store.fingerprint())
        path = self.embeddings_dir / f"{encoder}-{key}.npz"
        if path.exists():
            cached = Embeddings.load(path)
            # Made from what the store holds now? (Subjects redone or added since: re-embed.)
            if cached.provenance.get("store_fingerprint") in (None, store.fingerprint()):
                self._say(f"reused {self._rel(path)}: embedded before by the same encoder, "
                          "options and patch store")
                return cached
        cfg = EmbedConfig.from_dict(embed_options)
        self.embeddings_dir.mkdir(parents=True, exist_ok=True)
        return extract_embeddings(store, checkpoint, config=cfg, out_path=path,
                                  recompute_changed=True)

    # -- evaluation products (cached in evaluate_dir) ---------------------------------
    def labels(self):
        """Clinical labels of the cohort indexed by subject id (the manifest's label
        columns; the synthetic cohort's spirometry, scores, mMRC and survival)."""
        return self.cohort().labels()

    def densitometry(self):
        """Lung densitometry (LAA-950, Perc15, MLD, volume; whole lung and six zones) of the
        subjects in the patch store, as preprocessing measured them on the scans (kept in
        the store's records; a store from an older version: read from the scans, cached in
        ``evaluate_dir``, resumable)."""
        from drasclr_toolkit.evaluate import cohort_densitometry

        if "densitometry" not in self._made:
            self.evaluate_dir.mkdir(parents=True, exist_ok=True)
            store = self.patch_store()
            # Keyed on the cohort (its scans) and the store (which subjects, redone or not).
            cache = self.evaluate_dir / f"densitometry-{product_key(self._cohort_key(), store.fingerprint())}.csv"
            self._made["densitometry"] = cohort_densitometry(self.cohort(), store, cache=cache)
        return self._made["densitometry"]

    def _cohort_key(self) -> Any:
        """What the cohort is: the synthetic section, or the manifest file's content."""
        if self.manifest_path is None:
            return {"synthetic": self.section("synthetic")}
        return {"manifest": file_fingerprint(self.manifest_path)}

    @property
    def patch_labels_path(self) -> Path | None:
        """A real cohort's per-patch label table: ``patch_labels.csv`` beside the manifest
        (columns ``subject_id, landmark, label[, extent]``; see data_manifests/README.md)."""
        if self.manifest_path is None:
            return None
        return self.manifest_path.parent / "patch_labels.csv"

    def patch_truth(self):
        """Per-patch emphysema truth aligned with the patch store, or None when the cohort
        has none (a real cohort without ``patch_labels.csv``). Synthetic: from the disease
        maps, cached in ``evaluate_dir/patch_truth.npz``."""
        import numpy as np
        import pandas as pd

        from drasclr_toolkit.evaluate import (PatchTruth, patch_truth_from_table,
                                              synthetic_patch_truth)

        if "patch_truth" in self._made:
            return self._made["patch_truth"]
        store = self.patch_store()
        ids = list(store.subject_ids)
        cache = self.evaluate_dir / f"patch_truth-{product_key(self._cohort_key(), store.fingerprint())}.npz"
        truth = None
        if self.is_synthetic:
            if cache.exists():
                saved = np.load(cache, allow_pickle=False)
                if list(saved["subject_ids"]) == ids:
                    truth = PatchTruth(ids, saved["label"], saved["extent"],
                                       tuple(saved["classes"]))
            if truth is None:
                truth = synthetic_patch_truth(store, self.cohort_dir)
                self.evaluate_dir.mkdir(parents=True, exist_ok=True)
                tmp = cache.with_name(".patch_truth.tmp.npz")
                np.savez(tmp, subject_ids=np.array(ids), label=truth.label,
                         extent=truth.extent, classes=np.array(truth.classes))
                tmp.replace(cache)
        elif self.patch_labels_path is not None and self.patch_labels_path.exists():
            table = pd.read_csv(self.patch_labels_path, dtype={"subject_id": str})
            truth = patch_truth_from_table(table, ids, int(store.n_landmarks))
        self._made["patch_truth"] = truth
        return truth

    def evaluation_budget(self):
        """How hard the evaluation notebooks work: the configuration's ``evaluate`` section
        as an :class:`~drasclr_toolkit.evaluate.budget.EvaluateConfig` (read like a dict,
        ``budget["n_permutations"]``). ``tiny.yaml`` sets a quick budget (a dozen subjects,
        2 CPU cores: too few permutations for a Holm-corrected claim, which the notebooks
        say); a file without the section gets the thorough defaults (1,000 phenotype
        permutations, enough for a corrected claim over ~50 tests; 500 for survival and
        the risk groups' log-rank)."""
        from drasclr_toolkit.evaluate.budget import EvaluateConfig

        return EvaluateConfig.from_dict(self.section("evaluate"))

    def model_config(self):
        """The encoder's architecture (the configuration's ``model`` section) as a
        :class:`~drasclr_toolkit.config.ModelConfig`: what a from-scratch encoder is built as."""
        from drasclr_toolkit.config import ModelConfig

        return ModelConfig.from_dict(self.section("model"))
