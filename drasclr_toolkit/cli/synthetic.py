"""``drasclr synthetic``: generate (or finish) a synthetic lung-CT cohort with ground truth.

Example
-------
``drasclr synthetic --n-subjects 24 --out data/synthetic --spacing 1.5 --seed 0``
"""

from __future__ import annotations

import argparse
import re
import time
from pathlib import Path
from typing import Any

import yaml


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


# What a synthetic cohort folder holds (an interrupted run may hold only some of it).
_COHORT_TOP = {"images", "ground_truth", "manifest.csv", "dataset_card.yaml", "ground_truth.csv"}
_COHORT_FILE = re.compile(r"^(syn\d{3}(\.nii\.gz|_disease\.nii\.gz|_lungs\.nii\.gz|"
                          r"_transform\.json|_record\.json)|template(_lungs)?\.nii\.gz|"
                          r"template_transform\.json|\..*\.tmp(\..*)?)$")


def check_out_folder(out: str | Path, config: Any, force: bool = False) -> None:
    """Refuse to write a cohort into a folder holding files that are not one.

    Allowed: a missing or empty folder, a folder with a finished synthetic cohort made with
    the same options (its dataset card says so; it is reused or extended), and the files of
    an interrupted synthetic run. Anything else raises FileExistsError unless ``force``.

    Example:
        >>> import tempfile
        >>> from drasclr_toolkit.data.synthetic import SyntheticConfig
        >>> d = Path(tempfile.mkdtemp())
        >>> _ = (d / "manifest.csv").write_text("subject_id,image\\nmine,scans/mine.nii.gz\\n")
        >>> check_out_folder(d, SyntheticConfig())
        Traceback (most recent call last):
        ...
        FileExistsError: ...
    """
    out = Path(out).expanduser()
    if force or not out.exists():
        return
    if not out.is_dir():
        raise NotADirectoryError(f"--out {out} is a file; give a folder for the cohort")
    entries = sorted(p.name for p in out.iterdir())
    if not entries:
        return
    card_path = out / "dataset_card.yaml"
    if card_path.is_file():
        try:
            card = yaml.safe_load(card_path.read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError):
            card = {}
        wanted = yaml.safe_load(yaml.safe_dump(config.fingerprint()))
        if isinstance(card, dict) and card.get("source") == "synthetic":
            if card.get("options") == wanted:
                return  # the same cohort: reuse it (missing subjects are added)
            had = card.get("options") if isinstance(card.get("options"), dict) else {}
            differ = ", ".join(f"{k}: {had.get(k)!r} there, {wanted.get(k)!r} now"
                               for k in sorted(set(had) | set(wanted)) if had.get(k) != wanted.get(k))
            raise FileExistsError(
                f"file {card_path}, field 'options': --out {out} holds a synthetic cohort made "
                f"with other options ({differ}). What to do: use a new --out folder, the same "
                "options, or --force to overwrite it")
    foreign = [name for name in entries if name not in _COHORT_TOP]
    for sub in ("images", "ground_truth"):
        if (out / sub).is_dir():
            foreign += [f"{sub}/{p.name}" for p in sorted((out / sub).iterdir())
                        if not _COHORT_FILE.match(p.name)]
    if card_path.is_file() or (out / "manifest.csv").exists():
        foreign += [name for name in ("manifest.csv", "dataset_card.yaml") if (out / name).exists()]
    if foreign:
        shown = ", ".join(foreign[:5]) + (f", … ({len(foreign) - 5} more)" if len(foreign) > 5 else "")
        raise FileExistsError(
            f"--out {out} already holds files that are not a synthetic cohort ({shown}); "
            "`drasclr synthetic` writes manifest.csv, dataset_card.yaml, ground_truth.csv and "
            "images/ there and would overwrite yours. What to do: choose a new or empty "
            "folder, or pass --force to write into it anyway")


def run(args: argparse.Namespace) -> int:
    from drasclr_toolkit.data.synthetic import SyntheticConfig, make_synthetic_cohort

    section: dict = {}
    if args.config:
        from drasclr_toolkit.config import load_config

        section = dict(load_config(args.config).get("synthetic", {}))
    n_subjects = args.n_subjects or int(section.pop("n_subjects", 24))
    section.pop("n_subjects", None)
    for key in ("spacing", "seed", "size_scale", "n_jobs"):
        value = getattr(args, key)
        if value is not None:
            section[key] = value
    config = SyntheticConfig.from_dict(section)
    check_out_folder(args.out, config, force=args.force)
    start = time.perf_counter()
    manifest = make_synthetic_cohort(n_subjects, args.out, config=config)
    print(f"{len(manifest)} subjects in {args.out} ({time.perf_counter() - start:.1f} s); "
          f"manifest: {manifest.path}")
    return 0
