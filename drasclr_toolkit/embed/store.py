"""The embedding store: patch-level representations of a cohort, with what made them.

An :class:`Embeddings` holds ``patch`` (N subjects × L landmarks × D features, float32),
the subject ids, the atlas landmarks and their network coordinates, the lung fraction of
every patch and a ``provenance`` dict (checkpoint path, its config, encoder kind, ...).
It is saved as one ``.npz`` file (arrays plus a JSON metadata string), written atomically.

Patient-level pooling is :func:`drasclr_toolkit.evaluate.pool_embeddings`: a pandas
DataFrame indexed by subject id with columns ``h0 … h{D-1}``, so ids travel with the
numbers and joining with a label table is one ``.join``.

Example:
    >>> import numpy as np
    >>> emb = Embeddings(patch=np.ones((2, 3, 4), np.float32), subject_ids=["a", "b"],
    ...                  landmarks=np.zeros((3, 3), int),
    ...                  landmark_coords=np.zeros((3, 3), np.float32),
    ...                  lung_fraction=np.ones((2, 3), np.float32))
    >>> emb.patch.shape, emb.n_landmarks
    ((2, 3, 4), 3)
"""

from __future__ import annotations

import json
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from drasclr_toolkit.errors import DrasclrError, InputError, MissingFileError
from drasclr_toolkit.io_utils import atomic_write_stream

__all__ = ["Embeddings", "atomic_save_npy"]

FORMAT_VERSION = 1


def atomic_save_npy(path: str | Path, array: np.ndarray) -> None:
    """``np.save`` that never leaves a half-written file behind (temp file, then rename)."""
    atomic_write_stream(path, lambda handle: np.save(handle, array, allow_pickle=False),
                        make_parents=True)



class EmbeddingsFileError(DrasclrError, ValueError):
    """An embeddings .npz that is truncated, damaged or not an embeddings file."""

