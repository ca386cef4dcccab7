"""``drasclr demo``: run the ordered notebooks headless on the embedded synthetic cohort."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="execute the notebooks headless (synthetic cohort, tiny CPU config) with HTML copies",
        description=(
            "Executes notebooks/NN_*.ipynb in order into OUT (executed .ipynb and .html), "
            "sharing one work folder OUT/work. Finished stages are reused on a rerun."
        ),
    )
    parser.add_argument("--out", default="demo_output", help="output folder (default: demo_output)")
    parser.add_argument("--config", default="tiny", help="packaged config name or YAML path")
    parser.add_argument("--notebooks", default=None, help="folder of notebooks (default: the repository's)")
    parser.add_argument("--only", nargs="*", default=None, help="run only notebooks with these prefixes, e.g. 00 01")
    parser.add_argument("--keep-going", action="store_true", help="run later notebooks after a failure")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from drasclr_toolkit.notebooks.runner import run_notebooks

    runs = run_notebooks(args.out, config_name=args.config, notebooks_dir=args.notebooks,
                         only=args.only, stop_on_error=not args.keep_going)
    width = max(len(r.notebook) for r in runs)
    print("\nnotebook".ljust(width + 3), "status", "seconds", "html", sep="  ")
    for r in runs:
        print(r.notebook.ljust(width + 2), "ok    " if r.ok else "FAILED",
              f"{r.seconds:7.1f}", r.html or "-", sep="  ")
    failed = [r for r in runs if not r.ok]
    for r in failed:
        print(f"\n{r.notebook} failed: {r.error}")
    return 1 if failed else 0
