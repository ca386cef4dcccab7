"""``probe_dataset``: a first look at a new folder of CT scans, in one call.

Folder → manifest (:func:`~drasclr_toolkit.data.scan_folder`) → every scan loaded,
checked and segmented once (:func:`~drasclr_toolkit.preprocess.pipeline.prepare_scans`) →
the scans that load preprocessed from those products (no scan read again)
against an atlas (built from the data: the median-lung-volume rule; or a given one) →
embeddings (a checkpoint, or a random-init encoder, labelled so) → probe QC table
(:func:`~drasclr_toolkit.probe.qc.assess_scans`) → optional cross-validated evaluation
against a label table → one offline HTML report. A bad scan is a row of the QC table, never
a stop. Everything lands in ``out``; re-running reuses the finished atlas, patches and
embeddings.

Example:
    >>> result = probe_dataset("scans/", "probe_out", labels="labels.csv")   # doctest: +SKIP
    >>> print(result.summary())                                              # doctest: +SKIP
    7 scans, 4 ok, 1 flagged, 2 failed
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np
import pandas as pd

from drasclr_toolkit.errors import InputError, MissingFileError
from drasclr_toolkit.config import load_config
from drasclr_toolkit.data import Manifest, check_scans, scan_folder
from drasclr_toolkit.data.labels import load_labels
from drasclr_toolkit.preprocess import Atlas, PatchStore, PreprocessConfig, qc_table
from drasclr_toolkit.preprocess.pipeline import (build_default_atlas, prepare_scans,
                                                 run_preprocessing)
from drasclr_toolkit.preprocess.qc_rules import QCThresholds
from drasclr_toolkit.preprocess.scans import ScanCache

from drasclr_toolkit.probe.qc import assess_scans

if TYPE_CHECKING:
    from drasclr_toolkit.embed import EmbedConfig

__all__ = ["OFFICIAL_ATLAS_ENV", "ProbeResult", "check_folder", "probe_dataset",
           "resolve_atlas"]

log = logging.getLogger(__name__)

OFFICIAL_ATLAS_ENV = "DRASCLR_OFFICIAL_ATLAS"
OFFICIAL_FILES = ("atlas_lung_mask.nii.gz", "atlas_patch_loc.npy")
SURVIVAL_COLUMNS = ("time", "event")


@dataclass(eq=False)
class ProbeResult:
    """What :func:`probe_dataset` found: the tables, the products, the report's path."""

    out_dir: Path
    report: Path | None
    manifest: Manifest
    scan_checks: pd.DataFrame
    qc: pd.DataFrame                       # subject_id, status, flags, reasons, metrics
    atlas: Atlas | None = None
    store: PatchStore | None = None
    embeddings: Any = None
    encoder_note: str = ""
    phenotypes: pd.DataFrame | None = None
    survival: pd.DataFrame | None = None
    labels: pd.DataFrame | None = None
    problems: list[str] = field(default_factory=list)   # stage-level problems, in words
    config: PreprocessConfig | None = None

    def counts(self) -> dict[str, int]:
        status = self.qc["status"].value_counts()
        return {"scans": len(self.qc), **{k: int(status.get(k, 0))
                                          for k in ("ok", "flagged", "failed")}}

    def summary(self) -> str:
        """``N scans, k ok, m flagged, f failed``."""
        c = self.counts()
        return f"{c['scans']} scans, {c['ok']} ok, {c['flagged']} flagged, {c['failed']} failed"

    def __repr__(self) -> str:
        return f"ProbeResult({self.summary()}; report={self.report})"


def resolve_atlas(atlas: Any) -> Atlas | None:
    """None (build from the data), an Atlas, ``"official"`` or a folder → an Atlas or None.

    ``"official"`` reads the folder named by ``$DRASCLR_OFFICIAL_ATLAS``. A folder holding
    ``atlas_lung_mask.nii.gz`` and ``atlas_patch_loc.npy`` is the official atlas; a folder
    with ``atlas.json`` is one written by ``Atlas.save``.
    """
    if atlas is None or isinstance(atlas, Atlas):
        return atlas
    if str(atlas) == "official":
        folder = os.environ.get(OFFICIAL_ATLAS_ENV)
        if not folder:
            raise InputError(f"--atlas official: set {OFFICIAL_ATLAS_ENV} to the folder holding "
                             f"{' and '.join(OFFICIAL_FILES)}, or pass that folder instead")
        atlas = folder
    folder = Path(atlas).expanduser()
    if all((folder / name).is_file() for name in OFFICIAL_FILES):
        return Atlas.load(folder / OFFICIAL_FILES[0], folder / OFFICIAL_FILES[1])
    if (folder / "atlas.json").is_file():
        return Atlas.load(folder)
    raise MissingFileError(f"atlas folder {folder} holds neither {' + '.join(OFFICIAL_FILES)} "
                            "(the official atlas) nor atlas.json (Atlas.save); check the path")


