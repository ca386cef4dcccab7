"""``drasclr store``: check a patch store.

Example::

    drasclr store verify work/preprocess                     # table, exit 1 on damage
    drasclr store verify work/preprocess --forget-damaged    # then: drasclr preprocess ...

``verify`` reads every finished subject's patches, lung fractions and corners and compares
them with the checksums written with the subject's record, and the atlas landmarks with
the store's. ``--forget-damaged`` removes damaged subjects' records, so the next
``drasclr preprocess`` with the same manifest and ``--out`` redoes exactly those subjects.
"""

from __future__ import annotations

import argparse
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "store", help="check a patch store (checksums of every subject)",
        description="Inspect a patch store written by `drasclr preprocess`.")
    sub = parser.add_subparsers(dest="store_command", metavar="<action>")
    verify = sub.add_parser(
        "verify", help="check every subject against its checksums; exit 1 on damage",
        description="Reads all data of every finished subject and compares it with the "
        "checksums written with its record. Prints subject, status, reason.")
    verify.add_argument("store", help="patch store folder (the --out of drasclr preprocess)")
    verify.add_argument("--forget-damaged", action="store_true",
                        help="remove the records of damaged subjects so that `drasclr "
                        "preprocess` redoes them")
    verify.set_defaults(func=run_verify)
    parser.set_defaults(func=lambda args: (parser.print_help(), 2)[1])


def format_table(rows: list[dict[str, str]]) -> str:
    """Rows of ``PatchStore.verify`` as a plain-text table (reason last, unwrapped).

    Example:
        >>> print(format_table([{"subject": "s1", "status": "ok", "reason": ""}]))
        subject  status  reason
        s1       ok
    """
    columns = ("subject", "status", "reason")
    widths = [max([len(c)] + [len(str(r[c])) for r in rows]) for c in columns[:2]]
    lines = [f"{columns[0]:<{widths[0]}}  {columns[1]:<{widths[1]}}  {columns[2]}"]
    for r in rows:
        lines.append(f"{r['subject']:<{widths[0]}}  {r['status']:<{widths[1]}}  "
                     f"{r['reason']}".rstrip())
    return "\n".join(lines)


def run_verify(args: argparse.Namespace) -> int:
    from drasclr_toolkit.preprocess.store import PatchStore

    store = PatchStore(args.store)
    rows = store.verify()
    print(format_table(rows))
    counts: dict[str, int] = {}
    for r in rows[1:]:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    damaged = [r["subject"] for r in rows if r["status"] == "damaged"]
    print(f"\n{store.path}: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())))
    if not damaged:
        return 0
    landmarks_damaged = rows[0]["status"] == "damaged"
    subjects = [s for s in damaged if s != "(atlas landmarks)"]
    if args.forget_damaged and subjects:
        for sid in subjects:
            store.forget(sid)
        print(f"forgot {len(subjects)} damaged subject(s); run `drasclr preprocess` with the "
              f"same manifest and --out {store.path} to redo them", file=sys.stderr)
    elif subjects:
        print(f"{len(subjects)} damaged subject(s). What to do: run `drasclr store verify "
              f"{store.path} --forget-damaged`, then `drasclr preprocess` with the same "
              "manifest and --out (it redoes only those subjects)", file=sys.stderr)
    if landmarks_damaged:
        print("the atlas landmarks are damaged: restore atlas/ or preprocess into a new "
              "--out folder", file=sys.stderr)
    return 1
