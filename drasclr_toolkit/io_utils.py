"""Atomic file writes: write a temporary file next to the target, then ``os.replace`` it.

A process killed mid-write leaves either the old file or the new one, never half of one,
and a failed write removes its temporary file. Every stage writes through these helpers.

The temporary file sits in the target's folder (``os.replace`` is atomic only within one
file system), is hidden (``.<name>.<pid>.<random><suffix>``) and by default ends in
``.tmp``, so readers that list ``*.json`` or ``*.npy`` never see a half-written file.
Writers that choose the format or append an extension from the file name (SimpleITK,
``np.savez`` given a path) need the real extension at the end: pass ``suffix=".tmp.nii.gz"``.

The temporary file is created like any new file (mode ``0o666`` minus the umask), so the
target ends up with ordinary permissions. No ``fsync``: a crash of the whole machine can
still lose the newest write, the same as a plain ``open(...).write``.

This module imports nothing from ``drasclr_toolkit``, so every subpackage can use it.

Example:
    >>> import json, tempfile
    >>> from pathlib import Path
    >>> d = Path(tempfile.mkdtemp())
    >>> _ = atomic_write_text(d / "run.json", json.dumps({"seed": 0}))
    >>> (d / "run.json").read_text()
    '{"seed": 0}'
    >>> def broken(handle):
    ...     handle.write(b"half a file")
    ...     raise RuntimeError("killed")
    >>> atomic_write_stream(d / "run.json", broken)
    Traceback (most recent call last):
    ...
    RuntimeError: killed
    >>> [p.name for p in d.iterdir()]   # the old file is intact, no temporary file is left
    ['run.json']
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import secrets
import shutil
import signal
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import IO, Any, Callable, Iterable

from drasclr_toolkit.errors import DrasclrError, InputError, OutputExistsError, os_error

__all__ = [
    "SUBJECT_ID_PATTERN",
    "UnsafeSubjectIdError",
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_stream",
    "atomic_write_text",
    "die_with_parent",
    "read_jsonl",
    "remove_stale_temp_files",
    "safe_subject_id",
    "subject_file",
]

log = logging.getLogger(__name__)

# Subject ids become file names (store records, failure notes, images), so only characters
# that are safe in a file name on every system, and no leading '.' (no '..', no hidden file).
SUBJECT_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
# The temporary names atomic_write makes: ".<name>.<pid>.<8 hex><suffix>", suffix from ".tmp".
_TEMP_NAME = re.compile(r"^\..+\.(\d+)\.[0-9a-f]{8}\.tmp(\.[A-Za-z0-9.]+)?$")


def atomic_write(path: str | os.PathLike, write_fn: Callable[[Path], Any], *,
                 suffix: str = ".tmp", make_parents: bool = False) -> Path:
    """Call ``write_fn(tmp)`` to write the whole file at ``tmp``, then rename it to ``path``.

    Args:
        path: the file to (re)place.
        write_fn: writes the complete content to the temporary path it is given (an
            empty file already exists there); its return value is ignored.
        suffix: end of the temporary name; keep the real extension for writers that pick
            the format from it (``".tmp.nii.gz"`` for SimpleITK, ``".tmp.npz"`` for
            ``np.savez`` given a path, which would otherwise append ``.npz``).
        make_parents: create the missing parent folders first.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Example:
        >>> import tempfile
        >>> import numpy as np
        >>> target = Path(tempfile.mkdtemp()) / "a.npz"
        >>> _ = atomic_write(target, lambda tmp: np.savez(tmp, x=np.arange(3)), suffix=".tmp.npz")
        >>> np.load(target)["x"].tolist()
        [0, 1, 2]
    """
    path = Path(path)
    if make_parents:
        path.parent.mkdir(parents=True, exist_ok=True)
    # pid + random token: concurrent writers (DataLoader workers, DDP ranks) never share a
    # temporary name; "x" mode guarantees it and gives the file the usual umask permissions.
    tail = f".{os.getpid()}.{secrets.token_hex(4)}{suffix}"
    stem = path.name
    while len(f".{stem}{tail}".encode()) > _MAX_NAME_BYTES and len(stem) > 1:
        stem = stem[: len(stem) - 8] or stem[:1]  # a long name: a shorter temp name
    tmp = path.with_name(f".{stem}{tail}")
    try:
        open(tmp, "xb").close()
    except OSError as exc:
        raise (os_error(exc, path) or exc) from exc
    try:
        write_fn(tmp)
        os.replace(tmp, path)
    except BaseException as exc:
        # A full disk, measured before the partial file is removed (torch's writer says
        # only "file write failed"): said as such, with the folder.
        full = _disk_nearly_full(tmp.parent) if isinstance(exc, Exception) else False
        tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError) and os_error(exc, path) is not None:
            raise os_error(exc, path) from exc
        if full:
            raise os_error(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)), path) from exc
        raise
    return path


_MAX_NAME_BYTES = 255  # one path component on Linux/macOS file systems


def _disk_nearly_full(folder: Path, margin: int = 1 << 20) -> bool:
    try:
        return shutil.disk_usage(folder).free < margin
    except OSError:
        return False


def atomic_write_stream(path: str | os.PathLike, write_fn: Callable[[IO[bytes]], Any], *,
                        suffix: str = ".tmp", make_parents: bool = False) -> Path:
    """Like :func:`atomic_write`, but ``write_fn`` gets the temporary file open for binary
    writing (``np.save(handle, ...)``, ``np.savez(handle, ...)``, ``shutil.copyfileobj``).

    Example:
        >>> import tempfile
        >>> import numpy as np
        >>> target = Path(tempfile.mkdtemp()) / "x"          # no ".npy": nothing is appended
        >>> _ = atomic_write_stream(target, lambda f: np.save(f, np.ones(2)))
        >>> np.load(target).tolist()
        [1.0, 1.0]
    """
    def write_handle(tmp: Path) -> None:
        with open(tmp, "wb") as handle:
            write_fn(handle)

    return atomic_write(path, write_handle, suffix=suffix, make_parents=make_parents)


def atomic_write_bytes(path: str | os.PathLike, data: bytes, *,
                       make_parents: bool = False) -> Path:
    """Write ``data`` to ``path`` atomically.

    Example:
        >>> import tempfile
        >>> target = Path(tempfile.mkdtemp()) / "blob.bin"
        >>> atomic_write_bytes(target, b"\\x00\\x01").read_bytes()
        b'\\x00\\x01'
    """
    return atomic_write_stream(path, lambda handle: handle.write(data), make_parents=make_parents)


def atomic_write_text(path: str | os.PathLike, text: str, *, encoding: str = "utf-8",
                      make_parents: bool = False) -> Path:
    """Write ``text`` to ``path`` atomically, byte for byte (no newline translation).

    UTF-8 whatever the process locale, so a locale left at ``C`` (GDCM does that) cannot
    turn a non-ASCII subject id or card description into a ``UnicodeEncodeError``.

    Example:
        >>> import tempfile
        >>> target = Path(tempfile.mkdtemp()) / "card.yaml"
        >>> atomic_write_text(target, "unit: µm\\n").read_text(encoding="utf-8")
        'unit: µm\\n'
    """
    return atomic_write_bytes(path, text.encode(encoding), make_parents=make_parents)


# ------------------------------------------------------------------------ subject file names


class UnsafeSubjectIdError(DrasclrError, ValueError):
    """A subject id that would name a file outside its folder, or an unusable file name."""


def safe_subject_id(subject_id: Any) -> str:
    """``subject_id`` as a string, if it is safe as a file name; else UnsafeSubjectIdError.

    Every API that names a file after a subject checks here, not only the manifest reader,
    so a table built in Python cannot write outside the output folder.

    Example:
        >>> safe_subject_id("case-01.a")
        'case-01.a'
        >>> safe_subject_id("../../escape")
        Traceback (most recent call last):
        ...
        drasclr_toolkit.io_utils.UnsafeSubjectIdError: subject '../../escape', field 'subject_id': \