@dataclass
class Embeddings:
    """Patch-level embeddings of a cohort.

    Attributes:
        patch: ``(N, L, D)`` float32, the representation ``h`` of every patch.
        subject_ids: N subject ids, the order of ``patch``'s first axis.
        landmarks: ``(L, 3)`` int atlas voxel patch corners (x, y, z).
        landmark_coords: ``(L, 3)`` float32, the locations the encoder was given.
        lung_fraction: ``(N, L)`` float32 lung fraction of each patch.
        provenance: JSON-serialisable facts: checkpoint path, its config, encoder kind,
            seed, failed subjects, ...
    """

    patch: np.ndarray
    subject_ids: list[str]
    landmarks: np.ndarray
    landmark_coords: np.ndarray
    lung_fraction: np.ndarray
    provenance: dict[str, Any] = field(default_factory=dict)
    in_scan: np.ndarray | None = None  # (N, L) bool: False where the patch centre lay outside the scan

    def __post_init__(self) -> None:
        self.patch = np.asarray(self.patch, dtype=np.float32)
        self.subject_ids = [str(s) for s in self.subject_ids]
        self.landmarks = np.asarray(self.landmarks)
        self.landmark_coords = np.asarray(self.landmark_coords, dtype=np.float32)
        self.lung_fraction = np.asarray(self.lung_fraction, dtype=np.float32)
        if self.patch.ndim != 3:
            raise InputError(f"Embeddings.patch must be (N, L, D); got shape {self.patch.shape}")
        n, n_loc, _ = self.patch.shape
        checks = {
            "subject_ids": (len(self.subject_ids), n),
            "landmarks": (self.landmarks.shape, (n_loc, 3)),
            "landmark_coords": (self.landmark_coords.shape, (n_loc, 3)),
            "lung_fraction": (self.lung_fraction.shape, (n, n_loc)),
        }
        if self.in_scan is not None:
            self.in_scan = np.asarray(self.in_scan, dtype=bool)
            checks["in_scan"] = (self.in_scan.shape, (n, n_loc))
        for name, (got, want) in checks.items():
            if got != want:
                raise InputError(f"Embeddings.{name} has shape/length {got}, expected {want} "
                                 f"to match patch {self.patch.shape}")
        if len(set(self.subject_ids)) != n:
            raise InputError("Embeddings.subject_ids contains duplicates")

    # -- shape -------------------------------------------------------------------------
    @property
    def n_subjects(self) -> int:
        return self.patch.shape[0]

    @property
    def n_landmarks(self) -> int:
        return self.patch.shape[1]

    @property
    def dim(self) -> int:
        return self.patch.shape[2]

    def __len__(self) -> int:
        return self.n_subjects

    def __repr__(self) -> str:
        kind = self.provenance.get("encoder_kind", "?")
        return (f"Embeddings(N={self.n_subjects}, L={self.n_landmarks}, D={self.dim}, "
                f"encoder={kind!r})")

    def subject_index(self, subject: int | str) -> int:
        """Row of ``subject`` (an id or an index)."""
        if isinstance(subject, (int, np.integer)):
            if not -self.n_subjects <= subject < self.n_subjects:
                raise IndexError(f"subject index {subject} out of range for "
                                 f"{self.n_subjects} subjects")
            return int(subject) % self.n_subjects
        try:
            return self.subject_ids.index(str(subject))
        except ValueError:
            raise KeyError(f"subject {subject!r} is not in these embeddings "
                           f"(first ids: {self.subject_ids[:5]})") from None

    def subset(self, subjects: Sequence[int | str]) -> "Embeddings":
        """Embeddings of the given subjects (ids or indices), in that order."""
        rows = [self.subject_index(s) for s in subjects]
        return Embeddings(self.patch[rows], [self.subject_ids[r] for r in rows],
                          self.landmarks, self.landmark_coords, self.lung_fraction[rows],
                          dict(self.provenance),
                          None if self.in_scan is None else self.in_scan[rows])

    # -- disk --------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write one ``.npz`` (atomically); returns the path written.

        The metadata (subject ids, provenance) is a JSON string inside the archive, so
        the file loads without pickle.
        """
        path = Path(path)
        meta = {"format_version": FORMAT_VERSION, "subject_ids": self.subject_ids,
                "provenance": self.provenance}
        try:
            meta_text = json.dumps(meta)
        except TypeError as exc:
            raise TypeError(f"Embeddings.provenance must be JSON-serialisable: {exc}") from exc
        arrays = dict(patch=self.patch, landmarks=self.landmarks,
                      landmark_coords=self.landmark_coords, lung_fraction=self.lung_fraction,
                      metadata=np.array(meta_text))
        if self.in_scan is not None:
            arrays["in_scan"] = self.in_scan
        atomic_write_stream(path, lambda handle: np.savez(handle, **arrays), make_parents=True)
        return path

    @classmethod
    def load(cls, path: str | Path) -> "Embeddings":
        """Read a file written by :meth:`save`."""
        path = Path(path)
        if not path.is_file():
            raise MissingFileError(f"embeddings file {path} does not exist; run "
                                    "`drasclr embed` (or extract_embeddings) to create it")
        try:
            with np.load(path, allow_pickle=False) as data:
                missing = {"patch", "landmarks", "landmark_coords", "lung_fraction",
                           "metadata"} - set(data.files)
                if missing:
                    raise EmbeddingsFileError(
                        f"not an embeddings file: it lacks {sorted(missing)}",
                        where=f"file {path}", fix="give a .npz written by `drasclr embed`")
                meta = json.loads(str(data["metadata"]))
                emb = cls(patch=data["patch"], subject_ids=meta["subject_ids"],
                          landmarks=data["landmarks"], landmark_coords=data["landmark_coords"],
                          lung_fraction=data["lung_fraction"],
                          provenance=meta.get("provenance", {}),
                          in_scan=data["in_scan"] if "in_scan" in data.files else None)
        except EmbeddingsFileError:
            raise
        except (OSError, ValueError, EOFError, KeyError, TypeError, zipfile.BadZipFile,
                zlib.error) as exc:
            raise EmbeddingsFileError(
                f"the embeddings file cannot be read, it is truncated or damaged "
                f"({type(exc).__name__}: {exc})", where=f"file {path}",
                fix="run `drasclr embed` again into a new --out (a finished run's file is "
                "rewritten from its .parts folder)") from None
        if emb.patch.shape[:2] != (len(emb.subject_ids), len(emb.landmarks)):
            raise EmbeddingsFileError(
                f"the arrays disagree: patch {emb.patch.shape} for {len(emb.subject_ids)} "
                f"subjects and {len(emb.landmarks)} landmarks", where=f"file {path}",
                fix="run `drasclr embed` again into a new --out")
        return emb
