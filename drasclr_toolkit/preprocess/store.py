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
                           landmarks' physical centres, transform, QC, the scan's load
                           check (``scan``) and densitometry (``densitometry``: whole lung
                           and six zones at the scan's own resolution, and the mask it used)
    failures/<sid>.json    a subject that failed, with the reason
    scan_products/         what each scan's one read gave (``preprocess.scans``): a record
                           per subject, and its image and mask on the grid until its patches
                           are written
    qc.csv                 QC table (``drasclr_toolkit.preprocess.qc.qc_table``)

Why this chunking: a shard is one file per subject, so ``read_subject`` reads one file
(extraction), while ``read_location`` reads one 64 KiB inner chunk per subject through the
shard index (training: many subjects at one location). Neither reads what it does not need,
and a cohort of thousands of subjects is thousands of files, not millions.

Atomicity: a subject's arrays are written first, then ``subjects/<sid>.json`` is written
to a temporary file and renamed. Readers list only subjects with that file, so a run
killed mid-write leaves a subject that is simply redone on resume.

Integrity: each subject's record keeps CRC-32 checksums of what was written (one per
location of ``patches``, one for its ``lung_fraction`` row, one for its ``corners``), and
``store.json`` one of the atlas landmarks. Every read checks what it returns: a subject
read checks all its locations, a location read checks only the patches it returns (one
CRC-32 of 64 KiB per patch, a few per cent of the read), so a deleted, emptied or altered
chunk raises :class:`StoreError` naming the subject, the file and the array instead of
reading as air or silently changed voxels. ``verify()`` (``drasclr store verify``) checks a
whole store. Records written before checksums existed are read unchecked.

Processes: the store object holds no open handles until first read, and drops them when
pickled, so each DataLoader worker re-opens the arrays lazily in its own process.

Example:
    >>> store = PatchStore("out/preprocess")                 # doctest: +SKIP
    >>> store.read_location(10, [0, 1, 2]).shape             # doctest: +SKIP
    (3, 32, 32, 32)
