"""Each scan read and segmented once per run: what every later stage needs from it.

:func:`read_scan` opens a scan with :func:`~drasclr_toolkit.data.load_ct` (its load
checks kept as a row of :func:`~drasclr_toolkit.data.check_scans`' table), segments the
lungs at the scan's own resolution (or takes the manifest's ``lung_mask``), measures the
lung densitometry there (whole lung and six zones,
:func:`~drasclr_toolkit.preprocess.densitometry.densitometry`), and brings image and mask
onto the preprocessing grid. Everything later comes from these products: the atlas's choice
of reference (lung volumes) and its mask, the patches, the QC, the densitometry of the
evaluation, the probe's table and overlays.

Why densitometry at the scan's own resolution: %LAA-950 and Perc15 are thresholds and
percentiles of single voxels; interpolation onto the preprocessing grid smooths the noise
and shifts them. The segmentation works on its own ``work_spacing`` grid either way, so the
mask on the preprocessing grid is the same labels brought over (linear per label, as
:func:`~drasclr_toolkit.preprocess.segment_lungs` itself returns them).

:class:`ScanCache` keeps the products in ``<out>/scan_products/``: ``<sid>.json`` (load
check, segmentation summary, densitometry, the scan file's size and time and the settings
it was made with) and, until the subject's patches are written, the image and mask on the
preprocessing grid (``<sid>.image.mha``, ``<sid>.mask.mha``). A record whose scan file or
settings changed since is ignored, and the scan read again.

Example:
    >>> products = read_scan("scan.nii.gz", "case01", PreprocessConfig())   # doctest: +SKIP
    >>> products.densitometry["laa950_pct"], products.lung_volume_ml        # doctest: +SKIP
    (4.2, 5231.4)
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from drasclr_toolkit.io_utils import atomic_write, atomic_write_text, subject_file

__all__ = ["SCAN_PRODUCTS", "ScanCache", "ScanProducts", "read_scan", "scan_settings_digest"]

log = logging.getLogger(__name__)

SCAN_PRODUCTS = "scan_products"        # folder inside a preprocessing --out
SCAN_PRODUCTS_MARKER = f"{SCAN_PRODUCTS}/products.json"
SCAN_FORMAT_VERSION = 1
CHECK_COLUMNS = ["subject_id", "status", "field", "message", "shape", "spacing"]


def scan_settings_digest(cfg: Any, mask_path: str | os.PathLike | None = None) -> str:
    """A short hash of what decides a scan's products: grid, interpolator, segmentation
    and the manifest's lung mask file."""
    seg = cfg.segmentation.to_dict() if hasattr(cfg.segmentation, "to_dict") else cfg.segmentation
    text = json.dumps({"spacing": float(cfg.spacing), "interpolator": cfg.interpolator,
                       "segmentation": seg, "lung_mask": None if mask_path is None
                       else str(Path(mask_path))}, sort_keys=True, default=str)
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


