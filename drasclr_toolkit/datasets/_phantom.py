"""Geometry of the synthetic chest phantom (helpers of :mod:`drasclr_toolkit.datasets.synthetic`).

Everything here is evaluated in *template* physical space: millimetres, LPS (x toward the
patient's Left, y toward Posterior, z toward Superior), origin near the carina. The adult
template (``size_scale=1``) holds about 5 L of lung; ``Anatomy.scaled`` shrinks it.

Shapes are implicit functions evaluated on arrays of template coordinates, so the same
code draws the template point cloud (to grow the bronchial and vascular trees) and every
subject's voxels (through the subject's inverse affine). Tubes (airways, vessels) are
rendered directly on the subject grid, segment by segment, inside bounded sub-boxes.

Example
-------
>>> import numpy as np
>>> an = Anatomy().scaled(0.5)
>>> lungs = lung_labels(np.float32([-35.0, 35.0]), np.float32([10.0, 10.0]),
...                     np.float32([0.0, 0.0]), an)
>>> lungs.tolist()
[1, 2]
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import numpy as np

F32 = np.float32

# Hounsfield units of the tissues (chest CT, typical values).
HU_AIR = -1000.0
HU_FAT = -100.0
HU_MUSCLE = 40.0
HU_MEDIASTINUM = 15.0
HU_HEART = 45.0
HU_BONE = 700.0
HU_MARROW = 250.0
HU_DISC = 90.0
HU_CSF = 10.0
HU_PARENCHYMA = -850.0
HU_VESSEL = 40.0
HU_AIRWAY_WALL = 60.0


@dataclass(frozen=True)
class Anatomy:
    """Shape parameters of the template chest, in template millimetres (adult size).

    Per-subject shape variation replaces a few of these (dome heights, apex heights,
    heart size) by at most a few millimetres; size and pose vary through the affine.
    """

    # body and chest wall: concentric ellipses centred at (0, y0)
    y0: float = 5.0
    body_a: float = 172.0
    body_b: float = 127.0
    fat_t: float = 14.0  # subcutaneous fat thickness
    rib_a: float = 150.0  # outer boundary of the rib layer
    rib_b: float = 103.0
    cav_a: float = 139.0  # pleural cavity
    cav_b: float = 93.0
    rib_pitch: float = 24.0
    rib_height: float = 9.0
    rib_slope: float = 22.0  # anterior ends lower by this much (mm)
    rib_z0: float = -132.0
    # lungs
    med_half: float = 10.0  # half width of the mediastinal gap
    apex_x: float = 78.0  # |x| of each apex dome centre
    apex_y: float = 18.0
    apex_rx: float = 61.0
    apex_ry: float = 84.0
    apex_z0: float = 40.0  # the apex dome starts here
    apex_top_r: float = 125.0
    apex_top_l: float = 122.0
    dome_r: float = -72.0  # diaphragm peaks (right dome higher: the liver)
    dome_l: float = -84.0
    dome_x: float = 70.0
    dome_y: float = -15.0
    dome_kx: float = 0.010
    dome_ky: float = 0.0045
    floor_z: float = -150.0  # deepest costophrenic recess
    heart_x: float = 18.0
    heart_y: float = -22.0
    heart_z: float = -62.0
    heart_a: float = 68.0
    heart_b: float = 52.0
    heart_c: float = 58.0
    heart_margin: float = 4.0
    spine_y: float = 68.0  # paravertebral exclusion (lungs wrap around the spine)
    spine_a: float = 30.0
    spine_b: float = 34.0
    vert_y: float = 62.0  # vertebral body
    vert_r: float = 19.0
    canal_y: float = 92.0
    canal_r: float = 8.0
    disc_pitch: float = 28.0
    supmed_y: float = 5.0  # superior mediastinum (great vessels, trachea)
    supmed_a: float = 26.0
    supmed_b: float = 50.0
    supmed_z: float = -20.0
    esoph_y: float = 30.0
    esoph_a: float = 16.0
    esoph_b: float = 20.0
    aorta_x: float = 24.0
    aorta_y: float = 45.0
    aorta_r: float = 13.0
    aorta_top: float = 25.0
    # airways
    trachea_top: tuple = (0.0, 5.0, 150.0)
    carina: tuple = (0.0, 12.0, 28.0)
    trachea_r: float = 8.5
    # vessel roots (right; left mirrored in x)
    artery_root: tuple = (-36.0, 6.0, 14.0)
    vein_root: tuple = (-28.0, 22.0, -32.0)
    vessel_root_r: float = 8.5

    def scaled(self, s: float) -> "Anatomy":
        """The same anatomy with every length multiplied by ``s`` (curvatures by 1/s)."""
        changes = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name in ("dome_kx", "dome_ky"):
                changes[f.name] = v / s
            elif isinstance(v, tuple):
                changes[f.name] = tuple(c * s for c in v)
            else:
                changes[f.name] = v * s
        return replace(self, **changes)

    @property
    def z_low(self) -> float:
        return self.floor_z

    @property
    def z_high(self) -> float:
        return max(self.apex_top_r, self.apex_top_l)


def _rho2(x2: np.ndarray, y2: np.ndarray, a: float, b: float) -> np.ndarray:
    """Squared normalised radius of a centred ellipse; <= 1 inside."""
    return x2 * F32(1.0 / a**2) + y2 * F32(1.0 / b**2)


def lung_labels(px: np.ndarray, py: np.ndarray, pz: np.ndarray, an: Anatomy) -> np.ndarray:
    """True lung labels at template points: 0 outside, 1 right lung, 2 left lung."""
    x2 = px * px
    yc = py - F32(an.y0)
    inside = _rho2(x2, yc * yc, an.cav_a, an.cav_b) <= 1.0
    # apex domes and the diaphragm (each side its own)
    zcap = np.maximum(pz - F32(an.apex_z0), F32(0.0))
    ax = np.abs(px)
    dy_apex = (py - F32(an.apex_y)) * F32(1.0 / an.apex_ry)
    dxa2 = ((ax - F32(an.apex_x)) * F32(1.0 / an.apex_rx)) ** 2 + dy_apex * dy_apex
    right = px < 0
    top = np.where(right, F32(an.apex_top_r - an.apex_z0), F32(an.apex_top_l - an.apex_z0))
    inside &= dxa2 + (zcap / top) ** 2 <= 1.0
    peak = np.where(right, F32(an.dome_r), F32(an.dome_l))
    dome = peak - F32(an.dome_kx) * (ax - F32(an.dome_x)) ** 2 \
        - F32(an.dome_ky) * (py - F32(an.dome_y)) ** 2
    inside &= pz > np.maximum(dome, F32(an.floor_z))
    # mediastinum: gap, spine, oesophagus, superior mediastinum, aorta, heart
    inside &= ax > F32(an.med_half)
    inside &= _rho2(x2, (py - F32(an.spine_y)) ** 2, an.spine_a, an.spine_b) > 1.0
    inside &= _rho2(x2, (py - F32(an.esoph_y)) ** 2, an.esoph_a, an.esoph_b) > 1.0
    inside &= (_rho2(x2, (py - F32(an.supmed_y)) ** 2, an.supmed_a, an.supmed_b) > 1.0) \
        | (pz < F32(an.supmed_z))
    inside &= ((px - F32(an.aorta_x)) ** 2 + (py - F32(an.aorta_y)) ** 2 > F32(an.aorta_r**2)) \
        | (pz > F32(an.aorta_top))
    m = an.heart_margin
    heart = ((px - F32(an.heart_x)) * F32(1 / (an.heart_a + m))) ** 2 \
        + ((py - F32(an.heart_y)) * F32(1 / (an.heart_b + m))) ** 2 \
        + ((pz - F32(an.heart_z)) * F32(1 / (an.heart_c + m))) ** 2
    inside &= heart > 1.0
    labels = np.zeros(px.shape, dtype=np.uint8)
    labels[inside & right] = 1
    labels[inside & ~right] = 2
    return labels


def tissue_hu(px: np.ndarray, py: np.ndarray, pz: np.ndarray, an: Anatomy) -> np.ndarray:
    """HU of everything but the lungs and tubes: air, fat, muscle, bone, mediastinum, heart."""
    x2 = px * px
    yc = py - F32(an.y0)
    y2 = yc * yc
    hu = np.full(px.shape, HU_AIR, dtype=F32)
    np.putmask(hu, _rho2(x2, y2, an.body_a, an.body_b) <= 1.0, F32(HU_FAT))
    np.putmask(hu, _rho2(x2, y2, an.body_a - an.fat_t, an.body_b - an.fat_t) <= 1.0,
               F32(HU_MUSCLE))
    cavity = _rho2(x2, y2, an.cav_a, an.cav_b) <= 1.0
    ring = (_rho2(x2, y2, an.rib_a, an.rib_b) <= 1.0) & ~cavity
    np.putmask(hu, cavity, F32(HU_MEDIASTINUM))
    flat = hu.reshape(-1)
    # ribs: periodic bands in a sloping z coordinate, interrupted at the sternum
    idx = np.flatnonzero(ring)
    rx, ry, rz = px.reshape(-1)[idx], yc.reshape(-1)[idx], pz.reshape(-1)[idx]
    zr = rz - F32(an.rib_slope / an.cav_b) * ry - F32(an.rib_z0)
    phase = np.mod(zr, F32(an.rib_pitch))
    anterior_mid = (np.abs(rx) < F32(0.15 * an.cav_a)) & (ry < 0)
    rib = (phase < F32(an.rib_height)) & (zr > 0) & (rz < F32(an.apex_top_l)) & ~anterior_mid
    sternum = anterior_mid & (np.abs(rx) < F32(0.12 * an.cav_a)) \
        & (rz > F32(an.heart_z - 0.5 * an.heart_c)) & (rz < F32(an.apex_z0 + 0.4 * (an.apex_top_l - an.apex_z0)))
    flat[idx[rib | sternum]] = F32(HU_BONE)
    # heart (only where it can be: a cheap box test first)
    hb = np.flatnonzero(np.abs(pz - F32(an.heart_z)) < F32(an.heart_c))
    hx = px.reshape(-1)[hb] - F32(an.heart_x)
    hy = py.reshape(-1)[hb] - F32(an.heart_y)
    hz = pz.reshape(-1)[hb] - F32(an.heart_z)
    e = (hx / F32(an.heart_a)) ** 2 + (hy / F32(an.heart_b)) ** 2 + (hz / F32(an.heart_c)) ** 2
    flat[hb[e <= 1.0]] = F32(HU_HEART)
    # spine: vertebral bodies with cortical rim and discs, canal, posterior arch
    sp = np.flatnonzero((np.abs(px) < F32(an.vert_r * 1.8)) & (py > F32(an.vert_y - an.vert_r)))
    sx = px.reshape(-1)[sp]
    sy = py.reshape(-1)[sp]
    sz = pz.reshape(-1)[sp]
    dv = np.sqrt(sx * sx + (sy - F32(an.vert_y)) ** 2)
    dc = np.sqrt(sx * sx + (sy - F32(an.canal_y)) ** 2)
    body = dv <= F32(an.vert_r)
    disc = np.mod(sz, F32(an.disc_pitch)) < F32(0.18 * an.disc_pitch)
    vals = flat[sp]
    vals = np.where(body, np.where(dv > F32(an.vert_r - 2.0), F32(HU_BONE), F32(HU_MARROW)), vals)
    vals = np.where(body & disc, F32(HU_DISC), vals)
    arch = (dc > F32(an.canal_r)) & (dc <= F32(an.canal_r * 1.8)) & ~disc
    vals = np.where(arch, F32(HU_BONE), vals)
    vals = np.where(dc <= F32(an.canal_r), F32(HU_CSF), vals)
    flat[sp] = vals
    return hu


# --------------------------------------------------------------------------- trees
@dataclass
class Tree:
    """Tubes as segments between nodes: ``nodes`` (n, 3) template mm; ``segments`` (m, 2)
    node indices (start, end); ``radii`` (m, 2) radius at start and end; ``fixed`` (n,)
    nodes that never move (roots)."""

    nodes: np.ndarray
    segments: np.ndarray
    radii: np.ndarray
    fixed: np.ndarray


def grow_tree(roots: list[tuple[np.ndarray, np.ndarray, float]], r_min: float,
              min_points: int = 6, frac: float = 0.45) -> Tree:
    """Grow a space-filling tree: each branch heads toward the centroid of the lung region it
    supplies, then the region splits in two across its longest axis (volume-filling
    branching); radii follow Murray's law, r ∝ (points supplied)^(1/3), so tubes taper
    toward the periphery.

    ``roots``: (start point, (k, 3) points of the region it supplies, start radius).
    """
    nodes: list[np.ndarray] = []
    fixed: list[bool] = []
    segs: list[tuple[int, int]] = []
    radii: list[tuple[float, float]] = []

    def add_node(p: np.ndarray, is_fixed: bool) -> int:
        nodes.append(np.asarray(p, dtype=np.float64))
        fixed.append(is_fixed)
        return len(nodes) - 1

    for start, pts, r0 in roots:
        stack = [(add_node(start, True), pts, float(r0))]
        while stack:
            i0, region, r = stack.pop()
            c = region.mean(axis=0)
            end = nodes[i0] + frac * (c - nodes[i0])
            n = len(region)
            if n < 2 * min_points or r < r_min * 1.2:
                # last branch reaches into its region
                end = nodes[i0] + 0.8 * (c - nodes[i0])
                i1 = add_node(end, False)
                segs.append((i0, i1))
                radii.append((r, max(r * 0.8, r_min)))
                continue
            i1 = add_node(end, False)
            segs.append((i0, i1))
            # split across the principal axis
            centred = region - c
            w, v = np.linalg.eigh(centred.T @ centred)
            side = centred @ v[:, -1] > 0
            parts = [region[side], region[~side]]
            r_end = r * 0.92
            radii.append((r, r_end))
            for part in parts:
                if len(part) < min_points:
                    continue
                rc = r_end * (len(part) / n) ** (1.0 / 3.0)
                if rc >= r_min:
                    stack.append((i1, part, rc))
    return Tree(np.array(nodes, dtype=np.float64), np.array(segs, dtype=np.int64).reshape(-1, 2),
                np.array(radii, dtype=np.float64).reshape(-1, 2), np.array(fixed, dtype=bool))


def render_tubes(shape: tuple[int, int, int], origin: np.ndarray, spacing: float,
                 starts: np.ndarray, ends: np.ndarray, r_start: np.ndarray, r_end: np.ndarray,
                 outer: np.ndarray, inner: np.ndarray | None = None,
                 inner_frac: np.ndarray | None = None, band: np.ndarray | None = None,
                 band_frac: np.ndarray | None = None) -> None:
    """Draw tapered tubes into partial-volume occupancy arrays (max-combined, in place).

    Segment k runs from ``starts[k]`` to ``ends[k]`` (subject mm, x y z) with outer radius
    ``r_start[k]`` → ``r_end[k]``. ``outer`` gets the occupancy of the tube; ``inner`` (if
    given) that of a concentric tube of radius ``inner_frac[k] * r`` (an airway lumen inside
    its wall); ``band`` (bool) marks voxel centres with ``band_frac[k]*r < d <= r`` (the
    thickened outer part of an airway wall). Arrays are (z, y, x) on the grid ``origin`` +
    index * ``spacing``; each segment touches only its own bounding sub-box.
    """
    nz, ny, nx = shape
    hi_idx = np.array([nx, ny, nz])
    inv_sp = 1.0 / spacing
    axes = [(origin[i] + spacing * np.arange(n)).astype(np.float64) for i, n in
            enumerate((nx, ny, nz))]
    seg_lo = np.minimum(starts, ends) - (np.maximum(r_start, r_end) + spacing)[:, None]
    seg_hi = np.maximum(starts, ends) + (np.maximum(r_start, r_end) + spacing)[:, None]
    los = np.maximum(np.floor((seg_lo - origin) * inv_sp).astype(int), 0)
    his = np.minimum(np.ceil((seg_hi - origin) * inv_sp).astype(int) + 1, hi_idx)
    sp32 = F32(inv_sp)
    half = F32(0.5)
    for k in np.flatnonzero(np.all(his > los, axis=1)):
        a = starts[k]
        ab = ends[k] - a
        lo, hi = los[k], his[k]
        ra, rb = r_start[k], r_end[k]
        l2 = float(ab @ ab) or 1e-12
        xs = (axes[0][lo[0]:hi[0]] - a[0]).astype(F32)
        ys = (axes[1][lo[1]:hi[1]] - a[1]).astype(F32)
        zs = (axes[2][lo[2]:hi[2]] - a[2]).astype(F32)
        u = ab / l2
        t = (zs * F32(u[2]))[:, None, None] + ((ys * F32(u[1]))[:, None] + xs * F32(u[0]))
        np.minimum(t, F32(1.0), out=t)
        np.maximum(t, F32(0.0), out=t)
        w = zs[:, None, None] - t * F32(ab[2])
        d2 = w * w
        w = ys[None, :, None] - t * F32(ab[1])
        d2 += w * w
        w = xs[None, None, :] - t * F32(ab[0])
        d2 += w * w
        d = np.sqrt(d2, out=d2)
        r = t * F32(rb - ra)
        r += F32(ra)
        box = (slice(lo[2], hi[2]), slice(lo[1], hi[1]), slice(lo[0], hi[0]))
        occ = (r - d) * sp32
        occ += half
        np.minimum(occ, F32(1.0), out=occ)
        np.maximum(outer[box], occ, out=outer[box])
        if inner is not None:
            occ = (r * F32(inner_frac[k]) - d) * sp32
            occ += half
            np.minimum(occ, F32(1.0), out=occ)
            np.maximum(inner[box], occ, out=inner[box])
        if band is not None:
            band[box] |= (d > r * F32(band_frac[k])) & (d <= r)
