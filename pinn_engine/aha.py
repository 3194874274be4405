"""AHA 16/17-segment assignment of the LV myocardium on a short-axis stack.

Convention (see docs/aha-segments.md): 60-degree (basal, mid) and 90-degree (apical)
sectors start at the anterior RV insertion point and run into the septum; slice levels
are thirds of the LV long axis covered by slices with a complete myocardial ring; an
apical cap beyond the cavity is segment 17. Orientation comes from the DICOM geometry,
so rotation and mirroring of the images do not change the segment identities.

Inputs are label maps (``pinn_engine.segmentation.Label``: LV blood pool, LV myocardium,
RV blood pool) with their geometry; outputs are a per-pixel AHA label map and per-slice
quality flags.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from pinn_engine.segmentation.labels import Label

ANTERIOR_LPS = np.array([0.0, -1.0, 0.0])
APEX_DIRECTION_LPS = np.array([1.0, -1.0, -1.0]) / np.sqrt(3.0)  # patient left, anterior, inferior


def toward_apex(normal: np.ndarray) -> np.ndarray:
    """A slice plane's normal as a unit vector pointing base -> apex (towards patient
    left/anterior/inferior), whichever sign it was given with."""
    n = np.asarray(normal, dtype=float)
    length = np.linalg.norm(n)
    if not length > 1e-6:
        raise ValueError("image orientation has parallel or zero row and column directions")
    n = n / length
    return -n if n @ APEX_DIRECTION_LPS < 0 else n


def apex_normal(row_cosine: np.ndarray, column_cosine: np.ndarray) -> np.ndarray:
    """Unit normal of a slice plane pointing base -> apex, whichever handedness the images are stored with."""
    return toward_apex(np.cross(np.asarray(row_cosine, float), np.asarray(column_cosine, float)))


# 60-degree sectors from the anterior insertion point into the septum
_SIX = (2, 3, 4, 5, 6, 1)

CONVENTIONS = ("anterior-ip", "septal-bisector")


@dataclass(frozen=True)
class SliceGeometry:
    """In-plane geometry of one slice (from DICOM ImageOrientationPatient/PixelSpacing/IPP)."""

    row_cosine: np.ndarray  # direction of increasing column index (LPS)
    column_cosine: np.ndarray  # direction of increasing row index (LPS)
    pixel_spacing_mm: tuple[float, float]  # (between rows, between columns)
    position_mm: np.ndarray  # ImagePositionPatient

    @property
    def normal(self) -> np.ndarray:
        return np.cross(self.row_cosine, self.column_cosine)

    @property
    def orientation(self) -> tuple[np.ndarray, np.ndarray]:
        """(row cosine, column cosine): what the segmenter needs to see the slice in the display frame."""
        return self.row_cosine, self.column_cosine


@dataclass
class SliceAHA:
    level: str | None  # basal | mid | apical | apex | None (not used)
    anterior_ip: tuple[float, float] | None  # (row, col)
    inferior_ip: tuple[float, float] | None
    septal_arc_deg: float | None
    flags: list[str] = field(default_factory=list)
    myocardium_pixels: int = 0
    mean_thickness_mm: float | None = None


@dataclass
class AHAResult:
    labels: np.ndarray  # (slices, H, W) uint8: 0, or the AHA segment 1..17
    slices: list[SliceAHA]
    convention: str

    def segments_present(self) -> list[int]:
        return sorted(int(s) for s in np.unique(self.labels) if s)


def _largest(mask: np.ndarray) -> np.ndarray:
    lab, n = ndimage.label(mask)
    if n == 0:
        return mask & False
    sizes = ndimage.sum(mask, lab, index=np.arange(1, n + 1))
    return lab == (int(np.argmax(sizes)) + 1)


def closed_ring(labels: np.ndarray) -> bool:
    """True if the LV cavity is enclosed by myocardium (a complete ring)."""
    lv = _largest(labels == Label.LV_BLOOD_POOL)
    if not lv.any() or not (labels == Label.MYOCARDIUM).any():
        return False
    outside = ~(labels == Label.MYOCARDIUM)
    comp, _ = ndimage.label(outside)
    cavity_ids = np.unique(comp[lv])
    cavity = np.isin(comp, cavity_ids[cavity_ids > 0])
    border = np.zeros_like(cavity)
    border[0, :] = border[-1, :] = border[:, 0] = border[:, -1] = True
    return not (cavity & border).any() and not (cavity & (labels == Label.RV_BLOOD_POOL)).any()


def _physical(rows: np.ndarray, cols: np.ndarray, geom: SliceGeometry) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) in mm along the row and column cosines."""
    dr, dc = geom.pixel_spacing_mm
    return cols * dc, rows * dr


