"""One family for the errors the toolkit reports to its user.

Every failure that is about the user's input or machine (a bad scan, manifest, store, config
value, checkpoint, label table, a folder another run holds, a full or read-only disk) is a
:class:`DrasclrError`. It carries where the problem is (``where``: subject, file, field),
what is wrong (``problem``) and what to do (``fix``); ``str(error)`` is the full message.
The command line prints that message without a traceback (``--debug`` shows it); anything
that is not a DrasclrError is a bug and keeps its traceback.

The older classes keep their standard base as well (``CTLoadError`` is still a
``ValueError``, ``StoreError`` a ``RuntimeError``), so code that caught those still works;
a plain bad value is an :class:`InputError` (a ``ValueError``), a file that is not there a
:class:`MissingFileError` (a ``FileNotFoundError``).

This module imports nothing from the package, so every module can import it.

Example:
    >>> err = DrasclrError("the file is empty", where="file a.csv", fix="write the table again")
    >>> str(err)
    'file a.csv: the file is empty. What to do: write the table again'
    >>> isinstance(os_error(OSError(28, "No space left on device"), "out"), DrasclrError)
    True
"""

from __future__ import annotations

import errno as _errno
import os
from typing import Any

__all__ = ["EXIT_PARTIAL", "DrasclrError", "FolderBusyError", "OutputExistsError", "FileSystemError",
           "CheckpointError", "InputError", "LabelError", "MissingFileError", "os_error",
           "as_drasclr_error", "error_message", "where_text"]

# Exit status of a cohort command that kept what succeeded but in which some subjects
# failed (1 is a refused input, 2 a bad command line, 130 an interrupt).
EXIT_PARTIAL = 3


class DrasclrError(Exception):
    """Base of every user-facing error: ``where``, ``problem`` and ``fix`` (each may be None).

    Subclasses that build their own message set the three attributes themselves; built
    directly, the message is ``"<where>: <problem>. What to do: <fix>"``.
    """

    where: str | None = None
    problem: str | None = None
    fix: str | None = None

    def __init__(self, problem: Any = None, *args: Any, where: str | None = None,
                 fix: str | None = None) -> None:
        if where is not None or fix is not None:
            self.where, self.problem, self.fix = where, str(problem), fix
            super().__init__(error_message(where, str(problem), fix), *args)
        elif problem is None:
            super().__init__(*args)
        else:
            if self.problem is None:
                self.problem = str(problem)
            super().__init__(problem, *args)


def where_text(**parts: Any) -> str | None:
    """``"store s, subject 'a', file f.nii, field 'spacing'"``: the parts that are not None,
    in the order given (``subject_id`` and ``field`` quoted), or None when all are.

    Example:
        >>> where_text(subject_id="a", file="a.nii.gz", field=None)
        "subject 'a', file a.nii.gz"
    """
    words = []
    for key, value in parts.items():
        if value is None:
            continue
        name = "subject" if key == "subject_id" else key
        words.append(f"{name} {value!r}" if key in ("subject_id", "field") else f"{name} {value}")
    return ", ".join(words) or None


def error_message(where: str | None, problem: str, fix: str | None) -> str:
    """The one message format of the family: ``"<where>: <problem>. What to do: <fix>"``."""
    message = (f"{where}: " if where else "") + str(problem)
    return message + (f". What to do: {fix}" if fix else "")


class FolderBusyError(DrasclrError, RuntimeError):
    """An output folder that another live process is writing (its lock is held)."""


class OutputExistsError(DrasclrError, FileExistsError):
    """An output file or folder that holds files this toolkit did not write."""


class FileSystemError(DrasclrError, OSError):
    """A read-only folder, a full disk, a name too long, a path that is not a regular file."""


class CheckpointError(DrasclrError, ValueError):
    """A file given as a checkpoint that is truncated, not a checkpoint, or of another model."""


class LabelError(DrasclrError, ValueError):
    """A label table (outcomes, events, ids) that cannot be used as loaded."""


class InputError(DrasclrError, ValueError):
    """A value given to the toolkit (an argument, an option, an array of the wrong shape, a
    table without the needed column) that it cannot use; the message says which and why."""


class MissingFileError(DrasclrError, FileNotFoundError):
    """A file or folder the user named (or a run should have made) that does not exist."""


_OS_WORDS = {
    _errno.ENOSPC: ("the disk is full (no space left on device)",
                    "free space on that disk or write to another folder, then run the same "
                    "command again: finished work is kept"),
    _errno.EDQUOT: ("the disk quota is used up",
                    "free space or write to another folder, then run the same command again"),
    _errno.EROFS: ("the folder is on a read-only file system",
                   "give an output folder you can write (--out)"),
    _errno.EACCES: ("permission denied",
                    "give a folder you can write (--out), or change its permissions"),
    _errno.EPERM: ("operation not permitted",
                   "give a folder you can write (--out), or change its permissions"),
    _errno.ENAMETOOLONG: ("the file name is too long for the file system",
                          "rename the file (or give shorter subject ids) so that each name "
                          "stays under 255 bytes"),
}
# A path that is not there (or not of the kind asked for), as the operating system said it
# (errno set). Only the command line's door puts these in words (:func:`as_drasclr_error`);
# inside the toolkit they stay FileNotFoundError & co., so code that catches those still does.
_PATH_WORDS = {
    _errno.ENOENT: ("no such file or folder", "check the path"),
    _errno.ENOTDIR: ("a part of the path is a file, not a folder", "check the path"),
    _errno.EISDIR: ("the path is a folder, not a file", "give a file"),
    _errno.EEXIST: ("the path exists already", "give another name, or move it away"),
}


def os_error(exc: OSError, path: str | os.PathLike | None = None, *,
             words_for: dict[int, tuple[str, str]] = _OS_WORDS) -> FileSystemError | None:
    """A :class:`FileSystemError` saying ``exc`` in words (disk full, read-only, ...), or
    None for an OSError we have no words for. ``path`` (else the error's own file name)
    is named in the message."""
    words = words_for.get(exc.errno)
    if words is None:
        return None
    name = path if path is not None else (exc.filename or None)
    where = f"file {name}" if name is not None else None
    err = FileSystemError(f"{words[0]} ({exc.strerror or exc})", where=where, fix=words[1])
    err.errno = exc.errno
    return err


def as_drasclr_error(exc: BaseException) -> DrasclrError | None:
    """``exc`` if it is a DrasclrError, an OSError put in words (see :func:`os_error`; here
    also a path the operating system did not find), else None (a bug: it keeps its
    traceback). Used by the command line's one error path.

    Example:
        >>> print(as_drasclr_error(FileNotFoundError(2, "No such file or directory", "a.csv")))
        file a.csv: no such file or folder (No such file or directory). What to do: check the path
        >>> as_drasclr_error(ValueError("x")) is None
        True
    """
    if isinstance(exc, DrasclrError):
        return exc
    if isinstance(exc, OSError):
        translated = os_error(exc) or os_error(exc, words_for=_PATH_WORDS)
        if translated is not None:
            return translated
        cause = exc
    else:
        cause = exc.__cause__ or exc.__context__
    # an OSError raised while handling another (torch.save's "unexpected pos" after ENOSPC)
    seen = 0
    while cause is not None and seen < 5:
        if isinstance(cause, OSError) and os_error(cause) is not None:
            return os_error(cause)
        cause, seen = cause.__cause__ or cause.__context__, seen + 1
    return None
