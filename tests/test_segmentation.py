"""Segmentation: network size, synthetic data, inference plumbing and the segment CLI."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from pinn_engine.phantom import Anatomy, Tissue, labels_of, tissue_map
from pinn_engine.segmentation.infer import (
    DEFAULT_WEIGHTS,
    Segmenter,
    _flag_stray_slices,
    _rechoose_stray_slices,
    clean_labels,
    to_three_channels,
)
from pinn_engine.segmentation.network import UNet, count_parameters
from pinn_engine.segmentation.orientation import display_matrix
from pinn_engine.segmentation.synth import (
    FAT_MODELS,
    GRID,
    SLOW_FLOW,
    _black_blood_texture,
    _extracardiac_blood,
    _fat_pad,
    _fat_strands,
    _slow_flow_fill,
    make_sample,
    make_slice,
)


def test_network_is_compact():
    assert count_parameters(UNet()) <= 2_000_000
    assert DEFAULT_WEIGHTS.exists() and DEFAULT_WEIGHTS.stat().st_size <= 8_000_000


def test_synthetic_samples_are_varied_labelled_and_reproducible():
    a = [make_sample(np.random.default_rng(11)) for _ in range(3)]
    b = make_sample(np.random.default_rng(11))
    np.testing.assert_array_equal(a[0].image, b.image)
    rng = np.random.default_rng(3)
    samples = [make_sample(rng) for _ in range(12)]
    assert {s.kind for s in samples} == {"full", "crop"}
    for s in samples:
        assert s.image.shape == (3, GRID, GRID) and s.labels.shape == (GRID, GRID)
        assert np.isfinite(s.image).all()
    assert sum((s.labels == 2).any() for s in samples) >= 10
    stack, labels, px = make_slice(np.random.default_rng(5))
    assert stack.shape[0] == 3 and labels.shape == stack.shape[1:] and 1.4 < px < 2.1


def test_black_blood_rv_is_textured_along_its_wall_and_nothing_but_blood_changes():
    # a uniformly black RV is what lung looks like; real black-blood RVs carry grey trabeculae
    tissues = tissue_map(Anatomy(rv_model="crescent", rv_angle_deg=110.0, rv_depth_mm=40.0), 0.3)
    blood = np.isin(tissues, [Tissue.LV_BLOOD, Tissue.RV_BLOOD])
    rv = tissues == Tissue.RV_BLOOD
    assert rv.sum() > 200
    m0 = np.where(blood, 0.05, 1.0)
    before = m0.copy()
    _black_blood_texture(np.random.default_rng(0), m0, tissues, blood)
    changed = m0 != before
    assert changed[rv].any() and not changed[~blood].any()
    rim = ndimage.binary_dilation(tissues == Tissue.RV_WALL, iterations=2) & rv
    assert (m0[rim] >= 0.15).mean() > 0.2


def test_slow_flow_fills_a_cavity_from_its_wall_and_nothing_else():
    # MyoPS-like failure: a cavity full of grey slow flow was taken for myocardium
    tissues = tissue_map(Anatomy(rv_model="crescent", rv_depth_mm=40.0), 0.3)
    blood = np.isin(tissues, [Tissue.LV_BLOOD, Tissue.RV_BLOOD])
    lv = tissues == Tissue.LV_BLOOD
    filled = 0
    for seed in range(12):
        m0 = np.where(blood, 0.05, 1.0)
        _slow_flow_fill(np.random.default_rng(seed), m0, tissues, 320 / 192, *SLOW_FLOW[5])
        assert (m0[~blood] == 1.0).all()
        if (m0[lv] > 0.05).mean() > 0.5:
            filled += 1
            depth = ndimage.distance_transform_edt(lv)
            assert m0[lv & (depth <= 2)].mean() > m0[lv & (depth >= 8)].mean()  # brightest at the wall
    assert 1 <= filled <= 8  # some slices, not all


def test_generator_7_fills_more_lv_cavities_and_fills_them_more_evenly():
    tissues = tissue_map(Anatomy(rv_model="crescent", rv_depth_mm=40.0), 0.3)
    lv = tissues == Tissue.LV_BLOOD
    centre = lv & (ndimage.distance_transform_edt(lv) >= 8)
    filled, centre_signal = {}, {}
    for version in (5, 7):
        maps = []
        for seed in range(40):
            m0 = np.where(lv, 0.0, 1.0)
            _slow_flow_fill(np.random.default_rng(seed), m0, tissues, 320 / 192, *SLOW_FLOW[version])
            maps.append(m0)
        filled[version] = sum((m[lv] > 0).any() for m in maps)
        centre_signal[version] = np.mean([m[centre].mean() / m[lv].mean() for m in maps if (m[lv] > 0).any()])
    assert filled[5] < filled[7] < 40  # same seeds: every cavity generator 5 fills, generator 7 fills too
    assert centre_signal[7] > centre_signal[5]  # the cavity's centre holds more of the signal


def test_generator_8_blood_pools_lie_beside_the_heart_unlabelled_and_atria_only_at_the_base():
    anatomy = Anatomy(rv_model="crescent", rv_angle_deg=130.0, rv_depth_mm=35.0)
    blood = (Tissue.LV_BLOOD, Tissue.RV_BLOOD)
    pools = {}
    for level in (0.1, 0.8):
        tissues = tissue_map(anatomy, level)
        labels = labels_of(tissues)
        heart = labels > 0
        spine = np.array(ndimage.center_of_mass(tissues == Tissue.SPINE))
        counts, right_sided = [], 0
        for seed in range(20):
            t = tissues.copy()
            _extracardiac_blood(np.random.default_rng(seed), t, labels, anatomy, level)
            assert (t[heart] == tissues[heart]).all()  # the ventricles and their labels stay
            added = np.isin(t, blood) & ~heart
            assert not (added & ndimage.binary_dilation(heart)).any()  # a wall or gap parts them
            parts, n = ndimage.label(added)
            counts.append(n)
            right_sided += ((t == Tissue.RV_BLOOD) & ~heart).any()
            if level > 0.5 and n:  # apical: the descending aorta alone, by the spine
                assert n == 1
                assert np.hypot(*(np.array(ndimage.center_of_mass(added)) - spine)) * anatomy.pixel_mm < 45
        pools[level] = (np.mean(counts), right_sided)
    assert pools[0.1][0] > pools[0.8][0] + 1  # atria and pulmonary trunk join the aorta at the base
    assert pools[0.1][1] > 0 and pools[0.8][1] == 0

def test_fat_pad_covers_the_rv_free_wall_and_suppressed_fat_gets_strands():
    # dark suppressed fat over the RV is as dark as its blood: the RV must end at its free wall
    tissues = tissue_map(Anatomy(rv_model="crescent", rv_angle_deg=110.0, rv_depth_mm=40.0), 0.3)
    labels_before = np.isin(tissues, [Tissue.LV_BLOOD, Tissue.MYOCARDIUM, Tissue.RV_BLOOD, Tissue.PAPILLARY])
    fat_before = (tissues == Tissue.PERICARDIAL_FAT).sum()
    padded = tissues.copy()
    g5 = FAT_MODELS[5]
    _fat_pad(np.random.default_rng(1), padded, 320 / 192, g5.pad_reach_mm)
    assert (padded[labels_before] == tissues[labels_before]).all()  # the heart and its labels stay
    fat = padded == Tissue.PERICARDIAL_FAT
    assert fat.sum() > 1.5 * fat_before
    near_rv = ndimage.binary_dilation(tissues == Tissue.RV_WALL, iterations=4) & ~np.isin(
        tissues, [Tissue.RV_WALL, Tissue.RV_BLOOD, Tissue.MYOCARDIUM])
    assert fat[near_rv].mean() > 0.6
    m0 = np.where(fat, 0.05, 1.0)
    _fat_strands(np.random.default_rng(2), m0, fat, g5.septa_width, g5.septa_level)
    assert 0.02 < (m0[fat] > 0.15).mean() < 0.5 and (m0[~fat] == 1.0).all()


def test_generator_6_pad_is_thinner_and_its_septa_fainter_than_generator_5s():
    # generator 5's pad, dark and stranded, was taken for RV blood on real images
    tissues = tissue_map(Anatomy(rv_model="crescent", rv_angle_deg=110.0, rv_depth_mm=40.0), 0.3)
    fat_before = (tissues == Tissue.PERICARDIAL_FAT).sum()
    grown = {}
    for version in (5, 6):
        padded = tissues.copy()
        _fat_pad(np.random.default_rng(1), padded, 320 / 192, FAT_MODELS[version].pad_reach_mm)
        grown[version] = (padded == Tissue.PERICARDIAL_FAT).sum() - fat_before
    assert 0 < grown[6] < 0.75 * grown[5]
    fat = tissues == Tissue.PERICARDIAL_FAT
    thin, wide = np.where(fat, 0.05, 1.0), np.where(fat, 0.05, 1.0)
    for image, version in ((thin, 6), (wide, 5)):
        _fat_strands(np.random.default_rng(2), image, fat, FAT_MODELS[version].septa_width,
                     FAT_MODELS[version].septa_level)
    assert 0 < (thin[fat] > 0.15).sum() < (wide[fat] > 0.15).sum()
    assert thin[fat].max() <= 0.5 * 1.03 and (thin[~fat] == 1.0).all()


def _disc(shape, cy, cx, r):
    yy, xx = np.indices(shape)
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def test_cleaning_keeps_the_blood_pools_the_myocardium_holds_not_the_biggest_look_alikes():
    lab = np.zeros((120, 120), np.uint8)
    lab[_disc(lab.shape, 60, 60, 18)] = 2
    lab[_disc(lab.shape, 60, 60, 10)] = 1  # the LV cavity inside the ring
    lab[_disc(lab.shape, 20, 100, 14)] = 1  # a bigger bright look-alike (stomach) away from the heart
    lab[_disc(lab.shape, 100, 15, 12) & ~_disc(lab.shape, 60, 60, 19)] = 3  # a dark blob far away: larger
    lab[_disc(lab.shape, 38, 45, 9) & ~_disc(lab.shape, 60, 60, 18)] = 3  # the RV against the septum
    lab[_disc(lab.shape, 105, 105, 3)] = 2  # a speck of "myocardium" elsewhere
    out = clean_labels(lab)
    assert (out == 1).sum() == _disc(lab.shape, 60, 60, 10).sum()
    assert out[60, 60] == 1 and out[20, 100] == 0
    assert out[35, 42] == 3 and out[100, 15] == 0 and out[105, 105] == 0
    # without any myocardium the largest region of each class stays (nothing better to anchor it)
    only = np.zeros_like(lab)
    only[_disc(lab.shape, 20, 100, 14)] = 1
    only[_disc(lab.shape, 90, 30, 5)] = 1
    assert clean_labels(only)[20, 100] == 1 and clean_labels(only)[90, 30] == 0


def test_a_slice_whose_lv_strays_from_the_stack_is_flagged():
    labels = np.zeros((4, 100, 100), np.uint8)
    for k, (cy, cx) in enumerate([(50, 50), (52, 49), (49, 52), (50, 85)]):
        labels[k][_disc((100, 100), cy, cx, 8)] = 1
    flags = [[] for _ in range(4)]
    _flag_stray_slices(labels, (1.0, 1.0), flags)  # the last LV is 35 mm off: beyond 30 mm
    assert flags[:3] == [[], [], []] and "from the rest of the stack" in flags[3][0]
    flags = [[] for _ in range(4)]
    _flag_stray_slices(labels, (0.5, 0.5), flags)  # the same pixels at half the spacing: 17 mm
    assert flags == [[], [], [], []]


def _ring(shape, cy, cx, r_in, r_out):
    lab = np.zeros(shape, np.uint8)
    lab[_disc(shape, cy, cx, r_out)] = 2
    lab[_disc(shape, cy, cx, r_in)] = 1
    return lab


def test_a_stray_slice_keeps_the_ring_on_the_stacks_axis_where_the_network_found_one():
    shape = (100, 100)
    far = _ring(shape, 15, 85, 8, 13)  # a round structure away from the heart (stomach)
    raw = np.stack([_ring(shape, 50, 50, 8, 13), _ring(shape, 51, 49, 8, 13), _ring(shape, 49, 51, 7, 12),
                    np.maximum(_ring(shape, 50, 50, 5, 8), far), far])  # the last: no ring on the axis
    labels = np.stack([clean_labels(r) for r in raw])
    assert labels[3][15, 85] == 1  # the bigger ring, far from the others, wins on its own
    _rechoose_stray_slices(raw, labels, (1.0, 1.0))
    assert labels[3][50, 50] == 1 and labels[3][15, 85] == 0  # the ring on the axis instead
    assert labels[4][15, 85] == 1  # nothing on the axis: left as it was ...
    flags = [[] for _ in range(5)]
    _flag_stray_slices(labels, (1.0, 1.0), flags)
    assert flags[:4] == [[]] * 4 and "from the rest of the stack" in flags[4][0]  # ... and flagged


def test_channel_mapping_uses_all_echoes():
    x = np.arange(5)[None, :, None, None] * np.ones((2, 5, 4, 4))
    assert to_three_channels(x)[0, :, 0, 0].tolist() == [0, 2, 4]
    assert to_three_channels(x[:, :1])[0, :, 0, 0].tolist() == [0, 0, 0]


@pytest.fixture(scope="module")
def segmenter():
    return Segmenter()


def test_segmenter_output_shape_and_flags(segmenter):
    stack, labels, px = make_slice(np.random.default_rng(8))
    seg = segmenter(np.stack([stack, stack]), (px, px))
    assert seg.labels.shape == (2,) + labels.shape and seg.labels.dtype == np.uint8
    assert set(np.unique(seg.labels)) <= {0, 1, 2, 3}
    assert seg.confidence.shape == (2,) and len(seg.flags) == 2
    blank = segmenter(np.zeros((1, 1, 96, 96)), (1.5, 1.5))
    assert blank.labels.max() == 0 and blank.flags[0]


def test_pass_2_averages_the_windows_and_counts_a_window_that_misses_a_pixel_as_background(segmenter, monkeypatch):
    from pinn_engine.segmentation import infer

    monkeypatch.setattr(infer, "SCALES", (0.5, 1.0))
    # a network that calls every grid point myocardium
    monkeypatch.setattr(segmenter, "_probabilities",
                        lambda win: np.eye(4)[np.full((len(win), GRID, GRID), 2)].transpose(0, 3, 1, 2))
    stack = np.ones((1, 3, 100, 100))
    full = segmenter._window_probabilities(stack, 49.5, 49.5, 40.0, (1.0, 1.0), np.eye(2))
    assert full.shape == (1, 4, 100, 100)
    assert np.allclose(full.sum(1), 1.0)
    assert np.allclose(full[0, 2, 45:55, 45:55], 1.0)  # inside both windows
    assert np.allclose(full[0, 2, 49, 15], 0.5) and np.allclose(full[0, 0, 49, 15], 0.5)  # the small one misses it
    assert np.allclose(full[0, 0, 49, 2], 1.0)  # outside both


def test_segment_cli_dicom_folder_and_nifti(tmp_path):
    sim = tmp_path / "sim"
    subprocess.run([sys.executable, "-m", "dicom_node", "simulate", "t2", "--out", str(sim), "--matrix", "128",
                    "--seed", "2"], check=True, capture_output=True)
    out = tmp_path / "labels.nii.gz"
    proc = subprocess.run([sys.executable, "-m", "pinn_engine", "segment", str(sim), "--out", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    lab = sitk.ReadImage(str(out))
    assert lab.GetSize() == (128, 128, 3)
    from pinn_engine.segmentation.io import read_stack

    stack = read_stack(sim)
    assert stack.images.shape == (3, 3, 128, 128)
    ref = stack.reference
    assert np.allclose(lab.GetOrigin(), ref.GetOrigin()) and np.allclose(lab.GetDirection(), ref.GetDirection())
    # the same stack as NIfTI (3-D: first echo only)
    nii = tmp_path / "t2.nii.gz"
    sitk.WriteImage(ref, str(nii))
    out2 = tmp_path / "labels2.nii.gz"
    proc = subprocess.run([sys.executable, "-m", "pinn_engine", "segment", str(nii), "--out", str(out2)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert sitk.ReadImage(str(out2)).GetSize() == (128, 128, 3)


def _stored_turned_and_mirrored(stack: np.ndarray, row: np.ndarray, col: np.ndarray):
    """The same slice stored turned a quarter (counter-clockwise) and mirrored left-right, with its geometry."""
    turned = np.rot90(stack, axes=(-2, -1))
    row, col = col, -row  # after the turn: columns run along the old rows, rows against the old columns
    return np.ascontiguousarray(turned[..., ::-1]), -row, col


def test_display_frame_puts_the_patients_right_anterior_up_and_left():
    from dicom_node.simulate import sax_orientation

    assert np.allclose(display_matrix(*sax_orientation()), np.eye(2), atol=1e-9)
    rng = np.random.default_rng(0)
    for _ in range(50):
        # short-axis planes as scanners tilt them: the long axis towards left/anterior/inferior
        normal = np.array([rng.uniform(0.3, 0.8), -rng.uniform(0.4, 0.9), -rng.uniform(0.1, 0.7)])
        row, col = sax_orientation(normal)
        assert abs(row @ col) < 1e-9 and abs(row @ normal) < 1e-9
        rv = np.array([-1.0, -1.0, 0.0])  # the RV lies to the patient's right-anterior of the LV
        angle = np.degrees(np.arctan2(-(rv @ col), rv @ row))
        assert 80 < angle < 160, angle
        # whichever way the slice is stored, the frame comes out the same
        m = display_matrix(*sax_orientation(normal))
        assert np.allclose(m, np.eye(2), atol=1e-9)
        _, r2, c2 = _stored_turned_and_mirrored(np.zeros((1, 2, 2)), row, col)
        m2 = display_matrix(r2, c2)
        assert np.allclose(np.abs(m2), [[0, 1], [1, 0]], atol=1e-9) and np.linalg.det(m2) < 0  # a mirror


def test_segmentation_follows_the_stored_orientation(segmenter):
    from dicom_node.simulate import sax_orientation

    stack, _, px = make_slice(np.random.default_rng(8))
    row, col = sax_orientation()
    upright = segmenter(stack[None], (px, px), orientation=(row, col)).labels[0]
    stored, r2, c2 = _stored_turned_and_mirrored(stack, row, col)
    seen = segmenter(stored[None], (px, px), orientation=(r2, c2)).labels[0]
    back = _stored_turned_and_mirrored(upright[None], row, col)[0][0]
    assert (upright == 3).sum() > 50
    for c in (1, 2, 3):
        a, b = seen == c, back == c
        assert 2 * (a & b).sum() / (a.sum() + b.sum()) > 0.97, c
