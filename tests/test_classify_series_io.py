from __future__ import annotations

import copy

import numpy as np
import pydicom
import pytest

from dicom_node.processing import Rule, SeriesError, classify, load_t2_series, preparation_time_ms
from dicom_node.simulate import simulate_t2
from pinn_engine.aha import apex_normal


@pytest.fixture(scope="module")
def t2_files(tmp_path_factory):
    out = tmp_path_factory.mktemp("t2")
    simulate_t2(out, seed=4, matrix=64, slices=3)
    return sorted(out.glob("*.dcm"))


def headers(paths):
    return [pydicom.dcmread(p, stop_before_pixels=True) for p in paths]


def test_t2_series_is_recognised(t2_files):
    c = classify(headers(t2_files))
    assert (c.kind, c.reason) == ("t2", "3 slice positions x 3 preparation times (SequenceName 'T2prep')")


def test_t2_prep_times_from_vendor_fields_when_echo_time_is_constant(t2_files):
    hs = headers(t2_files)
    for h in hs:
        h.EchoTime = "1.2"  # bSSFP readout TE; the preparation lives in the sequence name
    assert {preparation_time_ms(h) for h in hs} == {0.0, 35.0, 55.0}
    assert classify(hs).kind == "t2"


def test_perfusion_asl_derived_and_other(t2_files):
    base = headers(t2_files)[:1][0]
    dyn = []
    for k in range(30):
        h = copy.deepcopy(base)
        h.EchoTime, h.SequenceName, h.ImageComments = "1.1", "tfl2d", ""
        h.TriggerTime = 700.0 * k
        dyn.append(h)
    assert classify(dyn).kind == "perfusion"
    for text in ("Perfusion pre-bolus", "perf_LOW_DOSE", "test bolus SR-GRE"):
        pre = copy.deepcopy(dyn)
        for h in pre:
            h.SeriesDescription = text
        assert classify(pre).kind == "prebolus", text
    asl = copy.deepcopy(dyn)
    for h in asl:
        h.SeriesDescription = "pCASL label/control"
    assert classify(asl).kind == "asl"
    derived = copy.deepcopy(headers(t2_files))
    for h in derived:
        h.ImageType = ["DERIVED", "PRIMARY", "T2_MAP"]
    assert classify(derived).kind == "other"
    for h in derived:
        h.ImageType = ["DERIVED", "PRIMARY", "M", "ND"]
    assert classify(derived).kind == "other"
    for h in derived:  # motion-corrected source images (Siemens MOCO) are still T2 source images
        h.ImageType = ["DERIVED", "PRIMARY", "M", "ND", "MOCO"]
    assert classify(derived).kind == "t2" and "MOCO" in classify(derived).reason
    sr = copy.deepcopy(base)
    sr.Modality, sr.SOPClassUID = "SR", "1.2.840.10008.5.1.4.1.1.88.33"
    assert classify([sr]).kind == "other"
    two_echoes = [h for h in headers(t2_files) if float(h.EchoTime) < 50]
    assert classify(two_echoes).kind == "other"


def test_override_rules(t2_files):
    hs = headers(t2_files)
    assert classify(hs, [Rule("other", series_description="^T2prep")]).kind == "other"
    assert classify(hs, [Rule("perfusion", protocol_name="nomatch")]).kind == "t2"


def test_load_t2_series_sorts_and_checks(t2_files):
    s = load_t2_series(list(reversed(t2_files)))
    assert s.images.shape == (3, 3, 64, 64) and list(s.te_ms) == [0.0, 35.0, 55.0]
    z = [g.position_mm @ apex_normal(*g.orientation) for g in s.geometry]
    assert z == sorted(z)
    truth = np.load(t2_files[0].parent / "truth.npz")
    # slices run base -> apex, as the phantom's do
    assert np.allclose(s.images[:, 0].mean(axis=(1, 2)), np.rint(truth["m0"]).mean(axis=(1, 2)), rtol=0.2)


def test_inconsistent_series_are_refused(t2_files, tmp_path):
    # a position without the stack's full set of preparation times is left out, and named
    partial = load_t2_series([p for p in t2_files if not (p.name.startswith("IM_s01") and p.name.endswith("e03.dcm"))])
    assert partial.images.shape[0] == 2 and len(partial.notes) == 1
    assert "left out: preparation times [0.0, 35.0] ms differ from the stack's [0.0, 35.0, 55.0] ms" in partial.notes[0]
    bad = tmp_path / "bad.dcm"
    ds = pydicom.dcmread(t2_files[0])
    ds.PixelSpacing = [2.5, 2.5]
    ds.save_as(bad)
    with pytest.raises(SeriesError, match="differs in size/orientation/spacing"):
        load_t2_series([*t2_files[1:], bad])
    with pytest.raises(SeriesError, match="two instances"):
        load_t2_series([*t2_files, t2_files[0]])