def _preprocess_config(config: dict[str, dict[str, Any]], atlas: Atlas | None,
                       problems: list[str]) -> PreprocessConfig:
    """The preprocess section of a loaded configuration (``load_config``), on the atlas's
    grid when an atlas is given."""
    cfg = PreprocessConfig.from_dict(config.get("preprocess", {}))
    if atlas is not None and not np.isclose(atlas.spacing, cfg.spacing, rtol=1e-3):
        # The patches must cover the same millimetres as the atlas's: follow the atlas.
        problems.append(f"the atlas grid is {atlas.spacing:g} mm, the config's "
                        f"{cfg.spacing:g} mm: preprocessing used {atlas.spacing:g} mm")
        cfg = PreprocessConfig.from_dict({**cfg.to_dict(), "spacing": atlas.spacing})
    return cfg


def check_folder(folder: str | os.PathLike, out: str | os.PathLike,
                 config: str | os.PathLike | Mapping[str, Any] = "tiny", atlas: Any = None, *,
                 progress: bool = False) -> tuple[Manifest, pd.DataFrame]:
    """The probe's first step alone: find the scans of ``folder`` and read, check and
    segment each once; returns the manifest and the load-check table (``check_scans``'
    columns). What was read waits in ``out/preprocess``, so :func:`probe_dataset` with the
    same ``out``, ``config`` and ``atlas`` reads no scan again.

    Example:
        >>> manifest, checks = check_folder("scans/", "probe_out")   # doctest: +SKIP
        >>> checks[checks.status == "error"]                          # doctest: +SKIP
    """
    cfg = _preprocess_config(load_config(config), resolve_atlas(atlas), [])
    manifest = scan_folder(folder)
    work = Path(out).expanduser().absolute() / "preprocess"
    return manifest, prepare_scans(manifest, work, cfg, progress=progress)


def _embed(store: PatchStore, checkpoint: Any, cfg: "EmbedConfig", out: Path, progress: bool
           ) -> tuple[Any, str]:
    from drasclr_toolkit.embed import extract_embeddings

    name = "checkpoint" if checkpoint is not None else "random-init"
    out.mkdir(parents=True, exist_ok=True)
    emb = extract_embeddings(store, checkpoint, config=cfg, out_path=out / f"{name}.npz",
                             progress=progress, recompute_changed=True)
    if checkpoint is None:
        note = ("RANDOM-INIT encoder (no checkpoint given): untrained weights, seed "
                f"{cfg.seed}, {emb.provenance.get('batchnorm', 'BatchNorm as built')}. "
                "A baseline that shows the data's structure, not a DrasCLR representation; "
                "pass --checkpoint for a trained one.")
    else:
        note = (f"checkpoint {checkpoint} ({emb.provenance.get('encoder_kind', '?')} "
                "encoder)")
    return emb, note


