"""Physics-driven synthetic training data for segmentation (no real image is used).

Each sample draws a random heart and torso from ``pinn_engine.phantom`` (size, shape,
wall thickness, RV extent, papillary muscles, position, rotation, mirroring), blood pools
beside the ventricles that are not labelled (descending aorta, atria, pulmonary trunk; from
generator 8), random tissue M0/T2, and one contrast: T2-prepared multi-echo (bright or black
blood), a single T2-weighted / fat-suppressed image, or a perfusion-like frame. Acquisition
effects: black blood slow-flow signal, epicardial fat pads (dark, with grey septa, when
suppressed), bright distractors (stomach, vessels), texture, receive-coil shading, k-space
truncation (Gibbs, blur), Rician noise, background masking, gamma.
Samples are either the whole field of view or a crop around the heart, resampled to the
network grid.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from pinn_engine.phantom import Anatomy, Tissue, labels_of, tissue_map
from pinn_engine.segmentation.labels import Label

GRID = 128  # network input size


@dataclass
class Sample:
    image: np.ndarray  # (3, GRID, GRID) float32, normalised
    labels: np.ndarray  # (GRID, GRID) uint8 Label values
    kind: str  # full | crop


GENERATOR = 6  # the shipped weights' generator
# 1: schematic ellipse RV (seg_v1); 2: + crescent RV, endocardial trabeculae, dark distractors (seg_v2);
# 3: anatomical orientation (seg_v3): most samples in the display frame the node resamples every
#    image into from its DICOM geometry (``pinn_engine.segmentation.orientation``), where the RV lies
#    anterior and to the patient's right of the LV; the rest at any rotation or mirroring
# 4: (seg_v4) black blood as it looks in both ventricles: RV trabeculae along the free wall (not only the septum),
#    flow-artefact streaks across the blood pools, so a dark RV is told from lung by texture and
#    wall, not by being the only uniformly black region; a wider, deeper RV crescent
# 5: (experimental; seg_v5, trained on it, gained LV but lost myocardium and RV on real images and
#    was not shipped: its dark, stranded fat pad looks too much like trabeculated RV blood)
#    slow flow the blood suppression missed, grey over much or all of a cavity (brightest at
#    the wall), so a filled cavity is not taken for myocardium; a thick, irregular epicardial and
#    mediastinal fat pad round the heart, above all over the RV free wall, which fat suppression (more
#    often in black blood) turns dark with grey vessels and septa, as dark and textured as the RV blood
#    beside it, so the RV ends at its free wall
# 6: (seg_v6) generator 5 with a fat pad that does not look like blood: less often, thinner,
#    suppressed to a dark grey mostly above black blood, with few, faint septa; slow flow kept
# 7: (experimental; seg_v7, trained on it, gained LV and myocardium but lost RV on real images and
#    was not shipped) generator 6 with slow flow in half the black-blood LV cavities (was 0.3), and
#    often filling the whole cavity almost evenly (falloff from the wall up to 60 mm, was 30)
# 8: (experimental) generator 7 with blood pools beside the ventricles, labelled background and with
#    blood's contrast: the descending aorta by the spine and, at basal levels, the atria and the
#    pulmonary trunk; a network trained on generator 7 drew the RV over the dark tissue round a real
#    basal black-blood slice, where the only dark blood it had seen beside the LV was the RV
CANONICAL_FRACTION = 0.85  # generators 3 and later: share of samples in the anatomical display frame


def random_anatomy(rng: np.random.Generator, matrix: int, fov: float, version: int = GENERATOR) -> Anatomy:
    # the draws happen in this order for every version: a version adds draws, never reorders
    dilated = rng.random() < 0.12
    a = dict(
        matrix=matrix,
        fov_mm=fov,
        heart_offset_mm=(float(rng.uniform(-10, 55)), float(rng.uniform(-45, 20))),
        rotation_deg=float(rng.normal(0, 25) if rng.random() < 0.85 else rng.uniform(-180, 180)),
        mirrored=bool(rng.random() < 0.08),
        lv_endo_radius_mm=float(rng.uniform(30, 40) if dilated else rng.uniform(12, 30)),
        lv_ellipticity=float(rng.uniform(0.0, 0.2)),
        lv_wall_mm=float(rng.uniform(13, 20) if rng.random() < 0.15 else rng.uniform(5, 13)),
        wall_variation=float(rng.uniform(0.0, 0.35)),
        rv_extent_mm=float(rng.uniform(20, 50)),
        rv_angle_deg=float(rng.uniform(140, 200)),
        rv_wall_mm=float(rng.uniform(2.0, 5.0)),
    )
    if version >= 3:
        # anatomy in the display frame: the heart turns within +-45 deg, never mirrors (mirrored and
        # rotated images come from the sample's orientation instead), and the RV centre lies
        # 95-155 deg from the image right: the patient's right-anterior direction projects to
        # 100-125 deg for short-axis planes tilted as usual (see ``orientation.display_axes``)
        rot = a["rotation_deg"]
        a.update(rotation_deg=rot if abs(rot) <= 45 else rot / 4, mirrored=False,
                 rv_angle_deg=a["rv_angle_deg"] - 45)
    if version >= 2:
        a.update(
            rv_model="crescent" if rng.random() < 0.75 else "ellipse",
            rv_span_deg=float(rng.uniform(110, 190)),
            rv_depth_mm=float(rng.uniform(18, 50)),
            rv_skew=float(rng.uniform(-0.2, 0.6)),
            rv_tip_power=float(rng.uniform(0.3, 1.2)),
        )
    a.update(
        papillary_radius_mm=float(rng.uniform(0, 6)),
        pericardial_fat_mm=float(rng.uniform(0, 6)),
        body_semi_axes_mm=(float(rng.uniform(130, 190)), float(rng.uniform(90, 140))),
        subcutaneous_fat_mm=float(rng.uniform(4, 25)),
        oedema_sector_deg=(float(rng.uniform(0, 360)), float(rng.uniform(30, 120))) if rng.random() < 0.4 else None,
        apex_scale=float(rng.uniform(0.4, 0.7)),
    )
    if version >= 4:  # the RV wraps further round the septum and reaches deeper at the base
        a.update(rv_span_deg=float(rng.uniform(120, 220)), rv_depth_mm=float(rng.uniform(18, 60)))
    return Anatomy(**a)


# tissue -> (M0 range, T2 range ms)
RANGES = {
    Tissue.AIR: ((0, 0), (1, 1)),
    Tissue.BODY: ((0.5, 0.9), (35, 60)),
    Tissue.FAT: ((1.0, 1.8), (55, 90)),
    Tissue.LUNG: ((0.02, 0.15), (30, 60)),
    Tissue.LIVER: ((0.6, 1.0), (28, 45)),
    Tissue.SPINE: ((0.3, 0.8), (40, 80)),
    Tissue.LV_BLOOD: ((0.9, 1.6), (150, 260)),
    Tissue.MYOCARDIUM: ((0.8, 1.1), (40, 55)),
    Tissue.OEDEMA: ((0.85, 1.2), (58, 85)),
    Tissue.RV_BLOOD: ((0.9, 1.6), (150, 260)),
    Tissue.RV_WALL: ((0.8, 1.1), (40, 55)),
    Tissue.PAPILLARY: ((0.8, 1.1), (40, 55)),
    Tissue.PERICARDIAL_FAT: ((1.0, 1.8), (55, 90)),
}


def _smooth_field(rng, shape, scale, amplitude):
    f = ndimage.gaussian_filter(rng.normal(0, 1, shape), scale)
    f /= max(f.std(), 1e-9)
    return 1.0 + amplitude * f


def _blobs(rng, shape, n, radius_px):
    yy, xx = np.indices(shape)
    out = np.zeros(shape, bool)
    for _ in range(n):
        cy, cx = rng.uniform(0, shape[0]), rng.uniform(0, shape[1])
        r = rng.uniform(*radius_px)
        out |= ((yy - cy) / r) ** 2 + ((xx - cx) / (r * rng.uniform(0.6, 1.6))) ** 2 <= 1
    return out


def _black_blood_texture(rng, m0, tissues, blood):
    """Grey RV trabeculae along the free wall and streaks of flow artefact across the blood pools."""
    rv_wall = tissues == Tissue.RV_WALL
    rim = ndimage.binary_dilation(rv_wall, iterations=int(rng.integers(1, 4))) & (tissues == Tissue.RV_BLOOD)
    m0[rim & (ndimage.gaussian_filter(rng.random(m0.shape), 0.8) > rng.uniform(0.45, 0.55))] = rng.uniform(0.3, 0.9)
    if rng.random() < 0.7:
        # ghosting along the phase-encoding direction: thin streaks, row- or column-wise
        sigma = (0.6, float(rng.uniform(2, 8)))
        field = ndimage.gaussian_filter(rng.normal(0, 1, m0.shape), sigma if rng.random() < 0.5 else sigma[::-1])
        field /= max(field.std(), 1e-9)
        streak = blood & (field > rng.uniform(0.3, 1.5))
        m0[streak] = np.maximum(m0[streak], rng.uniform(0.15, 0.6) * (1 + 0.3 * field[streak]))


def _slow_flow_fill(rng, m0, tissues, pixel_mm, lv_share, falloff_mm):
    """Grey slow-flow signal over a cavity, falling off from the wall inwards (``lv_share`` of LV
    cavities, 0.2 of RV cavities); a long falloff fills the whole cavity almost evenly."""
    for cavity, p in ((Tissue.LV_BLOOD, lv_share), (Tissue.RV_BLOOD, 0.2)):
        sel = tissues == cavity
        if rng.random() >= p or not sel.any():
            continue
        depth_mm = ndimage.distance_transform_edt(sel) * pixel_mm
        mottle = ndimage.gaussian_filter(rng.normal(0, 1, m0.shape), rng.uniform(0.8, 3.0))
        mottle /= max(mottle.std(), 1e-9)
        signal = rng.uniform(0.15, 0.8) * np.exp(-depth_mm / rng.uniform(*falloff_mm)) * (1 + 0.35 * mottle)
        m0[sel] = np.maximum(m0[sel], np.clip(signal[sel], 0, None))


# blood pools round the ventricles at basal levels (generator 8): (name, tissue whose contrast it
# takes, direction from the LV centre in deg relative to the RV's, radius mm)
BASAL_BLOOD_POOLS = (
    ("left atrium", Tissue.LV_BLOOD, (145, 215), (12, 22)),
    ("right atrium", Tissue.RV_BLOOD, (60, 110), (12, 20)),
    ("pulmonary trunk", Tissue.RV_BLOOD, (-110, -60), (9, 14)),
)


def _extracardiac_blood(rng, tissues, labels, anatomy, level):
    """Blood pools beside the heart that are not ventricle (label 0): the descending aorta by the
    spine on any slice and, at basal levels, the atria and the pulmonary trunk round the ventricles.

    They take blood's contrast (black in black blood, bright in bright blood, left- or right-sided
    timing in perfusion), so a dark or bright pool next to the heart is not the RV or LV by its
    signal alone. Changes ``tissues`` in place; ``labels`` are not changed.
    """
    px = anatomy.pixel_mm
    heart_zone = ndimage.binary_dilation((labels != Label.BACKGROUND) | (tissues == Tissue.RV_WALL),
                                         iterations=max(1, int(round(rng.uniform(1.5, 4) / px))))
    room = np.isin(tissues, (Tissue.BODY, Tissue.LUNG, Tissue.PERICARDIAL_FAT, Tissue.LIVER))
    rows, cols = np.indices(tissues.shape)
    side = -1.0 if anatomy.mirrored else 1.0

    def place(centre, direction, radius_mm, tissue):
        ry = radius_mm / px
        rx = ry * rng.uniform(0.7, 1.0)
        turn = rng.uniform(0, np.pi)
        u, v = np.cos(turn), np.sin(turn)
        for _ in range(int(tissues.shape[0])):  # out along ``direction`` until clear of the heart
            dr, dc = rows - centre[0], cols - centre[1]
            disc = ((dr * u + dc * v) / ry) ** 2 + ((dc * u - dr * v) / rx) ** 2 <= 1
            if not (disc & heart_zone).any():
                break
            centre = centre + direction
        pool = disc & room & ~heart_zone
        wall = ndimage.binary_dilation(pool, iterations=int(rng.integers(1, 3))) & room & ~pool & ~heart_zone
        tissues[wall & (tissues != Tissue.LIVER)] = Tissue.BODY
        tissues[pool] = tissue

    ventricles = labels != Label.BACKGROUND
    lv_centre = np.array(ndimage.center_of_mass(np.isin(labels, (Label.LV_BLOOD_POOL, Label.MYOCARDIUM))))
    spine = tissues == Tissue.SPINE  # a low, large heart can cover it: no anchor, no aorta
    if spine.any() and rng.random() < 0.8:  # descending aorta: anterior and to the left of the spine
        offset = np.array([-rng.uniform(15, 30), side * rng.uniform(10, 30)]) / px
        centre = np.array(ndimage.center_of_mass(spine)) + offset
        away = centre - lv_centre
        place(centre, away / max(np.hypot(*away), 1e-6), rng.uniform(8, 13), Tissue.LV_BLOOD)
    if level < 0.4 and ventricles.any():
        reach = np.sqrt(ventricles.sum() / np.pi)
        for _name, tissue, angles, radius in BASAL_BLOOD_POOLS:
            if rng.random() >= 0.6:
                continue
            theta = np.radians(anatomy.rv_angle_deg + rng.uniform(*angles) + anatomy.rotation_deg)
            direction = np.array([-np.sin(theta), side * np.cos(theta)])  # (row, column), rows down
            place(lv_centre + direction * reach * 0.5, direction, rng.uniform(*radius), tissue)


def _fat_pad(rng, tissues, pixel_mm, reach_mm):
    """Thick, irregular epicardial/mediastinal fat outside the heart, thickest over the RV free wall.

    The pad's tissue becomes pericardial fat (background), in place.
    """
    heart = np.isin(tissues, (Tissue.LV_BLOOD, Tissue.MYOCARDIUM, Tissue.OEDEMA, Tissue.PAPILLARY,
                              Tissue.RV_BLOOD, Tissue.RV_WALL, Tissue.PERICARDIAL_FAT))
    from_heart = ndimage.distance_transform_edt(~heart) * pixel_mm
    rv_wall = tissues == Tissue.RV_WALL
    from_rv = ndimage.distance_transform_edt(~rv_wall) * pixel_mm if rv_wall.any() else np.full(tissues.shape, 1e3)
    reach = (rng.uniform(*reach_mm) * _smooth_field(rng, tissues.shape, rng.uniform(4, 12), 0.5)
             * (0.3 + 0.7 * np.exp(-from_rv / rng.uniform(15, 80))))
    tissues[~heart & (from_heart <= reach) & np.isin(tissues, (Tissue.BODY, Tissue.LUNG))] = Tissue.PERICARDIAL_FAT


def _fat_strands(rng, m0, fat, width, level):
    """Vessels and fibrous septa in suppressed fat: thin grey lines on dark."""
    field = ndimage.gaussian_filter(rng.normal(0, 1, m0.shape), rng.uniform(1.5, 4.0))
    field /= max(field.std(), 1e-9)
    strands = fat & (np.abs(field) < rng.uniform(*width))
    m0[strands] = rng.uniform(*level) * (1 + 0.2 * field[strands])


@dataclass(frozen=True)
class FatModel:
    """How a generator draws fat outside the heart: the pad over the RV and fat suppression."""
    pad_share: float = 0.0  # samples given a pad
    pad_reach_mm: tuple[float, float] = (4, 25)
    suppressed_black: float = 0.35  # black-blood samples with fat suppressed (other contrasts: 0.35)
    suppression: tuple[float, float] = (0.05, 0.3)  # suppressed fat's signal, a fraction of fat's
    septa_share: float = 0.0  # suppressed samples whose pad shows vessels and septa
    septa_width: tuple[float, float] = (0.08, 0.25)
    septa_level: tuple[float, float] = (0.2, 0.8)


# Settings tables keyed by the generator that introduced them; an entry holds for later generators
# until a newer one replaces it (``_since``).
FAT_MODELS = {
    1: FatModel(),  # the phantom's own thin pericardial fat and no pad
    5: FatModel(pad_share=0.6, suppressed_black=0.6, septa_share=1.0),
    6: FatModel(pad_share=0.35, pad_reach_mm=(3, 14), suppressed_black=0.5, suppression=(0.15, 0.35),
                septa_share=0.4, septa_width=(0.04, 0.12), septa_level=(0.2, 0.5)),
}
# black-blood slow flow (generators 5 on): LV cavities given it, and the range of its falloff length
# from the wall (mm); generator 7 fills more of them, and more evenly: a real black-blood LV full of
# slow flow (MyoPS-like) was still taken for myocardium by a network trained on generator 6
SLOW_FLOW = {5: (0.3, (2, 30)), 7: (0.5, (2, 60))}


def _since(table: dict, version: int):
    """The entry of ``table`` that holds for generator ``version``: the newest at or before it."""
    return table[max(v for v in table if v <= version)]


def _chance(rng: np.random.Generator, share: float) -> bool:
    """True for ``share`` of calls; shares of 0 and 1 draw nothing, so a generator that never or
    always does something keeps the random stream it had before the option existed."""
    if share <= 0 or share >= 1:
        return share >= 1
    return bool(rng.random() < share)


def _kspace_truncate(img, keep):
    f = np.fft.fftshift(np.fft.fft2(img))
    h, w = img.shape
    kh, kw = int(h * keep / 2), int(w * keep / 2)
    m = np.zeros_like(f)
    m[h // 2 - kh:h // 2 + kh, w // 2 - kw:w // 2 + kw] = 1
    if np.random.default_rng(int(keep * 1e6)).random() < 0.5:
        win = np.outer(np.hanning(2 * kh), np.hanning(2 * kw))
        m[h // 2 - kh:h // 2 + kh, w // 2 - kw:w // 2 + kw] = win
    return np.fft.ifft2(np.fft.ifftshift(f * m))


def make_slice(rng: np.random.Generator, matrix: int = 192, version: int = GENERATOR
               ) -> tuple[np.ndarray, np.ndarray, float]:
    """One synthetic slice at its native grid: (channels (3, H, W), labels, pixel size mm)."""
    fov = float(rng.uniform(280, 400))
    anatomy = random_anatomy(rng, matrix, fov, version)
    level = float(rng.uniform(0.0, 1.0))
    tissues = tissue_map(anatomy, level, supersample=1)
    labels = labels_of(tissues)
    if version >= 8:
        _extracardiac_blood(rng, tissues, labels, anatomy, level)
    fats = _since(FAT_MODELS, version)
    if _chance(rng, fats.pad_share):
        _fat_pad(rng, tissues, anatomy.pixel_mm, fats.pad_reach_mm)
    m0 = np.zeros(tissues.shape)
    t2 = np.ones(tissues.shape)
    for tissue, ((a, b), (c, d)) in RANGES.items():
        sel = tissues == tissue
        m0[sel] = rng.uniform(a, b)
        t2[sel] = rng.uniform(c, d)
    m0 *= _smooth_field(rng, m0.shape, rng.uniform(2, 6), rng.uniform(0.0, 0.12))  # texture

    contrast = rng.choice(["t2prep_bright", "t2prep_black", "t2w_black", "single_bright", "perfusion"],
                          p=[0.25, 0.25, 0.25, 0.15, 0.10])
    blood = (tissues == Tissue.LV_BLOOD) | (tissues == Tissue.RV_BLOOD)
    if "black" in contrast:
        m0[blood] *= rng.uniform(0.02, 0.12)
        slow = blood & _blobs(rng, m0.shape, int(rng.integers(0, 6)), (2, 6))  # slow-flow signal
        m0[slow] = rng.uniform(0.3, 1.0)
        if version >= 2:  # trabeculae and slow flow along the endocardium: grey, irregular, labelled blood pool
            rim = ndimage.binary_dilation(labels == Label.MYOCARDIUM, iterations=int(rng.integers(1, 4))) & blood
            trab = rim & (ndimage.gaussian_filter(rng.random(m0.shape), 0.8) > rng.uniform(0.45, 0.55))
            m0[trab] = rng.uniform(0.3, 0.9)
        else:
            near_wall = ndimage.binary_dilation(labels == Label.MYOCARDIUM, iterations=2)
            trab = blood & near_wall & (rng.random(m0.shape) < 0.3)
            m0[trab] = rng.uniform(0.4, 0.9)
        if version >= 4:
            _black_blood_texture(rng, m0, tissues, blood)
        if version >= 5:
            _slow_flow_fill(rng, m0, tissues, anatomy.pixel_mm, *_since(SLOW_FLOW, version))
    if contrast == "perfusion":
        phase = rng.uniform(0, 1)
        m0[tissues == Tissue.RV_BLOOD] *= 1 + 3 * np.exp(-((phase - 0.2) / 0.1) ** 2)
        m0[tissues == Tissue.LV_BLOOD] *= 1 + 3 * np.exp(-((phase - 0.4) / 0.12) ** 2)
        m0[labels == Label.MYOCARDIUM] *= 1 + 0.6 * np.exp(-((phase - 0.6) / 0.2) ** 2)
    # fat suppression; black-blood T2-weighted protocols usually suppress fat (generators 5 on)
    if rng.random() < (fats.suppressed_black if "black" in contrast else 0.35):
        fat = (tissues == Tissue.FAT) | (tissues == Tissue.PERICARDIAL_FAT)
        m0[fat] *= rng.uniform(*fats.suppression)
        if _chance(rng, fats.septa_share):
            _fat_strands(rng, m0, tissues == Tissue.PERICARDIAL_FAT, fats.septa_width, fats.septa_level)
    # bright distractors in the body (stomach, vessels, bowel)
    body = tissues != Tissue.AIR
    heart = labels != Label.BACKGROUND
    if version >= 2:
        outside_heart = body & ~ndimage.binary_dilation(heart, iterations=int(rng.integers(1, 4)))
        distract = outside_heart & _blobs(rng, m0.shape, int(rng.integers(0, 5)), (3, 18))
        m0[distract] = rng.uniform(0.8, 2.0)
        dark = outside_heart & _blobs(rng, m0.shape, int(rng.integers(0, 3)), (4, 15))  # bowel gas, vessels
        m0[dark] *= rng.uniform(0.02, 0.3)
    else:
        distract = body & ~ndimage.binary_dilation(heart, iterations=3) & _blobs(
            rng, m0.shape, int(rng.integers(0, 5)), (3, 18))
        m0[distract] = rng.uniform(0.8, 2.0)

    if contrast.startswith("t2prep"):
        te = np.array([0.0, rng.uniform(20, 35), rng.uniform(40, 65)])
    else:
        te = np.array([rng.uniform(0, 80)])
    echoes = m0[None] * np.exp(-te[:, None, None] / t2[None])
    shading = _smooth_field(rng, m0.shape, 40, rng.uniform(0.0, 0.4))
    keep = rng.uniform(0.5, 1.0)
    snr = rng.uniform(6, 45)
    sigma = 1.0 / snr
    out = []
    for k in range(len(te)):
        img = _kspace_truncate(echoes[k] * shading, keep)
        shift = rng.normal(0, 0.5, 2) if k else (0, 0)  # inter-echo misregistration
        img = ndimage.shift(img.real, shift, order=1) + 1j * ndimage.shift(img.imag, shift, order=1)
        img = np.abs(img + rng.normal(0, sigma, img.shape) + 1j * rng.normal(0, sigma, img.shape))
        out.append(img)
    stack = np.stack(out)
    if rng.random() < 0.4:  # background zeroed outside the body (as some exports do)
        hull = ndimage.binary_dilation(body, iterations=int(rng.integers(1, 15)))
        stack[:, ~hull] = 0
    if stack.shape[0] == 1:
        stack = np.repeat(stack, 3, axis=0)
    return stack, labels, anatomy.pixel_mm


def make_sample(rng: np.random.Generator, version: int = GENERATOR) -> Sample:
    """A training sample: a synthetic slice, whole or cropped around the heart, on the network grid."""
    matrix = 192
    stack, labels, pixel_mm = make_slice(rng, matrix, version)
    # full field of view or a crop around the heart, resampled to GRID
    heart = labels != Label.BACKGROUND
    if version >= 3:  # the slice's orientation on the grid: the display frame, turned a little, or any
        display = rng.random() < CANONICAL_FRACTION
        angle = float(rng.normal(0, 12) if display else rng.uniform(-180, 180))
        flip = bool(not display and rng.random() < 0.5)
    else:
        angle, flip = 0.0, False
    if rng.random() < 0.5 and heart.any():
        cy, cx = ndimage.center_of_mass(heart)
        size_mm = rng.uniform(150, 220)
        half = size_mm / pixel_mm / 2
        cy += rng.normal(0, half * 0.12)
        cx += rng.normal(0, half * 0.12)
        kind = "crop"
    else:
        cy = cx = (matrix - 1) / 2
        # the whole field of view at any angle, as the inference's first pass samples it
        half = matrix / 2 * (abs(np.cos(np.radians(angle))) + abs(np.sin(np.radians(angle))))
        kind = "full"
    image, lab = resample_window(stack, labels, cy, cx, half, GRID, frame_matrix(angle, flip))
    image = normalise(image)
    if rng.random() < 0.5:
        image = image ** rng.uniform(0.6, 1.6)
    if version < 3:
        k = int(rng.integers(0, 4))
        image, lab = np.rot90(image, k, axes=(1, 2)), np.rot90(lab, k)
        if rng.random() < 0.5:
            image, lab = image[:, :, ::-1], lab[:, ::-1]
    return Sample(np.ascontiguousarray(image, dtype=np.float32), np.ascontiguousarray(lab, dtype=np.uint8), kind)


def frame_matrix(angle_deg: float = 0.0, flip: bool = False) -> np.ndarray:
    """2x2 map from grid (down, right) offsets to image (row, column) offsets: a turn, then a mirror."""
    a = np.radians(angle_deg)
    m = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    return m @ np.diag([1.0, -1.0]) if flip else m


def window_coords(cy: float, cx: float, half: float, size: int, matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Image (row, column) coordinates of a size x size grid spanning +-``half`` around (cy, cx),
    its (down, right) axes mapped onto image offsets by ``matrix`` (a turn/mirror, and a scale
    where ``half`` is in other units than pixels, as at inference: mm)."""
    coords = np.linspace(-half, half, size)
    u, v = np.meshgrid(coords, coords, indexing="ij")
    return cy + matrix[0, 0] * u + matrix[0, 1] * v, cx + matrix[1, 0] * u + matrix[1, 1] * v


