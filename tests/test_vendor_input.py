"""T2 input as scanners write it (issue 24): the vendor fixtures, their classification, the
Siemens preparation-time text, the CSA protocol fallback and the series never fitted as T2."""

from __future__ import annotations

import copy
import struct

import numpy as np
import pydicom
import pytest

from dicom_node.cli import build_parser, main
from dicom_node.enhanced_mr import philips_slopes
from dicom_node.processing import SeriesError, classify, load_t2_series, slice_key
from dicom_node.processing.classification import (
    CSA_SOURCE,
    csa_t2prep_durations,
    preparation_time_ms,
    preparation_time_text,
    preparation_times,
)
from dicom_node.processing.frames import frame_pixels, frame_views, mr_scale_slope
from dicom_node.vendors import simulate_vendor_t2
from pinn_engine.segmentation import Label
from pinn_engine.t2 import fit_t2

TE = [0.0, 35.0, 55.0]
SIEMENS_T2 = "1 slice position x 3 preparation times (ImageComments 'T2 prep. duration')"
SIEMENS_CSA = f"1 slice position x 3 preparation times ({CSA_SOURCE}, by InstanceNumber; SeriesDescription 'T2Map')"


def headers(paths):
    return [pydicom.dcmread(p, stop_before_pixels=True) for p in paths]


def kr(hs) -> tuple[str, str]:
    """(kind, reason) of a series' headers."""
    c = classify(hs)
    return str(c.kind), c.reason


@pytest.fixture(scope="module")
def siemens(tmp_path_factory):
    out = tmp_path_factory.mktemp("siemens")
    _, written = simulate_vendor_t2(out, "siemens", seed=5, matrix=64)
    return out, written


@pytest.fixture(scope="module")
def siemens_old(tmp_path_factory):
    """Older Siemens software: no Image Comments, the preparation times only in the CSA protocol."""
    out = tmp_path_factory.mktemp("siemens-old")
    _, written = simulate_vendor_t2(out, "siemens", seed=6, matrix=64, image_comments=False)
    return out, written


@pytest.fixture(scope="module")
def ge(tmp_path_factory):
    out = tmp_path_factory.mktemp("ge")
    _, written = simulate_vendor_t2(out, "ge", seed=7, matrix=64)
    return out, written


@pytest.fixture(scope="module")
def philips(tmp_path_factory):
    """The ``ge`` fixture's phantom (same seed) as Philips sends it: one Enhanced MR instance."""
    out = tmp_path_factory.mktemp("philips")
    _, written = simulate_vendor_t2(out, "philips", seed=7, matrix=64)
    return out, written


def _by_description(written):
    groups: dict[str, list[str]] = {}
    for folder, paths in written.items():
        groups.setdefault(str(pydicom.dcmread(paths[0], stop_before_pixels=True).SeriesDescription), []).append(folder)
    return groups


# -- the fixtures ------------------------------------------------------------------------------

def test_siemens_study_is_laid_out_as_myomaps_sends_it(siemens):
    out, written = siemens
    assert (out / "truth.npz").exists()
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == sorted(written)
    groups = _by_description(written)
    assert {k: len(v) for k, v in groups.items()} == {"T2Map": 3, "T2Map_MOCO": 3, "T2Map_MOCO_T2": 3,
                                                      "MOLLI_5(3)3_SAX": 1}
    every = [h for paths in written.values() for h in headers(paths)]
    assert len({h.StudyInstanceUID for h in every}) == 1 and len({h.FrameOfReferenceUID for h in every}) == 1
    assert len({h.SOPInstanceUID for h in every}) == len(every) == 45
    assert len({h.SeriesInstanceUID for h in every}) == len(written) == 10
    assert {(h.Manufacturer, h.ManufacturerModelName) for h in every} == {("SIEMENS", "MAGNETOM Aera")}
    for folder in groups["T2Map"] + groups["T2Map_MOCO"]:
        hs = headers(written[folder])
        assert {float(h.EchoTime) for h in hs} == {1.07}  # the bSSFP readout, not the preparation
        assert all(h.SequenceName.startswith("*tfi2d1_") for h in hs)
        assert [preparation_time_ms(h) for h in hs] == TE
        assert len({slice_key(h) for h in hs}) == 1  # one slice per series (one breath-hold)
    types = {tuple(headers(written[f])[0].ImageType) for f in groups["T2Map"]}
    assert types == {("ORIGINAL", "PRIMARY", "M", "ND")}
    assert {tuple(headers(written[f])[0].ImageType) for f in groups["T2Map_MOCO"]} == {
        ("DERIVED", "PRIMARY", "M", "ND", "MOCO")}
    comments = {str(h.ImageComments) for f in groups["T2Map"] for h in headers(written[f])}
    assert "T2 prep. duration = 35 ms" in comments and "Breath-hold 2, T2 prep. duration = 35 ms" in comments
    # the per-slice series run base -> apex with their series numbers
    keys = [slice_key(headers(written[f])[0]) for f in sorted(groups["T2Map"])]
    assert keys == sorted(keys) and len(set(keys)) == 3
    molli = headers(written[groups["MOLLI_5(3)3_SAX"][0]])
    assert len(molli) == 24 and len({float(h.InversionTime) for h in molli}) == 8
    assert all(str(h.ImageComments) == f"TIeff {float(h.InversionTime):g} ms" for h in molli)


