"""Per-landmark results as NIfTI volumes a researcher overlays on the CT (3D Slicer, ITK-SNAP).

A per-landmark value (a dense emphysema class or extent, an embedding principal component,
a probe's per-patch score) is painted into the voxels its patch covers:

* **atlas space** (:func:`atlas_space_map`): on the atlas grid, each voxel takes the value
  of the landmark whose patch contains it and whose centre is nearest (patches overlap);
  with ``lung_only`` (default) only atlas-lung voxels are painted. Voxels of no landmark,
  and landmarks whose value is missing, stay empty.
* **the patient's own scan space** (:func:`scan_space_map`): the atlas map pulled onto the
  scan's voxel grid through the inverse of the stored registration (the store records
  the affine atlas → subject; a scan voxel at ``q`` takes the atlas map at ``T⁻¹(q)``),
  nearest neighbour, so classes stay classes. Landmarks outside the scan (a partial scan)
  are left empty, like their patches.

Empty is NaN for continuous maps (float32) and 0 for class maps (uint8, class ``k`` stored
as ``k + 1``); a JSON file beside each map names the quantity, unit, labels and the
convention. :func:`write_subject_maps` writes both spaces for one subject of a patch store.

The NaN is in the file (nibabel reads it), but ITK's NIfTI reader before ITK 6 (SimpleITK
2.5, 3D Slicer, ITK-SNAP) replaces every NaN voxel with 0 on reading, whatever the header
says, so there an empty voxel looks like a true 0 extent or a mid-range PC score. Each
continuous map therefore comes with a uint8 coverage mask ``<name>_covered_<space>.nii.gz``
(1 where the map holds a value, 0 empty): overlay or threshold by it in those tools, and
read maps in Python with :func:`read_map`, which puts the NaN back from the mask.

Example:
    >>> import numpy as np, SimpleITK as sitk
    >>> grid = sitk.Image(8, 8, 8, sitk.sitkUInt8) + 1           # an all-lung 8³ atlas grid
    >>> image = atlas_space_map(np.array([0.2, 0.9]), np.array([[0, 0, 0], [4, 4, 4]]), 4, grid)
    >>> arr = sitk.GetArrayFromImage(image)
    >>> round(float(arr[0, 0, 0]), 3), round(float(arr[7, 7, 7]), 3)
    (0.2, 0.9)
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import SimpleITK as sitk

from drasclr_toolkit.errors import DrasclrError
from drasclr_toolkit.io_utils import atomic_write, atomic_write_text, subject_file

__all__ = ["LandmarkMap", "MapError", "atlas_space_map", "coverage_path", "embedding_pc_maps",
           "read_map", "scan_space_map", "write_cohort_maps", "write_subject_maps"]


class MapError(DrasclrError, ValueError):
    """Per-landmark values that cannot be painted as asked (shape, subject, scan)."""


@dataclass(frozen=True)
class LandmarkMap:
    """One quantity to write: ``values`` (L,), its ``name`` (the file name) and ``unit``.

    ``classes`` makes it a class map: ``values`` are class indices into ``classes`` (negative
    or NaN: empty).
    """

    name: str
    values: np.ndarray
    unit: str = ""
    description: str = ""
    classes: Sequence[str] | None = None


def _nearest_landmark_paint(values: np.ndarray, corners: np.ndarray, patch_size: int,
                            shape_zyx: tuple[int, int, int], fill: float) -> np.ndarray:
    """(z, y, x) array: each voxel the value of the nearest-centred patch that holds it."""
    out = np.full(shape_zyx, fill, np.float64)
    best = np.full(shape_zyx, np.inf)
    half = (patch_size - 1) / 2.0
    for value, corner in zip(values, np.asarray(corners, np.int64)):
        if not np.isfinite(value):
            continue
        lo = np.maximum(corner, 0)
        hi = np.minimum(corner + patch_size, np.array(shape_zyx[::-1]))
        if np.any(hi <= lo):
            continue
        zz, yy, xx = np.ogrid[lo[2]:hi[2], lo[1]:hi[1], lo[0]:hi[0]]
        centre = corner + half
        d2 = (xx - centre[0]) ** 2 + (yy - centre[1]) ** 2 + (zz - centre[2]) ** 2
        block = (slice(lo[2], hi[2]), slice(lo[1], hi[1]), slice(lo[0], hi[0]))
        closer = d2 < best[block]
        best[block] = np.where(closer, d2, best[block])
        out[block] = np.where(closer, value, out[block])
    return out


def atlas_space_map(values: np.ndarray, landmarks: np.ndarray, patch_size: int,
                    atlas_grid: sitk.Image, *, lung_only: bool = True,
                    classes: Sequence[str] | None = None) -> sitk.Image:
    """Paint per-landmark ``values`` (L,) onto the atlas grid (see the module docstring).

    ``landmarks`` are the atlas patch corners (x, y, z) in ``atlas_grid``'s voxels
    (``atlas.landmarks``); ``atlas_grid`` is the atlas lung mask (``atlas.mask``), whose
    non-zero voxels bound the map when ``lung_only``. Continuous values give a float32
    image (NaN empty); with ``classes``, a uint8 image holding class index + 1 (0 empty).
    """
    values = np.asarray(values, np.float64).reshape(-1)
    corners = np.asarray(landmarks)
    if corners.ndim != 2 or corners.shape[1] != 3 or len(corners) != len(values):
        raise MapError(f"{len(values)} values for {len(corners)} landmarks",
                       where="atlas_space_map, field values", fix="pass one value per atlas "
                       "landmark, in the store's landmark order (NaN where a landmark has none)")
    shape = tuple(int(s) for s in atlas_grid.GetSize()[::-1])
    if classes is not None:
        values = np.where(np.isfinite(values) & (values >= 0), values + 1, np.nan)
    painted = _nearest_landmark_paint(values, corners, int(patch_size), shape, np.nan)
    if lung_only:
        painted[sitk.GetArrayViewFromImage(atlas_grid) == 0] = np.nan
    if classes is not None:
        array = np.nan_to_num(painted, nan=0).astype(np.uint8)
    else:
        array = painted.astype(np.float32)
    image = sitk.GetImageFromArray(array)
    image.CopyInformation(atlas_grid)
    return image


def scan_space_map(atlas_map: sitk.Image, atlas_to_subject: sitk.Transform,
                   scan: Any) -> sitk.Image:
    """``atlas_map`` on the scan's own voxel grid: the value at scan point ``q`` is the atlas
    map at ``T⁻¹(q)``, ``T`` the stored atlas → subject affine (nearest neighbour; empty
    outside the atlas map). ``scan`` is the subject's CT (a SimpleITK image, a CTImage, or
    only its geometry: an image of any pixel type with the scan's size, spacing, origin and
    direction)."""
    from drasclr_toolkit.preprocess.resample import as_sitk

    reference = as_sitk(scan)
    empty = 0.0 if atlas_map.GetPixelID() == sitk.sitkUInt8 else float("nan")
    inverse = sitk.AffineTransform(atlas_to_subject).GetInverse()
    return sitk.Resample(atlas_map, reference, inverse, sitk.sitkNearestNeighbor, empty,
                         atlas_map.GetPixelID())


def coverage_path(map_path: str | os.PathLike) -> Path:
    """The coverage mask beside the continuous map ``<name>_<space>.nii.gz``:
    ``<name>_covered_<space>.nii.gz`` (uint8, 1 where the map holds a value).

    Example:
        >>> coverage_path("maps/syn003/emphysema_extent_scan.nii.gz").name
        'emphysema_extent_covered_scan.nii.gz'
    """
    path = Path(map_path)
    stem = path.name[:-len(".nii.gz")] if path.name.endswith(".nii.gz") else path.stem
    name, _, space = stem.rpartition("_")
    if not name or space not in ("atlas", "scan"):
        raise MapError("not a map file name (<name>_atlas.nii.gz or <name>_scan.nii.gz)",
                       where=f"file {path}", fix="pass a path write_subject_maps returned")
    return path.with_name(f"{name}_covered_{space}.nii.gz")


def read_map(path: str | os.PathLike) -> sitk.Image:
    """Read a map :func:`write_subject_maps` wrote, empty voxels as written: a continuous map
    gets NaN back wherever its coverage mask is 0 (SimpleITK 2.5 reads the file's NaN as 0,
    see the module docstring); a class map (uint8, 0 empty) is returned as read."""
    path = Path(path)
    image = sitk.ReadImage(str(path))
    if image.GetPixelID() == sitk.sitkUInt8:
        return image
    mask_path = coverage_path(path)
    if not mask_path.is_file():
        raise MapError("continuous map without its coverage mask: its empty voxels cannot "
                       "be told from a true 0", where=f"file {path} (looked for {mask_path.name})",
                       fix="write the maps again with write_subject_maps, or keep the "
                           "_covered_ file beside the map")
    covered = sitk.GetArrayFromImage(sitk.ReadImage(str(mask_path))) > 0
    array = sitk.GetArrayFromImage(image)
    if covered.shape != array.shape:
        raise MapError(f"coverage mask of shape {covered.shape} for a map of shape {array.shape}",
                       where=f"file {path}, mask {mask_path.name}",
                       fix="write the maps again with write_subject_maps")
    array[~covered] = np.nan
    out = sitk.GetImageFromArray(array)
    out.CopyInformation(image)
    return out


def _record_field(record: Mapping[str, Any], key: str) -> Any:
    value = record.get(key)
    return json.loads(value) if isinstance(value, str) else value


def _sidecar(item: LandmarkMap, space: str, subject_id: str, image: sitk.Image,
             source: str, patch_size: int, lung_only: bool,
             covered_name: str | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "quantity": item.name, "unit": item.unit, "description": item.description,
        "subject_id": subject_id, "space": space, "source": source,
        "painted": f"each voxel holds the value of the landmark whose {patch_size}³ patch "
                   "contains it and whose centre is nearest"
                   + ("; atlas-lung voxels only" if lung_only else ""),
        "size_xyz": list(image.GetSize()), "spacing_mm": list(image.GetSpacing()),
    }
    if item.classes is not None:
        meta["empty"] = 0
        meta["labels"] = {str(k + 1): str(name) for k, name in enumerate(item.classes)}
    else:
        meta["empty"] = "NaN"
        meta["covered"] = covered_name
        meta["empty_note"] = ("readers built on ITK before ITK 6 (SimpleITK 2.5, 3D Slicer, "
                              "ITK-SNAP) show NaN voxels as 0; the covered mask (uint8, 1 where "
                              "the map holds a value) tells empty from a true 0")
    return meta


def write_subject_maps(store: Any, subject: int | str, maps: Sequence[LandmarkMap],
                       out_dir: str | os.PathLike, scan: Any = None, *,
                       lung_only: bool = True) -> dict[str, dict[str, Path]]:
    """Write each map of one subject as NIfTI in atlas space and, when ``scan`` is given,
    in the scan's own space; returns ``{name: {"atlas": path, "scan": path}}``, plus
    ``"atlas_covered"`` / ``"scan_covered"`` for a continuous map.

    Files: ``<out_dir>/<subject>/<name>_atlas.nii.gz`` and ``<name>_scan.nii.gz``, each with
    a ``.json`` beside it; a continuous map (float32, NaN empty) also gets a uint8 coverage
    mask ``<name>_covered_atlas.nii.gz`` / ``<name>_covered_scan.nii.gz``, 1 exactly where the
    map holds a value, because ITK-based viewers (3D Slicer, ITK-SNAP) and SimpleITK 2.5 read
    the NaN as 0 (read maps back with :func:`read_map`). ``scan`` is the subject's CT as read by :func:`load_ct` (or its
    path); without it only the atlas-space maps are written. Landmarks whose patch centre
    lay outside the scan (the store's ``in_scan``) are left empty.

    Example:
        >>> paths = write_subject_maps(store, "syn003",                  # doctest: +SKIP
        ...     [LandmarkMap("emphysema_extent", extent[3], unit="fraction of lung")],
        ...     "out/maps", scan="cohort/images/syn003.nii.gz")
    """
    from drasclr_toolkit.data.ct import load_ct
    from drasclr_toolkit.preprocess.registration import transform_from_dict

    sid = subject if isinstance(subject, str) else list(store.subject_ids)[int(subject)]
    if sid not in list(store.subject_ids):
        raise MapError("not in the patch store",
                       where=f"subject {sid!r}, store {getattr(store, 'path', '?')}",
                       fix="pass a subject id the store holds (store.subject_ids)")
    record = store.subject_record(sid)
    in_scan = _record_field(record, "in_scan")
    in_scan = np.ones(int(store.n_landmarks), bool) if in_scan is None else np.asarray(in_scan, bool)
    transform = transform_from_dict(_record_field(record, "transform"))
    atlas = store.atlas
    if isinstance(scan, (str, os.PathLike)):
        scan = load_ct(scan, subject_id=sid)
    folder = subject_file(out_dir, sid)
    written: dict[str, dict[str, Path]] = {}
    for item in maps:
        values = np.asarray(item.values, np.float64).reshape(-1)
        if len(values) != len(in_scan):
            raise MapError(f"{len(values)} values for {len(in_scan)} landmarks",
                           where=f"subject {sid!r}, map {item.name!r}",
                           fix="pass one value per landmark of the store, in its order")
        values = np.where(in_scan, values, np.nan)  # no value where the patch was air padding
        atlas_image = atlas_space_map(values, atlas.landmarks, atlas.patch_size, atlas.mask,
                                      lung_only=lung_only, classes=item.classes)
        images = {"atlas": atlas_image}
        if scan is not None:
            images["scan"] = scan_space_map(atlas_image, transform, scan)
        written[item.name] = {}
        for space, image in images.items():
            path = folder / f"{item.name}_{space}.nii.gz"
            covered = None
            if item.classes is None:  # NaN empty: a mask ITK readers cannot lose (uint8)
                covered = coverage_path(path)
                finite = np.isfinite(sitk.GetArrayViewFromImage(image)).astype(np.uint8)
                mask = sitk.GetImageFromArray(finite)
                mask.CopyInformation(image)
                atomic_write(covered, lambda tmp, im=mask: sitk.WriteImage(im, str(tmp), True),
                             suffix=".tmp.nii.gz", make_parents=True)
            atomic_write(path, lambda tmp, im=image: sitk.WriteImage(im, str(tmp), True),
                         suffix=".tmp.nii.gz", make_parents=True)
            meta = _sidecar(item, "atlas" if space == "atlas" else "scan", sid, image,
                            str(getattr(store, "path", "")), int(atlas.patch_size), lung_only,
                            None if covered is None else covered.name)
            atomic_write_text(path.with_name(path.name[:-len(".nii.gz")] + ".json"),
                              json.dumps(meta, indent=1))
            written[item.name][space] = path
            if covered is not None:
                written[item.name][f"{space}_covered"] = covered
    return written


def embedding_pc_maps(embeddings: Any, n_components: int = 1) -> dict[str, np.ndarray]:
    """``{"embedding_pc1": (N, L), ...}``: principal-component scores of the patch
    embeddings, one PCA fitted on every patch of the cohort (so a colour means the same in
    every subject); patches outside a scan (``embeddings.in_scan``) are NaN."""
    from sklearn.decomposition import PCA

    patch = np.asarray(embeddings.patch, np.float64)
    n, n_loc, dim = patch.shape
    flat = patch.reshape(n * n_loc, dim)
    valid = np.isfinite(flat).all(axis=1)
    in_scan = getattr(embeddings, "in_scan", None)
    if in_scan is not None:
        valid &= np.asarray(in_scan, bool).reshape(-1)
    k = int(min(n_components, dim, valid.sum()))
    scores = np.full((n * n_loc, k), np.nan)
    scores[valid] = PCA(n_components=k).fit_transform(flat[valid])
    scores = scores.reshape(n, n_loc, k)
    return {f"embedding_pc{j + 1}": scores[..., j] for j in range(k)}


def write_cohort_maps(store: Any, values: Mapping[str, np.ndarray], out_dir: str | os.PathLike,
                      subject_ids: Sequence[str], scans: Mapping[str, Any] | None = None, *,
                      units: Mapping[str, str] | None = None,
                      classes: Mapping[str, Sequence[str]] | None = None,
                      only: Sequence[str] | None = None) -> dict[str, dict[str, dict[str, Path]]]:
    """:func:`write_subject_maps` for every subject of ``subject_ids`` (rows of each ``(N, L)``
    array in ``values``), or only those in ``only``; ``scans`` maps a subject id to its CT
    (path or image) for the scan-space copy. Returns ``{subject: {name: {space: path}}}``."""
    units, classes, scans = dict(units or {}), dict(classes or {}), dict(scans or {})
    out: dict[str, dict[str, dict[str, Path]]] = {}
    for row, sid in enumerate(subject_ids):
        if only is not None and sid not in only:
            continue
        maps = [LandmarkMap(name, np.asarray(array)[row], unit=units.get(name, ""),
                            classes=classes.get(name)) for name, array in values.items()]
        out[sid] = write_subject_maps(store, sid, maps, out_dir, scan=scans.get(sid))
    return out