def resample_window(stack: np.ndarray, labels: np.ndarray | None, cy: float, cx: float, half: float,
                    size: int, matrix: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """Square window of half-width ``half`` px around (cy, cx) resampled to size x size.

    ``matrix`` (see ``frame_matrix``) turns/mirrors the window's axes on the image.
    """
    yy, xx = window_coords(cy, cx, half, size, np.eye(2) if matrix is None else matrix)
    img = np.stack([ndimage.map_coordinates(s, [yy, xx], order=1, mode="constant") for s in stack])
    lab = None if labels is None else ndimage.map_coordinates(labels, [yy, xx], order=0, mode="constant")
    return img, lab


def normalise(image: np.ndarray) -> np.ndarray:
    """Scale by the 99th percentile of the first channel's non-zero pixels."""
    ref = image[0][image[0] > 0]
    p = np.percentile(ref, 99) if ref.size else 1.0
    return np.clip(image / max(p, 1e-6), 0, 3)


def make_dataset(n: int, seed: int, version: int = GENERATOR) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    images = np.empty((n, 3, GRID, GRID), np.float16)
    labels = np.empty((n, GRID, GRID), np.uint8)
    for i in range(n):
        s = make_sample(rng, version)
        images[i], labels[i] = s.image, s.labels
    return images, labels
