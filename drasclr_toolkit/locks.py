"""One writer per output folder: an advisory lock file that a second writer is refused by.

``with folder_lock(out, "preprocess"):`` takes ``out/.drasclr.lock`` with ``flock``; a
second process asking for the same folder gets :class:`~drasclr_toolkit.errors.FolderBusyError`
naming the folder, the holder's pid and its command. The kernel drops the lock when its
holder dies (even by ``kill -9``), so a lock left by a dead process is simply taken over: the
file stays, its pid line is rewritten. The same process may take a lock it already holds
(nested calls, e.g. ``run_preprocessing`` building its atlas).

Shard jobs (``shard=(i, n)``, n > 1) share a folder on purpose: each takes the folder lock
*shared* and its own ``.drasclr.shard-i-of-n.lock`` exclusively, so two jobs of one shard,
or a whole-cohort run beside shard jobs, are refused while different shards run together.

Where ``fcntl`` does not exist (Windows) the lock is not taken (a warning says so once).

Example:
    >>> import tempfile
    >>> d = tempfile.mkdtemp()
    >>> with folder_lock(d, "example"):
    ...     with folder_lock(d, "example"):   # the same process: allowed
    ...         pass
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import warnings
from pathlib import Path
from typing import Iterator

from drasclr_toolkit.errors import FolderBusyError, os_error

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

__all__ = ["LOCK_NAME", "folder_lock"]

LOCK_NAME = ".drasclr.lock"
_held: dict[str, int] = {}  # lock file (resolved) -> nesting depth, in this process
_fds: dict[str, int] = {}
_mutex = threading.Lock()


def _describe_holder(lock_file: Path) -> str:
    try:
        text = lock_file.read_text().strip()
    except OSError:
        text = ""
    return text or "another process (pid unknown)"


def _acquire(lock_file: Path, shared: bool, folder: Path, what: str) -> bool:
    """Take ``lock_file`` (or enter it again); False where locks do not work."""
    key = str(lock_file.resolve())
    with _mutex:
        if key in _held:
            _held[key] += 1
            return True
        try:
            fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:  # read-only folder, full disk: said with the file's name
            said = os_error(exc, lock_file)
            if said is None:
                raise
            raise said from exc
        try:
            fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            holder = _describe_holder(lock_file)
            raise FolderBusyError(
                f"another {what} run is writing this folder: held by {holder}",
                where=f"folder {folder}",
                fix="wait for it to finish (or stop it), or give another --out folder; a lock "
                    "left by a process that died is taken over by itself") from None
        except OSError:  # a file system without flock: go on unlocked
            os.close(fd)
            warnings.warn(f"{lock_file}: this file system does not support locks; two runs "
                          "into one folder would not be refused", stacklevel=3)
            return False
        if not shared:  # the holder's line (a dead holder's line is simply rewritten)
            line = f"pid {os.getpid()} ({what}: {' '.join(sys.argv[:3])[:120]})\n"
            try:
                os.ftruncate(fd, 0)
                os.pwrite(fd, line.encode(), 0)
            except OSError as exc:  # a full disk: said with the lock file's name
                fcntl.flock(fd, fcntl.LOCK_UN)
                os.close(fd)
                said = os_error(exc, lock_file)
                if said is None:
                    raise
                raise said from exc
        _held[key], _fds[key] = 1, fd
        return True


def _release(lock_file: Path) -> None:
    key = str(lock_file.resolve())
    with _mutex:
        _held[key] -= 1
        if _held[key] == 0:
            del _held[key]
            fd = _fds.pop(key)
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike, what: str,
                shard: tuple[int, int] = (0, 1)) -> Iterator[Path]:
    """Hold ``folder``'s writer lock (creating the folder) for the ``with`` block.

    ``what`` names the stage in the refusal message ("preprocess", "pretrain", ...).
    Raises FolderBusyError when another live process holds it.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if fcntl is None:  # pragma: no cover - Windows
        warnings.warn("folder locks need fcntl (not on this system): two runs into one "
                      "folder are not refused", stacklevel=3)
        yield folder
        return
    i, n = (int(v) for v in shard)
    taken: list[Path] = []
    try:
        main = folder / LOCK_NAME
        if _acquire(main, shared=n > 1, folder=folder, what=what):
            taken.append(main)
        if n > 1:
            part = folder / f".drasclr.shard-{i}-of-{n}.lock"
            if _acquire(part, shared=False, folder=folder, what=f"{what} shard {i}/{n}"):
                taken.append(part)
        yield folder
    finally:
        for lock_file in reversed(taken):
            _release(lock_file)