the id has characters that are unsafe in file names ('/', '\\', a leading '.', spaces, ...). \
What to do: use letters, digits, '.', '_' or '-' (starting with a letter or digit), and fix \
the id in the manifest or the table you passed
    """
    sid = str(subject_id)
    if not SUBJECT_ID_PATTERN.match(sid):
        raise UnsafeSubjectIdError(
            f"subject {sid!r}, field 'subject_id': the id has characters that are unsafe in "
            "file names ('/', '\\', a leading '.', spaces, ...). What to do: use letters, "
            "digits, '.', '_' or '-' (starting with a letter or digit), and fix the id in the "
            "manifest or the table you passed"
        )
    return sid


# Longer file names (in bytes) are shortened: most file systems stop at 255, and temporary
# names and suffixes need room.
MAX_SUBJECT_FILE_NAME = 200


def short_file_name(stem: str, suffix: str = "") -> str:
    """``stem + suffix``, or for a name over MAX_SUBJECT_FILE_NAME bytes its first 120
    characters, ``~`` and a hash of the whole stem (``~`` is never in a subject id, so a
    shortened name cannot collide with a real one).

    Example:
        >>> short_file_name("a" * 300, ".json")[-22:]
        '~8b397aa4c75429a2.json'
    """
    if len(f"{stem}{suffix}".encode()) <= MAX_SUBJECT_FILE_NAME:
        return f"{stem}{suffix}"
    import hashlib

    digest = hashlib.blake2b(stem.encode(), digest_size=8).hexdigest()
    return f"{stem[:120]}~{digest}{suffix}"


def subject_file(folder: str | os.PathLike, subject_id: Any, suffix: str = "") -> Path:
    """``folder / (subject_id + suffix)``, refusing an id that is unsafe or leaves ``folder``.

    Example:
        >>> subject_file("out/subjects", "syn001", ".json").as_posix()
        'out/subjects/syn001.json'
    """
    folder = Path(folder)
    path = folder / short_file_name(f"{safe_subject_id(subject_id)}", suffix)
    # The pattern already forbids separators; this second check guards future changes to it.
    if os.path.dirname(os.path.normpath(path)) != os.path.normpath(folder):
        raise UnsafeSubjectIdError(
            f"subject {subject_id!r}, file {path}: the name leaves the folder {folder}. "
            "What to do: use a subject id without path separators"
        )
    return path


# ------------------------------------------------------------------- leftovers of killed runs


def remove_stale_temp_files(folder: str | os.PathLike, *, recursive: bool = True,
                            min_age_s: float = 0.0) -> list[Path]:
    """Remove temporary files that a killed :func:`atomic_write` left in ``folder``.

    Only names this module makes (``.<name>.<pid>.<8 hex>.tmp[.ext]``) are touched, and only
    when the process whose pid is in the name is no longer running (a live writer, e.g. a
    parallel shard job on this machine, keeps its file) and the file is at least
    ``min_age_s`` old. Returns the removed paths. Stages call this at start.

    Example:
        >>> import tempfile
        >>> d = Path(tempfile.mkdtemp())
        >>> _ = (d / ".last.pt.999999999.0123abcd.tmp").write_bytes(b"half a checkpoint")
        >>> [p.name for p in remove_stale_temp_files(d)]
        ['.last.pt.999999999.0123abcd.tmp']
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed: list[Path] = []
    walker = os.walk(folder) if recursive else [(str(folder), [], os.listdir(folder))]
    now = time.time()
    for root, _dirs, files in walker:
        for name in files:
            match = _TEMP_NAME.match(name)
            if not match:
                continue
            path = Path(root) / name
            pid = int(match.group(1))
            if pid == os.getpid() or _pid_alive(pid):
                continue  # a write in progress (ours in another thread, or a live job's)
            try:
                if now - path.stat().st_mtime < min_age_s:
                    continue
                path.unlink()
            except OSError:
                continue
            removed.append(path)
    if removed:
        log.info("removed %d temporary file(s) left by an interrupted run in %s",
                 len(removed), folder)
    return removed


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    except OSError:
        return False
    return True


