"""The preprocessing chain for one scan and for a cohort.

``preprocess_subject``: resample to ``spacing`` mm → segment lungs → register the lung
mask affinely to the atlas → map the atlas landmarks into the subject → cut a P³ patch at
each (HU clipped to [-1024, 240], -1024 outside the scan). The scan itself is never warped.

``run_preprocessing``: the same over a manifest, in worker processes, into a
:class:`~drasclr_toolkit.preprocess.store.PatchStore`; finished subjects are skipped (so a
killed run resumes), a failing subject is recorded with its reason and the rest go on,
``shard=(i, n)`` takes every n-th subject so n jobs can share a cohort.

Example:
    >>> from drasclr_toolkit.data import load_ct
    >>> res = preprocess_subject(load_ct("scan.nii.gz"), atlas)   # doctest: +SKIP
    >>> res.patches.shape                                          # doctest: +SKIP
    (581, 32, 32, 32)
"""

from __future__ import annotations

import concurrent.futures as cf
import hashlib
import json
import logging
import multiprocessing as mp
import os
import stat
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

import numpy as np
import SimpleITK as sitk
from pydantic import ConfigDict, Field

from drasclr_toolkit.config import Config
from drasclr_toolkit.data.problems import ManifestError, ManifestProblem
from drasclr_toolkit.errors import InputError, as_drasclr_error
from drasclr_toolkit.io_utils import (atomic_write_text, die_with_parent, refuse_foreign_folder,
                                      remove_stale_temp_files, safe_subject_id, subject_file)
from drasclr_toolkit.locks import folder_lock
from drasclr_toolkit.preprocess.atlas import Atlas
from drasclr_toolkit.preprocess.lungmask import LungSegConfig, segment_lungs
from drasclr_toolkit.preprocess.patches import (crop_patches, landmarks_missing, map_landmarks,
                                                patch_fractions, patch_inside_fraction,
                                                sample_patches_affine)
from drasclr_toolkit.preprocess.qc_rules import QCThresholds, absolute_flags
from drasclr_toolkit.preprocess.registration import (RegistrationConfig, register_affine,
                                                     transform_to_dict)
from drasclr_toolkit.constants import HU_MAX, HU_MIN
from drasclr_toolkit.preprocess.resample import (INTERPOLATORS, as_sitk, resample_isotropic,
                                                 resample_like, to_lps)
from drasclr_toolkit.preprocess.scans import (CHECK_COLUMNS, SCAN_PRODUCTS, SCAN_PRODUCTS_MARKER,
                                              ScanCache, ScanProducts, read_scan)
from drasclr_toolkit.preprocess.store import PatchStore

__all__ = [
    "PreprocessConfig",
    "SubjectResult",
    "build_default_atlas",
    "prepare_scans",
    "preprocess_subject",
    "run_preprocessing",
    "scan_changed",
    "scan_fingerprint",
    "settings_digest",
]

log = logging.getLogger(__name__)


class PreprocessConfig(Config):
    """Settings of the preprocess stage (the ``preprocess:`` section of a config YAML).

    Example:
        >>> cfg = PreprocessConfig.from_dict({"spacing": 2.0, "registration": {"iterations": 50}})
        >>> cfg.spacing, cfg.registration.iterations
        (2.0, 50)
    """

    model_config = ConfigDict(frozen=True)
    section = "preprocess config"
    yaml_section = ("preprocess",)
    key_advice = "Fix the spelling in the preprocess: section of your config."

    spacing: float = Field(1.0, gt=0)  # isotropic voxel size (mm) of the patches' grid
    interpolator: Literal[tuple(INTERPOLATORS)] = "bspline"  # "bspline" (reference) or "linear" (faster)
    hu_min: int = HU_MIN
    hu_max: int = HU_MAX
    patch_size: int = Field(32, ge=1)
    step: int = Field(26, ge=1)  # atlas landmark grid step (voxels); used when building an atlas
    min_lung_fraction: float = Field(0.1, ge=0, le=1)  # atlas patch kept above this lung fraction
    neighbors_k: int = Field(2, ge=0)
    patch_sampling: Literal["axis_aligned", "affine"] = "axis_aligned"  # see patches.py
    half_lung: float = Field(0.5, ge=0, le=1)  # QC: a patch "has lung" at or above this lung fraction
    threads: int = Field(0, ge=0)  # SimpleITK threads per worker; 0 = cores / jobs
    segmentation: LungSegConfig = Field(default_factory=LungSegConfig)
    registration: RegistrationConfig = Field(default_factory=RegistrationConfig)
    qc: QCThresholds = Field(default_factory=QCThresholds)  # absolute QC limits