"""

from __future__ import annotations

import hashlib
import json
import os
import zlib
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from drasclr_toolkit.errors import DrasclrError, InputError, where_text
from drasclr_toolkit.io_utils import atomic_write_text, subject_file

__all__ = ["PatchStore", "StoreError"]

STORE_FORMAT_VERSION = 1
CHECKSUM_ALGORITHM = "crc32"
# The per-subject arrays of patches.zarr, in the order verify() reports them.
SUBJECT_ARRAYS = ("patches", "lung_fraction", "corners")
_DTYPES = {"patches": "<i2", "lung_fraction": "<f4", "corners": "<i4"}


class StoreError(DrasclrError, RuntimeError):
    """A store directory that cannot be used as asked.

    Built from a plain message (older call sites) or from a problem with keyword fields;
    then the message names the store, subject, file and field and says what to do, and
    the same values are attributes for a runner that records the failure.
    """

    def __init__(self, problem: str, *, store: str | os.PathLike | None = None,
                 subject_id: str | None = None, file: str | os.PathLike | None = None,
                 field: str | None = None, fix: str | None = None) -> None:
        self.store = None if store is None else str(store)
        self.subject_id = subject_id
        self.file = None if file is None else str(file)
        self.field = field
        where = where_text(store=self.store, subject_id=subject_id, file=self.file, field=field)
        super().__init__(problem, where=where, fix=fix)
        self.problem, self.fix = problem, fix


def _crc(a: np.ndarray) -> int:
    return zlib.crc32(np.ascontiguousarray(a).tobytes())


def _checksums(patches: np.ndarray, lung_fraction: np.ndarray, corners: np.ndarray) -> dict:
    """What write_subject records: CRC-32 per location of the patches, and one per row."""
    p = np.ascontiguousarray(patches, _DTYPES["patches"])
    return {
        "algorithm": CHECKSUM_ALGORITHM,
        "patches": [_crc(p[i]) for i in range(len(p))],
        "lung_fraction": _crc(np.asarray(lung_fraction, _DTYPES["lung_fraction"])),
        "corners": _crc(np.asarray(corners, _DTYPES["corners"])),
    }


def _json_digest(obj: Any) -> str:
    """A hash of a JSON value as it reads back (key order and spacing do not matter)."""
    canonical = json.dumps(json.loads(json.dumps(obj)), sort_keys=True, separators=(",", ":"))
    return hashlib.blake2b(canonical.encode(), digest_size=16).hexdigest()


def _sealed(obj: dict[str, Any], key: str) -> dict[str, Any]:
    """``obj`` with ``obj[key]`` = the digest of everything else in it."""
    body = {k: v for k, v in obj.items() if k != key}
    return {**body, key: _json_digest(body)}


def _seal_ok(obj: dict[str, Any], key: str) -> bool | None:
    """Whether ``obj`` still matches its seal (None: written before seals existed)."""
    if key not in obj:
        return None
    return _json_digest({k: v for k, v in obj.items() if k != key}) == obj[key]


def _file_digest(path: Path) -> str:
    return hashlib.blake2b(path.read_bytes(), digest_size=16).hexdigest()


def _landmarks_crc(landmarks: np.ndarray) -> int:
    return _crc(np.asarray(landmarks, "<i8"))


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
                f"{self.path} is not a patch store (no store.json)", store=self.path,
                file=meta_path, fix="check the path, or run `drasclr preprocess` (or "
                "run_preprocessing) to make one")
        try:
            self.meta = json.loads(meta_path.read_text())
        except (OSError, ValueError) as exc:
            raise StoreError(
                f"the store description cannot be read ({exc})", store=self.path,
                file=meta_path, fix="restore store.json from a backup, or preprocess into a "
                "new --out folder") from None
        if not isinstance(self.meta, dict) or _seal_ok(self.meta, "meta_checksum") is False:
            raise StoreError(
                "the store description was edited or damaged after preprocessing wrote it "
                "(its checksum 'meta_checksum' does not match its content)", store=self.path,
                file=meta_path, field="store.json",
                fix="restore store.json from a backup, or preprocess into a new --out folder")
        try:
            self.slots: list[str] = list(self.meta["subject_slots"])
            self.patch_size: int = int(self.meta["patch_size"])
            self.n_landmarks: int = int(self.meta["n_landmarks"])
        except (KeyError, TypeError, ValueError) as exc:
            raise StoreError(f"the store description lacks a usable {exc}", store=self.path,
                             file=meta_path, field="store.json",
                             fix="restore store.json from a backup, or preprocess into a new "
                             "--out folder") from None
        self._check_atlas_agrees()
        self._slot_of = {s: i for i, s in enumerate(self.slots)}
        self._group = None
        self._atlas = None
        self._landmarks: np.ndarray | None = None
        self._done_cache: list[str] | None = None
        self._lung_fraction: np.ndarray | None = None
        self._coords: np.ndarray | None = None
        self._neighbors: np.ndarray | None = None
        self._sums: dict[str, dict | None] = {}  # subject -> its record's checksums

    def _check_atlas_agrees(self) -> None:
        """``store.json`` and ``atlas/atlas.json`` describe one atlas, or StoreError naming
        both files (two runs into one folder with other atlases left them disagreeing)."""
        meta_path, atlas_json = self.path / "store.json", self.path / "atlas" / "atlas.json"
        if not atlas_json.is_file():
            return  # a store made before its atlas was saved in it (read by landmarks)
        try:
            atlas_meta = json.loads(atlas_json.read_text())
            atlas_n = int(atlas_meta["n_landmarks"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise StoreError(f"the atlas description cannot be read ({type(exc).__name__}: "
                             f"{exc})", store=self.path, file=atlas_json, field="atlas.json",
                             fix="restore atlas/ from a backup, or preprocess into a new --out "
                             "folder") from None
        problem = None
        if atlas_n != self.n_landmarks:
            problem = (f"{meta_path} says {self.n_landmarks} landmarks but {atlas_json} says "
                       f"{atlas_n}")
        elif ("atlas_json_blake2b" in self.meta
              and _file_digest(atlas_json) != self.meta["atlas_json_blake2b"]):
            problem = (f"{atlas_json} differs from the atlas {meta_path} was made with "
                       "(checksum 'atlas_json_blake2b')")
        if problem:
            raise StoreError(
                f"store.json and atlas.json disagree: {problem}; the patches may have been cut "
                "for another atlas (two runs into one folder?)", store=self.path,
                file=f"{meta_path} and {atlas_json}", field="atlas",
                fix="preprocess again into a new --out folder (one run per folder)")

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
        elif not np.array_equal(np.load(path / "atlas" / "landmarks.npy"), atlas.landmarks):
            raise StoreError(
                "the atlas already in this folder has other landmarks than the one given "
                f"({len(np.load(path / 'atlas' / 'landmarks.npy'))} vs {L})", store=path,
                file=path / "atlas" / "landmarks.npy", field="atlas",
                fix="use the atlas in this folder (--atlas), or a new --out folder")
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
            "checksums": f"{CHECKSUM_ALGORITHM} per subject and array in subjects/<sid>.json",
            "landmarks_crc32": _landmarks_crc(np.asarray(atlas.landmarks)),
            "atlas_json_blake2b": _file_digest(path / "atlas" / "atlas.json"),
        }
        _atomic_write_text(meta_path, json.dumps(_sealed(meta, "meta_checksum"), indent=1))
        return cls(path)

    # ------------------------------------------------------------------ pickling
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        # Open zarr handles and caches are per process: a worker re-opens lazily.
        state["_group"] = None
        state["_done_cache"] = None
        state["_lung_fraction"] = None
        state["_sums"] = {}
        return state

    def _arrays(self):
        if self._group is None:
            self._group = self._open_arrays()
        return self._group

    def _open_arrays(self):
        """The zarr group, its metadata checked: a damaged or edited ``zarr.json`` (not JSON,
        another data type or shape) is a StoreError naming that file, not a raw zarr error."""
        import zarr

        root = self.path / "patches.zarr"
        P, L, N = self.patch_size, self.n_landmarks, len(self.slots)
        expected = {"patches": (N, L, P, P, P), "lung_fraction": (N, L), "corners": (N, L, 3)}
        fix = (f"the store's array description is damaged: restore {root} from a backup, or "
               "preprocess into a new --out folder")
        for meta in [root / "zarr.json"] + [root / name / "zarr.json" for name in expected]:
            try:
                json.loads(meta.read_text())
            except (OSError, ValueError) as exc:
                raise StoreError(f"the zarr metadata cannot be read ({type(exc).__name__}: "
                                 f"{exc})", store=self.path, file=meta, field="zarr.json",
                                 fix=fix) from None
        arrays, file = {}, root / "zarr.json"
        try:
            group = zarr.open_group(str(root), mode="r+")
            for name in expected:
                file = root / name / "zarr.json"
                arrays[name] = group[name]
        except Exception as exc:  # noqa: BLE001 - any zarr error here is damaged metadata
            raise StoreError(f"the zarr metadata is not valid ({type(exc).__name__}: {exc})",
                             store=self.path, file=file, field="zarr.json", fix=fix) from None
        for name, shape in expected.items():
            arr = arrays[name]
            if str(arr.dtype) != str(np.dtype(_DTYPES[name])) or tuple(arr.shape) != shape:
                raise StoreError(
                    f"array {name!r} is {arr.dtype} {tuple(arr.shape)}, the store was made with "
                    f"{np.dtype(_DTYPES[name])} {shape} (its metadata was edited or damaged)",
                    store=self.path, file=root / name / "zarr.json", field="zarr.json", fix=fix)
        return group

    # ------------------------------------------------------------------ protocol
    @property
    def atlas(self):
        if self._atlas is None:
            from drasclr_toolkit.preprocess.atlas import Atlas

            self._atlas = Atlas.load(self.path / "atlas")
        return self._atlas

    @property
    def landmarks(self) -> np.ndarray:
        if self._landmarks is None:
            path = self.path / "atlas" / "landmarks.npy"
            try:
                landmarks = np.load(path)
            except (OSError, ValueError) as exc:
                raise self._damage(None, path, "atlas landmarks",
                                   f"cannot be read ({type(exc).__name__}: {exc})") from None
            expected = self.meta.get("landmarks_crc32")
            if len(landmarks) != self.n_landmarks:
                raise StoreError(
                    f"store.json and atlas/landmarks.npy disagree: {self.path / 'store.json'} "
                    f"says {self.n_landmarks} landmarks, {path} holds {len(landmarks)}",
                    store=self.path, file=path, field="atlas landmarks",
                    fix="preprocess again into a new --out folder (one run per folder)")
            if expected is not None and _landmarks_crc(landmarks) != int(expected):
                raise StoreError(
                    "the atlas landmarks differ from those the store was made with "
                    "(checksum mismatch)", store=self.path, file=path, field="atlas landmarks",
                    fix="the whole store depends on them: restore atlas/ from a backup or "
                    "run `drasclr preprocess` into a new --out folder")
            self._landmarks = landmarks
        return self._landmarks

    @property
    def landmark_coords(self) -> np.ndarray:
        """(L, 3) float32: (p - min) / (max - min) * 2 - 1 per axis (cached)."""
        if self._coords is None:
            from drasclr_toolkit.landmarks import normalize_landmarks

            self._coords = normalize_landmarks(self.landmarks)
        return self._coords

    @property
    def neighbors(self) -> np.ndarray:
        """(L, k) nearest landmarks, ties by distance then index (cached; k from store.json)."""
        if self._neighbors is None:
            from drasclr_toolkit.landmarks import nearest_neighbors

            self._neighbors = nearest_neighbors(self.landmarks, int(self.meta.get("neighbors_k", 2)))
        return self._neighbors

    @property
    def subject_ids(self) -> list[str]:
        """Finished subjects (those with a commit marker), in manifest order."""
        if self._done_cache is None:
            d = self.path / "subjects"
            done = {p.name for p in d.glob("*.json")} if d.exists() else set()
            self._done_cache = [s for s in self.slots if self._marker(s).name in done]
        return self._done_cache

    def refresh(self) -> None:
        """Forget cached listings (after another process added subjects)."""
        self._done_cache = None
        self._lung_fraction = None
        self._sums = {}

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

    # ------------------------------------------------------------------ integrity
    def _marker(self, sid: str) -> Path:
        return subject_file(self.path / "subjects", sid, ".json")

    def chunk_file(self, array: str, subject_id: str) -> Path:
        """The file holding one subject's part of ``array`` (its shard or chunk).

        Example:
            >>> PatchStore("out/pre").chunk_file("patches", "syn001")   # doctest: +SKIP
            PosixPath('out/pre/patches.zarr/patches/c/1/0/0/0/0')
        """
        return self._slot_file(array, self._slot_of[subject_id])

    def _slot_file(self, array: str, slot: int) -> Path:
        ndim = {"patches": 5, "lung_fraction": 2, "corners": 3}[array]
        return self.path.joinpath("patches.zarr", array, "c", str(slot), *["0"] * (ndim - 1))

    def _redo_fix(self, sid: str) -> str:
        return (f"re-run preprocessing for this subject: delete {self._marker(sid)} (or run "
                f"`drasclr store verify {self.path} --forget-damaged`), then run `drasclr "
                "preprocess` again with the same manifest and --out; it resumes and redoes "
                "only that subject")

    def _damage(self, sid: str | None, file: Path, field: str, problem: str) -> StoreError:
        fix = (self._redo_fix(sid) if sid is not None else
               f"run `drasclr store verify {self.path}` to see what else is damaged")
        return StoreError(problem, store=self.path, subject_id=sid, file=file, field=field,
                          fix=fix)

    def _record(self, sid: str) -> dict[str, Any]:
        """A subject's record, checked against its seal ('record_checksum')."""
        marker = self._marker(sid)
        try:
            record = json.loads(marker.read_text())
        except (OSError, ValueError) as exc:
            raise self._damage(sid, marker, "record",
                               f"the subject's record cannot be read ({exc})") from None
        if not isinstance(record, dict) or _seal_ok(record, "record_checksum") is False:
            raise self._damage(sid, marker, "record",
                               "the subject's record (landmark centres, in_scan, transform, "
                               "QC) was edited or damaged after preprocessing wrote it "
                               "(checksum 'record_checksum' mismatch)")
        return record

    def _sums_of(self, sid: str) -> dict | None:
        """The checksums in a subject's record (cached per process), None for old records."""
        if sid not in self._sums:
            record = self._record(sid)
            sums = record.get("checksums")
            if sums is not None and sums.get("algorithm") != CHECKSUM_ALGORITHM:
                sums = None
            self._sums[sid] = sums
        return self._sums[sid]

    def _read_rows(self, array: str, slots: Sequence[int], *rest) -> np.ndarray:
        """``array[slots, *rest]``; a codec or I/O error names the damaged subject's file."""
        arr = self._arrays()[array]
        try:
            return np.asarray(arr.get_orthogonal_selection((list(slots), *rest)))
        except Exception as exc:  # noqa: BLE001 - any codec/IO error is damage; find whose
            for slot in slots:  # read one by one to name the subject whose file is broken
                try:
                    arr.get_orthogonal_selection(([slot], *rest))
                except Exception as one:  # noqa: BLE001
                    raise self._damage(self.slots[slot], self._slot_file(array, slot), array,
                                       f"the data cannot be decoded ({type(one).__name__}: "
                                       f"{one})") from None
            raise StoreError(f"reading {array} failed ({type(exc).__name__}: {exc})",
                             store=self.path, field=array,
                             fix=f"run `drasclr store verify {self.path}`") from None

    def _check(self, sid: str, array: str, values: np.ndarray, loc: int | None = None) -> None:
        sums = self._sums_of(sid)
        if sums is None:
            return  # written before checksums existed
        values = np.asarray(values, _DTYPES[array])
        if array == "patches":
            locs = range(len(values)) if loc is None else [loc]
            rows = values if loc is None else values[None]
            bad = [i for i, row in zip(locs, rows) if _crc(row) != int(sums["patches"][i])]
        else:
            bad = [] if _crc(values) == int(sums[array]) else [None]
        if bad:
            where = ""
            if array == "patches":
                listed = ", ".join(map(str, bad[:5])) + (", …" if len(bad) > 5 else "")
                where = f" at {len(bad)} location(s) ({listed})"
            filled = {"patches": -1024, "lung_fraction": 0, "corners": 0}[array]
            hint = (" and read as the fill value (file deleted or emptied?)"
                    if np.all(values == filled) else "")
            raise self._damage(sid, self.chunk_file(array, sid), array,
                               f"checksum mismatch{where}: the data differs from what "
                               f"preprocessing wrote{hint}")

    @property
    def lung_fraction(self) -> np.ndarray:
        """(N, L) float32 lung fraction of each patch of the finished subjects."""
        if self._lung_fraction is None:
            ids = self.subject_ids
            slots = [self._slot_of[s] for s in ids]
            if not slots:
                self._lung_fraction = np.zeros((0, self.n_landmarks), np.float32)
            else:
                rows = self._read_rows("lung_fraction", slots, slice(None)).astype(np.float32)
                for sid, row in zip(ids, rows):
                    self._check(sid, "lung_fraction", row)
                self._lung_fraction = rows
        return self._lung_fraction

    def read_location(self, loc: int, subjects: Sequence[int]) -> np.ndarray:
        """(B, P, P, P) int16 HU: location ``loc`` of the given subjects (store positions)."""
        slots = [self._slot(s) for s in subjects]
        if not slots:
            P = self.patch_size
            return np.zeros((0, P, P, P), np.int16)
        # Sorted unique slots read each inner chunk once; then back to the asked order.
        uniq, inv = np.unique(slots, return_inverse=True)
        out = self._read_rows("patches", uniq, int(loc))
        for slot, patch in zip(uniq, out):
            self._check(self.slots[slot], "patches", patch, loc=int(loc))
        return out[inv]

    def read_subject(self, subject: int | str) -> np.ndarray:
        """(L, P, P, P) int16 HU: all patches of one subject (index or subject id)."""
        slot = self._slot(subject)
        out = self._read_rows("patches", [slot], slice(None))[0]
        self._check(self.slots[slot], "patches", out)
        return out

    def subject_record(self, subject: int | str) -> dict[str, Any]:
        """The subject's JSON record: mapped landmarks, transform, QC, checksums."""
        sid = subject if isinstance(subject, str) else self.subject_ids[int(subject)]
        return self._record(sid)

    def subject_corners(self, subject: int | str) -> np.ndarray:
        """(L, 3) int patch corners (x, y, z) in the subject's resampled grid."""
        slot = self._slot(subject)
        out = self._read_rows("corners", [slot], slice(None), slice(None))[0]
        self._check(self.slots[slot], "corners", out)
        return out

    def verify(self, subjects: Sequence[str] | None = None) -> list[dict[str, str]]:
        """Check every finished subject's arrays against its checksums (all of its data).

        Returns rows ``{"subject", "status", "reason"}``; status is ``ok``, ``damaged``,
        ``unverified`` (record older than checksums), ``failed`` (preprocessing failed),
        ``not done`` (not preprocessed yet); a first row ``(atlas landmarks)`` covers the
        store-wide landmarks.

        Example:
            >>> [r["status"] for r in PatchStore("out/pre").verify()]   # doctest: +SKIP
            ['ok', 'ok', 'damaged']
        """
        self.refresh()
        self._sums = {}
        rows: list[dict[str, str]] = []
        try:
            self._landmarks = None
            _ = self.landmarks
            self._check_atlas_agrees()
            self._group = None
            self._arrays()
            rows.append({"subject": "(atlas landmarks)", "status": "ok", "reason": ""})
        except StoreError as exc:
            rows.append({"subject": "(atlas landmarks)", "status": "damaged", "reason": str(exc)})
            if exc.field == "zarr.json":  # no array can be read: one row says why
                return rows + [{"subject": sid, "status": "unverified", "reason": "see above"}
                               for sid in (self.slots if subjects is None else list(subjects))]
        done = set(self.subject_ids)
        failures = self.failures()
        for sid in (self.slots if subjects is None else list(subjects)):
            if sid not in done:
                if sid in failures:
                    rows.append({"subject": sid, "status": "failed",
                                 "reason": str(failures[sid].get("reason", ""))})
                else:
                    rows.append({"subject": sid, "status": "not done", "reason": ""})
                continue
            try:
                if self._sums_of(sid) is None:
                    rows.append({"subject": sid, "status": "unverified",
                                 "reason": "record written before checksums existed"})
                    continue
                self.read_subject(sid)
                slot = self._slot_of[sid]
                self._check(sid, "lung_fraction",
                            self._read_rows("lung_fraction", [slot], slice(None))[0])
                self.subject_corners(sid)
            except StoreError as exc:
                rows.append({"subject": sid, "status": "damaged", "reason": str(exc)})
                continue
            rows.append({"subject": sid, "status": "ok", "reason": ""})
        return rows

    def forget(self, subject_id: str) -> None:
        """Remove a subject's commit marker, so the next preprocessing run redoes it."""
        self._marker(subject_id).unlink(missing_ok=True)
        self.refresh()

    def fingerprint(self) -> str:
        """A short hash of what the store holds: subjects, their checksums, the landmarks.

        A run that trained on a store can keep this and compare it on resume: it changes
        when a subject is added, removed or redone.
        """
        h = hashlib.blake2b(digest_size=8)
        h.update(str(self.meta.get("landmarks_crc32")).encode())
        for sid in self.subject_ids:
            h.update(sid.encode() + b"\0")
            h.update(json.dumps(self._sums_of(sid), sort_keys=True).encode())
        return h.hexdigest()

    @property
    def in_scan(self) -> np.ndarray:
        """``(N, L)`` bool: False where a landmark's patch centre lay outside the subject's
        scan (partial coverage; such patches are air padding). From the subject records."""
        out = np.ones((len(self.subject_ids), int(self.n_landmarks)), bool)
        for row, sid in enumerate(self.subject_ids):
            flags = self._record(sid).get("in_scan")
            if isinstance(flags, str):
                flags = json.loads(flags)
            if flags is not None and len(flags) == out.shape[1]:
                out[row] = np.asarray(flags, bool)
        return out

    def subject_checksum(self, subject: int | str) -> str | None:
        """A short hash of one subject's stored checksums: it changes when the subject is
        redone or its data differ (e.g. another store with the same ids); None for records
        written before checksums existed."""
        sid = self.subject_ids[subject] if isinstance(subject, (int, np.integer)) else str(subject)
        sums = self._sums_of(sid)
        if sums is None:
            return None
        return hashlib.blake2b(json.dumps(sums, sort_keys=True).encode(), digest_size=8).hexdigest()

    def require_subjects(self, minimum: int, purpose: str) -> None:
        """Raise StoreError unless at least ``minimum`` subjects are finished.

        Example:
            >>> PatchStore("out/pre").require_subjects(2, "pretraining")   # doctest: +SKIP
        """
        n = len(self.subject_ids)
        if n < minimum:
            failed = len(self.failures())
            raise StoreError(
                f"{purpose} needs at least {minimum} preprocessed subjects, the store has {n}"
                + (f" ({failed} failed: see {self.path / 'qc.csv'})" if failed else ""),
                store=self.path, field="subjects",
                fix="preprocess more subjects into this store (`drasclr preprocess` with a "
                "larger manifest; failed ones are retried), or fix the failed ones",
            )

    def failures(self) -> dict[str, dict[str, Any]]:
        d = self.path / "failures"
        if not d.exists():
            return {}
        out = {}
        for p in sorted(d.glob("*.json")):
            record = json.loads(p.read_text())
            out[str(record.get("subject_id") or p.name[:-5])] = record
        return out

    # ------------------------------------------------------------------ writing
    def is_done(self, subject_id: str) -> bool:
        return self._marker(subject_id).exists()

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
        marker = self._marker(subject_id)  # refuses an unsafe id before anything is written
        if subject_id not in self._slot_of:
            raise StoreError(f"subject {subject_id!r} has no slot in store {self.path}")
        P, L = self.patch_size, self.n_landmarks
        if patches.shape != (L, P, P, P) or patches.dtype != np.int16:
            raise InputError(
                f"subject {subject_id!r}: patches must be int16 {(L, P, P, P)}, "
                f"got {patches.dtype} {patches.shape}"
            )
        i = self._slot_of[subject_id]
        lung_fraction = np.asarray(lung_fraction, np.float32)
        corners = np.asarray(corners, np.int32)
        g = self._arrays()
        g["patches"][i] = patches
        g["lung_fraction"][i] = lung_fraction
        g["corners"][i] = corners
        record = _sealed({**record, "checksums": _checksums(patches, lung_fraction, corners)},
                         "record_checksum")
        fail = subject_file(self.path / "failures", subject_id, ".json")
        _atomic_write_text(marker, json.dumps(record, indent=1))
        if fail.exists():
            fail.unlink()
        self.refresh()

    def write_failure(self, subject_id: str, reason: str, stage: str = "") -> None:
        rec = {"subject_id": subject_id, "status": "failed", "stage": stage, "reason": reason}
        _atomic_write_text(subject_file(self.path / "failures", subject_id, ".json"),
                           json.dumps(rec, indent=1))

    def __repr__(self) -> str:
        return (
            f"PatchStore({str(self.path)!r}: {len(self.subject_ids)}/{len(self.slots)} subjects, "
            f"{self.n_landmarks} landmarks, patch {self.patch_size})"
        )
