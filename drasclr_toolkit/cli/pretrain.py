"""``drasclr pretrain``: DrasCLR self-supervised pretraining on a patch store.

Examples::

    drasclr pretrain --store work/preprocess/patches --config tiny --out work/pretrain
    torchrun --nproc_per_node=4 -m drasclr_toolkit.cli.main pretrain \\
        --store /data/patches --config gpu --out runs/drasclr
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from drasclr_toolkit.errors import MissingFileError


def open_patch_source(path: str | Path) -> Any:
    """A ``.npz`` file written by ArrayPatchSource.save, or a PatchStore folder."""
    path = Path(path).expanduser()
    if not path.exists():
        raise MissingFileError(f"patch store {path} does not exist; run `drasclr preprocess` "
                                "first or pass the folder it wrote")
    if path.suffix == ".npz":
        from drasclr_toolkit.patch_source import ArrayPatchSource

        return ArrayPatchSource.load(path)
    try:
        from drasclr_toolkit.preprocess.store import PatchStore
    except ImportError as exc:
        raise RuntimeError(f"cannot open {path}: the PatchStore reader is unavailable ({exc})") from exc
    return PatchStore(path)


def run(args: argparse.Namespace) -> int:
    from drasclr_toolkit.config import load_config, parse_overrides
    from drasclr_toolkit.train import PretrainConfig, pretrain

    section = load_config(args.config).get("pretrain", {})
    section.update(parse_overrides(args.set or []))
    config = PretrainConfig.from_dict(section)
    source = open_patch_source(args.store)
    path = pretrain(source, config, args.out, resume=not args.restart,
                    allow_store_change=args.allow_store_change,
                    stop_after_steps=args.stop_after_steps, overwrite=args.force)
    print(f"checkpoint: {path}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("pretrain", help="DrasCLR self-supervised pretraining",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--store", required=True, help="patch store folder (or ArrayPatchSource .npz)")
    p.add_argument("--config", default="tiny", help="packaged name (tiny, small, gpu) or YAML "
                   "file; its `model:` (the architecture) and `pretrain:` sections are used")
    p.add_argument("--out", required=True, help="run folder (checkpoints, metrics.jsonl)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a pretrain or model option, e.g. --set max_steps=100 or "
                   "--set width=0.5 (repeatable)")
    p.add_argument("--restart", action="store_true",
                   help="start over: the earlier run's metrics, config and checkpoints in --out "
                   "are moved to --out/previous/NNN (a resume with other settings is refused)")
    p.add_argument("--force", action="store_true",
                   help="write into an --out folder that holds files which are not a run")
    p.add_argument("--allow-store-change", action="store_true",
                   help="resume even though the patch store changed since the run started")
    p.add_argument("--stop-after-steps", type=int, default=None,
                   help="stop after this many steps in all (resume later with the same command)")
    p.set_defaults(func=run)
