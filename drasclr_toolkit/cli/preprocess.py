"""``drasclr preprocess``: a manifest of CT scans → a patch store at the atlas landmarks.

Example::

    drasclr preprocess --manifest cohort/manifest.csv --out work/preprocess --jobs 2
    drasclr preprocess --manifest m.csv --out o --atlas-only        # once, then per job:
    drasclr preprocess --manifest m.csv --out o --atlas o/atlas --shard 3/8
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from drasclr_toolkit.errors import EXIT_PARTIAL
from drasclr_toolkit.locks import folder_lock

log = logging.getLogger(__name__)


def _parse_shard(text: str) -> tuple[int, int]:
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--shard must look like i/n (e.g. 0/4), got {text!r}") from None
    if not (n >= 1 and 0 <= i < n):
        raise argparse.ArgumentTypeError(f"--shard {text}: need 0 <= i < n")
    return i, n


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--manifest", required=True, help="manifest CSV (see data_manifests/)")
    p.add_argument("--out", required=True, help="output directory (the patch store)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--atlas", help="atlas directory (Atlas.save) to use")
    g.add_argument("--reference", help="subject id of the manifest to build the atlas from "
                   "(default: the subject with the median lung volume)")
    p.add_argument("--official-atlas", nargs=2, metavar=("MASK", "LANDMARKS_NPY"),
                   help="the official DrasCLR atlas files (mask .nii.gz, landmarks .npy)")
    p.add_argument("--config", default="tiny",
                   help="config YAML path or packaged name (tiny, gpu); its preprocess: section")
    p.add_argument("--jobs", type=int, default=1, help="worker processes")
    p.add_argument("--shard", type=_parse_shard, default=(0, 1), help="i/n: this job's share")
    p.add_argument("--atlas-only", action="store_true",
                   help="build (or check) the atlas in --out and stop: run this once before "
                   "starting several --shard jobs on one output directory")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--force", action="store_true",
                   help="write into an --out folder that holds files which are not a patch "
                   "store (refused otherwise; files of the same name are replaced)")


def run(args: argparse.Namespace) -> int:
    from drasclr_toolkit.data import Manifest
    from drasclr_toolkit.io_utils import refuse_foreign_folder
    from drasclr_toolkit.preprocess import PreprocessConfig, qc_table
    from drasclr_toolkit.preprocess.pipeline import STORE_MARKERS

    cfg = PreprocessConfig.from_yaml(args.config)
    manifest = Manifest.load(args.manifest, check_files=False)
    # Held from the atlas to the QC table: a second run into --out is refused at once.
    refuse_foreign_folder(args.out, STORE_MARKERS, "drasclr preprocess", args.force)
    with folder_lock(args.out, "preprocess", shard=args.shard):
        store = _atlas_and_store(args, cfg, manifest)
    if store is None:
        return 0
    df = qc_table(store)
    n_fail = int((df["status"] == "failed").sum()) if len(df) else 0
    n_out = int(df["outlier"].sum()) if "outlier" in df else 0
    print(f"{store}; failed: {n_fail}; QC outliers: {n_out}; QC table: {store.path / 'qc.csv'}")
    if n_fail:
        print(f"drasclr preprocess: {n_fail} subject(s) failed (reasons in {store.path / 'qc.csv'}); "
              "the others are kept. Fix them and run the same command again: only the failed "
              f"ones are redone (exit status {EXIT_PARTIAL})", file=sys.stderr)
        return EXIT_PARTIAL
    return 0


def _atlas_and_store(args: argparse.Namespace, cfg, manifest):
    from drasclr_toolkit.preprocess import Atlas, build_default_atlas, run_preprocessing

    if args.official_atlas:
        atlas = Atlas.load(args.official_atlas[0], args.official_atlas[1])
    elif args.atlas:
        atlas = Atlas.load(args.atlas)
    else:
        atlas = build_default_atlas(manifest, args.out, cfg, reference=args.reference,
                                    progress=not args.no_progress, n_jobs=args.jobs)
    if args.atlas_only:
        if args.atlas or args.official_atlas:
            atlas.save(Path(args.out) / "atlas")
        print(f"atlas with {atlas.n_landmarks} landmarks in {Path(args.out) / 'atlas'}")
        return None
    return run_preprocessing(manifest, atlas, args.out, cfg, n_jobs=args.jobs, shard=args.shard,
                             progress=not args.no_progress, overwrite=args.force)


def register(subparsers) -> None:
    p = subparsers.add_parser("preprocess", help="resample, segment lungs, register to the atlas, "
                              "cut patches at the landmarks (patch store)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    p.set_defaults(func=run)


def main(argv: list[str] | None = None) -> int:
    """Run without the other stages' imports: ``python -m drasclr_toolkit.cli.preprocess``."""
    parser = argparse.ArgumentParser(prog="drasclr preprocess", description=__doc__)
    add_arguments(parser)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