# --------------------------------------------------------------------------- JSON-lines logs


def read_jsonl(path: str | os.PathLike, *, stacklevel: int = 2) -> list[dict[str, Any]]:
    """Records of a JSON-lines log, tolerating a torn last line (a writer killed mid-line).

    A last line that does not parse is ignored with a warning; a bad line anywhere else is
    damage, not an interrupted write, and raises ValueError naming the file and line.

    Example:
        >>> import tempfile
        >>> p = Path(tempfile.mkdtemp()) / "metrics.jsonl"
        >>> _ = p.write_text('{"step": 1}\\n{"step": 2, "lo')
        >>> import warnings
        >>> with warnings.catch_warnings():
        ...     warnings.simplefilter("ignore")
        ...     read_jsonl(p)
        [{'step': 1}]
    """
    path = Path(path)
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    numbered = [(i + 1, line) for i, line in enumerate(lines) if line.strip()]
    records: list[dict[str, Any]] = []
    for k, (lineno, line) in enumerate(numbered):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as exc:
            if k == len(numbered) - 1:
                warnings.warn(
                    f"file {path}, line {lineno}: the last line is incomplete (the run was "
                    "interrupted while writing it); it is ignored",
                    RuntimeWarning, stacklevel=stacklevel,
                )
                break
            raise InputError(
                f"not valid JSON ({exc.msg}); a damaged line in the middle is not an "
                "interrupted write", where=f"file {path}, line {lineno} of {len(lines)}",
                fix="restore the file from a backup, or delete that line (the steps it "
                "logged are lost from the curves)"
            ) from None
    return records


