"""A synthetic lung-CT cohort with ground truth: the shared fixture of every later stage.

Each subject is a chest phantom in Hounsfield units (int16 NIfTI, identity direction in
LPS): body outline, subcutaneous fat, muscle, ribs, sternum and spine, the pleural cavity
with the mediastinum and heart, two lungs (heart notch, diaphragm domes, apices) holding
parenchyma near -850 HU, a trachea and a space-filling bronchial tree (air lumen, soft-tissue
wall), and arterial and venous trees that taper toward the periphery (Murray's law).

Disease (ground-truth voxel map, uint8): 1 centrilobular emphysema (small holes at lobule
centres, upper-zone predominant), 2 paraseptal emphysema (subpleural bullae along the lung
surface), 3 panlobular emphysema (diffuse loss of density, lower-zone predominant), 4
thickened airway wall (the part of each airway wall beyond its normal thickness). Each
subject has independent severities in [0, 1] (some subjects are healthy) plus a hidden
small-airway-disease severity that no voxel shows, so densitometry alone never explains
the clinical table.

Pose and size: template physical point ``p`` (mm, LPS) maps to the subject point
``q = A p + t`` (``A`` = rotation · diag(scale), rotations up to ±8° per axis, scale about
±9 %, translation up to ±15 mm). Non-affine shape variation (smooth displacement, dome,
apex and heart size) stays within about 2 mm, so the stored affine is the truth to that
precision. :func:`map_points` carries physical points from one subject to another.

Nuisance, independent of disease: scanner (id 0–3), noise level, reconstruction-kernel
blur, slice thickness (simulated by blurring along z) and a small HU calibration offset.

Files (``out_dir``): ``manifest.csv``, ``dataset_card.yaml``, ``images/<sid>.nii.gz``,
``ground_truth/<sid>_disease.nii.gz``, ``ground_truth/<sid>_lungs.nii.gz`` (1 right lung,
2 left lung), ``ground_truth/<sid>_transform.json``, ``ground_truth/<sid>_record.json``
(written last: a subject is finished when it exists) and ``ground_truth.csv``. The
template itself is written as ``ground_truth/template.nii.gz`` with ``template_lungs`` and an
identity ``template_transform.json``: registering a subject to it should recover ``A, t``.

Example
-------
>>> import tempfile
>>> out = tempfile.mkdtemp()
>>> manifest = make_synthetic_cohort(2, out, seed=1, spacing=3.0, size_scale=0.4, n_jobs=1)
>>> len(manifest)
2
>>> A, t = load_ground_truth_affine(f"{out}/ground_truth/syn000_transform.json")
>>> A.shape, t.shape
((3, 3), (3,))
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Mapping, NamedTuple, Sequence

import numpy as np
import pandas as pd
import SimpleITK as sitk
import yaml
from pydantic import Field
from scipy import ndimage as ndi
from scipy.spatial import ConvexHull

from drasclr_toolkit.config import Config
from drasclr_toolkit.datasets import _phantom as ph
from drasclr_toolkit.errors import InputError, MissingFileError, OutputExistsError
from drasclr_toolkit.io_utils import atomic_write, atomic_write_text, die_with_parent

log = logging.getLogger(__name__)

F32 = np.float32
GENERATOR_VERSION = 1
# The template anatomy (trees, branching) is the same for every cohort: it is the shared
# "atlas" that subject poses are drawn around.
TEMPLATE_SEED = 20230220

DISEASE_LABELS = {0: "none", 1: "centrilobular", 2: "paraseptal", 3: "panlobular",
                  4: "thickened airway wall"}

# name, noise (HU), reconstruction-kernel blur (mm, Gaussian sigma), slice thicknesses (mm),
# HU calibration offset. Sharper kernels are noisier, as on real scanners.
SCANNERS = (
    ("scanner0-standard", 18.0, 0.55, (1.0, 1.25), -6.0),
    ("scanner1-sharp", 30.0, 0.40, (0.75, 1.0), 4.0),
    ("scanner2-soft-thick", 22.0, 0.85, (2.0, 2.5), 0.0),
    ("scanner3-lowdose", 40.0, 0.50, (1.25, 2.0, 3.0), 10.0),
)

# Irrational steps of the pattern-assignment recurrences (healthy, four patterns, small airways).
_PATTERN_STEPS = np.array([np.sqrt(2) - 1, (np.sqrt(5) - 1) / 2, np.sqrt(3) - 1, np.sqrt(11) - 3,
                           np.e - 2, np.sqrt(7) - 2])

MANIFEST_COLUMNS = ("subject_id", "image", "lung_mask", "fev1_pp", "fev1_fvc", "gold",
                    "pct_emphysema", "cle_score", "pse_score", "mmrc", "time", "event")


# ------------------------------------------------------------------------ configuration
class SyntheticConfig(Config):
    """Options of :func:`make_synthetic_cohort` (the ``synthetic:`` section of a config).

    ``size_scale`` shrinks the whole anatomy (1.0 = adult, about 5 L of lung; 0.5 gives
    about 0.6 L) for quick tests; ``spacing`` is the isotropic voxel size in mm. The
    section's ``n_subjects`` (the cohort size) is accepted and left to the caller.

    >>> SyntheticConfig.from_dict({"spacing": 2.0, "size_scale": 0.6}).spacing
    2.0
    """

    section = "synthetic config"
    yaml_section = ("synthetic",)
    ignored_keys = ("n_subjects",)

    seed: int = 0
    spacing: float = Field(1.5, ge=0.2, le=6.0)  # mm
    size_scale: float = Field(1.0, ge=0.2, le=1.5)
    n_jobs: int | None = Field(None, ge=1)  # None: every core this process may use (capped by subjects)
    healthy_fraction: float = Field(0.2, ge=0.0, le=1.0)
    max_rotation_deg: float = 8.0
    max_scale_change: float = 0.09
    max_translation_mm: float = 15.0
    compression_level: int = 1  # gzip level of the NIfTI files (1 = fast)

    def fingerprint(self) -> dict[str, Any]:
        """The options that change the generated files (n_jobs and compression do not)."""
        d = self.to_dict()
        d.pop("n_jobs")
        d.pop("compression_level")
        d["generator_version"] = GENERATOR_VERSION
        return d


# ------------------------------------------------------------------ ground-truth affine
class GroundTruthAffine(NamedTuple):
    """``q = A @ p + t``: template point p (mm, LPS) → subject point q (mm, LPS)."""

    A: np.ndarray
    t: np.ndarray


def _affine_from(obj: str | os.PathLike | Mapping[str, Any] | GroundTruthAffine
                 ) -> GroundTruthAffine:
    if isinstance(obj, GroundTruthAffine):
        return obj
    if isinstance(obj, Mapping):
        data = obj
        where = "<dict>"
    else:
        where = str(obj)
        try:
            data = json.loads(Path(obj).read_text())
        except FileNotFoundError:
            raise MissingFileError(
                f"ground-truth transform {where} does not exist; generate the cohort with "
                "make_synthetic_cohort first") from None
    try:
        A = np.asarray(data["A"], dtype=np.float64)
        t = np.asarray(data["t"], dtype=np.float64)
    except KeyError as exc:
        raise InputError(f"ground-truth transform {where}: field {exc.args[0]!r} is missing "
                         "(expected 'A' (3×3) and 't' (3))") from None
    if A.shape != (3, 3) or t.shape != (3,):
        raise InputError(f"ground-truth transform {where}: 'A' must be 3×3 and 't' of length "
                         f"3, got {A.shape} and {t.shape}")
    return GroundTruthAffine(A, t)


def load_ground_truth_affine(path: str | os.PathLike) -> GroundTruthAffine:
    """Read ``<sid>_transform.json``: returns ``(A, t)`` with ``q = A @ p + t`` mapping a
    template physical point p to the subject's physical point q (both mm, LPS).

    >>> A, t = load_ground_truth_affine({"A": np.eye(3).tolist(), "t": [1, 2, 3]})
    >>> t.tolist()
    [1.0, 2.0, 3.0]
    """
    return _affine_from(path)


def map_points(points_xyz_mm: np.ndarray | Sequence[Sequence[float]],
               from_json: str | os.PathLike | Mapping[str, Any] | GroundTruthAffine,
               to_json: str | os.PathLike | Mapping[str, Any] | GroundTruthAffine
               ) -> np.ndarray:
    """Map physical points (N, 3) (mm, LPS, x y z) of one subject to another through the
    template: ``q_to = A_to A_from⁻¹ (q_from - t_from) + t_to``.

    >>> a = {"A": np.eye(3).tolist(), "t": [0, 0, 0]}
    >>> b = {"A": (2 * np.eye(3)).tolist(), "t": [1, 0, 0]}
    >>> map_points([[1.0, 1.0, 1.0]], a, b).tolist()
    [[3.0, 2.0, 2.0]]
    """
    src, dst = _affine_from(from_json), _affine_from(to_json)
    q = np.asarray(points_xyz_mm, dtype=np.float64).reshape(-1, 3)
    p = np.linalg.solve(src.A, (q - src.t).T).T
    return p @ dst.A.T + dst.t


def _rotation(deg: np.ndarray) -> np.ndarray:
    ax, ay, az = np.deg2rad(deg)
    rx = np.array([[1, 0, 0], [0, math.cos(ax), -math.sin(ax)], [0, math.sin(ax), math.cos(ax)]])
    ry = np.array([[math.cos(ay), 0, math.sin(ay)], [0, 1, 0], [-math.sin(ay), 0, math.cos(ay)]])
    rz = np.array([[math.cos(az), -math.sin(az), 0], [math.sin(az), math.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


# ---------------------------------------------------------------------------- template
@dataclass
class _Template:
    anatomy: ph.Anatomy
    lung_points: np.ndarray  # (n, 3) template mm, convex-hull vertices of the lungs
    airways: ph.Tree
    vessels: ph.Tree
    lung_volume_ml: float


def build_template(size_scale: float = 1.0, spacing: float = 1.5) -> _Template:
    """The template anatomy with its bronchial and vascular trees (same for every cohort).

    Branches thinner than about half a voxel are not grown: they would not show.
    """
    an = ph.Anatomy().scaled(size_scale)
    rng = np.random.default_rng(TEMPLATE_SEED)
    h = 3.0 * size_scale
    z = np.arange(an.z_low - h, an.z_high + h, h, dtype=F32)
    y = np.arange(an.y0 - an.cav_b - h, an.y0 + an.cav_b + h, h, dtype=F32)
    x = np.arange(-an.cav_a - h, an.cav_a + h, h, dtype=F32)
    zz, yy, xx = np.meshgrid(z, y, x, indexing="ij")
    lab = ph.lung_labels(xx, yy, zz, an)
    pts = np.stack([xx[lab > 0], yy[lab > 0], zz[lab > 0]], axis=1).astype(np.float64)
    side = lab[lab > 0]
    volume = float((lab > 0).sum()) * h**3 / 1000.0
    jitter = lambda p: p + rng.uniform(-h / 2, h / 2, p.shape)  # noqa: E731

    def sample(lung: int, n: int) -> np.ndarray:
        cand = pts[side == lung]
        return jitter(cand[rng.choice(len(cand), size=min(n, len(cand)), replace=False)])

    s = size_scale
    r_min_aw = max(0.5 * spacing, 0.7 * s)
    r_min_vs = max(0.45 * spacing, 0.6 * s)
    # airways: trachea (fixed) then the two main bronchi from the carina
    trachea = ph.Tree(np.array([an.trachea_top, an.carina], dtype=np.float64),
                      np.array([[0, 1]]), np.array([[an.trachea_r, an.trachea_r * 0.95]]),
                      np.array([True, True]))
    bronchi = ph.grow_tree(
        [(np.array(an.carina), sample(1, 900), an.trachea_r * 0.78),
         (np.array(an.carina), sample(2, 900), an.trachea_r * 0.70)],
        r_min=r_min_aw, frac=0.42)
    airways = _concat_trees(trachea, bronchi)
    mirror = lambda p: (-p[0], p[1], p[2])  # noqa: E731
    vessels = ph.grow_tree(
        [(np.array(an.artery_root), sample(1, 2200), an.vessel_root_r),
         (np.array(mirror(an.artery_root)), sample(2, 2200), an.vessel_root_r),
         (np.array(an.vein_root), sample(1, 2200), an.vessel_root_r * 0.9),
         (np.array(mirror(an.vein_root)), sample(2, 2200), an.vessel_root_r * 0.9)],
        r_min=r_min_vs, frac=0.5)
    hull = pts[ConvexHull(pts).vertices]
    return _Template(an, hull, airways, vessels, volume)


def _concat_trees(a: ph.Tree, b: ph.Tree) -> ph.Tree:
    return ph.Tree(np.concatenate([a.nodes, b.nodes]),
                   np.concatenate([a.segments, b.segments + len(a.nodes)]),
                   np.concatenate([a.radii, b.radii]), np.concatenate([a.fixed, b.fixed]))


# --------------------------------------------------------------------- subject draws
@dataclass
class _SubjectParams:
    subject_id: str
    A: np.ndarray
    t: np.ndarray
    rotation_deg: np.ndarray
    scale: np.ndarray
    warp: list  # per component (amplitude, (wx, wy, wz), (phx, phy, phz))
    anatomy: ph.Anatomy
    severities: dict[str, float]
    nuisance: dict[str, Any]
    clinical_noise: dict[str, float]
    inspiration_hu: float
    tree_jitter: float = 1.0  # per-subject wobble of the branch points (0 for the template)


def _draw_params(index: int, cfg: SyntheticConfig, template: _Template,
                 rng: np.random.Generator) -> _SubjectParams:
    """Every scalar of one subject, drawn in a fixed order (independent of spacing)."""
    s = cfg.size_scale
    rot = rng.uniform(-cfg.max_rotation_deg, cfg.max_rotation_deg, 3)
    iso = 1.0 + rng.uniform(-cfg.max_scale_change, cfg.max_scale_change)
    scale = iso * (1.0 + rng.uniform(-0.03, 0.03, 3))
    A = _rotation(rot) @ np.diag(scale)
    t = rng.uniform(-cfg.max_translation_mm, cfg.max_translation_mm, 3) * s
    # smooth non-affine displacement (template mm), at most 0.6 mm per component
    warp = []
    for _ in range(3):
        amp = rng.uniform(0.2, 0.6) * min(1.0, s * 1.5)
        wav = rng.uniform(150.0, 300.0, 3) * s
        phase = rng.uniform(0, 2 * np.pi, 3)
        warp.append((float(amp), tuple(2 * np.pi / wav), tuple(phase)))
    an = template.anatomy
    anatomy = replace(
        an,
        dome_r=an.dome_r + rng.uniform(-2, 2) * s, dome_l=an.dome_l + rng.uniform(-2, 2) * s,
        apex_top_r=an.apex_top_r + rng.uniform(-2, 2) * s,
        apex_top_l=an.apex_top_l + rng.uniform(-2, 2) * s,
        heart_a=an.heart_a * rng.uniform(0.98, 1.02), heart_b=an.heart_b * rng.uniform(0.98, 1.02),
        heart_c=an.heart_c * rng.uniform(0.98, 1.02),
    )
    # Which patterns a subject has: each present in about half of the subjects (small-airway
    # disease in 60 %), some subjects healthy. Drawn by additive recurrences over the subject
    # index (a different irrational step per pattern, a seed-dependent start), so that even
    # a six-subject cohort shows every pattern and healthy subjects, while the patterns stay
    # unrelated to each other and subject k stays the same whatever the cohort size.
    start = np.random.default_rng([int(cfg.seed), 7919]).uniform(size=len(_PATTERN_STEPS))
    u = np.mod(index * _PATTERN_STEPS + start, 1.0)
    healthy = bool(u[0] < cfg.healthy_fraction)
    sev = {}
    for j, name in enumerate(("centrilobular", "paraseptal", "panlobular", "airway"), start=1):
        value = 0.05 + 0.95 * rng.uniform() ** 1.5  # mild more often than severe
        sev[name] = 0.0 if (healthy or u[j] >= 0.5) else float(value)
    value = rng.uniform(0.0, 0.8)
    sev["small_airway"] = 0.0 if (healthy or u[5] >= 0.6) else float(value)
    k = int(rng.integers(len(SCANNERS)))
    name, noise, blur, thick, offset = SCANNERS[k]
    nuisance = {
        "scanner": k, "scanner_name": name,
        "noise_hu": float(noise * rng.uniform(0.8, 1.2)),
        "blur_mm": float(blur * rng.uniform(0.9, 1.1)),
        "slice_thickness_mm": float(thick[int(rng.integers(len(thick)))]),
        "hu_offset": float(offset + rng.normal(0.0, 2.0)),
    }
    clinical_noise = {k2: float(rng.normal()) for k2 in
                      ("fev1", "ratio", "cle", "pse", "mmrc")}
    clinical_noise["survival_u"] = float(rng.uniform(1e-12, 1.0))
    clinical_noise["censor"] = float(rng.uniform(3.0, 12.0))
    inspiration = float(rng.uniform(-15.0, 15.0))
    return _SubjectParams(f"syn{index:03d}", A, t, rot, scale, warp, anatomy, sev, nuisance,
                          clinical_noise, inspiration)


def _clinical(sev: Mapping[str, float], noise: Mapping[str, float], pct_emphysema: float
              ) -> dict[str, Any]:
    """Clinical table from the true severities plus measurement and rater noise.

    FEV1 and FEV1/FVC fall with every disease, including small-airway disease that no voxel
    shows; GOLD follows the spirometry rule exactly; the survival time is Weibull (shape
    1.3) with a log-hazard linear in the severities, censored uniformly in 3–12 years.
    """
    c, p, pl, aw, sad = (sev["centrilobular"], sev["paraseptal"], sev["panlobular"],
                         sev["airway"], sev["small_airway"])
    fev1 = 102.0 + 7.0 * noise["fev1"] - 34 * c - 8 * p - 44 * pl - 32 * aw - 20 * sad
    fev1 = float(np.clip(fev1, 12.0, 140.0))
    ratio = 0.80 + 0.03 * noise["ratio"] - 0.17 * c - 0.04 * p - 0.22 * pl - 0.10 * aw - 0.09 * sad
    ratio = float(np.clip(ratio, 0.25, 0.95))
    fev1, ratio = round(fev1, 1), round(ratio, 3)
    gold = gold_stage(fev1, ratio)
    cle = int(np.clip(np.rint(5 * c + 0.45 * noise["cle"]), 0, 5))
    pse = int(np.clip(np.rint(2 * p + 0.3 * noise["pse"]), 0, 2))
    burden = (100.0 - fev1) / 25.0 + 0.8 * aw + 0.7 * noise["mmrc"]
    mmrc = int(np.clip(np.rint(burden), 0, 4))
    shape_k, scale_healthy = 1.3, 33.0  # healthy median survival about 25 years
    lp = 1.6 * c + 0.7 * p + 1.8 * pl + 1.2 * aw + 0.8 * sad
    t_event = scale_healthy * (-math.log(noise["survival_u"])) ** (1 / shape_k) * math.exp(-lp / shape_k)
    t_censor = noise["censor"]
    time_years = max(min(t_event, t_censor), 0.01)
    return {"fev1_pp": fev1, "fev1_fvc": ratio, "gold": gold,
            "pct_emphysema": round(float(pct_emphysema), 3), "cle_score": cle,
            "pse_score": pse, "mmrc": mmrc, "time": round(time_years, 3),
            "event": int(t_event <= t_censor)}


def gold_stage(fev1_pp: float, fev1_fvc: float) -> int:
    """GOLD spirometric grade: 0 unless FEV1/FVC < 0.70; then 1 (FEV1 ≥ 80 %), 2 (50–79),
    3 (30–49), 4 (< 30).

    >>> gold_stage(65.0, 0.6), gold_stage(65.0, 0.75)
    (2, 0)
    """
    if fev1_fvc >= 0.70:
        return 0
    if fev1_pp >= 80:
        return 1
    if fev1_pp >= 50:
        return 2
    if fev1_pp >= 30:
        return 3
    return 4


# ------------------------------------------------------------------------- rendering
def _smoothstep(x: np.ndarray, a: float, b: float) -> np.ndarray:
    u = np.clip((x - F32(a)) * F32(1.0 / (b - a)), 0.0, 1.0)
    return u * u * (F32(3.0) - F32(2.0) * u)


def _to_subject(points: np.ndarray, prm: _SubjectParams) -> np.ndarray:
    """Template points (n, 3) → subject mm, including the small smooth displacement."""
    q = points @ prm.A.T + prm.t
    e = np.stack([_warp_component(q, w) for w in prm.warp], axis=1)
    return (points - e) @ prm.A.T + prm.t


def _warp_component(q: np.ndarray, w: tuple) -> np.ndarray:
    amp, om, ph_ = w
    return amp * np.sin(om[0] * q[:, 0] + ph_[0]) * np.sin(om[1] * q[:, 1] + ph_[1]) \
        * np.sin(om[2] * q[:, 2] + ph_[2])


def _lattice(px, py, pz, pitch, table, offset):
    """Nearest cell of a jittered cubic lattice: (cell index hash, centre z, distance)."""
    gx = (px + F32(offset[0])) * F32(1.0 / pitch)
    gy = (py + F32(offset[1])) * F32(1.0 / pitch)
    gz = (pz + F32(offset[2])) * F32(1.0 / pitch)
    ix, iy, iz = np.floor(gx), np.floor(gy), np.floor(gz)
    key = (ix.astype(np.int64) * 73856093) ^ (iy.astype(np.int64) * 19349663) \
        ^ (iz.astype(np.int64) * 83492791)
    key = np.mod(key, len(table))
    cell = table[key]  # (n, 5): jitter x y z, presence draw, size draw
    dx = gx - ix - F32(0.5) - cell[:, 0]
    dy = gy - iy - F32(0.5) - cell[:, 1]
    dz = gz - iz - F32(0.5) - cell[:, 2]
    dist = np.sqrt(dx * dx + dy * dy + dz * dz) * F32(pitch)
    zc = (iz + F32(0.5) + cell[:, 2]) * F32(pitch) - F32(offset[2])
    return cell, zc, dist


def _render_subject(prm: _SubjectParams, cfg: SyntheticConfig, template: _Template,
                    rng: np.random.Generator):
    """Draw one subject: HU volume (float32 before noise), lung labels, disease labels."""
    sp = float(cfg.spacing)
    s = cfg.size_scale
    an = prm.anatomy
    # --- field of view: the body cross-section over the lung height, axis-aligned
    lung_q = _to_subject(template.lung_points, prm)
    zlo, zhi = lung_q[:, 2].min() - 12 * s, lung_q[:, 2].max() + 12 * s
    theta = np.linspace(0, 2 * np.pi, 90, endpoint=False)
    ring = np.stack([an.body_a * np.cos(theta), an.y0 + an.body_b * np.sin(theta)], 1)
    pz_span = np.linalg.solve(prm.A, np.array([[0, 0, zlo], [0, 0, zhi]]).T - prm.t[:, None])[2]
    zs = np.linspace(pz_span.min() - 40 * s, pz_span.max() + 40 * s, 5)
    body_pts = np.concatenate([np.column_stack([ring, np.full(len(ring), z)]) for z in zs])
    body_q = body_pts @ prm.A.T + prm.t
    lo = np.array([body_q[:, 0].min(), body_q[:, 1].min(), zlo]) - 2 * sp
    hi = np.array([body_q[:, 0].max(), body_q[:, 1].max(), zhi]) + 2 * sp
    origin = np.floor(lo / sp) * sp
    nx, ny, nz = (np.ceil((hi - origin) / sp).astype(int) + 1)
    shape = (int(nz), int(ny), int(nx))
    X = (origin[0] + sp * np.arange(nx)).astype(np.float64)
    Y = (origin[1] + sp * np.arange(ny)).astype(np.float64)
    Z = (origin[2] + sp * np.arange(nz)).astype(np.float64)
    # --- template coordinates of every voxel: p = A^-1 (q - t) + e(q)
    Ainv = np.linalg.inv(prm.A)
    coords = []
    for i in range(3):
        cz = (Ainv[i, 2] * (Z - prm.t[2])).astype(F32)[:, None, None]
        cy = (Ainv[i, 1] * (Y - prm.t[1])).astype(F32)[None, :, None]
        cx = (Ainv[i, 0] * (X - prm.t[0])).astype(F32)[None, None, :]
        amp, om, phs = prm.warp[i]
        fx = np.sin(om[0] * X + phs[0]).astype(F32)[None, None, :]
        fy = np.sin(om[1] * Y + phs[1]).astype(F32)[None, :, None]
        fz = (amp * np.sin(om[2] * Z + phs[2])).astype(F32)[:, None, None]
        c = (cz + (cy + cx)) + fz * (fy * fx)
        coords.append(c)
    px, py, pz = coords
    hu = ph.tissue_hu(px, py, pz, an)
    # --- lungs inside their own sub-box
    blo = np.maximum(np.floor((lung_q.min(0) - 6 * s - origin) / sp).astype(int) - 2, 0)
    bhi = np.minimum(np.ceil((lung_q.max(0) + 6 * s - origin) / sp).astype(int) + 3,
                     [nx, ny, nz])
    box = (slice(blo[2], bhi[2]), slice(blo[1], bhi[1]), slice(blo[0], bhi[0]))
    lungs = np.zeros(shape, dtype=np.uint8)
    lungs_box = ph.lung_labels(px[box], py[box], pz[box], an)
    lungs[box] = lungs_box
    bshape = lungs_box.shape
    li = np.flatnonzero(lungs_box)
    bz, by, bx = np.unravel_index(li, bshape)
    full_idx = np.ravel_multi_index((bz + blo[2], by + blo[1], bx + blo[0]), shape)
    lx, ly, lz = px.reshape(-1)[full_idx], py.reshape(-1)[full_idx], pz.reshape(-1)[full_idx]
    del coords, px, py, pz
    # depth below the pleura (mm), from a distance transform at half resolution
    small = lungs_box[::2, ::2, ::2] > 0
    depth_small = ndi.distance_transform_edt(small, sampling=2 * sp).astype(F32)
    depth = depth_small[bz // 2, by // 2, bx // 2]
    # zones: 0 at the lung base, 1 at the apex (template z)
    u = (lz - F32(an.z_low)) * F32(1.0 / (an.z_high - an.z_low))
    # --- parenchyma: -850 HU, denser in dependent (posterior) lung
    post = np.clip((ly - F32(an.y0 - an.cav_b)) * F32(1.0 / (2 * an.cav_b)), 0.0, 1.0)
    par = F32(ph.HU_PARENCHYMA + prm.inspiration_hu) + F32(30.0) * post * post
    labels = np.zeros(len(li), dtype=np.uint8)
    sev = prm.severities
    # centrilobular: holes at lobule centres, upper-zone predominant
    table = rng.uniform(-0.12, 0.12, (4099, 5)).astype(F32)
    table[:, 3:] = rng.uniform(0, 1, (4099, 2))
    # lobules (and so their holes) keep their physical size when the anatomy shrinks
    cell, zc, dist = _lattice(lx, ly, lz, 10.0, table, rng.uniform(0, 10.0, 3))
    uc = (zc - F32(an.z_low)) * F32(1.0 / (an.z_high - an.z_low))
    p_hole = F32(sev["centrilobular"]) * (F32(0.1) + F32(0.9) * _smoothstep(uc, 0.3, 0.85))
    radius = F32(2.5) + F32(3.5) * cell[:, 4] * F32(0.4 + 0.6 * sev["centrilobular"])
    hole = (cell[:, 3] < p_hole) & (dist < radius)
    # panlobular: diffuse density loss, lower zones, whole lobules more or less involved
    w_pan = F32(0.12) + F32(0.88) * (F32(1.0) - _smoothstep(u, 0.15, 0.7))
    shift = F32(-150.0 * sev["panlobular"]) * w_pan * (F32(0.7) + F32(0.6) * cell[:, 3])
    par += shift
    labels[shift < -35.0] = 3
    # partial volume at the hole's edge, as for the tubes (half-voxel ramp either side)
    edge = np.clip((radius - dist) * F32(1.0 / sp) + F32(0.5), 0.0, 1.0)
    par = np.where(cell[:, 3] < p_hole, par + (F32(-995.0) - par) * edge, par)
    labels[hole] = 1
    # paraseptal: subpleural bullae in upper and middle zones, cut by the pleura
    table2 = rng.uniform(-0.15, 0.15, (4099, 5)).astype(F32)
    table2[:, 3:] = rng.uniform(0, 1, (4099, 2))
    near = np.flatnonzero(depth < F32(12.0 * math.sqrt(s)))
    cell2, zc2, dist2 = _lattice(lx[near], ly[near], lz[near], 16.0 * math.sqrt(s), table2,
                                 rng.uniform(0, 16.0, 3))
    uc2 = (zc2 - F32(an.z_low)) * F32(1.0 / (an.z_high - an.z_low))
    p_bulla = F32(0.9 * sev["paraseptal"]) * (F32(0.25) + F32(0.75) * _smoothstep(uc2, 0.25, 0.7))
    r2 = (F32(4.0) + F32(5.0) * cell2[:, 4]) * F32(math.sqrt(s))
    bulla = (cell2[:, 3] < p_bulla) & (dist2 < r2)
    par[near[bulla]] = F32(-990.0)
    labels[near[bulla]] = 2
    # --- write parenchyma into the volume
    hu_flat = hu.reshape(-1)
    hu_flat[full_idx] = par
    disease = np.zeros(shape, dtype=np.uint8)
    disease.reshape(-1)[full_idx] = labels
    # --- vessels and airways, drawn on the lung box (per-segment sub-boxes)
    box_origin = origin + sp * blo
    jit = rng.normal(0.0, 0.8 * s * prm.tree_jitter, template.vessels.nodes.shape)
    jit[template.vessels.fixed] = 0
    vn = _to_subject(template.vessels.nodes + jit, prm)
    scale_r = float(np.cbrt(abs(np.linalg.det(prm.A))))
    vessel = np.zeros(bshape, dtype=F32)
    seg = template.vessels.segments
    ph.render_tubes(bshape, box_origin, sp, vn[seg[:, 0]], vn[seg[:, 1]],
                    template.vessels.radii[:, 0] * scale_r, template.vessels.radii[:, 1] * scale_r,
                    vessel)
    jit = rng.normal(0.0, 0.5 * s * prm.tree_jitter, template.airways.nodes.shape)
    jit[template.airways.fixed] = 0
    awn = _to_subject(template.airways.nodes + jit, prm)
    seg = template.airways.segments
    lumen_r = template.airways.radii * scale_r
    wall0 = 0.25 * lumen_r + 0.35 * s  # healthy wall thickness
    wall = wall0 * (1.0 + 1.6 * sev["airway"])
    outer_r = lumen_r + wall
    mean_r = outer_r.mean(1)
    inner_frac = (lumen_r.mean(1) / mean_r)
    band_frac = ((lumen_r + wall0).mean(1) / mean_r)
    aw_outer = np.zeros(bshape, dtype=F32)
    aw_lumen = np.zeros(bshape, dtype=F32)
    band = np.zeros(bshape, dtype=bool) if sev["airway"] > 0 else None
    ph.render_tubes(bshape, box_origin, sp, awn[seg[:, 0]], awn[seg[:, 1]], outer_r[:, 0],
                    outer_r[:, 1], aw_outer, aw_lumen, inner_frac, band,
                    band_frac if band is not None else None)
    # --- composite tubes (only where they are)
    def to_full(box_flat: np.ndarray) -> np.ndarray:
        iz, iy, ix = np.unravel_index(box_flat, bshape)
        return np.ravel_multi_index((iz + blo[2], iy + blo[1], ix + blo[0]), shape)

    dflat = disease.reshape(-1)
    vi = np.flatnonzero(vessel)
    occ = vessel.reshape(-1)[vi]
    vi = to_full(vi)
    hu_flat[vi] += (F32(ph.HU_VESSEL) - hu_flat[vi]) * occ
    dflat[vi[occ >= 0.5]] = 0
    ai = np.flatnonzero(aw_outer)
    occ = aw_outer.reshape(-1)[ai]
    occ_l = aw_lumen.reshape(-1)[ai]
    band_i = band.reshape(-1)[ai] if band is not None else None
    ai = to_full(ai)
    hu_flat[ai] += (F32(ph.HU_AIRWAY_WALL) - hu_flat[ai]) * occ
    dflat[ai[occ >= 0.5]] = 0
    hu_flat[ai] += (F32(ph.HU_AIR) - hu_flat[ai]) * occ_l
    if band_i is not None:
        dflat[ai[band_i]] = 4
    return hu, lungs, disease, origin


def _acquire(hu: np.ndarray, prm: _SubjectParams, spacing: float, rng: np.random.Generator
             ) -> np.ndarray:
    """Scanner model: calibration offset, noise shaped by the reconstruction kernel, blur
    in-plane by the kernel and along z by kernel plus slice profile. Returns int16 HU."""
    nz = prm.nuisance
    sig_xy = nz["blur_mm"] / spacing
    sig_z = math.hypot(nz["blur_mm"], nz["slice_thickness_mm"] / 2.3548) / spacing
    sigmas = (sig_z, sig_xy, sig_xy)
    # white noise added before the blur comes out with the kernel's correlation; scale it
    # so that the noise after the blur has the scanner's standard deviation
    gain = 1.0
    for sg in sigmas:
        delta = np.zeros(61)
        delta[30] = 1.0
        k = ndi.gaussian_filter1d(delta, sg, truncate=3.0, mode="constant")
        gain *= math.sqrt(float((k * k).sum()))
    noise = rng.standard_normal(hu.shape, dtype=F32)
    noise *= F32(nz["noise_hu"] / gain)
    hu += noise
    del noise
    hu += F32(nz["hu_offset"])
    out = ndi.gaussian_filter(hu, sigmas, truncate=3.0, mode="nearest")
    np.rint(out, out=out)
    np.clip(out, -1024, 3071, out=out)
    return out.astype(np.int16)


# ------------------------------------------------------------------------------- files
def _write_image(array: np.ndarray, origin: np.ndarray, spacing: float, path: Path,
                 level: int) -> None:
    img = sitk.GetImageFromArray(array)
    img.SetSpacing((spacing, spacing, spacing))
    img.SetOrigin(tuple(float(v) for v in origin))
    img.SetDirection((1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))
    # SimpleITK picks the writer from the suffix, so the temp name ends in ".nii.gz".
    atomic_write(path, lambda tmp: sitk.WriteImage(img, str(tmp), True, int(level)),
                 suffix=".tmp.nii.gz")


def _write_text(text: str, path: Path) -> None:
    atomic_write_text(path, text)


def _subject_paths(out_dir: Path, sid: str) -> dict[str, Path]:
    gt = out_dir / "ground_truth"
    return {"image": out_dir / "images" / f"{sid}.nii.gz",
            "disease": gt / f"{sid}_disease.nii.gz", "lungs": gt / f"{sid}_lungs.nii.gz",
            "transform": gt / f"{sid}_transform.json", "record": gt / f"{sid}_record.json"}


def _generate_subject(index: int, cfg: SyntheticConfig, template: _Template, out_dir: Path
                      ) -> dict[str, Any]:
    ss = np.random.SeedSequence([int(cfg.seed), int(index)])
    r_params, r_render, r_noise = (np.random.default_rng(c) for c in ss.spawn(3))
    prm = _draw_params(index, cfg, template, r_params)
    hu, lungs, disease, origin = _render_subject(prm, cfg, template, r_render)
    image = _acquire(hu, prm, cfg.spacing, r_noise)
    del hu
    in_lung = lungs > 0
    n_lung = int(in_lung.sum())
    voxel_ml = cfg.spacing**3 / 1000.0
    pct_emph = 100.0 * float((image[in_lung] < -950).sum()) / max(n_lung, 1)
    lab_in_lung = np.bincount(disease[in_lung], minlength=5)
    paths = _subject_paths(out_dir, prm.subject_id)
    _write_image(image, origin, cfg.spacing, paths["image"], cfg.compression_level)
    _write_image(disease, origin, cfg.spacing, paths["disease"], cfg.compression_level)
    _write_image(lungs, origin, cfg.spacing, paths["lungs"], cfg.compression_level)
    transform = {
        "A": prm.A.tolist(), "t": prm.t.tolist(),
        "convention": ("q = A @ p + t maps a template physical point p to this subject's "
                       "physical point q; both in mm, LPS (x toward Left, y toward "
                       "Posterior, z toward Superior), as SimpleITK physical coordinates "
                       "of the image in images/"),
        "rotation_deg_xyz": prm.rotation_deg.tolist(), "scale_xyz": prm.scale.tolist(),
        "size_scale": cfg.size_scale, "max_nonaffine_mm": 2.0,
        "template": f"drasclr_toolkit synthetic template v{GENERATOR_VERSION}",
    }
    _write_text(json.dumps(transform, indent=2), paths["transform"])
    clinical = _clinical(prm.severities, prm.clinical_noise, pct_emph)
    truth = {
        "subject_id": prm.subject_id,
        **{f"{k}_severity": round(v, 4) for k, v in prm.severities.items()},
        "healthy": all(v == 0 for v in prm.severities.values()),
        **{k: (round(v, 4) if isinstance(v, float) else v) for k, v in prm.nuisance.items()},
        "inspiration_hu": round(prm.inspiration_hu, 2),
        "lung_volume_ml": round(n_lung * voxel_ml, 1),
        "right_lung_ml": round(float((lungs == 1).sum()) * voxel_ml, 1),
        "left_lung_ml": round(float((lungs == 2).sum()) * voxel_ml, 1),
        "pct_centrilobular": round(100.0 * lab_in_lung[1] / max(n_lung, 1), 3),
        "pct_paraseptal": round(100.0 * lab_in_lung[2] / max(n_lung, 1), 3),
        "pct_panlobular": round(100.0 * lab_in_lung[3] / max(n_lung, 1), 3),
        "airway_wall_thickened_ml": round(float((disease == 4).sum()) * voxel_ml, 2),
        "laa950": round(pct_emph, 3),
        "scale": round(float(np.cbrt(np.linalg.det(prm.A))), 4),
        **{f"rotation_{a}_deg": round(float(v), 3) for a, v in zip("xyz", prm.rotation_deg)},
        **{f"translation_{a}_mm": round(float(v), 3) for a, v in zip("xyz", prm.t)},
        "size_x": image.shape[2], "size_y": image.shape[1], "size_z": image.shape[0],
        "spacing_mm": cfg.spacing,
    }
    record = {"subject_id": prm.subject_id, "config": cfg.fingerprint(),
              "clinical": clinical, "ground_truth": truth}
    _write_text(json.dumps(record, indent=1), paths["record"])
    return record


def _template_params(template: _Template) -> _SubjectParams:
    """The template itself as a healthy, noise-light subject with the identity pose."""
    zeros = {k: 0.0 for k in ("centrilobular", "paraseptal", "panlobular", "airway",
                              "small_airway")}
    nuisance = {"scanner": -1, "scanner_name": "template", "noise_hu": 5.0, "blur_mm": 0.5,
                "slice_thickness_mm": 1.0, "hu_offset": 0.0}
    warp = [(0.0, (0.0, 0.0, 0.0), (0.0, 0.0, 0.0))] * 3
    return _SubjectParams("template", np.eye(3), np.zeros(3), np.zeros(3), np.ones(3), warp,
                          template.anatomy, zeros, nuisance, {}, 0.0, tree_jitter=0.0)


def _write_template(cfg: SyntheticConfig, template: _Template, out_dir: Path) -> None:
    """``ground_truth/template.nii.gz`` (+ ``template_lungs``, identity ``template_transform``):
    the template as an image, so a registration to it can be checked against the stored
    affines directly (template physical space is the space of ``p`` in ``q = A p + t``)."""
    gt = out_dir / "ground_truth"
    paths = {"image": gt / "template.nii.gz", "lungs": gt / "template_lungs.nii.gz",
             "transform": gt / "template_transform.json"}
    if all(p.exists() for p in paths.values()):
        return
    prm = _template_params(template)
    rng = np.random.default_rng([int(cfg.seed), 2**31 - 1])
    hu, lungs, _, origin = _render_subject(prm, cfg, template, rng)
    image = _acquire(hu, prm, cfg.spacing, rng)
    _write_image(image, origin, cfg.spacing, paths["image"], cfg.compression_level)
    _write_image(lungs, origin, cfg.spacing, paths["lungs"], cfg.compression_level)
    _write_text(json.dumps({"A": np.eye(3).tolist(), "t": [0.0, 0.0, 0.0],
                            "convention": "identity: this image is the template space"},
                           indent=2), paths["transform"])


def _worker(args: tuple) -> tuple[int, dict[str, Any] | None, str | None]:
    index, cfg, template, out_dir = args
    try:
        return index, _generate_subject(index, cfg, template, out_dir), None
    except Exception as exc:  # one failed subject never stops the cohort
        log.exception("synthetic subject syn%03d failed", index)
        return index, None, f"{type(exc).__name__}: {exc}"


def _load_record(path: Path, cfg: SyntheticConfig) -> dict[str, Any] | None:
    """A finished subject's record, or None when it must be (re)generated."""
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if record.get("config") != json.loads(json.dumps(cfg.fingerprint())):
        raise InputError(
            f"subject {record.get('subject_id')}: {path} was generated with other options "
            f"({record.get('config')}) than now ({cfg.fingerprint()}); use a new out_dir "
            "or delete the old cohort"
        )
    return record


