"""``drasclr evaluate``: phenotype probes and survival models from embeddings and a label table.

Examples::

    drasclr evaluate --embeddings work/embeddings/trained.npz --labels labels.csv --out results/
    drasclr evaluate --embeddings drasclr=trained.npz --embeddings random-init=random.npz \\
        --embeddings densitometry=dens.csv --labels manifest.csv --out results/ \\
        --targets fev1_pp gold --time-col time --event-col event

Each ``--embeddings`` is ``PATH`` or ``NAME=PATH``: an embeddings file (``.npz`` from
``drasclr embed``, pooled over landmarks with ``--pooling``) or a CSV of patient features
with a ``subject_id`` column (e.g. densitometry). ``--labels`` is a CSV with a
``subject_id`` column (a manifest works). Written to ``--out``:

* ``phenotypes.csv``, ``phenotypes.html``: one probe per (feature set, target), the figure
  with CIs, null bands and chance;
* when the time and event columns exist: ``survival.csv``, ``survival.html`` and
  ``km_<feature set>.html`` (Kaplan–Meier by out-of-fold risk group);
* with ``--patch-labels`` (per-patch emphysema truth): ``dense.csv``, the dense emphysema
  probe (class and extent of every patch, cross-validated by subject) of each ``.npz`` set;
* ``comparison.csv`` and ``report.html``: everything on one offline page.

``--maps DIR --store STORE`` also writes the per-landmark results as NIfTI volumes to
overlay on the CT in 3D Slicer or ITK-SNAP (``DIR/<subject>/<name>_atlas.nii.gz``; with
``--manifest`` also ``<name>_scan.nii.gz`` on the subject's own CT grid, through the
inverse of its atlas registration; a ``.json`` beside each names the quantity and unit;
a continuous map also gets ``<name>_covered_{atlas,scan}.nii.gz``, 1 where it has a value,
since Slicer and ITK-SNAP show its empty NaN voxels as 0):
each ``.npz`` set's probe of every continuous target applied patch by patch
(``probe_<target>_<set>``, out of fold) and, with ``--patch-labels``, the dense emphysema
class and extent it predicts (``emphysema_class_<set>``, ``emphysema_extent_<set>``) next to
the truth (``emphysema_class_truth``, ``emphysema_extent_truth``)::

    drasclr evaluate --embeddings drasclr=work/embeddings/trained.npz --labels manifest.csv \\
        --out results/ --store work/preprocess/patches --patch-labels patch_labels.csv \\
        --maps results/maps --manifest manifest.csv
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path
from typing import Any

from drasclr_toolkit.errors import InputError, MissingFileError
from drasclr_toolkit.constants import POOLINGS
from drasclr_toolkit.data.labels import load_labels

DEFAULT_TARGETS = ("fev1_pp", "fev1_fvc", "gold", "pct_emphysema", "cle_score", "pse_score",
                   "mmrc")


def parse_feature_arg(value: str) -> tuple[str | None, Path]:
    """``NAME=PATH`` → (NAME, PATH); ``PATH`` → (None, PATH).

    Example:
        >>> parse_feature_arg("drasclr=emb/trained.npz")
        ('drasclr', PosixPath('emb/trained.npz'))
    """
    name, sep, path = value.partition("=")
    if sep and name and not Path(value).exists():
        return name, Path(path)
    return None, Path(value)


def load_feature_sets(values: list[str], pooling: str) -> dict[str, Any]:
    """``{name: DataFrame indexed by subject id}`` from the ``--embeddings`` arguments."""
    import pandas as pd

    from drasclr_toolkit.embed import Embeddings
    from drasclr_toolkit.evaluate import pool_embeddings

    sets: dict[str, Any] = {}
    for value in values:
        name, path = parse_feature_arg(value)
        if not path.exists():
            raise MissingFileError(f"--embeddings {value}: file {path} does not exist")
        name = name or path.stem
        if name in sets:
            raise InputError(f"--embeddings: the name {name!r} is given twice; use NAME=PATH")
        if path.suffix == ".csv":
            table = pd.read_csv(path, dtype={"subject_id": str})
            if "subject_id" not in table.columns:
                raise InputError(f"--embeddings {path}: a feature CSV needs a subject_id column")
            sets[name] = table.set_index("subject_id").select_dtypes("number")
        else:
            sets[name] = pool_embeddings(Embeddings.load(path), pooling)
    return sets


# What `drasclr evaluate` writes (a folder holding any of these is ours: rewritten).
RESULT_MARKERS = ("report.html", "phenotypes.csv", "survival.csv", "comparison.csv", "dense.csv")


def _write_results(table, stem: Path, title: str, heading: str, table_heading: str,
                   sections: list[tuple[str, Any]]):
    """Write ``stem``.csv (the table) and ``stem``.html (its figure), add both to the report's
    ``sections``, and return the long summary the comparison table is built from."""
    import pandas as pd

    from drasclr_toolkit.evaluate import comparison_text, multiplicity_note, summarise
    from drasclr_toolkit.io_utils import atomic_write_text
    from drasclr_toolkit.viz.evaluation import result_figure
    from drasclr_toolkit.viz.export import write_figure_html

    atomic_write_text(stem.with_suffix(".csv"), table.to_csv(index=False))
    long = summarise(table)
    fig = result_figure(long, title=title)
    write_figure_html(fig, stem.with_suffix(".html"), heading)
    words = []
    if "n_tests" in table and table["n_tests"].notna().any() and "n_permutations" in table:
        words.append(multiplicity_note(int(table["n_tests"].max()),
                                       int(table["n_permutations"].max())))
    names = list(dict.fromkeys(long["feature_set"]))
    if names:
        words += comparison_text(long, reference=names[0])
    words += [f"caution: {c}" for c in table.get("caution", pd.Series(dtype=str)).dropna()
              .unique() if c]
    sections += [(heading, fig), (f"{heading}: what the numbers allow", words),
                 (table_heading, table)]
    return long


def run(args: argparse.Namespace) -> int:
    from drasclr_toolkit.io_utils import refuse_foreign_folder
    from drasclr_toolkit.locks import folder_lock

    out = Path(args.out)
    needs_store = {"--maps": bool(args.maps),
                   f"--patch-labels {args.patch_labels}": bool(
                       args.patch_labels and Path(args.patch_labels).suffix != ".csv")}
    for option, needed in needs_store.items():
        if needed and not args.store:
            from drasclr_toolkit.errors import DrasclrError

            raise DrasclrError("needs the patch store the embeddings came from (its atlas and "
                               "each subject's registration)", where=option,
                               fix="add --store <the preprocessing store folder>")
    sets = load_feature_sets(args.embeddings, args.pooling)
    labels = load_labels(Path(args.labels), args.time_col, args.event_col, what="--labels")
    refuse_foreign_folder(out, RESULT_MARKERS, "drasclr evaluate", args.force)
    with folder_lock(out, "evaluate"):
        return _evaluate(args, out, sets, labels)


def _evaluate(args: argparse.Namespace, out: Path, sets: dict[str, Any], labels: Any) -> int:
    import pandas as pd

    from drasclr_toolkit.errors import LabelError
    from drasclr_toolkit.evaluate import (comparison_table, evaluate_phenotypes, evaluate_survival,
                                          risk_groups)
    from drasclr_toolkit.io_utils import atomic_write_text
    from drasclr_toolkit.viz.evaluation import km_figure
    from drasclr_toolkit.viz.export import html_report, write_figure_html

    targets = args.targets or [t for t in DEFAULT_TARGETS if t in labels.columns]
    missing = [t for t in targets if t not in labels.columns]
    if missing:
        raise InputError(f"--targets {missing} are not columns of {args.labels}; it has "
                         f"{list(labels.columns)}")
    sections: list[tuple[str, Any]] = []
    probed: set[tuple[str, str]] = set()  # (feature set, target) pairs the probes evaluated
    summaries = []
    if targets:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            table = evaluate_phenotypes(sets, labels, targets, n_repeats=args.n_repeats,
                                        n_permutations=args.n_permutations, seed=args.seed)
        ok = (~table["verdict"].astype(str).str.startswith("not evaluated")
              if "verdict" in table else pd.Series(True, index=table.index))
        probed = set(zip(table.loc[ok, "feature_set"], table.loc[ok, "target"]))
        evaluated = bool(ok.any())
        if evaluated:
            summaries.append(_write_results(table, out / "phenotypes", "Phenotype probes",
                                            "Phenotype probes", "Phenotype table", sections))
            print(f"phenotypes: {len(table)} probes -> {out / 'phenotypes.csv'}")
        else:
            print("phenotypes: no target could be probed:\n  " +
                  "\n  ".join(sorted(set(table["verdict"].astype(str)))))
    else:
        print(f"phenotypes: skipped (none of {list(DEFAULT_TARGETS)} is a column of the labels; "
              "name them with --targets)")
    has_survival = {args.time_col, args.event_col} <= set(labels.columns)
    outcome = labels[[args.time_col, args.event_col]].dropna() if has_survival else None
    if outcome is None or outcome[args.event_col].sum() < 2:
        why = (f"no {args.time_col}/{args.event_col} columns" if outcome is None
               else "fewer than 2 events")
        print(f"survival: skipped ({why})")
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            surv = evaluate_survival(sets, outcome[args.time_col], outcome[args.event_col],
                                     models=tuple(args.models), n_repeats=args.n_repeats,
                                     n_permutations=args.n_survival_permutations, seed=args.seed)
        summaries.append(_write_results(surv, out / "survival", "Survival: Harrell's C",
                                        "Survival", "Survival table", sections))
        for name, frame in sets.items():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                groups = risk_groups(frame, outcome[args.time_col], outcome[args.event_col],
                                     model=args.models[0], seed=args.seed,
                                     cv=int(min(5, outcome[args.event_col].sum())),
                                     n_permutations=args.n_risk_group_permutations)
            km = km_figure(groups, title=f"{name}: Kaplan–Meier by out-of-fold risk")
            safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in name)
            write_figure_html(km, out / f"km_{safe}.html")
            sections.append((f"Kaplan–Meier: {name}", km))
        print(f"survival: {len(surv)} models -> {out / 'survival.csv'}")
    dense = _dense(args, out, sections) if args.patch_labels else {}
    if args.maps:
        _write_maps(args, labels, targets, dense, probed)
    if not summaries and not dense:
        shared = len(set(labels.index) & set.intersection(*(set(f.index) for f in sets.values())))
        raise LabelError(
            f"nothing could be evaluated: {shared} subject(s) have both features and labels, "
            "and no target has enough subjects with varying values (see the lines above)",
            where=f"--labels {args.labels}",
            fix="give more subjects, or targets that vary across them (--targets); a "
            "categorical target needs two classes of at least 3 subjects")
    if summaries:
        comparison = comparison_table(pd.concat(summaries, ignore_index=True),
                                      order=list(sets))
        atomic_write_text(out / "comparison.csv", comparison.to_csv())
        sections.insert(0, ("Comparison (value [95 % CI] p (Holm p); * evidence: corrected "
                             "p <= 0.05 and the interval above chance)",
                            comparison.reset_index()))
    atomic_write_text(out / "report.html", html_report("drasclr evaluate", sections))
    print(f"report: {out / 'report.html'}")
    return 0


def _patch_sets(args: argparse.Namespace) -> dict[str, Any]:
    """``{name: Embeddings}`` of the ``--embeddings`` given as ``.npz`` (patch level)."""
    from drasclr_toolkit.embed import Embeddings

    found = {}
    for value in args.embeddings:
        name, path = parse_feature_arg(value)
        if path.suffix != ".csv":
            found[name or path.stem] = Embeddings.load(path)
    return found


def _dense(args: argparse.Namespace, out: Path, sections: list) -> dict[str, Any]:
    """The dense emphysema probe of every ``.npz`` set against ``--patch-labels``; writes
    ``dense.csv`` and returns ``{"truth": PatchTruth, "result": DenseResult}``."""
    import pandas as pd

    from drasclr_toolkit.evaluate import (evaluate_dense, patch_truth_from_table,
                                          synthetic_patch_truth)
    from drasclr_toolkit.io_utils import atomic_write_text

    patch_sets = _patch_sets(args)
    if not patch_sets:
        print("dense emphysema: skipped (no --embeddings .npz: the per-patch probe needs "
              "patch embeddings)")
        return {}
    first = next(iter(patch_sets.values()))
    source = Path(args.patch_labels)
    if source.suffix == ".csv":
        table = pd.read_csv(source, dtype={"subject_id": str})
        truth = patch_truth_from_table(table, first.subject_ids, first.n_landmarks)
    else:
        from drasclr_toolkit.cli.pretrain import open_patch_source

        truth = synthetic_patch_truth(open_patch_source(args.store), source)
    truth = truth.align(first.subject_ids)
    features = {name: emb.patch for name, emb in patch_sets.items()
                if emb.subject_ids == first.subject_ids}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = evaluate_dense(features, truth, seed=args.seed,
                                n_boot=args.n_dense_bootstrap)
    atomic_write_text(out / "dense.csv", result.metrics.to_csv(index=False))
    sections.append(("Dense emphysema (per patch, cross-validated by subject)", result.metrics))
    print(f"dense emphysema: {len(features)} feature set(s), "
          f"{int((truth.label >= 0).sum())} labelled patches -> {out / 'dense.csv'}")
    return {"truth": truth, "result": result, "subject_ids": list(first.subject_ids)}


def _write_maps(args: argparse.Namespace, labels: Any, targets: list[str],
                dense: dict[str, Any], probed: set[tuple[str, str]]) -> None:
    """Per-landmark results as NIfTI (atlas space; scan space with ``--manifest``). A probe
    map is written only for the (feature set, target) pairs the phenotype probes evaluated
    (enough subjects for their cross-validation)."""
    import numpy as np

    from drasclr_toolkit.cli.pretrain import open_patch_source
    from drasclr_toolkit.data import Manifest
    from drasclr_toolkit.embed.maps import MapError, write_cohort_maps
    from drasclr_toolkit.evaluate import infer_target_kind, patch_probe_scores
    from drasclr_toolkit.evaluate.probes import NotEnoughData

    store = open_patch_source(args.store)
    if not hasattr(store, "subject_record"):
        raise MapError("maps need a patch store (its atlas and registrations); this source "
                       "has neither", where=f"--store {args.store}",
                       fix="pass the preprocessing store folder, or leave out --maps")
    # one block of (N, L) arrays per subject order: {ids: {name: (values, unit, classes)}}
    blocks: dict[tuple[str, ...], dict[str, tuple[Any, str, Any]]] = {}
    for name, emb in _patch_sets(args).items():
        block = blocks.setdefault(tuple(emb.subject_ids), {})
        for target in targets:
            column = labels[target].dropna()
            if ((name, target) not in probed or len(column) == 0
                    or infer_target_kind(column) != "continuous"):
                continue
            try:
                scores = patch_probe_scores(emb, labels[target], seed=args.seed)
            except NotEnoughData as why:
                print(f"maps: no probe_{target}_{name} ({why})")
                continue
            block[f"probe_{target}_{name}"] = (
                scores, f"predicted {target} from this patch alone (the label's unit)", None)
    if dense:
        block = blocks.setdefault(tuple(dense["subject_ids"]), {})
        truth, result = dense["truth"], dense["result"]
        classes = tuple(truth.classes)
        extent_unit = "fraction of the patch's lung that is emphysema"
        block["emphysema_class_truth"] = (truth.label, "", classes)
        block["emphysema_extent_truth"] = (truth.extent, extent_unit, None)
        for name in result.predicted_label:
            block[f"emphysema_class_{name}"] = (result.predicted_label[name], "", classes)
            block[f"emphysema_extent_{name}"] = (result.predicted_extent[name], extent_unit, None)
    blocks = {ids: block for ids, block in blocks.items() if block}
    if not blocks:
        print("maps: none written (no continuous target the probes could evaluate and no "
              "--patch-labels: nothing per landmark to map)")
        return
    scans = {}
    if args.manifest:
        manifest = Manifest.load(args.manifest)
        known = set(manifest.subject_ids)
        scans = {sid: manifest.image_path(sid) for ids in blocks for sid in ids if sid in known}
    only = set(args.map_subjects) if args.map_subjects else None
    subjects: set[str] = set()
    names: list[str] = []
    for ids, block in blocks.items():
        written = write_cohort_maps(
            store, {name: np.asarray(v[0], float) for name, v in block.items()}, args.maps,
            list(ids), scans, units={name: v[1] for name, v in block.items()},
            classes={name: v[2] for name, v in block.items() if v[2] is not None}, only=only)
        subjects |= set(written)
        names += list(block)
    spaces = ("atlas and scan space" if scans else
              "atlas space (add --manifest for the scan's own space)")
    print(f"maps: {len(subjects)} subjects × {len(names)} maps ({', '.join(names)}) in "
          f"{spaces} -> {args.maps}/<subject>/<name>_{'{atlas,scan}' if scans else 'atlas'}"
          ".nii.gz")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("evaluate", help="phenotype probes and survival from embeddings",
                              description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--embeddings", action="append", required=True, metavar="[NAME=]PATH",
                   help="embeddings .npz or feature CSV (subject_id column); repeat to compare")
    p.add_argument("--labels", required=True, help="label CSV with a subject_id column")
    p.add_argument("--out", required=True, help="output folder (tables CSV, figures HTML)")
    p.add_argument("--targets", nargs="+", default=None,
                   help=f"label columns to probe (default: those of {', '.join(DEFAULT_TARGETS)} "
                   "present)")
    p.add_argument("--time-col", default="time", help="follow-up time column (survival)")
    p.add_argument("--event-col", default="event", help="event indicator column (1 = event)")
    p.add_argument("--pooling", default="mean", choices=POOLINGS,
                   help="patient pooling of patch embeddings")
    p.add_argument("--models", nargs="+", default=["coxph", "coxnet"],
                   choices=("coxph", "coxnet", "rsf"), help="survival models")
    p.add_argument("--n-repeats", type=int, default=5, help="repeats of the K-fold split")
    p.add_argument("--n-permutations", type=int, default=1000,
                   help="permutations of the phenotype null (enough for a Holm-corrected "
                   "claim over about 50 tests)")
    p.add_argument("--n-survival-permutations", type=int, default=200,
                   help="shuffles of the survival null")
    p.add_argument("--n-risk-group-permutations", type=int, default=200,
                   help="permutations of the Kaplan-Meier risk groups' log-rank test (each "
                   "redoes the cross-validated grouping)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--store", default=None,
                   help="patch store the .npz embeddings came from (atlas and registrations); "
                   "needed by --maps and by --patch-labels given as a synthetic cohort folder")
    p.add_argument("--patch-labels", default=None, metavar="CSV|COHORT_DIR",
                   help="per-patch emphysema truth: a CSV (subject_id, landmark, label[, "
                   "extent]) or a synthetic cohort folder (ground_truth/): runs the dense "
                   "emphysema probe (dense.csv)")
    p.add_argument("--n-dense-bootstrap", type=int, default=200,
                   help="subject-bootstrap resamples of the dense probe's intervals")
    p.add_argument("--maps", default=None, metavar="DIR",
                   help="write per-landmark results as NIfTI into DIR (needs --store)")
    p.add_argument("--manifest", default=None,
                   help="manifest of the store's scans: --maps then also writes each map on "
                   "the subject's own CT grid")
    p.add_argument("--map-subjects", nargs="+", default=None, metavar="ID",
                   help="write maps for these subjects only (default: all)")
    p.add_argument("--force", action="store_true",
                   help="write into an --out folder that holds files which are not results")
    p.set_defaults(func=run)