def test_every_siemens_series_is_classified_by_the_field_that_decides(siemens):
    _, written = siemens
    found = {folder: classify(headers(paths)) for folder, paths in written.items()}
    groups = _by_description(written)
    for folder in groups["T2Map"]:
        assert (found[folder].kind, found[folder].reason) == ("t2", SIEMENS_T2)
    for folder in groups["T2Map_MOCO"]:
        assert (found[folder].kind, found[folder].reason) == ("t2", SIEMENS_T2 + "; motion-corrected (ImageType MOCO)")
    for folder in groups["T2Map_MOCO_T2"]:
        assert (found[folder].kind, found[folder].reason) == ("other", "a map made by the scanner (ImageType 'T2 MAP')")
    (molli,) = groups["MOLLI_5(3)3_SAX"]
    assert (found[molli].kind, found[molli].reason) == ("other", "T1 mapping (ImageComments 'TIeff 100 ms')")


def test_a_siemens_slice_series_loads_with_its_preparation_times(siemens):
    out, written = siemens
    truth = np.load(out / "truth.npz")
    for s, folder in enumerate(sorted(_by_description(written)["T2Map"])):
        series = load_t2_series(list(reversed(written[folder])))
        assert series.images.shape == (1, 3, 64, 64) and list(series.te_ms) == TE
        # the slice is the phantom's slice s, and the images are in preparation-time order
        assert abs(series.images[0, 0].mean() - truth["m0"][s].mean()) < 0.2 * truth["m0"][s].mean()
        assert np.all(np.diff(series.images[0].mean(axis=(1, 2))) < 0)


def test_ge_series_is_echo_fastest_and_a_t2_source(ge):
    out, written = ge
    (folder,) = written
    hs = headers(written[folder])
    assert {(h.Manufacturer, h.ManufacturerModelName) for h in hs} == {("GE MEDICAL SYSTEMS", "SIGNA Artist")}
    ordered = sorted(hs, key=lambda h: int(h.InstanceNumber))
    assert [float(h.EchoTime) for h in ordered] == TE * 3  # echo fastest
    assert [slice_key(h) for h in ordered[::3]] == sorted({slice_key(h) for h in hs})
    c = classify(hs)
    assert (c.kind, c.reason) == ("t2", "3 slice positions x 3 preparation times (EchoTime)")
    series = load_t2_series(written[folder])
    assert series.images.shape == (3, 3, 64, 64) and list(series.te_ms) == TE
    truth = np.load(out / "truth.npz")
    assert np.allclose(series.images[:, 0].mean(axis=(1, 2)), truth["m0"].mean(axis=(1, 2)), rtol=0.2)


def _philips_source(philips) -> list:
    _, written = philips
    (paths,) = [paths for folder, paths in written.items() if not folder.endswith("_T2")]  # not the T2 map
    return paths


def test_philips_frames_carry_their_own_mr_scale_slope(philips):
    (path,) = _philips_source(philips)
    ds = pydicom.dcmread(path)
    views = frame_views(ds)
    assert len(views) == 9
    scales = [mr_scale_slope(v) for v in views]
    assert scales == [philips_slopes(k)[1] for k in range(9)] and len(set(scales)) > 1
    for groups, scale in zip(ds.PerFrameFunctionalGroupsSequence, scales, strict=True):  # where Philips has it
        (item,) = groups[0x2005140F].value
        assert groups[0x20050014].value == "Philips MR Imaging DD 005"
        assert item[0x20050010].value == "Philips MR Imaging DD 001" and item[0x2005100E].VR == "FL"
        assert item[0x2005100E].value == scale