@dataclass(eq=False)
class SubjectResult:
    """Everything ``preprocess_subject`` found for one scan.

    ``patches`` (L, P, P, P) int16 HU in (z, y, x) order; ``corners`` (L, 3) int subject
    patch corners (x, y, z) in ``image``'s grid; ``centres_mm`` (L, 3) LPS mm;
    ``lung_fraction`` (L,); ``in_scan`` (L,) bool: centre inside the scanned box;
    ``transform`` atlas→subject affine; ``qc`` figures; ``image``/``mask`` the resampled
    scan and its lung mask (kept for pictures, not stored).
    """

    subject_id: str | None
    patches: np.ndarray
    corners: np.ndarray
    centres_mm: np.ndarray
    lung_fraction: np.ndarray
    in_scan: np.ndarray
    transform: sitk.AffineTransform
    qc: dict[str, Any]
    image: sitk.Image | None = None
    mask: sitk.Image | None = None

    def record(self) -> dict[str, Any]:
        """JSON record of the subject (what the store keeps beside the arrays)."""
        return {
            "subject_id": self.subject_id,
            "status": "ok",
            "transform": transform_to_dict(self.transform),
            "centres_mm": np.round(self.centres_mm, 3).tolist(),
            "in_scan": self.in_scan.astype(int).tolist(),
            "qc": self.qc,
        }


def _resolve(config: PreprocessConfig | Mapping[str, Any] | None) -> PreprocessConfig:
    return PreprocessConfig.coerce(config)


