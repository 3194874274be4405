"""AHA segment assignment: orientation, rotation/mirroring invariance, slice levels, QC flags."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from dicom_node.simulate import LONG_AXIS, sax_orientation
from pinn_engine.aha import SliceGeometry, assign_aha, closed_ring
from pinn_engine.phantom import Anatomy, labels_of, slice_levels, tissue_map

SPACING = 320.0 / 192


def stack(anatomy: Anatomy, n: int):
    labels = np.stack([labels_of(tissue_map(anatomy, lv)) for lv in slice_levels(n)])
    row, col = sax_orientation()
    geom = [SliceGeometry(row, col, (SPACING, SPACING), np.array([0.0, 0.0, 0.0]) + k * 10.0 * LONG_AXIS)
            for k in range(n)]
    return labels, geom


def mean_angle_deg(mask: np.ndarray) -> float:
    """Direction of a region about the LV centre, CCW from image right with 'up' = anterior."""
    rows, cols = np.nonzero(mask)
    return float(np.degrees(np.arctan2(-(rows.mean() - CENTRE[0]), cols.mean() - CENTRE[1])) % 360)


def angular_distance(a: float, b: float) -> float:
    return abs((a - b + 180) % 360 - 180)


CENTRE = (0.0, 0.0)


@pytest.mark.parametrize("n", [3, 5])
def test_segments_point_the_right_way(n):
    global CENTRE
    labels, geom = stack(Anatomy(), n)
    res = assign_aha(labels, geom)
    levels = [s.level for s in res.slices]
    assert levels[0] == "basal" and levels[-1] == "apical" and "mid" in levels
    for s, info in enumerate(res.slices):
        seg = res.labels[s]
        lv_myo = np.isin(labels[s], [1, 2])
        CENTRE = np.argwhere(lv_myo).mean(axis=0)
        if info.level in ("basal", "mid"):
            off = 0 if info.level == "basal" else 6
            expected = {1: 90, 4: 270, 2: 150, 3: 210, 5: 330, 6: 30}  # RV (septum) on the image left
            for k, ang in expected.items():
                assert angular_distance(mean_angle_deg(seg == k + off), ang) < 40, (info.level, k + off)
        elif info.level == "apical":
            for k, ang in {13: 90, 14: 180, 15: 270, 16: 0}.items():
                assert angular_distance(mean_angle_deg(seg == k), ang) < 45, k
    assert set(res.segments_present()) >= set(range(1, 17))
    # every myocardial pixel of a used slice has a segment
    used = [s for s, i in enumerate(res.slices) if i.level]
    assert ((res.labels[used] > 0) == (labels[used] == 2)).all()


def _rot90(labels, geom):
    out = np.stack([np.rot90(lab) for lab in labels])
    h, w = labels.shape[1:]
    g2 = [SliceGeometry(g.column_cosine, -g.row_cosine, g.pixel_spacing_mm[::-1],
                        g.position_mm + (w - 1) * g.pixel_spacing_mm[1] * g.row_cosine) for g in geom]
    return out, g2


def _mirror(labels, geom):
    out = labels[:, :, ::-1]
    w = labels.shape[2]
    g2 = [SliceGeometry(-g.row_cosine, g.column_cosine, g.pixel_spacing_mm,
                        g.position_mm + (w - 1) * g.pixel_spacing_mm[1] * g.row_cosine) for g in geom]
    return out, g2


@pytest.mark.parametrize("transform", ["rot90", "mirror", "rot90+mirror"])
@pytest.mark.parametrize("convention", ["anterior-ip", "septal-bisector"])
def test_rotation_and_mirroring_do_not_change_segments(transform, convention):
    labels, geom = stack(Anatomy(rotation_deg=20.0), 3)
    ref = assign_aha(labels, geom, convention)
    t_labels, t_geom = labels, geom
    undo = []
    for step in transform.split("+"):
        if step == "rot90":
            t_labels, t_geom = _rot90(t_labels, t_geom)
            undo.append(lambda a: np.stack([np.rot90(x, -1) for x in a]))
        else:
            t_labels, t_geom = _mirror(t_labels, t_geom)
            undo.append(lambda a: a[:, :, ::-1])
    res = assign_aha(t_labels, t_geom, convention)
    back = res.labels
    for f in reversed(undo):
        back = f(back)
    agree = (back == ref.labels)[labels == 2].mean()
    assert agree > 0.98, agree


def test_apical_cap_is_segment_17_and_level_rules():
    labels, geom = stack(Anatomy(), 4)
    cap = labels[-1].copy()
    cap[cap == 1] = 2  # myocardium without cavity beyond the apex
    cap[cap == 3] = 0
    labels = np.concatenate([labels, cap[None]])
    geom = geom + [replace(geom[-1], position_mm=geom[-1].position_mm + 10.0 * LONG_AXIS)]
    res = assign_aha(labels, geom)
    assert [s.level for s in res.slices] == ["basal", "mid", "mid", "apical", "apex"]
    assert (res.labels[-1][labels[-1] == 2] == 17).all()


@pytest.mark.parametrize("n, expected", [(1, ["mid"]), (2, ["basal", "apical"]), (3, ["basal", "mid", "apical"]),
                                         (6, ["basal", "basal", "mid", "mid", "apical", "apical"])])
def test_slice_level_rule(n, expected):
    labels, geom = stack(Anatomy(), n)
    assert [s.level for s in assign_aha(labels, geom).slices] == expected


def test_reversed_slice_order_is_handled():
    labels, geom = stack(Anatomy(), 3)
    res = assign_aha(labels[::-1], geom[::-1])
    assert [s.level for s in res.slices] == ["apical", "mid", "basal"]


def test_missing_rv_and_broken_ring_are_flagged():
    labels, geom = stack(Anatomy(), 3)
    labels[1][labels[1] == 3] = 0  # no RV on the mid slice: insertion points borrowed
    broken = labels[0].copy()
    rows, cols = np.nonzero(broken == 2)
    top = rows.min()
    broken[top:top + 12, cols[rows == top].min() - 3:cols[rows == top].max() + 3] = 0  # open the ring
    labels[0] = broken
    assert not closed_ring(labels[0])
    res = assign_aha(labels, geom)
    assert res.slices[0].level is None and any("ring" in f for f in res.slices[0].flags)
    assert any("borrowed" in f for f in res.slices[1].flags)
    assert res.labels[0].max() == 0 and res.labels[1].max() > 0


def test_no_rv_anywhere_means_no_assignment():
    labels, geom = stack(Anatomy(), 3)
    labels[labels == 3] = 0
    res = assign_aha(labels, geom)
    assert res.labels.max() == 0
    assert all(any("insertion points" in f for f in s.flags) for s in res.slices)