def test_philips_enhanced_series_loads_as_the_classic_one_and_fits_the_same_t2(philips, ge):
    """The frames' floating-point values FP = DV / (RS * SS) are the images' values; their
    displayed values DV (a reader that ignores the MR Scale Slope) are each frame's own multiple."""
    _, ge_written = ge
    ours, theirs = load_t2_series(_philips_source(philips)), load_t2_series(next(iter(ge_written.values())))
    assert ours.images.shape == theirs.images.shape == (3, 3, 64, 64) and list(ours.te_ms) == TE
    # stored values are the values times MR Scale Slopes >= 0.75, rounded
    assert np.abs(ours.images - theirs.images).max() <= 0.5 / 0.75 + 1e-9
    displayed = np.stack([frame_pixels(v) for v in ours.datasets]).reshape(ours.images.shape)
    signal = theirs.images > 50
    factors = {round(float(np.median(displayed[s, e][signal[s, e]] / theirs.images[s, e][signal[s, e]])), 1)
               for s in range(3) for e in range(3)}
    assert len(factors) > 2  # RS * SS: per frame wrongly scaled without the scale slope
    a, b = fit_t2(ours.images, ours.te_ms, method="nlls"), fit_t2(theirs.images, theirs.te_ms, method="nlls")
    myocardium = (np.load(philips[0] / "truth.npz")["labels"] == Label.MYOCARDIUM) & b.estimated
    assert myocardium.sum() > 1000 and np.all(a.estimated[myocardium])
    assert np.median(np.abs(a.t2_ms - b.t2_ms)[myocardium]) < 0.1
    assert a.t2_ms[myocardium].mean() == pytest.approx(b.t2_ms[myocardium].mean(), abs=0.01)
    assert a.noise.sigma == pytest.approx(b.noise.sigma, rel=0.01)  # the noise on the images' scale
    c = fit_t2(displayed, ours.te_ms, method="nlls")  # what ignoring the scale slope would give
    assert abs(c.t2_ms[myocardium].mean() - b.t2_ms[myocardium].mean()) > 10


def test_cli_vendor_option(tmp_path, capsys):
    assert build_parser().parse_args(["simulate", "t2", "--out", "x"]).vendor is None
    with pytest.raises(SystemExit):
        build_parser().parse_args(["simulate", "t2", "--out", "x", "--vendor", "acme"])
    assert main(["simulate", "t2", "--vendor", "ge", "--out", str(tmp_path / "ge"), "--matrix", "32",
                 "--slices", "2"]) == 0
    assert "1 series" in capsys.readouterr().out
    assert len(list((tmp_path / "ge").glob("*/*.dcm"))) == 6 and (tmp_path / "ge" / "truth.npz").exists()


# -- the preparation time as Siemens writes it -------------------------------------------------

@pytest.mark.parametrize(("text", "ms", "label"), [
    ("T2 prep. duration = 25 ms", 25.0, "T2 prep. duration"),
    ("MOCO, T2 prep. duration = 25 ms", 25.0, "T2 prep. duration"),
    ("Breath-hold 2, T2 prep. duration = 55.5 ms", 55.5, "T2 prep. duration"),
    ("T2 prep. duration = 0 ms", 0.0, "T2 prep. duration"),
    ("T2prep 35", 35.0, "T2prep"),
    ("T2 preparation 55 ms", 55.0, "T2 preparation"),
    ("T2-prep 40ms", 40.0, "T2-prep"),
])
def test_t2_prep_text_forms(text, ms, label):
    ds = pydicom.Dataset()
    ds.ImageComments, ds.EchoTime = text, "1.07"
    assert preparation_time_text(ds) == (ms, f"ImageComments '{label}'")
    assert preparation_time_ms(ds) == ms


@pytest.mark.parametrize("text", ["TIeff 120 ms", "T2 prep. duration", "T2Map", "t2 map 3 slices", ""])
def test_text_without_a_preparation_time(text):
    ds = pydicom.Dataset()
    ds.ImageComments, ds.EchoTime = text, "1.07"
    assert preparation_time_text(ds) is None and preparation_time_ms(ds) == 1.07


# -- never fitted as T2 ------------------------------------------------------------------------

