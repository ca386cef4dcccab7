"""Entry point of the ``drasclr`` command.

Each stage lives in its own module under ``drasclr_toolkit.cli`` and exposes
``register(subparsers)``, which adds its sub-command and sets ``func`` on the parser to a
callable taking the parsed arguments and returning an exit code.
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
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="drasclr",
        description="DrasCLR toolkit: preprocess lung CT, pretrain, embed, inspect and evaluate.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
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
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