def preprocess_subject(
    ct: Any,
    atlas: Atlas,
    config: PreprocessConfig | Mapping[str, Any] | None = None,
    lung_mask: Any | None = None,
    keep_images: bool = True,
    *,
    segmentation: Mapping[str, Any] | None = None,
) -> SubjectResult:
    """Whole chain for one scan (see module docstring); ``ct`` is a CTImage or sitk image.

    ``lung_mask`` (optional, any grid) skips segmentation; ``segmentation`` is then the
    info of the segmentation that made it (:func:`segment_lungs`' second value: its lung
    volumes and flags go into the QC), else it counts as a given mask. ``ct`` may already
    be on the ``config.spacing`` grid (as :func:`~drasclr_toolkit.preprocess.scans.read_scan`
    leaves it): then it is used as it is. The atlas grid spacing must equal
    ``config.spacing`` so that a patch covers the same millimetres in atlas and subject.

    Example:
        >>> res = preprocess_subject(ct, atlas, {"spacing": 2.0})   # doctest: +SKIP
        >>> res.qc["dice"], res.qc["frac_lung_patches"]              # doctest: +SKIP
        (0.93, 0.97)
    """
    cfg = _resolve(config)
    sid = getattr(ct, "subject_id", None)
    if not np.isclose(atlas.spacing, cfg.spacing, rtol=1e-3):
        raise InputError(
            f"subject {sid!r}: atlas grid is {atlas.spacing:g} mm but preprocess.spacing is "
            f"{cfg.spacing:g} mm; build the atlas at the same spacing (build_default_atlas) "
            "or change preprocess.spacing"
        )
    if atlas.patch_size != cfg.patch_size:
        raise InputError(
            f"atlas patch size {atlas.patch_size} differs from preprocess.patch_size {cfg.patch_size}"
        )
    timings: dict[str, float] = {}
    t = time.perf_counter()
    image = resample_isotropic(ct, cfg.spacing, cfg.interpolator)
    timings["resample_s"] = time.perf_counter() - t

    t = time.perf_counter()
    if lung_mask is None:
        mask, seg_info = segment_lungs(image, cfg.segmentation)
    else:
        mask = sitk.Cast(resample_like(to_lps(as_sitk(lung_mask)), image, "nearest", 0), sitk.sitkUInt8)
        if segmentation is not None:
            seg_info = dict(segmentation)
        else:
            seg_info = {"backend": "given", "flags": []}
            arr = sitk.GetArrayViewFromImage(mask)
            seg_info["lung_volume_ml"] = float((arr > 0).sum() * cfg.spacing**3 / 1000)
    timings["segment_s"] = time.perf_counter() - t

    t = time.perf_counter()
    reg = register_affine(mask, atlas.mask, cfg.registration)
    timings["register_s"] = time.perf_counter() - t

    t = time.perf_counter()
    mapped = map_landmarks(atlas.mask, atlas.landmarks, atlas.patch_size, reg.transform, image)
    corners = mapped["corners"]
    arr = sitk.GetArrayViewFromImage(image)
    if cfg.patch_sampling == "affine":
        patches = sample_patches_affine(image, atlas.mask, atlas.landmarks, atlas.patch_size, reg.transform)
        lung = sample_patches_affine(
            sitk.Cast(mask > 0, sitk.sitkInt16), atlas.mask, atlas.landmarks, atlas.patch_size,
            reg.transform, fill=0, interpolator=sitk.sitkNearestNeighbor,
        )
        lung_fraction = (lung > 0).reshape(len(lung), -1).mean(1).astype(np.float32)
    else:
        patches = crop_patches(arr, corners, atlas.patch_size, fill=HU_MIN)
        lung_fraction = patch_fractions(sitk.GetArrayViewFromImage(mask), corners, atlas.patch_size)
    patches = np.clip(patches, cfg.hu_min, cfg.hu_max).astype(np.int16)
    # A patch centre outside the scanned box is a missing landmark (partial coverage): it is
    # counted in QC and left out of pooling, never filled in by a squeezed registration.
    missing = landmarks_missing(mapped["centres_index"], image.GetSize())
    in_scan = ~missing
    inside = patch_inside_fraction(corners, image.GetSize(), atlas.patch_size)
    timings["patches_s"] = time.perf_counter() - t

    has_lung = lung_fraction >= cfg.half_lung
    qc = {
        "lung_volume_ml": float(seg_info.get("lung_volume_ml", np.nan)),
        "right_lung_ml": float(seg_info.get("right_lung_ml", np.nan)),
        "left_lung_ml": float(seg_info.get("left_lung_ml", np.nan)),
        "segmentation_flags": list(seg_info.get("flags", [])),
        "dice": float(reg.qc["dice"]),
        "dice_init": float(reg.qc.get("dice_init", np.nan)),
        "atlas_lung_covered": float(reg.qc.get("atlas_lung_covered", np.nan)),
        "partial_coverage": bool(reg.qc.get("partial_coverage", False)),
        "n_landmarks": int(len(corners)),
        "frac_in_scan": float(in_scan.mean()),
        "frac_missing": float(missing.mean()),
        "n_missing": int(missing.sum()),
        "partial_inside_min": float(inside.min()) if len(inside) else float("nan"),
        "registration_init": reg.qc.get("init"),
        "z_scale": reg.qc.get("z_scale"),
        "frac_lung_patches": float(has_lung.mean()),
        "frac_lung_patches_in_scan": float(has_lung[in_scan].mean()) if in_scan.any() else 0.0,
        "frac_any_lung_in_scan": float((lung_fraction[in_scan] > 0).mean()) if in_scan.any() else 0.0,
        "mean_lung_fraction": float(lung_fraction.mean()),
        "scan_size": [int(v) for v in image.GetSize()],
        **timings,
        "seconds": float(sum(timings.values())),
    }
    qc["qc_flags"] = absolute_flags(qc, cfg.qc)  # {rule: reason}; empty when it passes
    return SubjectResult(
        sid, patches, corners, mapped["centres_mm"], lung_fraction, in_scan, reg.transform, qc,
        image if keep_images else None, mask if keep_images else None,
    )


# ---------------------------------------------------------------------------- atlas helper
# Files whose presence marks a folder as a store of ours (resumed, not refused).
STORE_MARKERS = ("store.json", "atlas/atlas.json", SCAN_PRODUCTS_MARKER)


