"""Entry point of the ``drasclr`` command.

Each stage lives in its own module under ``drasclr_toolkit.cli`` and exposes
``register(subparsers)``, which adds its sub-command and sets ``func`` on the parser to a
callable taking the parsed arguments and returning an exit code.

Errors: a problem with the user's input (a bad scan, manifest, store, config value, a
missing file) prints its message (subject, file, field, what to do) on stderr and exits
with status 1, without a traceback; ``--debug`` shows the traceback instead. Anything else
is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

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
# Standard errors that our validation raises with a full message (the project's own error
# classes, CTLoadError, ManifestError, StoreError, ..., are recognised by their module).
_KNOWN_BUILTIN_ERRORS = (
    ValueError,
    FileNotFoundError,
    FileExistsError,
    NotADirectoryError,
    IsADirectoryError,
    PermissionError,
)


def is_known_error(exc: BaseException) -> bool:
    """Whether ``exc`` reports a problem with the input (message enough) rather than a bug.

    Example:
        >>> is_known_error(ValueError("manifest.csv, row 3: ...")), is_known_error(KeyError("x"))
        (True, False)
    """
    if isinstance(exc, _KNOWN_BUILTIN_ERRORS):
        return True
    return any(cls.__module__.startswith("drasclr_toolkit.") for cls in type(exc).__mro__
               if issubclass(cls, Exception))


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
        if args.debug or not is_known_error(exc):
            raise
        print(f"drasclr {args.command}: error: {exc}", file=sys.stderr)
        print("(run with --debug before the command to see the traceback)", file=sys.stderr)
        return EXIT_INPUT_ERROR


if __name__ == "__main__":
    sys.exit(main())
