"""Entry point of the ``drasclr`` command.

Each stage lives in its own module under ``drasclr_toolkit.cli`` and exposes
``register(subparsers)``, which adds its sub-command and sets ``func`` on the parser to a
callable taking the parsed arguments and returning an exit code.

Errors go through one door: a :class:`~drasclr_toolkit.errors.DrasclrError` (a bad scan,
manifest, store, config value, checkpoint, a busy or foreign output folder) or an OSError
put in words (disk full, read-only folder, name too long, no such file) prints its message (subject,
file, field, what to do) on stderr and exits with status 1, without a traceback;
``--debug`` shows the traceback instead. Anything else is a bug and keeps its traceback.
A cohort run in which some subjects failed keeps what succeeded and exits with status 3.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from drasclr_toolkit.errors import EXIT_PARTIAL, DrasclrError, as_drasclr_error  # noqa: F401 (re-exported)

# Order is the order shown in ``drasclr --help``.
STAGE_MODULES = (
    "demo",
    "synthetic",
    "manifest",
    "preprocess",
    "pretrain",
    "embed",
    "store",
    "probe",
    "evaluate",
)

# Exit status of a known input problem (argparse uses 2 for a bad command line).
EXIT_INPUT_ERROR = 1
EXIT_INTERRUPTED = 130


def known_error(exc: BaseException) -> DrasclrError | None:
    """The error to show the user for ``exc``: a DrasclrError, or an OSError put in words
    (disk full, read-only, no such file: :func:`~drasclr_toolkit.errors.as_drasclr_error`);
    None for a bug, which keeps its traceback.

    Example:
        >>> known_error(KeyError("x")) is None
        True
        >>> print(known_error(OSError(28, "No space left on device", "out/x.pt")))
        file out/x.pt: the disk is full (no space left on device) (No space left on device). What to do: free space on that disk or write to another folder, then run the same command again: finished work is kept
    """
    return as_drasclr_error(exc)


def is_known_error(exc: BaseException) -> bool:
    """Whether ``exc`` reports a problem with the input or the machine (its message is
    enough) rather than a bug.

    Example:
        >>> from drasclr_toolkit.errors import InputError
        >>> is_known_error(InputError("row 3: ...", where="manifest.csv", fix="..."))
        True
        >>> is_known_error(ValueError("a bug")), is_known_error(KeyError("x"))
        (False, False)
    """
    return isinstance(known_error(exc), DrasclrError)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="drasclr",
        description="DrasCLR toolkit: preprocess lung CT, pretrain, embed, inspect and evaluate.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    parser.add_argument("--debug", action="store_true",
                        help="show the full traceback of an error instead of its message only")
    subparsers = parser.add_subparsers(dest="command", metavar="<command>")
    for name in STAGE_MODULES:
        try:
            module = importlib.import_module(f"drasclr_toolkit.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"drasclr_toolkit.cli.{name}":
                continue  # stage not built yet
            raise
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        if args.debug:
            raise
        print(f"drasclr {args.command}: interrupted; finished work is kept, run the same "
              "command again to resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:  # noqa: BLE001 - sorted into input problems and bugs below
        error = None if args.debug else known_error(exc)
        if error is None:
            raise
        print(f"drasclr {args.command}: error: {error}", file=sys.stderr)
        print("(run with --debug before the command to see the traceback)", file=sys.stderr)
        return EXIT_INPUT_ERROR


if __name__ == "__main__":
    sys.exit(main())