def build_default_atlas(
    manifest: Any,
    out_dir: str | os.PathLike,
    config: PreprocessConfig | Mapping[str, Any] | None = None,
    reference: str | None = None,
    progress: bool = False,
    n_jobs: int = 1,
) -> Atlas:
    """Atlas from the cohort subject with the median lung volume, cached in out_dir/atlas.

    Every subject's scan is read and segmented once (:func:`prepare_scans`; the lung
    volumes are kept in ``atlas.info["lung_volumes_ml"]``), and what was made waits in
    ``out_dir/scan_products`` for :func:`run_preprocessing`, which reads no scan again;
    ``reference`` names the subject to use instead (then only it is read). ``n_jobs``
    worker processes read the scans.

    Example:
        >>> atlas = build_default_atlas(manifest, "work/preprocess")   # doctest: +SKIP
        >>> atlas.info["reference_subject"]                             # doctest: +SKIP
        'syn003'
    """
    refuse_foreign_folder(out_dir, STORE_MARKERS, "drasclr preprocess")
    with folder_lock(out_dir, "preprocess (atlas)"):
        return _build_default_atlas(manifest, out_dir, config, reference, progress, n_jobs)


def _build_default_atlas(manifest: Any, out_dir: str | os.PathLike,
                         config: PreprocessConfig | Mapping[str, Any] | None,
                         reference: str | None, progress: bool, n_jobs: int = 1) -> Atlas:
    cfg = _resolve(config)
    cache = Path(out_dir) / "atlas"
    if (cache / "atlas.json").exists():
        atlas = Atlas.load(cache)
        if (reference is None or atlas.info.get("reference_subject") == reference) and np.isclose(
            atlas.spacing, cfg.spacing
        ):
            return atlas
        raise InputError(
            f"{cache} holds an atlas from subject {atlas.info.get('reference_subject')!r} at "
            f"{atlas.spacing:g} mm; remove it or use another out_dir to build a different one"
        )
    manifest = _as_manifest(manifest)
    scans = ScanCache(out_dir)
    volumes: dict[str, float] = {}
    if reference is None:
        # Every scan read and segmented once; the products wait in out_dir/scan_products
        # for run_preprocessing, which then reads no scan again.
        products_of = _prepare(manifest, out_dir, cfg, progress, n_jobs)
        for sid, products in products_of.items():
            if products.error is not None:
                log.warning("atlas: subject %s skipped (%s)", sid, products.error)
            elif np.isfinite(products.lung_volume_ml):
                volumes[sid] = products.lung_volume_ml
        if not volumes:
            reasons = "; ".join(f"{sid}: {p.error}" for sid, p in list(products_of.items())[:3])
            raise RuntimeError("no subject of the manifest could be segmented; cannot build an "
                               f"atlas (first reasons: {reasons})")
        vols = np.array(list(volumes.values()))
        # The subject closest to the median (ties: manifest order) is the reference.
        reference = list(volumes)[int(np.argmin(np.abs(vols - np.median(vols))))]
    image_path = manifest.image_path(reference)
    mask_path = _lung_mask_path(manifest, reference)
    products = scans.load(reference, image_path, cfg, mask_path)
    if products is None or products.image is None:
        products = read_scan(image_path, reference, cfg, mask_path)
        scans.save(products)
    if products.error is not None:
        raise RuntimeError(f"atlas reference subject {reference!r}, file {image_path}: "
                           f"{products.error}; choose another reference subject")
    info = {"reference_subject": reference, "reference_source": str(image_path),
            "spacing": float(cfg.spacing), "segmentation": products.segmentation}
    atlas = Atlas.from_mask(products.mask, cfg.patch_size, cfg.step, cfg.min_lung_fraction,
                            products.image, info)
    atlas.info["lung_volumes_ml"] = volumes
    atlas.save(cache)
    return atlas


