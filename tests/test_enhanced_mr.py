"""Enhanced MR (multi-frame) T2 sources as Philips and Siemens XA write them: recognised, loaded, reported."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest

from dicom_node.enhanced_mr import READOUT_TE_MS, to_enhanced_mr
from dicom_node.processing import SeriesError, SeriesKind, classify, load_t2_series, process_t2, read_headers
from dicom_node.processing.frames import frame_number, frame_views
from dicom_node.simulate import simulate_t2
from dicom_node.synthetic import synthetic_uid


@pytest.fixture(scope="module")
def classic(tmp_path_factory) -> list[Path]:
    out = tmp_path_factory.mktemp("classic")
    simulate_t2(out, seed=11, matrix=64, slices=3)
    return sorted(out.glob("*.dcm"))


def _enhanced(classic: list[Path], folder: Path, style: str) -> Path:
    images = [pydicom.dcmread(p) for p in classic]
    prep = [float(i.EchoTime) for i in images] if style == "siemens-xa" else None
    ds = to_enhanced_mr(images, synthetic_uid("enhanced", style), style=style, prep_ms=prep)
    folder.mkdir(parents=True, exist_ok=True)
    ds.save_as(folder / "IM0001.dcm", enforce_file_format=True)
    return folder / "IM0001.dcm"


def test_frame_views_carry_each_frames_functional_groups(classic, tmp_path):
    path = _enhanced(classic, tmp_path / "philips", "philips")
    ds = pydicom.dcmread(path)
    views = frame_views(ds)
    assert len(views) == int(ds.NumberOfFrames) == len(classic) == 9
    originals = [pydicom.dcmread(p, stop_before_pixels=True) for p in classic]
    for k, (view, original) in enumerate(zip(views, originals, strict=True)):
        assert frame_number(view) == k + 1 and view.SOPInstanceUID == ds.SOPInstanceUID
        assert [float(v) for v in view.ImagePositionPatient] == pytest.approx(
            [float(v) for v in original.ImagePositionPatient])
        assert [float(v) for v in view.ImageOrientationPatient] == pytest.approx(
            [float(v) for v in original.ImageOrientationPatient])
        assert float(view.EchoTime) == float(original.EchoTime)  # from MR Echo's Effective Echo Time
        assert float(view.RescaleSlope) == 1.0 + 0.25 * (k % 4)  # each frame its own transformation
        assert list(view.ImageType) == ["ORIGINAL", "PRIMARY", "CARDIAC", "NONE"]  # Frame Type
    assert frame_views(originals[0]) == [originals[0]]  # a classic image is its own view


def test_siemens_xa_frames_keep_the_preparation_text_as_image_comments(classic, tmp_path):
    views = read_headers([_enhanced(classic, tmp_path / "xa", "siemens-xa")])
    assert {float(v.EchoTime) for v in views} == {READOUT_TE_MS}
    assert {str(v.ImageComments) for v in views} == {"T2 preparation 0 ms", "T2 preparation 35 ms",
                                                     "T2 preparation 55 ms"}


def test_a_philips_multi_echo_enhanced_series_is_recognised_and_loads_like_the_classic_one(classic, tmp_path):
    path = _enhanced(classic, tmp_path / "philips", "philips")
    found = classify(read_headers([path]))
    assert found.kind == SeriesKind.T2, found
    ours, theirs = load_t2_series([path]), load_t2_series(classic)
    assert ours.images.shape == theirs.images.shape == (3, 3, 64, 64)
    assert list(ours.te_ms) == list(theirs.te_ms) == [0.0, 35.0, 55.0]
    # stored values were divided by slopes up to 1.75 and rounded: the real values come back within half of it
    assert np.abs(ours.images - theirs.images).max() <= 0.875
    assert np.abs(ours.images - theirs.images).max() > 0  # really read through the per-frame rescale
    for a, b in zip(ours.geometry, theirs.geometry, strict=True):
        assert a.position_mm == pytest.approx(b.position_mm) and a.row_cosine == pytest.approx(b.row_cosine)
    assert ours.pixel_spacing_mm == theirs.pixel_spacing_mm


def test_an_enhanced_series_is_reported_not_quantified_until_its_frames_can_be_referenced(classic, tmp_path):
    series = load_t2_series([_enhanced(classic, tmp_path / "philips", "philips")])
    with pytest.raises(SeriesError, match="Enhanced MR .multi-frame. source images are recognised"):
        process_t2(series, method="nlls")


@pytest.mark.parametrize("style", ["philips", "siemens-xa"])
def test_the_enhanced_fixtures_are_valid_enhanced_mr_images(classic, tmp_path, style):
    """The fixtures stand for what the scanners send: dciodvfy finds no error in them."""
    from tests.test_encode import dciodvfy

    assert dciodvfy(pydicom.dcmread(_enhanced(classic, tmp_path / style, style)), tmp_path) == []


@pytest.mark.parametrize("vendor, expected", [
    ("siemens-xa", {"T2Map": (SeriesKind.T2, "ImageComments 'T2 prep. duration'"),
                    "T2Map_MOCO_T2": (SeriesKind.OTHER, "a map made by the scanner"),
                    "MOLLI_5(3)3_SAX": (SeriesKind.OTHER, "T1 mapping")}),
    ("philips", {"T2 Map SAX": (SeriesKind.T2, "(EchoTime)"),
                 "T2 Map SAX_T2": (SeriesKind.OTHER, "a map made by the scanner")}),
])
def test_every_series_of_an_enhanced_vendor_study_is_classified_by_its_frames(tmp_path, vendor, expected):
    from dicom_node.processing import FolderSeries
    from dicom_node.vendors import simulate_vendor_t2

    simulate_vendor_t2(tmp_path, vendor, seed=4, matrix=64)
    folder = FolderSeries.scan(tmp_path)
    seen = {}
    for uid in folder.series_uids:
        headers = folder.series_headers(uid)
        found = classify(headers)
        description = str(headers[0].SeriesDescription)
        kind, reason = expected[description]
        assert found.kind == kind and reason in found.reason, (description, found)
        seen.setdefault(description, []).append(len(folder.series_paths(uid)))
        if found.kind == SeriesKind.T2:  # one Enhanced MR instance holds the series' images
            assert folder.series_paths(uid) and len(folder.series_paths(uid)) == 1 and len(headers) > 1
    assert set(seen) == set(expected)
    assert len(seen.get("T2Map", [1, 1, 1])) == 3  # XA: a series per slice
