"""The probe's one-page report: offline HTML of tables, slice overlays and 3D views.

Built with :func:`drasclr_toolkit.viz.export.html_report` (one compressed plotly.js, no
network). Sections: summary, scans found, QC (flagged rows highlighted, with reasons),
slice overlays of the flagged scans and of a typical one, the 3D landmark view, the patient
embedding scatter and, with labels, the phenotype and survival results beside chance.
"""

from __future__ import annotations

import html
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from drasclr_toolkit.io_utils import atomic_write_text
from drasclr_toolkit.viz.export import html_report

__all__ = ["embedding_sections", "overlay_figures", "qc_table_html", "write_report"]

log = logging.getLogger(__name__)

MAX_FLAGGED_OVERLAYS = 6


def qc_table_html(qc: pd.DataFrame) -> str:
    """The QC table as HTML, rows that are not ok highlighted (class ``flagged``)."""
    def cell(value: Any) -> str:
        if isinstance(value, float):
            return "–" if not np.isfinite(value) else f"{value:.3g}"
        return html.escape("" if value is None else str(value))

    head = "".join(f"<th>{html.escape(c)}</th>" for c in qc.columns)
    rows = []
    for record in qc.to_dict("records"):
        css = ' class="flagged"' if record.get("status") != "ok" else ""
        cells = "".join(f"<td style='text-align:left'>{cell(record[c])}</td>"
                        if c in ("subject_id", "status", "flags", "reasons")
                        else f"<td>{cell(record[c])}</td>" for c in qc.columns)
        rows.append(f"<tr{css}>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def _typical_subject(qc: pd.DataFrame) -> str | None:
    ok = qc[qc["status"] == "ok"]
    if ok.empty:
        return None
    dice = ok["dice"].astype(float)
    return str(ok.loc[(dice - dice.median()).abs().idxmin(), "subject_id"])


def overlay_figures(result: Any, max_flagged: int = MAX_FLAGGED_OVERLAYS) -> list[Any]:
    """Slice overlays (lung mask, landmark patches) of flagged scans and one typical scan."""
    from drasclr_toolkit.data import load_ct
    from drasclr_toolkit.preprocess import resample_isotropic, segment_lungs
    from drasclr_toolkit.preprocess.scans import ScanCache
    from drasclr_toolkit.viz import plot_overlay

    qc, cfg, store = result.qc, result.config, result.store
    loaded = set(result.scan_checks.loc[result.scan_checks["status"] != "error", "subject_id"])
    picks = [(s, "flagged" if st == "flagged" else "failed in preprocessing")
             for s, st in zip(qc["subject_id"], qc["status"]) if st != "ok" and s in loaded]
    picks = picks[:max_flagged]
    typical = _typical_subject(qc)
    if typical is not None:
        picks.append((typical, "typical (ok, median Dice)"))
    figures = []
    scans = ScanCache(result.out_dir / "preprocess")
    for sid, why in picks:
        row = qc.set_index("subject_id").loc[sid]
        try:
            path = result.manifest.image_path(sid)
            # What preprocessing read (image and mask on its grid), else the scan again.
            made = scans.load(sid, path, cfg, result.manifest.lung_mask_path(sid))
            if made is not None and made.image is not None:
                image, mask = made.image, made.mask
            else:
                image = resample_isotropic(load_ct(path, subject_id=sid), cfg.spacing,
                                           cfg.interpolator)
                try:
                    if made is not None and made.error is not None:
                        raise RuntimeError(made.error)   # it found no lungs before
                    mask, _ = segment_lungs(image, cfg.segmentation)
                except Exception:  # noqa: BLE001 - the slices alone still show the problem
                    mask = None
            corners = (store.subject_corners(sid)
                       if store is not None and sid in store.subject_ids else None)
            title = f"{sid}: {why}" + (f" ({row['flags']})" if row["flags"] else "")
            figures.append(plot_overlay(image, mask, corners, cfg.patch_size, title=title))
        except Exception as exc:  # noqa: BLE001 - one picture never stops the report
            figures.append(f"{sid}: no overlay ({type(exc).__name__}: {exc})")
    return figures


def _intro(result: Any) -> str:
    c = result.counts()
    atlas = result.atlas
    if atlas is None:
        atlas_text = "none (nothing was preprocessed)"
    elif atlas.info.get("official"):
        atlas_text = f"official DrasCLR atlas ({atlas.n_landmarks} landmarks)"
    else:
        atlas_text = (f"built from this data: subject {atlas.info.get('reference_subject')!r}, "
                      f"the median lung volume ({atlas.n_landmarks} landmarks, "
                      f"{atlas.spacing:g} mm)")
    parts = [f"<p><b>{html.escape(result.summary())}</b> — folder "
             f"<code>{html.escape(str(result.manifest.table['image'].map(lambda p: Path(p).parent).mode().iat[0]))}</code>, "
             f"work folder <code>{html.escape(str(result.out_dir))}</code>.</p>",
             f"<p>Atlas: {html.escape(atlas_text)}. Preprocessing: "
             f"{result.config.spacing:g} mm, {html.escape(result.config.interpolator)}.</p>"]
    if result.encoder_note:
        strong = "random-init" in result.encoder_note.lower()
        style = " style='color:#b00000'" if strong else ""
        parts.append(f"<p{style}><b>Encoder:</b> {html.escape(result.encoder_note)}</p>")
    parts.append(f"<p class='note'>ok: preprocessed and no QC rule fired ({c['ok']}); "
                 f"flagged: preprocessed, but a rule fired — look at its overlay before "
                 f"using it ({c['flagged']}); failed: no patches (unreadable, not CT, wrong "
                 f"HU, or preprocessing failed) ({c['failed']}).</p>")
    for problem in result.problems:
        parts.append(f"<p class='note'>Note: {html.escape(problem)}</p>")
    return "".join(parts)


def _scans_table(result: Any) -> pd.DataFrame:
    checks = result.scan_checks.set_index("subject_id")
    table = result.manifest.table[["subject_id", "image"]].copy()
    table["load"] = table["subject_id"].map(checks["status"])
    table["shape (z, y, x)"] = table["subject_id"].map(checks["shape"]).astype(str)
    table["spacing (x, y, z) mm"] = table["subject_id"].map(
        lambda s: "–" if checks.at[s, "spacing"] is None else
        ", ".join(f"{v:.3g}" for v in checks.at[s, "spacing"]))
    return table


def embedding_sections(result: Any) -> list[tuple[str, Any]]:
    """The 3D landmark view and the patient embedding scatter(s), as report sections."""
    from drasclr_toolkit.evaluate import pool_embeddings
    from drasclr_toolkit.viz import embedding_scatter, landmark_cloud

    emb = result.embeddings
    spacing = (result.atlas.spacing,) * 3
    cloud = landmark_cloud(emb.landmarks, emb.lung_fraction, subject_ids=emb.subject_ids,
                           value_name="lung fraction", spacing=spacing,
                           title="atlas landmarks, lung fraction of each subject's patch")
    features = pool_embeddings(emb)
    status = result.qc.set_index("subject_id")["status"].reindex(features.index)
    figures: list[Any] = [embedding_scatter(features, status.rename("QC status"),
                                            title="patient embeddings (mean-pooled, PCA), "
                                                  "coloured by QC status")]
    if result.labels is not None:
        for column in [c for c in result.labels.columns if c != "event"][:3]:
            figures.append(embedding_scatter(features, result.labels[column].reindex(
                features.index).rename(column), title=f"patient embeddings by {column}"))
    note = ("Each point is one scan (its patch embeddings averaged). Scans that sit apart "
            "from the rest often share a problem (coverage, protocol, a segmentation "
            f"failure); compare with the QC table. {result.encoder_note}")
    return [("3D landmark view", ["Atlas landmarks (patch centres, mm) coloured by how much "
                                  "lung each subject's patch holds; the menu switches "
                                  "subject. Landmarks outside a partial scan are 0.", cloud]),
            ("Patient embeddings", [note, *figures])]


def _phenotype_table(res: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for r in res.to_dict("records"):
        metric = r.get("primary_metric")
        if not isinstance(metric, str):
            rows.append({"target": r["target"], "n": r.get("n"), "verdict": r.get("verdict")})
            continue
        rows.append({"target": r["target"], "kind": r["kind"], "n": r["n"], "metric": metric,
                     "value": r.get(metric), "95% CI": _interval(r, metric),
                     "chance": r.get(f"{metric}_chance"),
                     "null mean": r.get(f"{metric}_null_mean"), "p": r.get(f"{metric}_p"),
                     "p (Holm)": r.get("p_adj"), "verdict": r.get("verdict"),
                     "caution": r.get("caution") or ""})
    return pd.DataFrame(rows)


def _interval(r: dict, metric: str) -> str:
    lo, hi = r.get(f"{metric}_ci_low"), r.get(f"{metric}_ci_high")
    try:
        return f"[{float(lo):.2f}, {float(hi):.2f}]"
    except (TypeError, ValueError):
        return ""


def _survival_table(res: pd.DataFrame) -> pd.DataFrame:
    table = res.copy()
    if "harrell_c" in table.columns:
        table.insert(table.columns.get_loc("harrell_c") + 1, "harrell_c 95% CI",
                     [_interval(r, "harrell_c") for r in table.to_dict("records")])
    keep = ["model", "n", "n_events", "harrell_c", "harrell_c 95% CI", "harrell_c_null_mean",
            "harrell_c_p", "p_adj", "uno_c", "ibs", "ibs_null_mean", "verdict", "caution"]
    return table[[c for c in keep if c in table.columns]].rename(columns={"p_adj": "p (Holm)"})


def _tests_note(res: pd.DataFrame) -> str:
    """The multiplicity sentence for one result table (how many tests, whether its
    permutations allow a corrected claim)."""
    from drasclr_toolkit.evaluate.stats import multiplicity_note

    n_tests = int(res["n_tests"].max()) if "n_tests" in res and res["n_tests"].notna().any() else 0
    perms = int(res["n_permutations"].max()) if "n_permutations" in res else 0
    if not n_tests or not perms:
        return "No permutation null was run: no verdict can claim evidence."
    return multiplicity_note(n_tests, perms)


def write_report(result: Any, path: str | Path) -> Path:
    """Write the probe's offline HTML report to ``path`` (atomically) and return the path."""
    sections: list[tuple[str, Any]] = [
        ("Scans found", ["Every file or DICOM folder found; 'error' means it could not be "
                         "used (the QC table says why).", _scans_table(result)]),
        ("Quality control", ["One row per scan. Rules: registration Dice < "
                             "0.85, lung volume outside the adult range, no lung patch, "
                             "more than 10 % of landmarks outside the scan (partial "
                             "coverage), plus cohort outliers (robust z-scores) and load "
                             "failures (unreadable, not CT, wrong HU).",
                             qc_table_html(result.qc)]),
    ]
    if result.store is not None:
        sections.append(("Slice overlays", [
            "Red: the lung mask; yellow: the landmark patches crossing each middle slice. "
            "Flagged scans first, then a typical one for comparison.",
            *overlay_figures(result)]))
    if result.embeddings is not None:
        sections += embedding_sections(result)
    if result.phenotypes is not None:
        sections.append(("Phenotype probes (cross-validated)", [
            "Linear probes on the mean-pooled embeddings, repeated K-fold; 'chance' (the "
            "training-fold mean or majority class through the same folds) and the "
            "permutation null are the reference. 95% CI: Nadeau-Bengio corrected interval "
            "over folds. Evidence needs the Holm-corrected p <= 0.05 and the interval above "
            "chance. " + _tests_note(result.phenotypes),
            _phenotype_table(result.phenotypes)]))
    if result.survival is not None:
        sections.append(("Survival (cross-validated)", [
            "Cox model on the embeddings; Harrell's C of 0.5 is chance; the interval is "
            "on the logit scale, inside [0, 1]; fewer than 10 events is exploratory. "
            + _tests_note(result.survival),
            _survival_table(result.survival)]))
    page = html_report("DrasCLR probe of a CT folder", sections, intro=_intro(result))
    return atomic_write_text(Path(path), page)