def prepare_scans(
    manifest: Any,
    out_dir: str | os.PathLike,
    config: PreprocessConfig | Mapping[str, Any] | None = None,
    progress: bool = False,
    overwrite: bool = False,
    n_jobs: int = 1,
) -> "pd.DataFrame":
    """Read, check and segment every scan once, into ``out_dir/scan_products``; return the
    load-check table (the columns of :func:`~drasclr_toolkit.data.check_scans`).

    The atlas (:func:`build_default_atlas`) and :func:`run_preprocessing` into the same
    ``out_dir`` then use these products instead of reading the scans again. A scan read
    before (its record matches the file and settings) is not read again; a bad scan is a
    row of the table, never a stop.

    Example:
        >>> checks = prepare_scans(scan_folder("scans/"), "out/preprocess")   # doctest: +SKIP
        >>> checks[checks.status == "error"]                                 # doctest: +SKIP
    """
    import pandas as pd

    cfg = _resolve(config)
    manifest = _as_manifest(manifest)
    refuse_foreign_folder(out_dir, STORE_MARKERS, "drasclr preprocess", overwrite)
    with folder_lock(out_dir, "preprocess (scans)"):
        remove_stale_temp_files(Path(out_dir) / SCAN_PRODUCTS)  # a killed run's half files
        products = _prepare(manifest, out_dir, cfg, progress, n_jobs)
    return pd.DataFrame([p.check_row() for p in products.values()], columns=CHECK_COLUMNS)


def _read_one(out_dir: str, sid: str, image_path: str, mask_path: str | None, cfg_dict: dict,
              threads: int) -> dict[str, Any]:
    """Worker: read one scan into ``out_dir/scan_products``; returns its record."""
    if threads > 0:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)
    products = read_scan(image_path, sid, PreprocessConfig.from_dict(cfg_dict), mask_path)
    # A subject already in the store needs no image kept for its patches.
    done = subject_file(Path(out_dir) / "subjects", sid, ".json").exists()
    ScanCache(out_dir).save(products, images=not done)
    return products.record()


def _prepare(manifest: Any, out_dir: str | os.PathLike, cfg: PreprocessConfig,
             progress: bool, n_jobs: int = 1) -> dict[str, ScanProducts]:
    """Each subject's scan products: from its record, or read now (and recorded), in
    ``n_jobs`` worker processes."""
    from tqdm.auto import tqdm

    scans = ScanCache(out_dir)
    out: dict[str, ScanProducts | None] = {}
    jobs = []
    for sid in manifest.subject_ids:  # ids name files: refuse an unsafe one before any work
        safe_subject_id(sid)
    threads = cfg.threads or max(1, (os.cpu_count() or 1) // max(1, n_jobs))
    for sid in manifest.subject_ids:
        image_path, mask_path = manifest.image_path(sid), _lung_mask_path(manifest, sid)
        out[sid] = scans.load(sid, image_path, cfg, mask_path, images=False)
        if out[sid] is None:
            jobs.append((str(out_dir), sid, str(image_path), mask_path, cfg.to_dict(), threads))
    bar = tqdm(total=len(jobs), desc="read scans", disable=not progress, unit="scan")
    if n_jobs <= 1 or len(jobs) <= 1:
        for job in jobs:
            out[job[1]] = ScanProducts.from_record(_read_one(*job))
            bar.update(1)
    else:
        ctx = mp.get_context("spawn")  # fork after SimpleITK has started threads can deadlock
        with cf.ProcessPoolExecutor(max_workers=n_jobs, mp_context=ctx,
                                    initializer=die_with_parent) as pool:
            futures = {pool.submit(_read_one, *job): job[1] for job in jobs}
            for fut in cf.as_completed(futures):
                sid = futures[fut]
                try:
                    out[sid] = ScanProducts.from_record(fut.result())
                except Exception as exc:  # noqa: BLE001 - a dead worker (out of memory?)
                    # Not recorded: the next run (or the preprocessing worker) reads it again.
                    out[sid] = ScanProducts(sid, {"status": "ok", "field": None, "message": ""},
                                            error=f"reading the scan stopped: "
                                                  f"{type(exc).__name__}: {exc}",
                                            error_stage="load")
                bar.update(1)
    bar.close()
    return out  # type: ignore[return-value]


# ---------------------------------------------------------------------------- cohort
def _as_manifest(manifest: Any) -> Any:
    if isinstance(manifest, (str, os.PathLike)):
        from drasclr_toolkit.data import Manifest

        return Manifest.load(manifest, check_files=False)
    return manifest


def _lung_mask_path(manifest: Any, sid: str) -> str | None:
    table = getattr(manifest, "table", None)
    if table is None or "lung_mask" not in table.columns:
        return None
    row = table.loc[table["subject_id"].astype(str) == sid, "lung_mask"]
    if len(row) == 0:
        return None
    v = row.iloc[0]
    if v is None or (isinstance(v, float) and np.isnan(v)) or str(v).strip() == "":
        return None
    return str(v)


# Settings that do not change a subject's patches (left out of its settings digest).
_NOT_IN_SETTINGS = ("threads", "qc")


def settings_digest(cfg: PreprocessConfig | Mapping[str, Any]) -> str:
    """A short hash of the settings that decide a subject's patches."""
    d = cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg)
    d = {k: v for k, v in d.items() if k not in _NOT_IN_SETTINGS}
    text = json.dumps(d, sort_keys=True, default=str)
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


