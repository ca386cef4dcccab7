"""``drasclr manifest``: validate a cohort manifest, or build one from a folder of scans.

Examples::

    drasclr manifest validate cohort/manifest.csv --card cohort/dataset_card.yaml
    drasclr manifest validate cohort/manifest.csv --check-scans   # also open every scan
    drasclr manifest scan /data/scans -o cohort/manifest.csv --pattern "*_ct.nii.gz"
    drasclr manifest probe /data/scans        # header-only size/spacing table
"""

from __future__ import annotations

import argparse
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "manifest",
        help="validate a manifest CSV (+ dataset card) or build one from a folder of scans",
        description="Validate a cohort manifest or scan a folder of CT scans into one.",
    )
    sub = parser.add_subparsers(dest="manifest_command", metavar="<action>")

    validate = sub.add_parser(
        "validate",
        help="check a manifest CSV and list every problem (row, subject, column, value)",
        description="Loads the CSV with its dataset card (default: dataset_card.yaml beside it) "
        "and reports every problem at once. Exit code 0 when valid, 1 otherwise.",
    )
    validate.add_argument("csv", help="manifest CSV file")
    validate.add_argument("--card", default=None, help="dataset card YAML (default: "
                          "dataset_card.yaml next to the CSV when present)")
    validate.add_argument("--no-check-files", action="store_true",
                          help="do not check that image/mask paths exist")
    validate.add_argument("--check-scans", action="store_true",
                          help="also open every scan with load_ct (HU, slices, orientation)")
    validate.set_defaults(func=run_validate)

    scan = sub.add_parser(
        "scan",
        help="build a manifest from a folder of scans (files or DICOM series folders)",
        description="Finds .nii/.nii.gz/.nrrd/.mha/.mhd files and DICOM series folders "
        "recursively (no pixel data is read) and writes a manifest CSV.",
    )
    scan.add_argument("directory", help="folder to search")
    scan.add_argument("-o", "--output", required=True, help="manifest CSV to write")
    scan.add_argument("--pattern", default=None,
                      help="glob on file/folder names or relative paths, e.g. '*_ct.nii.gz'")
    scan.add_argument("--include-masks", action="store_true",
                      help="keep files named like masks/labels/segmentations (skipped by default)")
    scan.set_defaults(func=run_scan)

    probe = sub.add_parser(
        "probe",
        help="header-only geometry (size, spacing) of every scan of a manifest or folder",
        description="Reads only the headers (no pixel data): a quick look at slice counts and "
        "thickness across a cohort. Exit code 1 when a header cannot be read.",
    )
    probe.add_argument("source", help="manifest CSV or folder of scans")
    probe.add_argument("-o", "--output", default=None, help="also write the table as CSV")
    probe.set_defaults(func=run_probe)

    parser.set_defaults(func=lambda args: (parser.print_help(), 2)[1])


def run_validate(args: argparse.Namespace) -> int:
    from drasclr_toolkit.data import Manifest, ManifestError, check_scans

    try:
        manifest = Manifest.load(args.csv, card_path=args.card,
                                 check_files=not args.no_check_files)
    except ManifestError as exc:
        print(str(exc), file=sys.stderr)
        return 1
    if len(manifest) == 0:
        print(f"{args.csv}: the manifest lists no subjects (a header only: a template?); "
              "nothing could be preprocessed from it. What to do: add one row per scan, e.g. "
              "with `drasclr manifest scan FOLDER -o manifest.csv`", file=sys.stderr)
        return 1
    labels = manifest.label_columns()
    print(f"{args.csv}: valid, {len(manifest)} subjects; label columns: "
          f"{', '.join(labels) if labels else 'none'}")
    for col in labels:
        series = manifest.table[col]
        print(f"  {col}: {int(series.notna().sum())} of {len(series)} given")
    from drasclr_toolkit.io_utils import MAX_SUBJECT_FILE_NAME

    for sid in manifest.subject_ids:
        if len(f"{sid}.json".encode()) > MAX_SUBJECT_FILE_NAME:
            print(f"  warning: subject {sid[:40]}… has a {len(sid)}-character id; the files "
                  "named after it are shortened (first 120 characters and a hash). Shorter "
                  "ids are easier to read and stay under file-name limits (255 bytes)")
    if not args.check_scans:
        return 0
    report = check_scans(manifest)
    bad = report[report["status"] == "error"]
    warned = report[report["status"] == "warning"]
    print(f"scans: {len(report) - len(bad)} loadable ({len(warned)} with warnings), "
          f"{len(bad)} failed")
    for row in report[report["status"] != "ok"].itertuples():
        print(f"  {row.status}: {row.message}", file=sys.stderr if row.status == "error"
              else sys.stdout)
    return 1 if len(bad) else 0


def run_scan(args: argparse.Namespace) -> int:
    from drasclr_toolkit.data import ManifestError, scan_folder
    from drasclr_toolkit.data.discovery import DEFAULT_EXCLUDE

    try:
        manifest = scan_folder(args.directory, pattern=args.pattern,
                               exclude=() if args.include_masks else DEFAULT_EXCLUDE)
    except ManifestError as exc:
        print(str(exc), file=sys.stderr)
        return 1
    out = manifest.save(args.output)
    n_dicom = sum(1 for p in manifest.table["image"] if not str(p).lower().endswith(
        (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")))
    print(f"wrote {out}: {len(manifest)} scans ({n_dicom} DICOM folders). Add label columns "
          "and check it with: drasclr manifest validate " + str(out))
    return 0


def run_probe(args: argparse.Namespace) -> int:
    from pathlib import Path

    from drasclr_toolkit.data import Manifest, ManifestError, probe_headers, scan_folder
    from drasclr_toolkit.io_utils import atomic_write_text

    source = Path(args.source)
    try:
        manifest = scan_folder(source) if source.is_dir() else Manifest.load(source)
    except ManifestError as exc:
        print(str(exc), file=sys.stderr)
        return 1
    table = probe_headers(manifest)
    with_errors = table[table["error"].notna()]
    shown = table.drop(columns=["error"])
    print(shown.to_string(index=False))
    for row in with_errors.itertuples():
        print(f"error: {row.error}", file=sys.stderr)
    if args.output:
        out = Path(args.output)
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out, table.to_csv(index=False))
        print(f"wrote {out}")
    return 1 if len(with_errors) else 0