def insertion_points(labels: np.ndarray, geom: SliceGeometry) -> tuple | None:
    """(anterior IP, inferior IP, centre, sense) of one slice, or None without an RV contact.

    IPs are the two ends of the LV epicardial arc that touches the RV; 'sense' (+1/-1) is
    the rotation (in the x/y mm frame) that leads from the anterior IP into the septum.
    """
    lv_myo = _largest((labels == Label.LV_BLOOD_POOL) | (labels == Label.MYOCARDIUM))
    if not lv_myo.any():
        return None
    epi = ndimage.binary_fill_holes(lv_myo)
    rv = _largest(labels == Label.RV_BLOOD_POOL)
    if rv.sum() < 5:
        return None
    boundary = epi & ~ndimage.binary_erosion(epi)
    touch = None
    for width in range(2, 9):
        t = boundary & ndimage.binary_dilation(rv, iterations=width)
        if t.sum() >= 3:
            touch = t
            break
    if touch is None:
        return None
    cr, cc = ndimage.center_of_mass(epi)
    tr, tc = np.nonzero(touch)
    x, y = _physical(tr - cr, tc - cc, geom)
    ang = np.sort(np.arctan2(y, x))
    gaps = np.diff(np.concatenate([ang, ang[:1] + 2 * np.pi]))
    k = int(np.argmax(gaps))  # widest gap = the free wall between the two insertion points
    a1, a2 = ang[k], ang[(k + 1) % ang.size]
    # the septal arc runs from a2 to a1 through the touching pixels
    anterior = np.array([geom.row_cosine @ ANTERIOR_LPS, geom.column_cosine @ ANTERIOR_LPS])
    p1 = np.array([np.cos(a1), np.sin(a1)])
    p2 = np.array([np.cos(a2), np.sin(a2)])
    # within the touching arc (from a2 counter-clockwise to a1), the rotation from the anterior IP into the septum
    if p1 @ anterior >= p2 @ anterior:
        ant, inf, sense = a1, a2, -1.0  # from a1 into the arc = clockwise
    else:
        ant, inf, sense = a2, a1, 1.0
    dr, dc = geom.pixel_spacing_mm

    def to_pixel(a: float) -> tuple[float, float]:
        # the epicardial contact pixel closest to this angle
        i = int(np.argmin(np.abs(np.angle(np.exp(1j * (np.arctan2(y, x) - a))))))
        return float(tr[i]), float(tc[i])

    return to_pixel(ant), to_pixel(inf), (cr, cc), sense, ant, inf


def _slice_levels(ring: list[bool], positions: np.ndarray) -> list[str | None]:
    """basal/mid/apical by thirds of the long-axis extent covered by ring slices.

    ``positions`` are along the long axis, increasing towards the apex. With slice centres
    p_k and mean spacing d, u_k = (p_k - p_first + d/2) / (p_last - p_first + d); u < 1/3
    basal, < 2/3 mid, else apical (1 slice: mid; 2: basal + apical; 3: one of each).
    """
    idx = [i for i, r in enumerate(ring) if r]
    levels: list[str | None] = [None] * len(ring)
    if not idx:
        return levels
    if len(idx) == 1:
        levels[idx[0]] = "mid"
        return levels
    p = positions[idx]
    d = float(np.mean(np.diff(np.sort(p))))
    for i in idx:
        u = (positions[i] - p.min() + d / 2) / (p.max() - p.min() + d)
        levels[i] = "basal" if u < 1 / 3 else "mid" if u < 2 / 3 else "apical"
    return levels