# ------------------------------------------------------------------------------ public
# What a synthetic cohort folder holds (an interrupted run may hold only some of it).
_COHORT_TOP = {"images", "ground_truth", "manifest.csv", "dataset_card.yaml", "ground_truth.csv"}
_COHORT_FILE = re.compile(r"^(syn\d{3}(\.nii\.gz|_disease\.nii\.gz|_lungs\.nii\.gz|"
                          r"_transform\.json|_record\.json)|template(_lungs)?\.nii\.gz|"
                          r"template_transform\.json|\..*\.tmp(\..*)?)$")


def check_out_folder(out: str | Path, config: Any, force: bool = False) -> None:
    """Refuse to write a cohort into a folder holding files that are not one.

    Allowed: a missing or empty folder, a folder with a finished synthetic cohort made with
    the same options (its dataset card says so; it is reused or extended), and the files of
    an interrupted synthetic run. Anything else raises OutputExistsError (a FileExistsError) unless ``force``.

    Example:
        >>> import tempfile
        >>> d = Path(tempfile.mkdtemp())
        >>> _ = (d / "manifest.csv").write_text("subject_id,image\\nmine,scans/mine.nii.gz\\n")
        >>> check_out_folder(d, SyntheticConfig())
        Traceback (most recent call last):
        ...
        drasclr_toolkit.errors.OutputExistsError: ...
    """
    out = Path(out).expanduser()
    if force or not out.exists():
        return
    if not out.is_dir():
        raise OutputExistsError(f"--out {out} is a file; give a folder for the cohort")
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
            raise OutputExistsError(
                f"--out {out} holds a synthetic cohort made with other options ({differ})",
                where=f"file {card_path}, field 'options'",
                fix="use a new --out folder, the same options, or --force (overwrite=True in "
                "Python) to overwrite it")
    foreign = [name for name in entries if name not in _COHORT_TOP]
    for sub in ("images", "ground_truth"):
        if (out / sub).is_dir():
            foreign += [f"{sub}/{p.name}" for p in sorted((out / sub).iterdir())
                        if not _COHORT_FILE.match(p.name)]
    if card_path.is_file() or (out / "manifest.csv").exists():
        foreign += [name for name in ("manifest.csv", "dataset_card.yaml") if (out / name).exists()]
    if foreign:
        shown = ", ".join(foreign[:5]) + (f", … ({len(foreign) - 5} more)" if len(foreign) > 5 else "")
        raise OutputExistsError(
            f"--out {out} already holds files that are not a synthetic cohort ({shown}); "
            "`drasclr synthetic` writes manifest.csv, dataset_card.yaml, ground_truth.csv and "
            "images/ there and would overwrite yours",
            fix="choose a new or empty folder, or pass --force (overwrite=True in Python) to "
            "write into it anyway")