def _files_of(path: Path) -> list[Path]:
    return sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]


def _hashable(path: Path) -> bool:
    """A regular file: a FIFO, socket or device is never opened (reading a FIFO blocks until
    something writes to it; load_ct then refuses it by name)."""
    try:
        return stat.S_ISREG(path.stat().st_mode)
    except OSError:
        return False


def scan_fingerprint(image_path: str | os.PathLike, with_hash: bool = True) -> dict[str, Any]:
    """Size, modification time and (``with_hash``) a BLAKE2b content hash of a scan file,
    or of every file of a DICOM folder: what a resume compares to notice a replaced scan.

    Example:
        >>> import tempfile
        >>> f = Path(tempfile.mkdtemp()) / "a.nii.gz"
        >>> _ = f.write_bytes(b"scan")
        >>> sorted(scan_fingerprint(f))
        ['blake2b', 'mtime_ns', 'size']
    """
    files = _files_of(Path(image_path))
    stats = [f.stat() for f in files]
    out: dict[str, Any] = {"size": int(sum(s.st_size for s in stats)),
                           "mtime_ns": int(max((s.st_mtime_ns for s in stats), default=0))}
    if with_hash:
        h = hashlib.blake2b(digest_size=16)
        for f in files:
            if not _hashable(f):
                continue
            if len(files) > 1:
                h.update(f.name.encode() + b"\0")
            with open(f, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    h.update(block)
        out["blake2b"] = h.hexdigest()
    return out


def scan_changed(store: PatchStore, sid: str, image_path: str | os.PathLike,
                 settings: str) -> str | None:
    """Why a finished subject must be redone (its scan file or the settings changed since),
    or None. Size and time equal: unchanged without reading the file; else the content
    hash decides (a copy with a new time but the same bytes is kept)."""
    source = store.subject_record(sid).get("source")
    if not isinstance(source, dict):
        return None  # recorded before fingerprints existed
    if source.get("settings") != settings:
        return "the preprocessing settings changed since it was done"
    try:
        now = scan_fingerprint(image_path, with_hash=False)
    except OSError:
        return None  # a missing scan: keep what was made from it
    if now["size"] == source.get("size") and now["mtime_ns"] == source.get("mtime_ns"):
        return None
    if scan_fingerprint(image_path)["blake2b"] == source.get("blake2b"):
        return None
    return (f"its scan file {image_path} changed since it was done (size "
            f"{source.get('size')} then, {now['size']} now; content hash differs)")


def _work_one(
    store_path: str, sid: str, image_path: str, mask_path: str | None, cfg_dict: dict,
    threads: int, keep_scan_images: bool = False,
) -> tuple[str, str, str]:
    """Worker: one subject into the store. Returns (sid, status, reason).

    The scan's products (image and mask on the grid, segmentation, densitometry) come from
    ``scan_products`` when the atlas step left them there, else the scan is read now: either
    way one load_ct and one segmentation per subject and run."""
    if threads > 0:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)
    stage = "load"
    store = PatchStore(store_path)
    scans = ScanCache(store_path)
    try:
        cfg = PreprocessConfig.from_dict(cfg_dict)
        # taken before reading, so a file replaced meanwhile is noticed next time
        source = {**scan_fingerprint(image_path), "settings": settings_digest(cfg)}
        products = scans.load(sid, image_path, cfg, mask_path)
        if products is None or (products.image is None and products.error is None):
            products = read_scan(image_path, sid, cfg, mask_path)
            scans.save(products, images=keep_scan_images)
        if products.error is not None:
            stage = products.error_stage or "preprocess"
            log.warning("subject %s failed at %s: %s", sid, stage, products.error)
            store.write_failure(sid, products.error, stage)
            return sid, "failed", products.error
        stage = "preprocess"
        res = preprocess_subject(products.image, store.atlas, cfg, lung_mask=products.mask,
                                 keep_images=False, segmentation=products.segmentation)
        res.subject_id = sid
        # The scan's own reading times (the cached products took none here).
        res.qc.update(products.timings)
        res.qc["seconds"] = float(sum(v for k, v in res.qc.items()
                                      if k.endswith("_s") and isinstance(v, float)))
        stage = "write"
        store.write_subject(sid, res.patches, res.lung_fraction, res.corners,
                            {**res.record(), "source": source, "scan": products.check,
                             "densitometry": products.densitometry,
                             "densitometry_mask": products.densitometry_mask,
                             "densitometry_error": products.densitometry_error})
        if not keep_scan_images:
            scans.drop_images(sid)
        return sid, "ok", ""
    except Exception as exc:
        said = as_drasclr_error(exc) if isinstance(exc, OSError) else None  # disk full, ...
        reason = f"{type(said or exc).__name__}: {said or exc}"
        log.warning("subject %s failed at %s: %s", sid, stage, reason)
        log.debug("%s", traceback.format_exc())
        store.write_failure(sid, reason, stage)
        return sid, "failed", reason