# ----------------------------------------------------------------------- worker processes


def die_with_parent() -> None:
    """Make this (worker) process exit when its parent dies, even by ``kill -9``.

    Use as a process-pool ``initializer``. On Linux the kernel sends SIGKILL on parent death
    (``prctl(PR_SET_PDEATHSIG)``; strictly, when the parent *thread* that started the worker
    ends, so start the pool from the thread that waits for it, as a ``with`` block does);
    elsewhere a daemon thread polls the parent pid every 0.5 s and exits when it changes.
    """
    parent = os.getppid()
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL("libc.so.6", use_errno=True)
            pr_set_pdeathsig = 1
            if libc.prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0) == 0:
                if os.getppid() != parent:  # the parent died before prctl took effect
                    os._exit(1)
                return
        except (OSError, AttributeError):
            pass

    def watch() -> None:
        while True:
            time.sleep(0.5)
            if os.getppid() != parent:
                os._exit(1)

    threading.Thread(target=watch, name="die-with-parent", daemon=True).start()


# ------------------------------------------------------------------------ output folders


def refuse_foreign_folder(folder: str | os.PathLike, markers: Iterable[str], what: str,
                          overwrite: bool = False) -> None:
    """Refuse to write into ``folder`` when it holds files this toolkit did not write.

    Allowed: a missing or empty folder (lock files aside), or one holding a ``markers``
    entry (a file our ``what`` stage writes, e.g. ``store.json``): then it is our own output
    and is resumed. Anything else raises :class:`~drasclr_toolkit.errors.OutputExistsError`
    naming the folder and its files, unless ``overwrite`` (``--force``).

    Example:
        >>> import tempfile
        >>> d = Path(tempfile.mkdtemp())
        >>> refuse_foreign_folder(d, ["store.json"], "drasclr preprocess")   # empty: fine
        >>> _ = (d / "qc.csv").write_text("mine")
        >>> refuse_foreign_folder(d, ["store.json"], "drasclr preprocess")
        Traceback (most recent call last):
        ...
        drasclr_toolkit.errors.OutputExistsError: --out ...: the folder holds 1 file(s) drasclr preprocess did not write (qc.csv)...
    """
    folder = Path(folder)
    if overwrite or not folder.exists():
        return
    if not folder.is_dir():
        raise OutputExistsError(f"it is a file, not a folder; {what} writes a folder there",
                                where=f"--out {folder}",
                                fix="give a folder path (new or empty)")
    entries = sorted(p.name for p in folder.iterdir() if not p.name.startswith(".drasclr"))
    if not entries or any((folder / m).exists() for m in markers):
        return
    shown = ", ".join(entries[:5]) + (f", … ({len(entries) - 5} more)" if len(entries) > 5 else "")
    raise OutputExistsError(
        f"the folder holds {len(entries)} file(s) {what} did not write ({shown}); they are "
        "left as they are", where=f"--out {folder}",
        fix="give a new or empty folder, or pass --force (overwrite=True) to write into it "
        "anyway (files of the same name are then replaced)")