def assign_aha(
    labels: np.ndarray,
    geometry: list[SliceGeometry],
    convention: str = "anterior-ip",
    min_segment_pixels: int = 10,
    rotation_deg: float = 0.0,
) -> AHAResult:
    """AHA segments for a stack of label maps (slices, H, W) with per-slice geometry.

    ``rotation_deg`` turns every sector boundary by that angle (in the direction of the
    segment numbering): how much a segment's value depends on where its insertion point was
    found (``pinn_engine.t2.segments``)."""
    if convention not in CONVENTIONS:
        raise ValueError(f"convention must be one of {CONVENTIONS}")
    labels = np.asarray(labels)
    if labels.ndim != 3 or len(geometry) != labels.shape[0]:
        raise ValueError("labels must be (slices, H, W) with one SliceGeometry per slice")
    n = labels.shape[0]
    normal = apex_normal(*geometry[0].orientation)
    along = np.array([g.position_mm @ normal for g in geometry])
    ring = [closed_ring(labels[s]) for s in range(n)]
    levels = _slice_levels(ring, along)
    infos = [SliceAHA(level=levels[s], anterior_ip=None, inferior_ip=None, septal_arc_deg=None) for s in range(n)]

    # apical cap: myocardium without cavity beyond the most apical ring slice
    ring_pos = [along[s] for s in range(n) if ring[s]]
    for s in range(n):
        myo = labels[s] == Label.MYOCARDIUM
        infos[s].myocardium_pixels = int(myo.sum())
        if not ring[s]:
            if myo.any() and not (labels[s] == Label.LV_BLOOD_POOL).any() and ring_pos and along[s] > max(ring_pos):
                infos[s].level = "apex"
            elif myo.any():
                infos[s].flags.append("no complete myocardial ring: slice not used for AHA")
            else:
                infos[s].flags.append("no myocardium found")

    ips = {}
    for s in range(n):
        if infos[s].level in ("basal", "mid", "apical"):
            found = insertion_points(labels[s], geometry[s])
            if found is None:
                infos[s].flags.append("RV not found / no insertion points: AHA orientation unreliable")
            else:
                ips[s] = found
    out = np.zeros(labels.shape, dtype=np.uint8)
    for s in range(n):
        info = infos[s]
        myo = labels[s] == Label.MYOCARDIUM
        if info.level == "apex":
            out[s][myo] = 17
            continue
        if info.level is None:
            continue
        if s in ips:
            found = ips[s]
        elif ips:
            nearest = min(ips, key=lambda k: abs(along[k] - along[s]))
            found = ips[nearest]
            info.flags.append(f"insertion points borrowed from slice {nearest + 1}")
        else:
            info.level = None
            info.flags.append("no insertion points in any slice: slice not assigned")
            continue
        ant_px, inf_px, _, sense, ant, inf = found
        info.anterior_ip, info.inferior_ip = ant_px, inf_px
        arc = (sense * (inf - ant)) % (2 * np.pi)
        info.septal_arc_deg = float(np.degrees(arc))
        lv_myo = (labels[s] == Label.LV_BLOOD_POOL) | myo
        cr, cc = ndimage.center_of_mass(ndimage.binary_fill_holes(_largest(lv_myo)))
        rr, cc_ = np.nonzero(myo)
        x, y = _physical(rr - cr, cc_ - cc, geometry[s])
        phi = (sense * (np.arctan2(y, x) - ant)) % (2 * np.pi)
        phi_deg = (np.degrees(phi) - rotation_deg) % 360.0
        if info.level in ("basal", "mid"):
            if convention == "septal-bisector":
                phi_deg = (phi_deg - (np.degrees(arc) / 2 - 60.0)) % 360.0
            seg = np.array(_SIX)[np.floor(phi_deg / 60.0).astype(int) % 6] + (6 if info.level == "mid" else 0)
        else:
            psi = (phi_deg - np.degrees(arc) / 2 + 180.0) % 360.0 - 180.0
            seg = np.where(np.abs(psi) < 45, 14, np.where((psi >= 45) & (psi < 135), 15,
                                                          np.where((psi <= -45) & (psi > -135), 13, 16)))
        out[s][rr, cc_] = seg
        # wall thickness: myocardial area / mean of endo and epi perimeters (mm)
        dr, dc = geometry[s].pixel_spacing_mm
        epi = ndimage.binary_fill_holes(_largest(lv_myo))
        endo = epi & ~myo
        # the lambda is called only in this iteration: bind this slice's spacing explicitly
        perim = lambda m, dr=dr, dc=dc: (m & ~ndimage.binary_erosion(m)).sum() * np.sqrt(dr * dc)  # noqa: E731
        mean_perim = 0.5 * (perim(epi) + perim(endo))
        if mean_perim > 0:
            info.mean_thickness_mm = float(myo.sum() * dr * dc / mean_perim)
            if info.mean_thickness_mm < 3.0:
                info.flags.append(f"myocardium too thin ({info.mean_thickness_mm:.1f} mm)")
    for seg in range(1, 18):
        count = int((out == seg).sum())
        if 0 < count < min_segment_pixels:
            for s in range(n):
                if (out[s] == seg).any():
                    infos[s].flags.append(f"segment {seg} has only {count} pixels")
    return AHAResult(labels=out, slices=infos, convention=convention)
