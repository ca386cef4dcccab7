"""``PatchStore``: the on-disk patch source (zarr v3, int16, compressed, sharded).

Layout of a store directory::

    store.json             subject slots (the manifest's subject order), patch size, L, k
    atlas/                 the atlas the patches were cut for (Atlas.save)
    patches.zarr/          zarr group
        patches            (N, L, P, P, P) int16; one *shard* per subject (1, L, P, P, P),
                           inner chunks (1, 1, P, P, P) Blosc-zstd + bit-shuffle
        lung_fraction      (N, L) float32, one chunk per subject
        corners            (N, L, 3) int32 subject patch corners (x, y, z, 1 mm grid)
    subjects/<sid>.json    written last for a subject: its commit marker, with the mapped
                           landmarks' physical centres, transform and QC
    failures/<sid>.json    a subject that failed, with the reason
    qc.csv                 QC table (``drasclr_toolkit.preprocess.qc.qc_table``)

Why this chunking: a shard is one file per subject, so ``read_subject`` reads one file
(extraction), while ``read_location`` reads one 64 KiB inner chunk per subject through the
shard index (training: many subjects at one location). Neither reads what it does not need,
and a cohort of thousands of subjects is thousands of files, not millions.

Atomicity: a subject's arrays are written first, then ``subjects/<sid>.json`` is written
to a temporary file and renamed. Readers list only subjects with that file, so a run
killed mid-write leaves a subject that is simply redone on resume.

Processes: the store object holds no open handles until first read, and drops them when
pickled, so each DataLoader worker re-opens the arrays lazily in its own process.

Example:
    >>> store = PatchStore("out/preprocess")                 # doctest: +SKIP
    >>> store.read_location(10, [0, 1, 2]).shape             # doctest: +SKIP
    (3, 32, 32, 32)
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..io_utils import atomic_write_text

__all__ = ["PatchStore", "StoreError"]

STORE_FORMAT_VERSION = 1


class StoreError(RuntimeError):
    """A store directory that cannot be used as asked (what to do is in the message)."""


def _atomic_write_text(path: Path, text: str) -> None:
    atomic_write_text(path, text, make_parents=True)


def _create_arrays(root, N: int, L: int, P: int, blosc) -> None:
    if "patches" in root:
        return
    root.create_array(
        "patches", shape=(N, L, P, P, P), dtype="int16",
        chunks=(1, 1, P, P, P), shards=(1, L, P, P, P),
        compressors=[blosc], fill_value=-1024,
    )
    root.create_array(
        "lung_fraction", shape=(N, L), dtype="float32", chunks=(1, L),
        compressors=[blosc], fill_value=0.0,
    )
    root.create_array(
        "corners", shape=(N, L, 3), dtype="int32", chunks=(1, L, 3),
        compressors=[blosc], fill_value=0,
    )


class PatchStore:
    """Patches of a cohort at the atlas landmarks (the patch-source protocol on disk).

    Open an existing store with ``PatchStore(path)``; ``PatchStore.create`` makes one.
    Subject indices in ``read_location``/``read_subject`` are positions in
    ``subject_ids`` (finished subjects, in manifest order).
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        meta_path = self.path / "store.json"
        if not meta_path.exists():
            raise StoreError(
                f"{self.path} is not a patch store (no store.json); run "
                "`drasclr preprocess` (or run_preprocessing) to make one"
            )
        self.meta = json.loads(meta_path.read_text())
        self.slots: list[str] = list(self.meta["subject_slots"])
        self.patch_size: int = int(self.meta["patch_size"])
        self.n_landmarks: int = int(self.meta["n_landmarks"])
        self._slot_of = {s: i for i, s in enumerate(self.slots)}
        self._group = None
        self._atlas = None
        self._landmarks: np.ndarray | None = None
        self._done_cache: list[str] | None = None
        self._lung_fraction: np.ndarray | None = None
        self._coords: np.ndarray | None = None
        self._neighbors: np.ndarray | None = None

    # ------------------------------------------------------------------ creation
    @classmethod
    def create(
        cls,
        path: str | os.PathLike,
        subject_ids: Sequence[str],
        atlas: Any,
        neighbors_k: int = 2,
        compression_level: int = 3,
    ) -> "PatchStore":
        """Create (or re-open, when it matches) a store for ``subject_ids`` and ``atlas``."""
        import zarr
        from zarr.codecs import BloscCodec

        path = Path(path)
        subject_ids = [str(s) for s in subject_ids]
        P, L = int(atlas.patch_size), int(atlas.n_landmarks)
        meta_path = path / "store.json"
        if meta_path.exists():
            store = cls(path)
            if store.slots != subject_ids:
                raise StoreError(
                    f"{path} was made for a different subject list ({len(store.slots)} "
                    f"subjects, first {store.slots[:3]}); use a new --out directory or the "
                    "same manifest"
                )
            if not np.array_equal(store.landmarks, atlas.landmarks):
                raise StoreError(
                    f"{path} was made with a different atlas ({store.n_landmarks} "
                    f"landmarks); use a new --out directory or the atlas in {path / 'atlas'}"
                )
            return store
        path.mkdir(parents=True, exist_ok=True)
        if not (path / "atlas" / "atlas.json").exists():
            atlas.save(path / "atlas")
        N = len(subject_ids)
        root = zarr.open_group(str(path / "patches.zarr"), mode="a")
        blosc = BloscCodec(cname="zstd", clevel=int(compression_level), shuffle="bitshuffle")
        try:
            _create_arrays(root, N, L, P, blosc)
        except Exception:
            # Another shard job created them at the same moment: theirs are identical.
            root = zarr.open_group(str(path / "patches.zarr"), mode="a")
            if not {"patches", "lung_fraction", "corners"} <= set(root.array_keys()):
                raise
        meta = {
            "format_version": STORE_FORMAT_VERSION,
            "subject_slots": subject_ids,
            "patch_size": P,
            "n_landmarks": L,
            "neighbors_k": int(neighbors_k),
            "layout": "patches (N, L, P, P, P) int16 in (z, y, x) voxel order; "
            "shard per subject, chunk per (subject, location)",
        }
        _atomic_write_text(meta_path, json.dumps(meta, indent=1))
        return cls(path)

    # ------------------------------------------------------------------ pickling
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        # Open zarr handles and caches are per process: a worker re-opens lazily.
        state["_group"] = None
        state["_done_cache"] = None
        state["_lung_fraction"] = None
        return state

    def _arrays(self):
        if self._group is None:
            import zarr

            self._group = zarr.open_group(str(self.path / "patches.zarr"), mode="r+")
        return self._group

    # ------------------------------------------------------------------ protocol
    @property
    def atlas(self):
        if self._atlas is None:
            from .atlas import Atlas

            self._atlas = Atlas.load(self.path / "atlas")
        return self._atlas

    @property
    def landmarks(self) -> np.ndarray:
        if self._landmarks is None:
            self._landmarks = np.load(self.path / "atlas" / "landmarks.npy")
        return self._landmarks

    @property
    def landmark_coords(self) -> np.ndarray:
        """(L, 3) float32: (p - min) / (max - min) * 2 - 1 per axis (cached)."""
        if self._coords is None:
            from ..landmarks import normalize_landmarks

            self._coords = normalize_landmarks(self.landmarks)
        return self._coords

    @property
    def neighbors(self) -> np.ndarray:
        """(L, k) nearest landmarks, ties by distance then index (cached; k from store.json)."""
        if self._neighbors is None:
            from ..landmarks import nearest_neighbors

            self._neighbors = nearest_neighbors(self.landmarks, int(self.meta.get("neighbors_k", 2)))
        return self._neighbors

    @property
    def subject_ids(self) -> list[str]:
        """Finished subjects (those with a commit marker), in manifest order."""
        if self._done_cache is None:
            d = self.path / "subjects"
            done = {p.name[:-5] for p in d.glob("*.json")} if d.exists() else set()
            self._done_cache = [s for s in self.slots if s in done]
        return self._done_cache

    def refresh(self) -> None:
        """Forget cached listings (after another process added subjects)."""
        self._done_cache = None
        self._lung_fraction = None

    def __len__(self) -> int:
        return len(self.subject_ids)

    def _slot(self, subject: int | str | np.integer) -> int:
        if isinstance(subject, (int, np.integer)):
            ids = self.subject_ids
            if not -len(ids) <= int(subject) < len(ids):
                raise IndexError(f"subject index {subject} out of range for {len(ids)} subjects")
            return self._slot_of[ids[int(subject)]]
        if subject not in self._slot_of or subject not in set(self.subject_ids):
            raise KeyError(f"subject {subject!r} is not a finished subject of store {self.path}")
        return self._slot_of[subject]

    @property
    def lung_fraction(self) -> np.ndarray:
        """(N, L) float32 lung fraction of each patch of the finished subjects."""
        if self._lung_fraction is None:
            slots = [self._slot_of[s] for s in self.subject_ids]
            arr = self._arrays()["lung_fraction"]
            self._lung_fraction = (
                np.asarray(arr.get_orthogonal_selection((slots, slice(None))), np.float32)
                if slots else np.zeros((0, self.n_landmarks), np.float32)
            )
        return self._lung_fraction

    def read_location(self, loc: int, subjects: Sequence[int]) -> np.ndarray:
        """(B, P, P, P) int16 HU: location ``loc`` of the given subjects (store positions)."""
        slots = [self._slot(s) for s in subjects]
        if not slots:
            P = self.patch_size
            return np.zeros((0, P, P, P), np.int16)
        arr = self._arrays()["patches"]
        # Sorted unique slots read each inner chunk once; then back to the asked order.
        uniq, inv = np.unique(slots, return_inverse=True)
        out = arr.get_orthogonal_selection((uniq, int(loc)))
        return np.asarray(out)[inv]

    def read_subject(self, subject: int | str) -> np.ndarray:
        """(L, P, P, P) int16 HU: all patches of one subject (index or subject id)."""
        return np.asarray(self._arrays()["patches"][self._slot(subject)])

    def subject_record(self, subject: int | str) -> dict[str, Any]:
        """The subject's JSON record: mapped landmarks, transform, QC."""
        sid = subject if isinstance(subject, str) else self.subject_ids[int(subject)]
        return json.loads((self.path / "subjects" / f"{sid}.json").read_text())

    def subject_corners(self, subject: int | str) -> np.ndarray:
        """(L, 3) int patch corners (x, y, z) in the subject's resampled grid."""
        return np.asarray(self._arrays()["corners"][self._slot(subject)])

    def failures(self) -> dict[str, dict[str, Any]]:
        d = self.path / "failures"
        if not d.exists():
            return {}
        return {p.name[:-5]: json.loads(p.read_text()) for p in sorted(d.glob("*.json"))}

    # ------------------------------------------------------------------ writing
    def is_done(self, subject_id: str) -> bool:
        return (self.path / "subjects" / f"{subject_id}.json").exists()

    def write_subject(
        self,
        subject_id: str,
        patches: np.ndarray,
        lung_fraction: np.ndarray,
        corners: np.ndarray,
        record: dict[str, Any],
    ) -> None:
        """Write one subject (arrays first, then the commit marker). Safe across processes
        as long as each subject is written by one process at a time."""
        if subject_id not in self._slot_of:
            raise StoreError(f"subject {subject_id!r} has no slot in store {self.path}")
        P, L = self.patch_size, self.n_landmarks
        if patches.shape != (L, P, P, P) or patches.dtype != np.int16:
            raise ValueError(
                f"subject {subject_id!r}: patches must be int16 {(L, P, P, P)}, "
                f"got {patches.dtype} {patches.shape}"
            )
        i = self._slot_of[subject_id]
        g = self._arrays()
        g["patches"][i] = patches
        g["lung_fraction"][i] = np.asarray(lung_fraction, np.float32)
        g["corners"][i] = np.asarray(corners, np.int32)
        fail = self.path / "failures" / f"{subject_id}.json"
        _atomic_write_text(self.path / "subjects" / f"{subject_id}.json", json.dumps(record, indent=1))
        if fail.exists():
            fail.unlink()
        self.refresh()

    def write_failure(self, subject_id: str, reason: str, stage: str = "") -> None:
        rec = {"subject_id": subject_id, "status": "failed", "stage": stage, "reason": reason}
        _atomic_write_text(self.path / "failures" / f"{subject_id}.json", json.dumps(rec, indent=1))

    def __repr__(self) -> str:
        return (
            f"PatchStore({str(self.path)!r}: {len(self.subject_ids)}/{len(self.slots)} subjects, "
            f"{self.n_landmarks} landmarks, patch {self.patch_size})"
        )