def make_synthetic_cohort(n_subjects: int, out_dir: str | os.PathLike, seed: int = 0,
                          spacing: float = 1.5, size_scale: float = 1.0,
                          n_jobs: int | None = None, config: SyntheticConfig | None = None,
                          overwrite: bool = False, **options: Any):
    """Generate (or finish) a synthetic cohort in ``out_dir`` and return its Manifest.

    Deterministic given ``seed`` (subject k uses a seed derived from ``(seed, k)``, so the
    result does not depend on ``n_jobs``); subjects whose files exist are skipped, so an
    interrupted run resumes. ``options`` are further :class:`SyntheticConfig` fields;
    ``config`` replaces all keyword options at once. A folder holding files that are not
    a synthetic cohort of the same options is refused unless ``overwrite=True``.

    >>> import tempfile
    >>> m = make_synthetic_cohort(1, tempfile.mkdtemp(), spacing=3.0, size_scale=0.4)
    >>> m.subject_ids
    ['syn000']
    """
    if config is None:
        config = SyntheticConfig.from_dict(dict(seed=seed, spacing=spacing,
                                                size_scale=size_scale, n_jobs=n_jobs, **options))
    if int(n_subjects) < 1:
        raise InputError(f"make_synthetic_cohort: n_subjects={n_subjects}; ask for at least 1")
    # A folder holding the user's files is refused (overwrite=True writes anyway).
    check_out_folder(out_dir, config, force=overwrite)
    out = Path(out_dir).expanduser().resolve()
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "ground_truth").mkdir(parents=True, exist_ok=True)
    records: dict[int, dict[str, Any]] = {}
    todo = []
    for i in range(int(n_subjects)):
        paths = _subject_paths(out, f"syn{i:03d}")
        rec = _load_record(paths["record"], config) if paths["record"].exists() else None
        if rec is not None and all(paths[k].exists() for k in ("image", "disease", "lungs",
                                                                 "transform")):
            records[i] = rec
        else:
            todo.append(i)
    failures: dict[str, str] = {}
    if todo:
        template = build_template(config.size_scale, config.spacing)
        jobs = config.n_jobs or _available_cores()
        jobs = max(1, min(int(jobs), len(todo)))
        log.info("synthetic cohort: generating %d of %d subjects in %s with %d process(es)",
                 len(todo), n_subjects, out, jobs)
        tasks = [(i, config, template, out) for i in todo]
        if jobs == 1:
            results = map(_worker, tasks)
        else:
            pool = ProcessPoolExecutor(max_workers=jobs, initializer=die_with_parent)
            results = pool.map(_worker, tasks)
        try:
            # the workers are busy with the subjects meanwhile (map submits them all at once)
            try:
                _write_template(config, template, out)
            except Exception:  # the template is a convenience; the cohort goes on
                log.exception("synthetic cohort %s: writing the template image failed", out)
            for i, rec, err in results:
                if rec is not None:
                    records[i] = rec
                else:
                    failures[f"syn{i:03d}"] = err or "unknown error"
        finally:
            if jobs > 1:
                pool.shutdown()
    for sid, err in failures.items():
        log.error("synthetic subject %s failed (%s); the cohort goes on without it", sid, err)
    if not records:
        raise RuntimeError(f"synthetic cohort in {out}: every subject failed: {failures}")
    _write_tables(out, [records[i] for i in sorted(records)], config, failures)
    return _load_manifest(out / "manifest.csv")