def _evaluate(emb: Any, labels: pd.DataFrame, n_permutations: int
              ) -> tuple[pd.DataFrame | None, pd.DataFrame | None, list[str]]:
    """Phenotype probes of every label column, survival when time and event are given."""
    import warnings

    from drasclr_toolkit.evaluate import evaluate_phenotypes, evaluate_survival, pool_embeddings

    features = pool_embeddings(emb)
    labels = labels.loc[labels.index.isin(features.index)]
    problems: list[str] = []
    phenotypes = survival = None
    targets = [c for c in labels.columns if c not in SURVIVAL_COLUMNS]
    n = len(labels)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if targets:
            try:
                phenotypes = evaluate_phenotypes(
                    {"embedding": features}, labels[targets], cv=min(5, max(2, n // 2)),
                    n_repeats=2, n_permutations=n_permutations)
            except Exception as exc:  # noqa: BLE001 - a thin label table is a note, not a stop
                problems.append(f"phenotype probes not run: {type(exc).__name__}: {exc}")
        if all(c in labels.columns for c in SURVIVAL_COLUMNS):
            try:
                survival = evaluate_survival(
                    {"embedding": features}, labels["time"], labels["event"],
                    cv=min(5, max(2, int(labels["event"].sum()))), n_repeats=2,
                    models=("coxph",), n_permutations=n_permutations)
            except Exception as exc:  # noqa: BLE001
                problems.append(f"survival models not run: {type(exc).__name__}: {exc}")
    return phenotypes, survival, problems


def probe_dataset(
    folder: str | os.PathLike,
    out: str | os.PathLike,
    labels: str | os.PathLike | pd.DataFrame | None = None,
    checkpoint: str | os.PathLike | None = None,
    atlas: Any = None,
    config: str | os.PathLike | Mapping[str, Any] = "tiny",
    *,
    n_jobs: int = 1,
    thresholds: QCThresholds | None = None,
    n_permutations: int = 10,
    report: bool = True,
    progress: bool = False,
) -> ProbeResult:
    """Scan, check, preprocess, embed, QC and (with labels) evaluate a folder of CT scans.

    Args:
        folder: scans (NIfTI, NRRD, MHA/MHD files, DICOM series folders), searched
            recursively; masks/labels/segmentations are skipped by name.
        out: work folder (atlas, patch store, embeddings, ``qc.csv``, ``report.html``).
        labels: CSV or DataFrame with ``subject_id`` and label columns (``time`` and
            ``event`` for survival).
        checkpoint: encoder checkpoint; None = a random-init encoder (said so everywhere).
        atlas: None (built from the data), ``"official"``, an atlas folder, or an Atlas.
        config: ``tiny``, ``gpu`` or a YAML file (its preprocess and embed sections).
        n_jobs: preprocessing worker processes.
        thresholds: limits of the absolute QC rules (default: the config's ``preprocess.qc``).
        n_permutations: permutations of the evaluation's null (small: a quick look).
        report: write ``out/report.html``.
    """
    from drasclr_toolkit.embed import EmbedConfig

    out = Path(out).expanduser().absolute()
    out.mkdir(parents=True, exist_ok=True)
    # The user's inputs first (labels, atlas, config): a typo fails before any work.
    label_table = load_labels(labels, what="labels")
    chosen = resolve_atlas(atlas)
    problems: list[str] = []
    config = load_config(config)  # read once; each stage gets its section whole
    cfg = _preprocess_config(config, chosen, problems)
    embed_cfg = EmbedConfig.from_dict(config["embed"])
    manifest = scan_folder(folder)
    work = out / "preprocess"
    try:
        # One read and segmentation per scan: the load checks now, the atlas, patches,
        # QC and overlays later from what it made (out/preprocess/scan_products).
        checks = prepare_scans(manifest, work, cfg, progress=progress, n_jobs=n_jobs)
    except Exception as exc:  # noqa: BLE001 - e.g. a foreign --out: still check and report
        log.exception("probe: the scan products could not be written")
        problems.append(f"preprocessing stopped: {type(exc).__name__}: {exc}")
        checks = check_scans(manifest)
    result = ProbeResult(out, None, manifest, checks, pd.DataFrame(), atlas=chosen,
                         labels=label_table, problems=problems, config=cfg)
    loaded = checks.loc[checks["status"] != "error", "subject_id"].tolist()
    pre_qc = None
    if loaded:
        try:
            good = manifest.subset(loaded)
            result.atlas = chosen or build_default_atlas(good, work, cfg, progress=progress,
                                                         n_jobs=n_jobs)
            result.store = run_preprocessing(good, result.atlas, work, cfg, n_jobs=n_jobs,
                                             progress=progress, keep_scan_images=True)
            pre_qc = qc_table(result.store, thresholds=cfg.qc)
        except Exception as exc:  # noqa: BLE001 - the report still says what happened
            log.exception("probe: preprocessing stopped")
            problems.append(f"preprocessing stopped: {type(exc).__name__}: {exc}")
    else:
        problems.append("no scan could be loaded, so nothing was preprocessed")
    result.qc = assess_scans(pre_qc, checks, cfg.qc if thresholds is None else thresholds)
    result.qc.to_csv(out / "qc.csv", index=False)
    if result.store is not None and result.store.subject_ids:
        try:
            result.embeddings, result.encoder_note = _embed(result.store, checkpoint, embed_cfg,
                                                            out / "embeddings", progress)
        except Exception as exc:  # noqa: BLE001
            log.exception("probe: embedding stopped")
            problems.append(f"embedding stopped: {type(exc).__name__}: {exc}")
    if label_table is not None and result.embeddings is not None:
        result.phenotypes, result.survival, more = _evaluate(result.embeddings, label_table,
                                                             n_permutations)
        problems += more
    try:
        if report:
            from drasclr_toolkit.probe.report import write_report

            result.report = write_report(result, out / "report.html")
    finally:
        ScanCache(work).drop_all_images()   # kept only for the overlays
    return result
