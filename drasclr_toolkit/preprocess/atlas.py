"""The atlas: a reference lung mask (and optionally its CT) with a grid of patch landmarks.

Landmarks are patch corners (x, y, z) in the atlas mask's own voxel grid, as in the
official ``atlas_patch_loc.npy``. The grid rule (reference method): corners on a step of
``step`` voxels from index 0 along each axis, patch fully inside the image, kept when more
than ``min_lung_fraction`` of the ``patch_size``³ cube is lung. Corners are listed with x
varying slowest, then y, then z (the official file's order).

The atlas keeps its mask's geometry untouched (the official mask has direction
diag(1, -1, 1)); every index↔physical mapping goes through that geometry, so landmarks map
to exactly the physical points the authors meant.

Coordinates for the network: ``landmark_coords`` = (p - min) / (max - min) * 2 - 1 per axis
(our convention); ``reference_coords`` = p / max (the official checkpoint's).

Example:
    >>> import numpy as np, SimpleITK as sitk
    >>> m = np.zeros((60, 60, 60), np.uint8); m[5:55, 5:55, 5:55] = 1
    >>> atlas = Atlas.from_mask(sitk.GetImageFromArray(m), patch_size=16, step=13)
    >>> atlas.n_landmarks, float(atlas.landmark_coords.min()), atlas.neighbors(2).shape
    (64, -1.0, (64, 2))
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from drasclr_toolkit.errors import InputError, MissingFileError
from drasclr_toolkit.io_utils import atomic_write, atomic_write_stream, atomic_write_text
from drasclr_toolkit.landmarks import nearest_neighbors, normalize_landmarks
from drasclr_toolkit.preprocess.patches import corners_to_centres_physical, patch_fractions

__all__ = ["Atlas", "landmark_grid"]

ATLAS_FORMAT_VERSION = 1


def landmark_grid(
    mask: np.ndarray, patch_size: int = 32, step: int = 26, min_lung_fraction: float = 0.1
) -> np.ndarray:
    """Patch corners (x, y, z) on a ``step`` grid where the patch is > ``min_lung_fraction`` lung.

    ``mask`` is a (z, y, x) array (non-zero = lung). Returns (L, 3) int64, x slowest.

    Example:
        >>> m = np.zeros((40, 40, 40), np.uint8); m[:20] = 1
        >>> landmark_grid(m, patch_size=20, step=10).tolist()[:2]
        [[0, 0, 0], [0, 0, 10]]
    """
    nz, ny, nx = mask.shape
    P = int(patch_size)
    xs, ys, zs = (range(0, n - P + 1, int(step)) for n in (nx, ny, nz))
    corners = np.array([(x, y, z) for x in xs for y in ys for z in zs], np.int64).reshape(-1, 3)
    if len(corners) == 0:
        return corners
    frac = patch_fractions(mask, corners, P)
    return corners[frac > min_lung_fraction]


@dataclass(eq=False)
class Atlas:
    """Reference lung mask + landmark grid (see module docstring).

    ``mask`` is a SimpleITK label image (0 = background, non-zero = lung);
    ``landmarks`` (L, 3) int corners in its voxel grid; ``image`` the reference CT if known.
    """

    mask: sitk.Image
    landmarks: np.ndarray
    patch_size: int = 32
    step: int = 26
    min_lung_fraction: float = 0.1
    image: sitk.Image | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.landmarks = np.asarray(self.landmarks, np.int64).reshape(-1, 3)
        if len(self.landmarks) == 0:
            raise InputError(
                "atlas has no landmarks: the lung mask has no patch with more than "
                f"{self.min_lung_fraction:.0%} lung; check the mask or lower min_lung_fraction"
            )

    # ----------------------------------------------------------------- construction
    @classmethod
    def from_mask(
        cls,
        mask: sitk.Image,
        patch_size: int = 32,
        step: int = 26,
        min_lung_fraction: float = 0.1,
        image: sitk.Image | None = None,
        info: dict[str, Any] | None = None,
    ) -> "Atlas":
        """Build the landmark grid on a lung mask (its own voxel grid)."""
        arr = sitk.GetArrayViewFromImage(mask)
        lm = landmark_grid(arr, patch_size, step, min_lung_fraction)
        return cls(mask, lm, patch_size, step, min_lung_fraction, image, dict(info or {}))

    @classmethod
    def from_reference(
        cls,
        ct: Any,
        lung_mask: Any | None = None,
        patch_size: int = 32,
        step: int = 26,
        min_lung_fraction: float = 0.1,
        spacing: float = 1.0,
        interpolator: str = "bspline",
    ) -> "Atlas":
        """Atlas from one reference scan: resample to ``spacing`` mm, segment, grid.

        ``lung_mask`` (CTImage-like or SimpleITK image) skips segmentation; it is resampled
        to the same grid with nearest neighbour.

        Example:
            >>> atlas = Atlas.from_reference(ct)          # doctest: +SKIP
        """
        from drasclr_toolkit.preprocess.lungmask import segment_lungs
        from drasclr_toolkit.preprocess.resample import (as_sitk, resample_isotropic,
                                                         resample_like, to_lps)

        image = resample_isotropic(ct, spacing, interpolator)
        if lung_mask is None:
            mask, seg_info = segment_lungs(image)
        else:
            mask = resample_like(to_lps(as_sitk(lung_mask)), image, "nearest", 0)
            mask = sitk.Cast(mask, sitk.sitkUInt8)
            seg_info = {"backend": "given"}
        info = {
            "reference_subject": getattr(ct, "subject_id", None),
            "reference_source": getattr(ct, "source", None),
            "spacing": float(spacing),
            "segmentation": {k: v for k, v in seg_info.items() if _jsonable(v)},
        }
        return cls.from_mask(mask, patch_size, step, min_lung_fraction, image, info)

    # ----------------------------------------------------------------- properties
    @property
    def n_landmarks(self) -> int:
        return int(len(self.landmarks))

    @property
    def spacing(self) -> float:
        return float(self.mask.GetSpacing()[0])

    @property
    def landmark_coords(self) -> np.ndarray:
        """(L, 3) float32 in [-1, 1]: (p - min) / (max - min) * 2 - 1 per axis."""
        return normalize_landmarks(self.landmarks)

    @property
    def reference_coords(self) -> np.ndarray:
        """(L, 3) float32 p / max per axis: the official checkpoint's location input."""
        p = self.landmarks.astype(np.float64)
        return (p / np.maximum(p.max(0), 1)).astype(np.float32)

    def neighbors(self, k: int = 2) -> np.ndarray:
        """(L, k) nearest landmarks, deterministic ties (distance, then index)."""
        return nearest_neighbors(self.landmarks, k)

    @property
    def centres_mm(self) -> np.ndarray:
        """(L, 3) physical (LPS mm) patch centres in atlas space."""
        return corners_to_centres_physical(self.mask, self.landmarks, self.patch_size)

    def lung_fractions(self) -> np.ndarray:
        """(L,) lung fraction of each atlas patch."""
        return patch_fractions(sitk.GetArrayViewFromImage(self.mask), self.landmarks, self.patch_size)

    def lung_volume_ml(self) -> float:
        arr = sitk.GetArrayViewFromImage(self.mask)
        return float((arr > 0).sum() * np.prod(self.mask.GetSpacing()) / 1000.0)

    def binary_mask(self) -> sitk.Image:
        return sitk.Cast(self.mask > 0, sitk.sitkUInt8)

    # ----------------------------------------------------------------- IO
    def save(self, directory: str | os.PathLike) -> Path:
        """Write ``mask.nii.gz``, ``landmarks.npy``, ``atlas.json`` (and ``image.nii.gz``).

        Each file is written to a temporary name and renamed, ``atlas.json`` last, so a
        directory with ``atlas.json`` is complete.
        """
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        _atomic_write_image(self.mask, d / "mask.nii.gz")
        if self.image is not None:
            _atomic_write_image(self.image, d / "image.nii.gz")
        atomic_write_stream(d / "landmarks.npy", lambda f: np.save(f, self.landmarks))
        meta = {
            "format_version": ATLAS_FORMAT_VERSION,
            "patch_size": self.patch_size,
            "step": self.step,
            "min_lung_fraction": self.min_lung_fraction,
            "n_landmarks": self.n_landmarks,
            "has_image": self.image is not None,
            "info": self.info,
        }
        atomic_write_text(d / "atlas.json", json.dumps(meta, indent=2))
        return d

    @classmethod
    def load(
        cls,
        path: str | os.PathLike,
        landmarks_npy_path: str | os.PathLike | None = None,
        patch_size: int = 32,
        step: int = 26,
        min_lung_fraction: float = 0.1,
    ) -> "Atlas":
        """Load an atlas directory (``Atlas.save``) or the official pair (mask, landmarks npy).

        Example:
            >>> atlas = Atlas.load("shared/reference/atlas_lung_mask.nii.gz",
            ...                    "shared/reference/atlas_patch_loc.npy")   # doctest: +SKIP
            >>> atlas.n_landmarks                                            # doctest: +SKIP
            581
        """
        path = Path(path)
        if landmarks_npy_path is None:
            if not (path / "atlas.json").exists():
                raise MissingFileError(
                    f"{path} is not an atlas directory (no atlas.json); pass a directory "
                    "written by Atlas.save, or Atlas.load(mask_path, landmarks_npy_path)"
                )
            meta = json.loads((path / "atlas.json").read_text())
            image = sitk.ReadImage(str(path / "image.nii.gz")) if meta.get("has_image") else None
            return cls(
                sitk.ReadImage(str(path / "mask.nii.gz")),
                np.load(path / "landmarks.npy"),
                int(meta["patch_size"]),
                int(meta["step"]),
                float(meta["min_lung_fraction"]),
                image,
                meta.get("info", {}),
            )
        mask = sitk.ReadImage(str(path))
        lm = np.load(landmarks_npy_path)
        if lm.ndim != 2 or lm.shape[1] != 3:
            raise InputError(
                f"file {landmarks_npy_path}: landmarks must have shape (L, 3) (x, y, z patch "
                f"corners), got {lm.shape}"
            )
        size = np.array(mask.GetSize())
        if (lm < 0).any() or (lm + patch_size > size).any():
            raise InputError(
                f"file {landmarks_npy_path}: some landmark patches fall outside the mask "
                f"{path} of size {tuple(size)}; are the columns (x, y, z) in this mask's grid?"
            )
        info = {"mask_path": str(path), "landmarks_path": str(landmarks_npy_path), "official": True}
        return cls(mask, lm, patch_size, step, min_lung_fraction, None, info)


def _jsonable(v: Any) -> bool:
    try:
        json.dumps(v)
        return True
    except TypeError:
        return False


def _atomic_write_image(image: sitk.Image, path: Path) -> None:
    # SimpleITK picks the format from the suffix, so the temp name keeps ".nii.gz".
    atomic_write(path, lambda tmp: sitk.WriteImage(image, str(tmp), useCompression=True),
                 suffix=".tmp" + "".join(path.suffixes))