@pytest.mark.parametrize(("image_type", "shown"), [
    (["DERIVED", "PRIMARY", "T2 MAP", "ND", "MOCO"], "T2 MAP"),  # a motion-corrected map is still a map
    (["ORIGINAL", "PRIMARY", "T2 MAP", "T2", "UNSPECIFIED"], "T2 MAP"),  # Philips marks maps ORIGINAL
    (["ORIGINAL", "PRIMARY", "T2_MAP"], "T2_MAP"),
    (["ORIGINAL", "PRIMARY", "T1 MAP"], "T1 MAP"),
    (["DERIVED", "PRIMARY", "M", "T2", "MAP"], "T2\\MAP"),
    (["ORIGINAL", "PRIMARY", "T2MAP"], "T2MAP"),
])
def test_scanner_maps_are_never_fitted(ge, image_type, shown):
    hs = headers(next(iter(ge[1].values())))
    for h in hs:
        h.ImageType = image_type
    assert kr(hs) == ("other", f"a map made by the scanner (ImageType '{shown}')")


@pytest.mark.parametrize("description", ["T2Map_MOCO_T2", "MOLLI_MOCO_T1", "SAX_T1MAP", "T2STAR_T2STAR"])
def test_map_descriptions_are_never_fitted(ge, description):
    hs = headers(next(iter(ge[1].values())))
    for h in hs:
        h.SeriesDescription = description
    assert kr(hs) == ("other", f"a map made by the scanner (SeriesDescription '{description}')")


def test_t1_mapping_and_too_few_times_are_never_fitted(ge, siemens):
    base = headers(next(iter(ge[1].values())))
    assert classify(base).kind == "t2"
    tieff = copy.deepcopy(base)
    tieff[4].ImageComments = "TIeff 120 ms"
    assert kr(tieff) == ("other", "T1 mapping (ImageComments 'TIeff 120 ms')")
    inversion = copy.deepcopy(base)
    for k, h in enumerate(inversion):
        h.InversionTime = 100.0 + 80.0 * (k % 3)
    assert kr(inversion) == ("other", "T1 mapping (InversionTime varies: 3 values at a slice position)")
    constant_ti = copy.deepcopy(base)
    for h in constant_ti:
        h.InversionTime = 300.0  # one inversion time (e.g. a saturation delay) is not T1 mapping
    assert classify(constant_ti).kind == "t2"
    named = copy.deepcopy(base)
    for h in named:
        h.ProtocolName = "ShMOLLI SAX"
    assert kr(named) == ("other", "T1 mapping (ProtocolName 'ShMOLLI SAX')")
    two = [h for h in base if float(h.EchoTime) < 50]
    assert kr(two) == ("other", "fewer than 3 distinct preparation/echo times (0/35 ms, EchoTime)")
    _, written = siemens
    source = headers(written[sorted(_by_description(written)["T2Map"])[0]])
    assert kr(source[:2]) == ("other", "fewer than 3 distinct preparation/echo times "
                                             "(0/35 ms, ImageComments 'T2 prep. duration')")
    partial = copy.deepcopy(source)
    del partial[2].ImageComments
    assert kr(partial) == ("other", "preparation time in ImageComments 'T2 prep. duration' for only 2 of 3 "
                                          "images")
    derived = copy.deepcopy(source)
    for h in derived:
        h.ImageType = ["DERIVED", "PRIMARY", "M", "ND"]
    assert kr(derived) == ("other", "derived images (ImageType DERIVED, not MOCO)")
    no_text = copy.deepcopy(source)
    for h in no_text:
        del h.ImageComments
        del h[0x00291020]  # and no CSA protocol: nothing says the preparation time
    assert kr(no_text) == ("other", "fewer than 3 distinct preparation/echo times (1.07 ms, EchoTime)")


# -- older Siemens software: the CSA protocol, only when demonstrably T2-prepared ---------------

def test_csa_header_is_a_csa2_structure(siemens):
    """The fixture's (0029,1020) parses as Siemens' CSA2 format (as nibabel's csareader reads it)."""
    _, written = siemens
    raw = pydicom.dcmread(next(iter(written.values()))[0])[0x00291020].value
    assert raw[:8] == b"SV10\x04\x03\x02\x01"
    n_tags, check = struct.unpack_from("<2I", raw, 8)
    assert (n_tags, check) == (1, 77)
    name, vm, vr, syngodt, n_items, last = struct.unpack_from("<64si4s3i", raw, 16)
    assert name.rstrip(b"\0") == b"MrPhoenixProtocol" and n_items == 1 and last == 77
    x0, length, x2, x3 = struct.unpack_from("<4i", raw, 16 + 84)
    assert 16 + 84 + 16 + length <= len(raw)
    text = raw[116:116 + length].decode("latin-1")
    assert "sPrepPulses.adT2PrepDuration.__attribute__.size = 3" in text
    assert "sPrepPulses.adT2PrepDuration[0]" not in text  # 0 ms is not listed, as on the scanner


