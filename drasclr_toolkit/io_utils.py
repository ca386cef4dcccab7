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

import os
import secrets
from pathlib import Path
from typing import IO, Any, Callable

__all__ = ["atomic_write", "atomic_write_stream", "atomic_write_bytes", "atomic_write_text"]


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
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}{suffix}")
    open(tmp, "xb").close()
    try:
        write_fn(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


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
