"""``drasclr embed``: patch-level embeddings N × L × D of every subject of a patch store.

Examples::

    drasclr embed --store work/preprocess/patches --checkpoint work/pretrain/final.pt \\
        --out work/embeddings/trained.npz
    drasclr embed --store work/preprocess/patches --out work/embeddings/random.npz  # random init
    drasclr embed --store STORE --checkpoint checkpoint_patch_0020.pth.tar --out official.npz
    torchrun --nproc_per_node=4 -m drasclr_toolkit.cli.main embed --store STORE \\
        --checkpoint final.pt --out emb.npz --config gpu

Re-running the same command resumes: finished subjects (in ``<out>.parts/``) are skipped.

``--maps DIR`` also writes each subject's first embedding principal components as NIfTI
volumes (``DIR/<subject>/embedding_pc1_atlas.nii.gz``; with ``--manifest`` also
``embedding_pc1_scan.nii.gz`` on the subject's own CT grid) to overlay in 3D Slicer or
ITK-SNAP, each with a mask ``embedding_pc1_covered_{atlas,scan}.nii.gz`` (1 where the map
has a value: those tools show the map's empty NaN voxels as a score of 0)::

    drasclr embed --store STORE --checkpoint final.pt --out emb.npz --maps maps/ \
        --manifest manifest.csv
"""

from __future__ import annotations

import argparse
import os


def run(args: argparse.Namespace) -> int:
    from drasclr_toolkit.errors import EXIT_PARTIAL

    from drasclr_toolkit.cli.pretrain import open_patch_source
    from drasclr_toolkit.config import load_config
    from drasclr_toolkit.embed import EmbedConfig, extract_embeddings

    overrides = {"batch_size": args.batch_size, "device": args.device, "seed": args.seed}
    config = EmbedConfig.from_dict(load_config(args.config).get("embed", {})).replace(
        **{key: value for key, value in overrides.items() if value is not None})
    source = open_patch_source(args.store)
    emb = extract_embeddings(source, checkpoint=args.checkpoint, config=config, out_path=args.out,
                             progress=not args.no_progress,
                             recompute_changed=args.recompute_changed, overwrite=args.force)
    failed = emb.provenance.get("failed", {})
    if os.environ.get("RANK", "0") == "0":  # under torchrun every rank returns the same result
        print(f"embeddings: {args.out}  {emb}")
        if args.maps and len(emb):
            _write_maps(args, source, emb)
        for sid, reason in failed.items():
            print(f"  failed {sid}: {reason}")
    if failed and not len(emb):
        return 1
    return EXIT_PARTIAL if failed else 0


def _write_maps(args: argparse.Namespace, source, emb) -> None:
    from drasclr_toolkit.data import Manifest
    from drasclr_toolkit.embed.maps import MapError, embedding_pc_maps, write_cohort_maps

    if not hasattr(source, "subject_record"):
        raise MapError("maps need a patch store (its atlas and registrations); this source "
                       "has neither", where=f"--store {args.store}",
                       fix="pass the preprocessing store folder, or leave out --maps")
    scans = {}
    if args.manifest:
        manifest = Manifest.load(args.manifest)
        scans = {sid: manifest.image_path(sid) for sid in emb.subject_ids
                 if sid in set(manifest.subject_ids)}
    pcs = embedding_pc_maps(emb, n_components=args.map_components)
    written = write_cohort_maps(source, pcs, args.maps, emb.subject_ids, scans,
                                units={name: "PCA score (unitless)" for name in pcs})
    spaces = "atlas and scan space" if scans else "atlas space (add --manifest for scan space)"
    print(f"maps: {len(written)} subjects × {len(pcs)} components in {spaces} -> {args.maps}")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("embed", help="extract patch embeddings (N × L × D) from a store",
                              description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--store", required=True, help="patch store folder (or ArrayPatchSource .npz)")
    p.add_argument("--checkpoint", default=None,
                   help="our pretrain checkpoint (final.pt) or an official DrasCLR checkpoint; "
                   "omitted: a randomly initialised encoder (seeded), the baseline")
    p.add_argument("--out", required=True, help="embeddings file to write (.npz)")
    p.add_argument("--config", default="tiny", help="packaged name (tiny, small, gpu) or YAML "
                   "file; its `embed:` section is used (and `model:` for the random-init "
                   "encoder)")
    p.add_argument("--batch-size", type=int, default=None, help="subjects per batch")
    p.add_argument("--device", default=None, help="auto, cpu, cuda, cuda:1, ...")
    p.add_argument("--seed", type=int, default=None, help="seed of the random-init encoder")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--recompute-changed", action="store_true",
                   help="recompute finished subjects whose patches changed since (otherwise "
                        "an error: old vectors are never mixed with new data)")
    p.add_argument("--force", action="store_true",
                   help="replace an --out file that is not an embeddings file (refused otherwise)")
    p.add_argument("--maps", default=None, metavar="DIR",
                   help="also write per-landmark embedding PC maps as NIfTI into DIR")
    p.add_argument("--map-components", type=int, default=3,
                   help="principal components written by --maps (default 3)")
    p.add_argument("--manifest", default=None,
                   help="manifest of the store's scans: --maps then also writes each map "
                        "on the subject's own CT grid")
    p.set_defaults(func=run)