def test_old_siemens_series_use_the_csa_protocol(siemens_old):
    _, written = siemens_old
    groups = _by_description(written)
    for folder in groups["T2Map"]:
        hs = headers(written[folder])
        assert not any("ImageComments" in h for h in hs)
        assert [csa_t2prep_durations(h) for h in hs] == [tuple(TE)] * 3
        assert kr(hs) == ("t2", SIEMENS_CSA)
        series = load_t2_series(written[folder])
        assert list(series.te_ms) == TE and series.images.shape == (1, 3, 64, 64)
    for folder in groups["T2Map_MOCO"]:
        reason = classify(headers(written[folder])).reason
        assert reason == SIEMENS_CSA.replace("'T2Map'", "'T2Map_MOCO'") + "; motion-corrected (ImageType MOCO)"
    for folder in groups["T2Map_MOCO_T2"]:
        assert classify(headers(written[folder])).kind == "other"


def test_molli_defaults_in_the_csa_array_are_never_used(siemens_old):
    """The MOLLI series carries the same T2-prep array; stripped of everything that says T1 it
    is still not fitted: not named T2, 8 images for 3 values; only the reason tells."""
    _, written = siemens_old
    (folder,) = _by_description(written)["MOLLI_5(3)3_SAX"]
    molli = headers(written[folder])
    assert csa_t2prep_durations(molli[0]) == tuple(TE)
    bare = copy.deepcopy(molli)
    for h in bare:
        del h.ImageComments
        del h.InversionTime
    assert kr(bare) == ("other", "T1 mapping (SeriesDescription 'MOLLI_5(3)3_SAX')")
    for h in bare:
        h.SeriesDescription = h.ProtocolName = "SAX 3 slices"
    c = classify(bare)
    assert c.kind == "other" and c.reason.startswith("fewer than 3 distinct preparation/echo times (1.07 ms, EchoTime)")
    assert c.reason.endswith(f"{CSA_SOURCE} not used: neither SeriesDescription nor ProtocolName says T2 map / "
                             "T2 prep")
    for h in bare:
        h.SeriesDescription = h.ProtocolName = "T2Map"  # even named as T2: one image per value is required
    assert classify(bare).reason.endswith(f"{CSA_SOURCE} not used: 8 images at a slice position for 3 values")
    assert preparation_times(bare).times == (1.07,) * 24


def test_csa_fallback_refuses_when_in_doubt(siemens_old):
    _, written = siemens_old
    source = headers(written[sorted(_by_description(written)["T2Map"])[0]])

    def why(hs) -> str:
        c = classify(hs)
        assert c.kind == "other", c
        return c.reason.split(f"{CSA_SOURCE} not used: ")[1]

    unnamed = copy.deepcopy(source)
    for h in unnamed:
        h.SeriesDescription = h.ProtocolName = "SAX"
    assert why(unnamed) == "neither SeriesDescription nor ProtocolName says T2 map / T2 prep"
    inverted = copy.deepcopy(source)
    for h in inverted:
        h.InversionTime = 300.0
    assert why(inverted) == "the images carry an InversionTime"
    flash = copy.deepcopy(source)
    for h in flash:
        h.SequenceName = "*fl2d1"
    assert why(flash) == "SequenceName is not a Siemens tfi/tfl 2D readout"
    repeated = copy.deepcopy(source)
    for h in repeated:
        h.InstanceNumber = 1
    assert why(repeated) == "InstanceNumber missing or repeated at a slice position"
    reordered = copy.deepcopy(source)
    reordered[0].InstanceNumber, reordered[2].InstanceNumber = 3, 1  # against the acquisition clock
    assert why(reordered) == "InstanceNumber and AcquisitionTime disagree on the order of the images"
    missing = copy.deepcopy(source)
    del missing[1][0x00291020]
    assert why(missing) == "not in every image"


def test_csa_times_are_checked_against_the_signal(siemens_old, tmp_path):
    """Headers that look right but images in another order: loading refuses (stored, not fitted)."""
    _, written = siemens_old
    paths = written[sorted(_by_description(written)["T2Map"])[0]]
    datasets = [pydicom.dcmread(p) for p in paths]
    datasets[0].PixelData, datasets[2].PixelData = datasets[2].PixelData, datasets[0].PixelData
    swapped = []
    for k, ds in enumerate(datasets):
        swapped.append(tmp_path / f"{k}.dcm")
        ds.save_as(swapped[-1])
    assert classify(headers(swapped)).kind == "t2"  # the headers cannot tell
    with pytest.raises(SeriesError, match="do not match the images"):
        load_t2_series(swapped)
