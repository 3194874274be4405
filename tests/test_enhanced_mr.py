"""Enhanced MR (multi-frame) T2 sources as Philips and Siemens XA write them: recognised, loaded, reported."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest

from dicom_node.enhanced_mr import READOUT_TE_MS, philips_slopes, to_enhanced_mr
from dicom_node.processing import SeriesKind, classify, load_t2_series, process_t2, read_headers
from dicom_node.processing.frames import frame_number, frame_pixels, frame_views, mr_scale_slope
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
        assert mr_scale_slope(view) == philips_slopes(k)[1]  # and its own MR Scale Slope (2005,140F)
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
    # stored values are the values times MR Scale Slopes >= 0.75, rounded: FP = SV / SS is within 0.5 / 0.75
    assert np.abs(ours.images - theirs.images).max() <= 0.5 / 0.75 + 1e-9
    assert np.abs(ours.images - theirs.images).max() > 0  # really read through the per-frame rescale
    for a, b in zip(ours.geometry, theirs.geometry, strict=True):
        assert a.position_mm == pytest.approx(b.position_mm) and a.row_cosine == pytest.approx(b.row_cosine)
    assert ours.pixel_spacing_mm == theirs.pixel_spacing_mm


def test_an_enhanced_series_is_quantified_over_a_background_that_references_its_frames(classic, tmp_path):
    """Maps and SEG cannot reference frames of a multi-frame source; they reference the node's own
    single-frame background series, whose images name the frame they show (Referenced Frame Number)."""
    from tests.test_encode import dciodvfy

    path = _enhanced(classic, tmp_path / "philips", "philips")
    ours, theirs = process_t2(load_t2_series([path]), method="nlls"), process_t2(load_t2_series(classic),
                                                                                method="nlls")
    enhanced_uid = str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)
    backgrounds = [ds for kind, ds in ours.objects.items() if kind.startswith("background-")]
    assert len(backgrounds) == 3
    frames = sorted(int(ds.SourceImageSequence[0].ReferencedFrameNumber) for ds in backgrounds)
    assert frames == [1, 4, 7]  # the shortest preparation time of each slice, frames in slice-then-echo order
    assert {str(ds.SourceImageSequence[0].ReferencedSOPInstanceUID) for ds in backgrounds} == {enhanced_uid}
    background_series = {str(ds.SeriesInstanceUID) for ds in backgrounds}
    for kind in ("pm", "bound", "seg"):
        refs = ours.objects[kind].ReferencedSeriesSequence
        assert [str(r.SeriesInstanceUID) for r in refs] == list(background_series), kind
    for ds in [*backgrounds, ours.objects["pm"], ours.objects["seg"], ours.objects["sr"]]:
        assert dciodvfy(ds, tmp_path) == [], ds.SOPClassUID
    # the same numbers as from the classic images (the Philips scaling rounds stored values)
    assert ours.summary["global"]["t2_ms"] == pytest.approx(theirs.summary["global"]["t2_ms"], abs=0.2)
    assert len(ours.summary["segments"]) == len(theirs.summary["segments"])


@pytest.mark.parametrize("style", ["philips", "siemens-xa"])
def test_the_enhanced_fixtures_are_valid_enhanced_mr_images(classic, tmp_path, style):
    """The fixtures stand for what the scanners send: dciodvfy finds no error in them."""
    from tests.test_encode import dciodvfy

    assert dciodvfy(pydicom.dcmread(_enhanced(classic, tmp_path / style, style)), tmp_path) == []


@pytest.mark.parametrize("vendor, expected", [
    ("siemens-xa", {"T2Map": (SeriesKind.T2, "FrameComments 'T2 prep. duration'"),
                    "T2Map_MOCO_T2": (SeriesKind.OTHER, "a map made by the scanner"),
                    "MOLLI_5(3)3_SAX": (SeriesKind.OTHER, "T1 mapping")}),
    ("philips", {"T2 Map SAX": (SeriesKind.T2, "(EffectiveEchoTime)"),
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


# -- Philips' MR Scale Slope (2005,100E): FP = DV / (RS * SS), DV = SV * RS + RI -------------------

PHILIPS = "Philips MR Imaging DD 001"
RS, RI = 2.0, -8.0  # the classic Philips-like images' rescale: DV = 2 SV - 8


def _philips_classic(classic: list[Path], folder: Path, scale_slope: str = "present") -> tuple[list[Path], np.ndarray]:
    """The classic images with stored values SV = round(value * SS - RI / RS) under Rescale RS, RI
    and, per ``scale_slope``, Philips' MR Scale Slope SS (0.75 + 0.5 k % 5) or a broken one; and
    the displayed values DV of every image (in ``classic`` order)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths, displayed = [], []
    for k, path in enumerate(classic):
        ds = pydicom.dcmread(path)
        ss = 0.75 + 0.5 * (k % 5)  # binary fractions: exact as FL
        stored = np.round(ds.pixel_array.astype(np.float64) * ss - RI / RS).astype(np.uint16)
        ds.PixelData = stored.tobytes()
        ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = f"{RS:g}", f"{RI:g}", "US"
        ds.Manufacturer = "Philips"
        if scale_slope == "present":
            ds.private_block(0x2005, PHILIPS, create=True).add_new(0x0E, "FL", ss)
        elif scale_slope in ("zero", "negative", "not a number"):
            value = {"zero": 0.0, "negative": -ss, "not a number": float("nan")}[scale_slope]
            ds.private_block(0x2005, PHILIPS, create=True).add_new(0x0E, "FL", value)
        elif scale_slope == "wrong creator":  # (2005,100E) of another creator is another attribute
            ds.private_block(0x2005, "Philips MR Imaging DD 002", create=True).add_new(0x0E, "FL", ss)
        else:
            assert scale_slope == "missing"
        paths.append(folder / path.name)
        ds.save_as(paths[-1], enforce_file_format=True)
        displayed.append(stored * RS + RI)
    return paths, np.stack(displayed)


