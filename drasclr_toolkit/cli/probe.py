"""``drasclr probe``: a first look at a folder of CT scans, as one offline HTML report.

Examples::

    drasclr probe scans/                                  # random-init encoder, atlas from the data
    drasclr probe scans/ --labels labels.csv --checkpoint work/pretrain/final.pt --out probe_out
    drasclr probe scans/ --atlas /data/drasclr_official --config gpu --jobs 4

Every scan is loaded and checked, preprocessed against the atlas and embedded; the report
lists every scan with its QC status (ok, flagged, failed) and the reasons, shows slice
overlays, the 3D landmark view, the embedding scatter and, with labels (subject_id and
label columns; time and event for survival), cross-validated results. A bad scan never
stops the report. Re-running with the same --out reuses finished work.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def _thresholds(args: argparse.Namespace):
    """The config's QC limits (``preprocess.qc``), with --lung-volume-ml over them."""
    if args.lung_volume_ml is None:
        return None
    from drasclr_toolkit.config import load_config
    from drasclr_toolkit.preprocess.pipeline import PreprocessConfig
    from drasclr_toolkit.preprocess.qc_rules import QCThresholds

    qc = PreprocessConfig.from_dict(load_config(args.config).get("preprocess", {})).qc
    return QCThresholds.from_dict({**qc.model_dump(), "lung_volume_ml": args.lung_volume_ml})


def run(args: argparse.Namespace) -> int:
    from drasclr_toolkit.probe import probe_dataset

    folder = Path(args.folder)
    out = Path(args.out) if args.out else Path.cwd() / f"drasclr_probe_{folder.resolve().name}"
    result = probe_dataset(folder, out, labels=args.labels, checkpoint=args.checkpoint,
                           atlas=args.atlas, config=args.config, n_jobs=args.jobs,
                           n_permutations=args.permutations, progress=not args.no_progress,
                           thresholds=_thresholds(args))
    print(result.qc[["subject_id", "status", "flags"]].to_string(index=False))
    print(f"probe: {result.summary()}")
    print(f"report: {result.report}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("probe", help="QC, embed and report on a new folder of CT scans",
                              description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folder", help="folder of scans (NIfTI, NRRD, MHA, DICOM series folders)")
    p.add_argument("--labels", default=None,
                   help="CSV with subject_id and label columns (time, event for survival)")
    p.add_argument("--checkpoint", default=None,
                   help="encoder checkpoint; omitted: a random-init encoder (the report says so)")
    p.add_argument("--atlas", default=None,
                   help="'official' ($DRASCLR_OFFICIAL_ATLAS) or a folder holding "
                        "atlas_lung_mask.nii.gz + atlas_patch_loc.npy (or atlas.json); "
                        "omitted: built from the data (median lung volume)")
    p.add_argument("--config", default="tiny", help="tiny, gpu or a YAML file")
    p.add_argument("--out", default=None,
                   help="work folder and report (default ./drasclr_probe_<folder name>)")
    p.add_argument("--jobs", type=int, default=1, help="preprocessing worker processes")
    p.add_argument("--permutations", type=int, default=10,
                   help="permutations of the evaluation's null (small: quick)")
    p.add_argument("--lung-volume-ml", nargs=2, type=float, default=None,
                   metavar=("MIN", "MAX"), help="plausible lung volume (default: the config's "
                   "preprocess.qc, adults 2000 9000 in gpu; tiny and small allow 300 for their "
                   "child-sized phantoms)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run)