def _available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _write_tables(out: Path, records: list[dict[str, Any]], cfg: SyntheticConfig,
                  failures: Mapping[str, str]) -> None:
    rows = []
    for rec in records:
        sid = rec["subject_id"]
        rows.append({"subject_id": sid, "image": f"images/{sid}.nii.gz", "lung_mask": "",
                     **rec["clinical"]})
    manifest = pd.DataFrame(rows, columns=list(MANIFEST_COLUMNS))
    truth = pd.DataFrame([rec["ground_truth"] for rec in records])
    _write_text(truth.to_csv(index=False), out / "ground_truth.csv")
    _write_text(yaml.safe_dump(_dataset_card(cfg, len(records), failures), sort_keys=False),
                out / "dataset_card.yaml")
    _write_text(manifest.to_csv(index=False), out / "manifest.csv")


def _dataset_card(cfg: SyntheticConfig, n: int, failures: Mapping[str, str]) -> dict[str, Any]:
    return {
        "name": "drasclr synthetic lung-CT cohort",
        "description": (
            "Phantom chest CT scans in HU (int16 NIfTI, identity direction, LPS) with ground "
            "truth: lung masks, disease maps, the template-to-subject affine, severities and "
            "nuisance parameters (ground_truth.csv). Clinical labels are derived from the "
            "severities with noise; a hidden small-airway severity affects spirometry only."
        ),
        "source": "synthetic",
        "generator": f"drasclr_toolkit.datasets.synthetic v{GENERATOR_VERSION}",
        "n_subjects": n,
        "options": cfg.fingerprint(),
        "spacing_mm": [cfg.spacing] * 3,
        "columns": {name: {"description": text} for name, text in {
            "subject_id": "synNNN",
            "image": "CT in HU, relative to this folder",
            "lung_mask": "empty: preprocessing segments the lungs (true masks are in ground_truth/)",
            "fev1_pp": "FEV1 % predicted",
            "fev1_fvc": "FEV1/FVC ratio",
            "gold": "GOLD grade from the spirometry rule (0 when FEV1/FVC >= 0.70)",
            "pct_emphysema": "% of the true lung mask below -950 HU on the image (LAA-950)",
            "cle_score": "visual centrilobular emphysema grade 0-5 (rater noise)",
            "pse_score": "visual paraseptal emphysema grade 0-2 (rater noise)",
            "mmrc": "mMRC dyspnoea score 0-4",
            "time": "years to death or censoring",
            "event": "1 death observed, 0 censored",
        }.items()},
        "disease_labels": {int(k): v for k, v in DISEASE_LABELS.items()},
        "lung_labels": {0: "outside", 1: "right lung", 2: "left lung"},
        "transform": "ground_truth/<sid>_transform.json: q = A p + t, template p to subject q (mm, LPS)",
        "failed_subjects": dict(failures),
    }


def _load_manifest(path: Path):
    from drasclr_toolkit.data.manifest import Manifest

    return Manifest.load(path)