def _in_load_order(series, per_image: np.ndarray, classic: list[Path]) -> np.ndarray:
    """``per_image`` (in ``classic`` order) in the order of ``series.images`` (slices, echoes)."""
    uids = [str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in classic]
    order = [uids.index(str(ds.SOPInstanceUID)) for ds in series.datasets]
    return per_image[order].reshape(series.images.shape)


def test_a_classic_philips_image_with_an_mr_scale_slope_loads_as_floating_point_values(classic, tmp_path):
    paths, displayed = _philips_classic(classic, tmp_path / "philips")
    ours, theirs = load_t2_series(paths), load_t2_series(classic)
    scales = np.array([0.75 + 0.5 * (k % 5) for k in range(len(classic))])
    expected = _in_load_order(ours, displayed / (RS * scales[:, None, None]), paths)
    np.testing.assert_allclose(ours.images, expected, rtol=1e-12)
    # the image's values, within the rounding of SV = value * SS
    assert np.abs(ours.images - theirs.images).max() <= 0.5 / 0.75 + 1e-9
    assert np.abs(_in_load_order(ours, displayed, paths) - theirs.images).max() > 100  # DV is not FP


@pytest.mark.parametrize("scale_slope", ["missing", "zero", "negative", "not a number", "wrong creator"])
def test_without_a_usable_mr_scale_slope_the_displayed_values_are_loaded(classic, tmp_path, scale_slope):
    paths, displayed = _philips_classic(classic, tmp_path / "philips", scale_slope)
    ours = load_t2_series(paths)
    np.testing.assert_array_equal(ours.images, _in_load_order(ours, displayed, paths))


def _move_scale_slope(path: Path, where: str) -> list[float]:
    """Move each frame's MR Scale Slope of the Philips fixture out of its private frame item to
    ``where``, or break it; the frames' slopes as written."""
    ds = pydicom.dcmread(path)
    slopes = []
    for groups in ds.PerFrameFunctionalGroupsSequence:
        (item,) = groups.private_block(0x2005, "Philips MR Imaging DD 005")[0x0F].value
        slopes.append(float(item.private_block(0x2005, PHILIPS)[0x0E].value))
        if where == "zero":
            item.private_block(0x2005, PHILIPS)[0x0E].value = 0.0
            continue
        if where == "wrong creator":
            item[0x20050010].value = "Philips MR Imaging DD 002"  # the block of (2005,100E): another creator's
            continue
        del groups[0x20050014], groups[0x2005140F]
        if where != "missing":
            target = groups if where == "functional groups" else groups.PixelValueTransformationSequence[0]
            target.private_block(0x2005, PHILIPS, create=True).add_new(0x0E, "FL", slopes[-1])
    ds.save_as(path, enforce_file_format=True)
    return slopes


@pytest.mark.parametrize("where", ["functional groups", "pixel value transformation"])
def test_a_frames_mr_scale_slope_is_found_where_readers_look_for_it(classic, tmp_path, where):
    path = _enhanced(classic, tmp_path / "philips", "philips")
    slopes = _move_scale_slope(path, where)
    views = frame_views(pydicom.dcmread(path))
    assert [mr_scale_slope(v) for v in views] == slopes
    ours, theirs = load_t2_series([path]), load_t2_series(classic)
    assert np.abs(ours.images - theirs.images).max() <= 0.5 / 0.75 + 1e-9


@pytest.mark.parametrize("broken", ["missing", "zero", "wrong creator"])
def test_a_frame_without_a_usable_mr_scale_slope_loads_its_displayed_values(classic, tmp_path, broken):
    path = _enhanced(classic, tmp_path / "philips", "philips")
    _move_scale_slope(path, broken)
    ds = pydicom.dcmread(path)
    assert {mr_scale_slope(v) for v in frame_views(ds)} == {None}
    ours = load_t2_series([path])
    displayed = np.stack([frame_pixels(v) for v in ours.datasets]).reshape(ours.images.shape)
    np.testing.assert_array_equal(ours.images, displayed)