def _jsonable(info: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in info.items():
        try:
            json.dumps(v)
        except (TypeError, ValueError):
            continue
        out[k] = v
    return out


@dataclass(eq=False)
class ScanProducts:
    """What one read of a scan gave (see the module docstring).

    ``check``: the load check (``status`` ok / warning / error, ``field``, ``message``,
    ``shape`` (z, y, x), ``spacing`` (x, y, z)). ``image``/``mask``: int16 HU and uint8
    labels (1 right, 2 left) on the preprocessing grid, None when not kept. ``error``: why
    the subject cannot be preprocessed (load or segmentation failure, ``error_stage`` says
    which), else None. ``densitometry``: whole-lung and zonal values at the scan's own
    resolution (None, with ``densitometry_error``, when they could not be measured).
    """

    subject_id: str
    check: dict[str, Any]
    source: dict[str, Any] = field(default_factory=dict)
    image: sitk.Image | None = None
    mask: sitk.Image | None = None
    segmentation: dict[str, Any] = field(default_factory=dict)
    densitometry: dict[str, float] | None = None
    densitometry_mask: str | None = None      # "manifest" or "segmented"
    densitometry_error: str | None = None
    error: str | None = None
    error_stage: str | None = None
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def lung_volume_ml(self) -> float:
        return float(self.segmentation.get("lung_volume_ml", np.nan))

    def check_row(self) -> dict[str, Any]:
        """The subject's row of the load-check table (``check_scans``' columns)."""
        row = {"subject_id": self.subject_id, **self.check}
        for key in ("shape", "spacing"):
            if row.get(key) is not None:
                row[key] = tuple(row[key])
        return {c: row.get(c) for c in CHECK_COLUMNS}

    def record(self) -> dict[str, Any]:
        """The JSON record (everything but the images)."""
        return {"format_version": SCAN_FORMAT_VERSION, "subject_id": self.subject_id,
                "check": self.check, "source": self.source,
                "segmentation": self.segmentation, "densitometry": self.densitometry,
                "densitometry_mask": self.densitometry_mask,
                "densitometry_error": self.densitometry_error, "error": self.error,
                "error_stage": self.error_stage, "timings": self.timings}

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> "ScanProducts":
        keys = ("check", "source", "segmentation", "densitometry", "densitometry_mask",
                "densitometry_error", "error", "error_stage", "timings")
        return cls(str(record["subject_id"]), **{k: record.get(k) for k in keys
                                                 if record.get(k) is not None})


def read_scan(image_path: str | os.PathLike, subject_id: str, config: Any,
              mask_path: str | os.PathLike | None = None, checks: Any = None) -> ScanProducts:
    """Load, check, segment, measure and resample one scan (see the module docstring).

    ``config`` is a :class:`~drasclr_toolkit.preprocess.PreprocessConfig` (its ``spacing``,
    ``interpolator`` and ``segmentation``). A scan that cannot be loaded gives products with
    ``check["status"] == "error"`` and ``error``; a segmentation that finds no lungs gives
    ``error`` (stage ``preprocess``). Nothing is raised for a bad scan.
    """
    from drasclr_toolkit.data import ct as ct_module

    from drasclr_toolkit.preprocess import lungmask
    from drasclr_toolkit.preprocess.densitometry import densitometry
    from drasclr_toolkit.preprocess.resample import resample_isotropic, resample_like, to_lps

    from drasclr_toolkit.preprocess.pipeline import scan_fingerprint

    products = ScanProducts(subject_id, {"status": "ok", "field": None, "message": "",
                                         "shape": None, "spacing": None})
    try:  # taken before reading, so a file replaced meanwhile is noticed next time
        products.source = scan_fingerprint(image_path, with_hash=False)
    except OSError:
        products.source = {}
    products.source["settings"] = scan_settings_digest(config, mask_path)
    t = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ct_module.CTLoadWarning)
        try:
            ct = ct_module.load_ct(image_path, subject_id=subject_id, checks=checks)
        except ct_module.CTLoadError as exc:
            products.check.update(status="error", field=exc.field, message=str(exc))
            products.error, products.error_stage = f"{type(exc).__name__}: {exc}", "load"
            return products
    found = [w for w in caught if issubclass(w.category, ct_module.CTLoadWarning)]
    if found:
        products.check.update(status="warning",
                              message=" | ".join(str(w.message) for w in found),
                              field=getattr(found[0].message, "field", None))
    products.check.update(shape=[int(v) for v in ct.shape],
                          spacing=[float(v) for v in ct.spacing])
    products.timings["load_s"] = time.perf_counter() - t
    try:
        native = to_lps(ct.to_sitk())
        del ct
        t = time.perf_counter()
        image = resample_isotropic(native, config.spacing, config.interpolator)
        products.timings["resample_s"] = time.perf_counter() - t
        t = time.perf_counter()
        if mask_path is not None:
            given = to_lps(sitk.ReadImage(str(mask_path)))
            native_mask = resample_like(given, native, "nearest", 0)
            mask = sitk.Cast(resample_like(given, image, "nearest", 0), sitk.sitkUInt8)
            arr = sitk.GetArrayViewFromImage(mask)
            info: dict[str, Any] = {"backend": "given", "flags": [], "lung_volume_ml": float(
                (arr > 0).sum() * float(config.spacing) ** 3 / 1000)}
            products.densitometry_mask = "manifest"
        else:
            native_mask, info = lungmask.segment_lungs(native, config.segmentation)
            mask = lungmask.labels_to_grid(native_mask, image)
            products.densitometry_mask = "segmented"
        products.segmentation = _jsonable(info)
        products.timings["segment_s"] = time.perf_counter() - t
    except Exception as exc:  # noqa: BLE001 - a scan without lungs is a failed subject
        products.error, products.error_stage = f"{type(exc).__name__}: {exc}", "preprocess"
        return products
    t = time.perf_counter()
    try:
        values = densitometry(native, native_mask)
        products.densitometry = {k: float(v) for k, v in values.items()}
    except Exception as exc:  # noqa: BLE001 - the patches do not need it; evaluation says so
        products.densitometry_error = f"{type(exc).__name__}: {exc}"
        log.warning("subject %s: no densitometry (%s)", subject_id, products.densitometry_error)
    products.timings["densitometry_s"] = time.perf_counter() - t
    products.image, products.mask = image, mask
    return products


