"""``drasclr synthetic``: generate (or finish) a synthetic lung-CT cohort with ground truth.

Example
-------
``drasclr synthetic --n-subjects 24 --out data/synthetic --spacing 1.5 --seed 0``
"""

from __future__ import annotations

import argparse
import time


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "synthetic",
        help="generate a phantom lung-CT cohort with ground truth (resumable)",
        description=(
            "Writes OUT/manifest.csv, dataset_card.yaml, images/<sid>.nii.gz (int16 HU) and "
            "ground truth (lung masks, disease maps, template→subject affines, "
            "ground_truth.csv). Subjects already written are skipped. Options not given "
            "come from the configuration's 'synthetic' section when --config is given."
        ),
    )
    parser.add_argument("--n-subjects", type=int, default=None,
                        help="number of subjects (default: the config's, else 24)")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--spacing", type=float, default=None,
                        help="isotropic voxel size in mm (default 1.5)")
    parser.add_argument("--seed", type=int, default=None, help="cohort seed (default 0)")
    parser.add_argument("--size-scale", type=float, default=None,
                        help="anatomy size, 1.0 = adult (default 1.0)")
    parser.add_argument("--n-jobs", type=int, default=None,
                        help="worker processes (default: all available cores)")
    parser.add_argument("--config", default=None,
                        help="packaged config name (tiny, gpu) or YAML path for the defaults")
    parser.add_argument("--force", action="store_true",
                        help="write into --out even when it holds other files (manifest.csv, "
                        "dataset_card.yaml and images/ there are overwritten)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from drasclr_toolkit.datasets.synthetic import SyntheticConfig, make_synthetic_cohort

    section: dict = {}
    if args.config:
        from drasclr_toolkit.config import load_config

        section = dict(load_config(args.config).get("synthetic", {}))
    n_subjects = (args.n_subjects if args.n_subjects is not None
                  else int(section.pop("n_subjects", 24)))
    section.pop("n_subjects", None)
    for key in ("spacing", "seed", "size_scale", "n_jobs"):
        value = getattr(args, key)
        if value is not None:
            section[key] = value
    config = SyntheticConfig.from_dict(section)
    start = time.perf_counter()
    manifest = make_synthetic_cohort(n_subjects, args.out, config=config, overwrite=args.force)
    print(f"{len(manifest)} subjects in {args.out} ({time.perf_counter() - start:.1f} s); "
          f"manifest: {manifest.path}")
    return 0
