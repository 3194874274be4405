"""Numerical cardiac phantom: short-axis anatomy with known M0, T2 and labels.

Anatomy is parametric (``Anatomy``), so the same generator serves T2 mapping
(``t2_phantom``), segmentation training and perfusion simulation. In-plane convention:
image rows run top -> bottom, columns left -> right; angles are in degrees,
counter-clockwise from the image right (+column) direction with "up" = anterior in the
usual short-axis display (septum and RV on the image left).

Labels are the segmentation's (``pinn_engine.segmentation.Label``): LV blood pool
(papillary muscles included), LV myocardium, RV blood pool; the rest, the RV free wall
included, is background.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field, replace

import numpy as np

from pinn_engine.segmentation.labels import Label


class Tissue(enum.IntEnum):
    AIR = 0
    BODY = 1
    FAT = 2
    LUNG = 3
    LIVER = 4
    SPINE = 5
    LV_BLOOD = 6
    MYOCARDIUM = 7
    OEDEMA = 8
    RV_BLOOD = 9
    RV_WALL = 10
    PAPILLARY = 11
    PERICARDIAL_FAT = 12


# (M0 relative to myocardium, T2 ms); blood M0 for bright blood, see BLACK_BLOOD_M0
TISSUE_PROPERTIES: dict[Tissue, tuple[float, float]] = {
    Tissue.AIR: (0.0, 1.0),
    Tissue.BODY: (0.75, 45.0),
    Tissue.FAT: (1.4, 70.0),
    Tissue.LUNG: (0.08, 40.0),
    Tissue.LIVER: (0.8, 35.0),
    Tissue.SPINE: (0.5, 50.0),
    Tissue.LV_BLOOD: (1.3, 250.0),
    Tissue.MYOCARDIUM: (1.0, 45.0),
    Tissue.OEDEMA: (1.05, 60.0),
    Tissue.RV_BLOOD: (1.3, 250.0),
    Tissue.RV_WALL: (1.0, 45.0),
    Tissue.PAPILLARY: (1.0, 45.0),
    Tissue.PERICARDIAL_FAT: (1.4, 70.0),
}
BLACK_BLOOD_M0 = 0.03

# the labelled tissues; every other tissue is background
LABEL_OF = {
    Tissue.LV_BLOOD: Label.LV_BLOOD_POOL, Tissue.PAPILLARY: Label.LV_BLOOD_POOL,
    Tissue.MYOCARDIUM: Label.MYOCARDIUM, Tissue.OEDEMA: Label.MYOCARDIUM,
    Tissue.RV_BLOOD: Label.RV_BLOOD_POOL,
}


@dataclass(frozen=True)
class Anatomy:
    """Geometry of one heart in millimetres (values at the base; apical slices shrink)."""

    matrix: int = 192
    fov_mm: float = 320.0
    heart_offset_mm: tuple[float, float] = (25.0, -15.0)  # (right, up) from the FOV centre
    rotation_deg: float = 0.0  # in-plane rotation of the heart about its centre
    mirrored: bool = False  # left-right mirrored image (tests orientation handling)
    lv_endo_radius_mm: float = 24.0
    lv_ellipticity: float = 0.08  # relative difference of the LV semi-axes
    lv_wall_mm: float = 10.0
    wall_variation: float = 0.2  # relative circumferential variation of wall thickness
    rv_extent_mm: float = 34.0  # RV cavity radius (the crescent's outer reach)
    rv_angle_deg: float = 165.0  # direction of the RV centre from the LV centre
    rv_wall_mm: float = 3.5
    # "ellipse": a disc beside the LV minus the LV (schematic); "crescent": the cavity wraps
    # the septum over rv_span_deg with depth rv_depth_mm, blunt or pointed tips and its bulk
    # shifted anteriorly by rv_skew (-1..1), closer to real RV shapes
    rv_model: str = "ellipse"
    rv_span_deg: float = 150.0
    rv_depth_mm: float = 25.0
    rv_skew: float = 0.2
    rv_tip_power: float = 0.6
    papillary_radius_mm: float = 4.0  # 0: none
    pericardial_fat_mm: float = 3.0
    body_semi_axes_mm: tuple[float, float] = (155.0, 115.0)
    subcutaneous_fat_mm: float = 12.0
    oedema_sector_deg: tuple[float, float] | None = None  # (start angle, extent)
    apex_scale: float = 0.55  # LV radius at the apex relative to the base
    myocardium_t2_ms: float = 45.0
    oedema_t2_ms: float = 60.0
    extra_t2_ms: dict = field(default_factory=dict)  # Tissue -> T2 overrides

    @property
    def pixel_mm(self) -> float:
        return self.fov_mm / self.matrix


def _grid(anatomy: Anatomy, supersample: int) -> tuple[np.ndarray, np.ndarray]:
    """Coordinates (x right, y up) in mm of pixel centres, relative to the FOV centre."""
    n = anatomy.matrix * supersample
    step = anatomy.fov_mm / n
    c = (np.arange(n) + 0.5) * step - anatomy.fov_mm / 2
    x, y_down = np.meshgrid(c, c)
    if anatomy.mirrored:
        x = -x
    return x, -y_down


def tissue_map(anatomy: Anatomy, level: float = 0.5, supersample: int = 1) -> np.ndarray:
    """Tissue codes of one short-axis slice; ``level`` 0 = base ... 1 = apex."""
    x, y = _grid(anatomy, supersample)
    t = np.full(x.shape, Tissue.AIR, dtype=np.uint8)
    ax, ay = anatomy.body_semi_axes_mm
    body_r = (x / ax) ** 2 + (y / ay) ** 2
    t[body_r <= 1.0] = Tissue.BODY
    inner_fat = ((x / (ax - anatomy.subcutaneous_fat_mm)) ** 2 + (y / (ay - anatomy.subcutaneous_fat_mm)) ** 2)
    t[(body_r <= 1.0) & (inner_fat > 1.0)] = Tissue.FAT
    # lungs either side of the mediastinum, spine posterior, liver low on the image left at basal levels
    for sx in (-1.0, 1.0):
        lung = ((x - sx * 0.52 * ax) / (0.36 * ax)) ** 2 + ((y - 0.05 * ay) / (0.62 * ay)) ** 2 <= 1.0
        t[lung & (t == Tissue.BODY)] = Tissue.LUNG
    t[((x / 14.0) ** 2 + ((y + 0.78 * ay) / 16.0) ** 2) <= 1.0] = Tissue.SPINE
    if level < 0.6:
        liver = ((x + 0.35 * ax) / (0.45 * ax)) ** 2 + ((y + 0.75 * ay) / (0.35 * ay)) ** 2 <= 1.0
        t[liver & np.isin(t, [Tissue.BODY, Tissue.LUNG])] = Tissue.LIVER

    # heart frame: centre, rotation
    ox, oy = anatomy.heart_offset_mm
    rot = np.deg2rad(anatomy.rotation_deg)
    hx = (x - ox) * np.cos(rot) + (y - oy) * np.sin(rot)
    hy = -(x - ox) * np.sin(rot) + (y - oy) * np.cos(rot)
    r = np.hypot(hx, hy)
    theta = np.arctan2(hy, hx)
    scale = 1.0 - (1.0 - anatomy.apex_scale) * level
    endo = anatomy.lv_endo_radius_mm * scale * (1.0 + anatomy.lv_ellipticity * np.cos(2 * theta))
    wall = anatomy.lv_wall_mm * (1.0 + anatomy.wall_variation * np.cos(theta - 0.7)) * (0.8 + 0.2 * scale)
    epi = endo + wall

    rv_dir = np.deg2rad(anatomy.rv_angle_deg)
    rv_scale = max(scale - 0.15 * level, 0.0)
    rv_cx = np.cos(rv_dir) * (epi.mean() * 0.55)
    rv_cy = np.sin(rv_dir) * (epi.mean() * 0.55)
    rv_r = anatomy.rv_extent_mm * rv_scale
    rv_dist = np.hypot((hx - rv_cx) / 1.0, (hy - rv_cy) / 0.85)

    if anatomy.rv_model == "crescent":
        rv_cavity, rv_outer = _rv_crescent(anatomy, r, theta, epi, rv_scale)
    else:
        rv_cavity = (rv_dist <= rv_r) if rv_r > 3.0 else np.zeros(r.shape, bool)
        rv_outer = (rv_dist <= rv_r + anatomy.rv_wall_mm) if rv_r > 3.0 else np.zeros(r.shape, bool)
        rv_outer_fat = rv_dist <= rv_r + anatomy.rv_wall_mm + anatomy.pericardial_fat_mm
    if anatomy.rv_model == "crescent":
        rv_outer_fat = _rv_crescent(anatomy, r, theta, epi, rv_scale,
                                    extra_mm=anatomy.pericardial_fat_mm)[1]
    t[(r <= epi + anatomy.pericardial_fat_mm) | rv_outer_fat] = Tissue.PERICARDIAL_FAT
    t[rv_outer & (r > epi)] = Tissue.RV_WALL
    t[rv_cavity & (r > epi)] = Tissue.RV_BLOOD
    t[r <= epi] = Tissue.MYOCARDIUM
    if anatomy.oedema_sector_deg is not None:
        start, extent = anatomy.oedema_sector_deg
        ang = (np.rad2deg(theta) - start) % 360.0
        t[(r <= epi) & (r > endo) & (ang <= extent)] = Tissue.OEDEMA
    t[r <= endo] = Tissue.LV_BLOOD
    if anatomy.papillary_radius_mm > 0 and level < 0.85:
        for ang in (np.deg2rad(-40.0), np.deg2rad(-130.0)):
            px, py = np.cos(ang) * endo.mean() * 0.62, np.sin(ang) * endo.mean() * 0.62
            pap = np.hypot(hx - px, hy - py) <= anatomy.papillary_radius_mm * scale
            t[pap & (r <= endo)] = Tissue.PAPILLARY
    return t


def _rv_crescent(anatomy: Anatomy, r: np.ndarray, theta: np.ndarray, epi: np.ndarray, rv_scale: float,
                 extra_mm: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """RV cavity and cavity+free wall as a crescent on the LV epicardium (polar profile)."""
    centre = np.deg2rad(anatomy.rv_angle_deg)
    half = np.deg2rad(anatomy.rv_span_deg) / 2 * (0.75 + 0.25 * rv_scale)
    u = ((theta - centre + np.pi) % (2 * np.pi) - np.pi) / half  # -1..1 across the span
    inside = np.abs(u) < 1.0
    # skewed profile: the bulk of the cavity lies towards the anterior tip (smaller theta, u < 0)
    peak = -anatomy.rv_skew
    v = np.clip((u - peak) / np.where(u > peak, 1 - peak, 1 + peak), -1, 1)
    profile = np.where(inside, (1.0 - v ** 2) ** anatomy.rv_tip_power, 0.0)
    depth = anatomy.rv_depth_mm * rv_scale * profile
    cavity = inside & (r > epi) & (r <= epi + depth) & (depth > 1.0)
    outer = inside & (r > epi) & (r <= epi + depth + (anatomy.rv_wall_mm + extra_mm) * (depth > 1.0))
    return cavity, outer


def tissue_properties(tissues: np.ndarray, anatomy: Anatomy, blood: str = "bright") -> tuple[np.ndarray, np.ndarray]:
    """M0 and T2 maps for a tissue map."""
    if blood not in ("bright", "black"):
        raise ValueError("blood must be 'bright' or 'black'")
    m0 = np.zeros(tissues.shape)
    t2 = np.ones(tissues.shape)
    for tissue, (m, t) in TISSUE_PROPERTIES.items():
        sel = tissues == tissue
        if tissue in (Tissue.MYOCARDIUM, Tissue.RV_WALL, Tissue.PAPILLARY):
            t = anatomy.myocardium_t2_ms
        elif tissue == Tissue.OEDEMA:
            t = anatomy.oedema_t2_ms
        if blood == "black" and tissue in (Tissue.LV_BLOOD, Tissue.RV_BLOOD):
            m = BLACK_BLOOD_M0
        t = anatomy.extra_t2_ms.get(tissue, t)
        m0[sel] = m
        t2[sel] = t
    return m0, t2


def labels_of(tissues: np.ndarray) -> np.ndarray:
    """The label map of a tissue map: the tissues of ``LABEL_OF`` labelled, the rest background (0)."""
    out = np.zeros(tissues.shape, dtype=np.uint8)
    for tissue, label in LABEL_OF.items():
        out[tissues == tissue] = label
    return out


@dataclass
class T2Phantom:
    images: np.ndarray  # (slices, echoes, H, W) magnitude, float32
    t2_ms: np.ndarray  # (slices, H, W) true T2 (pixel centre tissue)
    m0: np.ndarray  # (slices, H, W) true M0 (same scale as images)
    labels: np.ndarray  # (slices, H, W) Label values
    tissues: np.ndarray  # (slices, H, W) Tissue codes
    sigma: float  # Gaussian noise SD per channel (Rician magnitude)
    te_ms: np.ndarray
    pixel_spacing_mm: float
    slice_spacing_mm: float
    anatomy: Anatomy


def slice_levels(n_slices: int) -> np.ndarray:
    """Positions base (0) -> apex (1) of n equidistant slices ("3 of 5" for n = 3)."""
    if n_slices == 1:
        return np.array([0.5])
    return np.linspace(0.15, 0.85, n_slices)


def t2_phantom(
    anatomy: Anatomy | None = None,
    te_ms: tuple[float, ...] | np.ndarray = (0.0, 35.0, 55.0),
    snr: float = 40.0,
    n_slices: int = 3,
    seed: int = 0,
    blood: str = "bright",
    scale: float = 1000.0,
    slice_spacing_mm: float = 10.0,
) -> T2Phantom:
    """T2-prepared multi-echo short-axis stack with Rician noise; SNR = myocardial M0 / sigma."""
    anatomy = anatomy or Anatomy()
    te = np.asarray(te_ms, dtype=np.float64)
    rng = np.random.default_rng(seed)
    levels = slice_levels(n_slices)
    tissues = np.stack([tissue_map(anatomy, lv) for lv in levels])
    m0, t2 = tissue_properties(tissues, anatomy, blood)
    m0 = m0 * scale
    sigma = scale * TISSUE_PROPERTIES[Tissue.MYOCARDIUM][0] / snr
    clean = m0[:, None] * np.exp(-te[None, :, None, None] / t2[:, None])
    noisy = np.hypot(clean + rng.normal(0.0, sigma, clean.shape), rng.normal(0.0, sigma, clean.shape))
    return T2Phantom(
        images=noisy.astype(np.float32),
        t2_ms=np.where(m0 > 0, t2, 0.0),
        m0=m0,
        labels=labels_of(tissues),
        tissues=tissues,
        sigma=float(sigma),
        te_ms=te,
        pixel_spacing_mm=anatomy.pixel_mm,
        slice_spacing_mm=slice_spacing_mm,
        anatomy=anatomy,
    )


def with_oedema(anatomy: Anatomy, start_deg: float = 20.0, extent_deg: float = 80.0) -> Anatomy:
    return replace(anatomy, oedema_sector_deg=(start_deg, extent_deg))