def _write_image(image: sitk.Image, path: Path) -> None:
    # Light compression: these files live only until the subject's patches are written.
    atomic_write(path, lambda tmp: sitk.WriteImage(image, str(tmp), True, 1),
                 suffix=".tmp.mha")


class ScanCache:
    """The scan products of a preprocessing folder (``<out>/scan_products``).

    Example:
        >>> cache = ScanCache("work/preprocess")                                    # doctest: +SKIP
        >>> made = cache.load("syn001", "cohort/syn001.nii.gz", cfg)   # doctest: +SKIP
        >>> made.densitometry["mld_hu"]                                  # doctest: +SKIP
        -861.2
    """

    def __init__(self, out_dir: str | os.PathLike) -> None:
        self.out_dir = Path(out_dir)
        self.path = self.out_dir / SCAN_PRODUCTS

    def _file(self, sid: str, suffix: str) -> Path:
        return subject_file(self.path, sid, suffix)

    def record(self, sid: str) -> dict[str, Any] | None:
        """The subject's JSON record, or None (none yet, or unreadable: then read again)."""
        path = self._file(sid, ".json")
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        return record if isinstance(record, dict) else None

    def save(self, products: ScanProducts, images: bool = True) -> None:
        """Write the products (images first, the JSON record last: its commit marker)."""
        self.path.mkdir(parents=True, exist_ok=True)
        marker = self.out_dir / SCAN_PRODUCTS_MARKER
        if not marker.exists():
            atomic_write_text(marker, json.dumps({"format_version": SCAN_FORMAT_VERSION,
                                                  "what": "drasclr scan products"}))
        sid = products.subject_id
        if images and products.image is not None:
            _write_image(products.image, self._file(sid, ".image.mha"))
            _write_image(products.mask, self._file(sid, ".mask.mha"))
        atomic_write_text(self._file(sid, ".json"), json.dumps(products.record(), indent=1))

    def load(self, sid: str, image_path: str | os.PathLike, config: Any,
             mask_path: str | os.PathLike | None = None, images: bool = True
             ) -> ScanProducts | None:
        """The products of ``sid`` when its record matches the scan file and settings now
        (None otherwise); with ``images`` also the image and mask when still kept."""
        from drasclr_toolkit.preprocess.pipeline import scan_fingerprint

        record = self.record(sid)
        if record is None or record.get("format_version") != SCAN_FORMAT_VERSION:
            return None
        source = record.get("source") or {}
        if source.get("settings") != scan_settings_digest(config, mask_path):
            return None
        try:
            now = scan_fingerprint(image_path, with_hash=False)
        except OSError:
            now = {}
        if now.get("size") != source.get("size") or now.get("mtime_ns") != source.get("mtime_ns"):
            return None
        products = ScanProducts.from_record(record)
        if images:
            paths = self._file(sid, ".image.mha"), self._file(sid, ".mask.mha")
            if all(p.is_file() for p in paths):
                try:
                    products.image, products.mask = (sitk.ReadImage(str(p)) for p in paths)
                except RuntimeError:  # a damaged file: the scan is read again
                    products.image = products.mask = None
        return products

    def has_images(self, sid: str) -> bool:
        return self._file(sid, ".image.mha").is_file()

    def drop_images(self, sid: str) -> None:
        """Delete the subject's image and mask (its record stays)."""
        for suffix in (".image.mha", ".mask.mha"):
            self._file(sid, suffix).unlink(missing_ok=True)

    def drop_all_images(self) -> None:
        if self.path.is_dir():
            for p in self.path.glob("*.mha"):
                p.unlink(missing_ok=True)