def run_preprocessing(
    manifest: Any,
    atlas: Atlas | str | os.PathLike | None,
    out_dir: str | os.PathLike,
    config: PreprocessConfig | Mapping[str, Any] | None = None,
    n_jobs: int = 1,
    shard: tuple[int, int] = (0, 1),
    progress: bool = True,
    retry_failed: bool = True,
    overwrite: bool = False,
    keep_scan_images: bool = False,
) -> PatchStore:
    """Preprocess a cohort into ``out_dir`` (a PatchStore); resumable and shardable.

    ``atlas``: an Atlas, an atlas directory, or None for the default (median lung volume
    subject, built and cached in out_dir/atlas). ``shard=(i, n)`` processes the subjects
    whose manifest position p has p % n == i. Failures are recorded in
    out_dir/failures/<sid>.json and in the QC table (out_dir/qc.csv); with
    ``retry_failed`` they are tried again on the next run. An ``out_dir`` holding files
    that are not a store (a user's ``qc.csv``, ``config.json``, ...) is refused unless
    ``overwrite=True``.

    Each scan is read and segmented once: by the atlas step (``atlas=None``, or
    :func:`prepare_scans` before), whose products in ``out_dir/scan_products`` are used
    here, or here. Each subject's record keeps its load check, lung volumes and
    densitometry (whole lung and six zones, at the scan's own resolution), so later stages
    read no scan. The scan's image on the grid is deleted once the subject's patches are
    written, unless ``keep_scan_images`` (the probe keeps them for its overlays).

    Example:
        >>> store = run_preprocessing("cohort/manifest.csv", None, "work/pre", n_jobs=2)  # doctest: +SKIP
        >>> len(store.subject_ids)                                                       # doctest: +SKIP
        12
    """
    from tqdm.auto import tqdm

    from drasclr_toolkit.preprocess.qc import qc_table

    cfg = _resolve(config)
    out = Path(out_dir)
    manifest = _as_manifest(manifest)
    i, n = (int(v) for v in shard)
    if not (n >= 1 and 0 <= i < n):
        raise InputError(f"shard must be (i, n) with 0 <= i < n, got {shard}")
    # Ids name files (records, failure notes): a table built in Python skipped the
    # manifest reader's check, so check here, before anything is written.
    sids = [safe_subject_id(s) for s in manifest.subject_ids]
    if not sids:
        raise ManifestError([ManifestProblem("the manifest lists no subjects (a header only?)",
                                             column="subject_id")],
                            getattr(manifest, "path", None))
    refuse_foreign_folder(out, STORE_MARKERS, "drasclr preprocess", overwrite)
    # One writer per folder (shard jobs share it, one job per shard): a second run into
    # the same --out is refused, naming the holder's pid.
    with folder_lock(out, "preprocess", shard=(i, n)):
        # Temporary files left by a run killed mid-write. A dead pid is exact on one machine;
        # shard jobs may run on other hosts sharing the folder, so then only old files go.
        remove_stale_temp_files(out, min_age_s=0.0 if n == 1 else 3600.0)
        if atlas is None:
            atlas = build_default_atlas(manifest, out, cfg, progress=progress, n_jobs=n_jobs)
        elif not isinstance(atlas, Atlas):
            atlas = Atlas.load(atlas)
        store = PatchStore.create(out, sids, atlas, neighbors_k=cfg.neighbors_k)
        atomic_write_text(out / "config.json", json.dumps(cfg.to_dict(), indent=1, default=str),
                          make_parents=True)

        todo = []
        settings = settings_digest(cfg)
        for pos, sid in enumerate(sids):
            if pos % n != i:
                continue
            if store.is_done(sid):
                try:
                    why = scan_changed(store, sid, manifest.image_path(sid), settings)
                except Exception:  # noqa: BLE001 - an unreadable path is the worker's to report
                    why = None
                if why is None:
                    continue
                log.warning("subject %s is redone: %s", sid, why)
                store.forget(sid)
            if not retry_failed and (out / "failures" / f"{sid}.json").exists():
                continue
            todo.append(sid)

        cfg_dict = cfg.to_dict()
        threads = cfg.threads or max(1, (os.cpu_count() or 1) // max(1, n_jobs))
        jobs = []
        for sid in todo:
            try:
                image_path = str(manifest.image_path(sid))
            except Exception as exc:
                store.write_failure(sid, f"{type(exc).__name__}: {exc}", "manifest")
                continue
            jobs.append((str(out), sid, image_path, _lung_mask_path(manifest, sid), cfg_dict,
                         threads, keep_scan_images))

        # no bar when every scan is done already: an empty "0/0" bar reads as a stalled run
        bar = tqdm(total=len(jobs), desc=f"preprocess shard {i}/{n}",
                   disable=not progress or not jobs, unit="scan")
        if n_jobs <= 1:
            for job in jobs:
                sid, status, _ = _work_one(*job)
                bar.update(1)
                bar.set_postfix_str(f"{sid} {status}")
        else:
            _run_pool(jobs, n_jobs, store, bar)
        bar.close()
        store.refresh()
        qc_table(store, thresholds=cfg.qc, write=True)
        return store


def _run_pool(jobs: list[tuple], n_jobs: int, store: PatchStore, bar: Any) -> None:
    """Run jobs in spawned worker processes; a crashed worker fails only its subject."""
    pending = list(jobs)
    ctx = mp.get_context("spawn")  # fork after SimpleITK has started threads can deadlock
    while pending:
        # Workers die with this process (even after kill -9) instead of writing on.
        with cf.ProcessPoolExecutor(max_workers=n_jobs, mp_context=ctx,
                                    initializer=die_with_parent) as pool:
            futures = {pool.submit(_work_one, *job): job for job in pending}
            pending = []
            broken = False
            for fut in cf.as_completed(futures):
                job = futures[fut]
                try:
                    sid, status, _ = fut.result()
                    bar.update(1)
                    bar.set_postfix_str(f"{sid} {status}")
                except cf.process.BrokenProcessPool:
                    if not broken:
                        # The first broken future's subject is blamed; others are retried.
                        broken = True
                        store.write_failure(job[1], "worker process died (out of memory?)", "worker")
                        bar.update(1)
                    else:
                        pending.append(job)
                except Exception as exc:  # pragma: no cover - _work_one catches its own
                    store.write_failure(job[1], f"{type(exc).__name__}: {exc}", "worker")
                    bar.update(1)
