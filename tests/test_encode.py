"""Derived objects: Parametric Maps and SEG validated by dciodvfy and read back."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest

from dicom_node.encode.common import Algorithm
from dicom_node.encode.parametric_map import encode_parametric_map, t2_bound_spec, t2_map_spec
from dicom_node.encode.segmentation import AHA_CODES, encode_segmentation
from dicom_node.simulate import simulate_t2
from pinn_engine.aha import SliceGeometry, assign_aha
from tests.derived_objects import ALG
from tests.derived_objects import all_objects as _all_objects
from tests.derived_objects import report_inputs as _report_inputs


@pytest.fixture(scope="module")
def series(tmp_path_factory):
    out = tmp_path_factory.mktemp("sim")
    simulate_t2(out, seed=11, matrix=96, slices=3)
    ds = [pydicom.dcmread(p) for p in sorted(out.glob("*.dcm"))]
    first = sorted([d for d in ds if float(d.EchoTime) == 0], key=lambda d: d.InstanceNumber)
    truth = np.load(out / "truth.npz")
    return first, truth


def dciodvfy(ds: pydicom.Dataset, tmp_path: Path) -> list[str]:
    assert shutil.which("dciodvfy"), "dicom3tools missing: scripts/bootstrap.sh installs it"
    path = tmp_path / f"{ds.SOPInstanceUID}.dcm"
    ds.save_as(path, enforce_file_format=True)
    proc = subprocess.run(["dciodvfy", "-new", str(path)], capture_output=True, text=True)
    return [line for line in (proc.stdout + proc.stderr).splitlines() if line.startswith(("Error", "Warning"))]




def frames(ds: pydicom.Dataset) -> np.ndarray:
    arr = ds.pixel_array
    return arr if arr.ndim == 3 else arr[None]


def frame_slices(ds: pydicom.Dataset, sources: list[pydicom.Dataset]) -> list[int]:
    """Index into ``sources`` of every frame, by its plane position."""
    iop = np.array(sources[0].ImageOrientationPatient, float)
    normal = np.cross(iop[:3], iop[3:])
    z_src = [float(np.array(d.ImagePositionPatient, float) @ normal) for d in sources]
    out = []
    for group in ds.PerFrameFunctionalGroupsSequence:
        z = float(np.array(group.PlanePositionSequence[0].ImagePositionPatient, float) @ normal)
        out.append(int(np.argmin([abs(z - v) for v in z_src])))
    return out


@pytest.mark.parametrize("spec", [t2_map_spec(), t2_bound_spec(0.95)], ids=["t2", "bound"])
def test_parametric_map_valid_and_round_trips(series, tmp_path, spec):
    first, truth = series
    values = truth["t2_ms"].astype(np.float64)
    values[0, 0, 0] = np.nan  # no estimate -> sentinel 0
    pm = encode_parametric_map(first, values, spec, ALG, 900)
    assert dciodvfy(pm, tmp_path) == []
    back = pydicom.dcmread(tmp_path / f"{pm.SOPInstanceUID}.dcm")
    assert back.SOPClassUID == "1.2.840.10008.5.1.4.1.1.30" and back.BodyPartExamined == "HEART"
    assert list(back.ImageType)[3] == spec.image_type
    rwvm = back.SharedFunctionalGroupsSequence[0].RealWorldValueMappingSequence[0]
    assert rwvm.LUTLabel == spec.lut_label and rwvm.MeasurementUnitsCodeSequence[0].CodeValue == "ms"
    assert back.SharedFunctionalGroupsSequence[0].FrameAnatomySequence[0].FrameLaterality == "U"
    expected = np.where(np.isfinite(values), values, 0).astype(np.float32)
    for frame, k in zip(frames(back), frame_slices(back, first), strict=True):
        np.testing.assert_array_equal(frame, expected[k])
    assert back.StudyInstanceUID == first[0].StudyInstanceUID and back.PatientID == first[0].PatientID


def test_uids_are_deterministic_and_versioned(series):
    first, truth = series
    a = encode_parametric_map(first, truth["t2_ms"], t2_map_spec(), ALG, 900)
    b = encode_parametric_map(first[::-1], truth["t2_ms"][::-1], t2_map_spec(), ALG, 900)
    c = encode_parametric_map(first, truth["t2_ms"], t2_map_spec(), Algorithm("pinn-t2", "9.9", ALG.parameters), 900)
    assert a.SOPInstanceUID == b.SOPInstanceUID and a.SeriesInstanceUID == b.SeriesInstanceUID
    np.testing.assert_array_equal(frames(a), frames(b))  # input order does not matter
    assert c.SOPInstanceUID != a.SOPInstanceUID


def test_segmentation_valid_with_aha_segments(series, tmp_path):
    first, truth = series
    labels = truth["labels"]
    geom = [SliceGeometry(np.array(d.ImageOrientationPatient[:3], float),
                          np.array(d.ImageOrientationPatient[3:], float),
                          tuple(map(float, d.PixelSpacing)), np.array(d.ImagePositionPatient, float)) for d in first]
    aha = assign_aha(labels, geom)
    seg, tracking = encode_segmentation(first, labels, aha.labels, Algorithm("pinn-seg"), 901)
    assert dciodvfy(seg, tmp_path) == []
    back = pydicom.dcmread(tmp_path / f"{seg.SOPInstanceUID}.dcm")
    assert back.SegmentationType == "BINARY" and back.BodyPartExamined == "HEART"
    segs = {s.SegmentNumber: s for s in back.SegmentSequence}
    assert segs[1].SegmentedPropertyTypeCodeSequence[0].CodeValue == "49848007"
    present = aha.segments_present()
    assert tracking[f"AHA segment {present[0]}"] == 4
    aha_codes = {s.SegmentedPropertyTypeCodeSequence[0].CodeValue for n, s in segs.items() if n > 3}
    assert aha_codes == {AHA_CODES[k][0] for k in present}
    for s in segs.values():
        assert s.SegmentAlgorithmType == "AUTOMATIC" and "RecommendedDisplayCIELabValue" in s
    # frames: each (segment, slice) mask equals the input
    for frame, k, group in zip(frames(back), frame_slices(back, first), back.PerFrameFunctionalGroupsSequence,
                               strict=True):
        number = group.SegmentIdentificationSequence[0].ReferencedSegmentNumber
        expected = {1: labels[k] == 2, 2: labels[k] == 1, 3: labels[k] == 3}.get(number)
        if expected is None:
            expected = aha.labels[k] == present[number - 4]
        np.testing.assert_array_equal(frame.astype(bool), expected)


def test_report_valid_and_readable(series, tmp_path):
    from dicom_node.encode.report import encode_report

    first, pm, seg, tracking, regions, ctx = _report_inputs(series, tmp_path)
    sr = encode_report(first, seg, tracking, pm, regions, ctx, ALG, 902)
    assert sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.33"
    assert dciodvfy(sr, tmp_path) == []
    path = tmp_path / f"{sr.SOPInstanceUID}.dcm"
    assert subprocess.run(["dsrdump", "+Pt", str(path)], capture_output=True).returncode == 0
    again = encode_report(first, seg, tracking, pm, regions, ctx, ALG, 902)
    assert again.SOPInstanceUID == sr.SOPInstanceUID


def test_dcmqi_reads_every_object_and_sr_means_equal_pm_over_seg(series, tmp_path):
    import json

    import SimpleITK as sitk

    from dicom_node.encode.report import encode_report

    bindir = Path(__import__("sys").executable).parent  # the virtual environment's bin (not resolved)
    tool = lambda name: str(bindir / name) if (bindir / name).exists() else name  # noqa: E731
    first, pm, seg, tracking, regions, ctx = _report_inputs(series, tmp_path)
    sr = encode_report(first, seg, tracking, pm, regions, ctx, ALG, 902)
    paths = {}
    for name, ds in (("pm", pm), ("seg", seg), ("sr", sr)):
        paths[name] = tmp_path / f"{name}.dcm"
        ds.save_as(paths[name], enforce_file_format=True)
    (tmp_path / "pm_out").mkdir()
    (tmp_path / "seg_out").mkdir()
    run = lambda *a: subprocess.run([str(x) for x in a], capture_output=True, text=True, timeout=120)  # noqa: E731
    r = run(tool("paramap2itkimage"), "--inputDICOM", paths["pm"], "--outputDirectory", tmp_path / "pm_out",
            "-t", "nrrd")
    assert r.returncode == 0, r.stdout + r.stderr
    r = run(tool("segimage2itkimage"), "--inputDICOM", paths["seg"], "--outputDirectory", tmp_path / "seg_out",
            "-t", "nrrd")
    assert r.returncode == 0, r.stdout + r.stderr
    r = run(tool("tid1500reader"), "--inputDICOM", paths["sr"], "--outputMetadata", tmp_path / "sr.json")
    assert r.returncode == 0, r.stdout + r.stderr
    pm_img = sitk.ReadImage(str(tmp_path / "pm_out" / "pmap.nrrd"))
    pm_values = sitk.GetArrayFromImage(pm_img)
    # the map read back equals what was written (slices matched by position)
    t2 = series[1]["t2_ms"].astype(np.float32)
    assert any(np.array_equal(pm_values, t) for t in (t2, t2[::-1]))
    report = json.loads((tmp_path / "sr.json").read_text())
    checked = 0
    for group in report["Measurements"]:
        number = int(group["ReferencedSegment"])
        seg_img = sitk.ReadImage(str(tmp_path / "seg_out" / f"{number}.nrrd"))
        mask = sitk.GetArrayFromImage(sitk.Resample(seg_img, pm_img, sitk.Transform(), sitk.sitkNearestNeighbor)) > 0
        mean_item = next(m for m in group["measurementItems"]
                         if m.get("derivationModifier", {}).get("CodeValue") == "373098007")
        assert abs(float(mean_item["value"]) - float(pm_values[mask].mean())) < 0.01
        prop = mean_item["measurementNumProperties"][0]
        assert prop["numProperty"]["CodeValue"] == "371884006" and prop["numPropertyUnits"]["CodeValue"] == "ms"
        checked += 1
    assert checked == len(regions)


def test_display_copies_valid_and_carry_patient_study(series, tmp_path):
    first, objs = _all_objects(series, tmp_path)
    for name in ("sc", "pdf"):
        ds = objs[name]
        assert dciodvfy(ds, tmp_path) == [], name
        for kw in ("PatientID", "PatientName", "StudyInstanceUID", "StudyDescription", "PatientAge", "PatientWeight"):
            assert ds.get(kw) == first[0].get(kw), (name, kw)
        assert ds.BurnedInAnnotation == "YES"
    sc = objs["sc"]
    assert sc.SamplesPerPixel == 3 and sc.PhotometricInterpretation == "RGB" and sc.pixel_array.ndim == 3
    assert objs["pdf"].EncapsulatedDocument.startswith(b"%PDF")


def test_dcentvfy_source_plus_derived(series, tmp_path):
    first, objs = _all_objects(series, tmp_path)
    paths = []
    for d in first:
        p = tmp_path / f"src_{d.SOPInstanceUID}.dcm"
        d.save_as(p, enforce_file_format=True)
        paths.append(p)
    for name, ds in objs.items():
        p = tmp_path / f"{name}.dcm"
        ds.save_as(p, enforce_file_format=True)
        paths.append(p)
    proc = subprocess.run(["dcentvfy", *map(str, paths)], capture_output=True, text=True)
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
    unexpected = [line for line in lines if "AccessionNumber" not in line]
    assert unexpected == [], unexpected
    # every derived object joins the source study, one series per object kind
    series_uids = {ds.SeriesInstanceUID for ds in objs.values()}
    assert len(series_uids) == len(objs) and first[0].SeriesInstanceUID not in series_uids
    assert {ds.StudyInstanceUID for ds in objs.values()} == {first[0].StudyInstanceUID}


def test_same_encoder_serves_mbf(series, tmp_path):
    from dicom_node.encode.parametric_map import mbf_map_spec

    first, truth = series
    mbf = np.where(truth["labels"] == 2, 1.1, 0.0)
    pm = encode_parametric_map(first, mbf, mbf_map_spec(), ALG, 910)
    # no defined term of Image Type value 4 means absolute blood flow (the MR list has only
    # RCBF, relative cerebral): the extensible term BLOOD_FLOW draws a warning, not an error
    problems = dciodvfy(pm, tmp_path)
    assert [p for p in problems if p.startswith("Error")] == []
    assert all("BLOOD_FLOW" in p for p in problems)
    rwvm = pm.SharedFunctionalGroupsSequence[0].RealWorldValueMappingSequence[0]
    assert rwvm.MeasurementUnitsCodeSequence[0].CodeValue == "ml/min/g"
    assert rwvm.QuantityDefinitionSequence[0].ConceptCodeSequence[0].CodeValue == "126390"


def test_highdicom_reads_seg_and_sr(series, tmp_path):
    import highdicom as hd

    from dicom_node.encode.report import encode_report

    first, pm, seg, tracking, regions, ctx = _report_inputs(series, tmp_path)
    sr = encode_report(first, seg, tracking, pm, regions, ctx, ALG, 902)
    for name, ds in (("seg", seg), ("sr", sr)):
        ds.save_as(tmp_path / f"{name}.dcm", enforce_file_format=True)
    seg_back = hd.seg.segread(tmp_path / "seg.dcm")
    assert seg_back.number_of_segments == len(tracking)
    assert seg_back.get_segment_description(1).segment_label == "LV myocardium"
    sr_back = hd.sr.srread(tmp_path / "sr.dcm")
    groups = sr_back.content.get_volumetric_roi_measurement_groups()
    assert len(groups) == len(regions)
    mean = groups[0].get_measurements()[0]
    assert mean.value == pytest.approx(regions[0].mean)
    # TID 310 property (highdicom has no accessor: read the content items)
    props = [i for i in mean[0].ContentSequence if i.ConceptNameCodeSequence[0].CodeValue == "371884006"]
    assert float(props[0].MeasuredValueSequence[0].NumericValue) == pytest.approx(regions[0].bound)


def test_references_made_before_encoding_match_the_objects(series, tmp_path):
    """The SR is built from references to the map and SEG while they are encoded: same identities."""
    from dicom_node.encode.parametric_map import parametric_map_reference
    from dicom_node.encode.segmentation import segmentation_reference
    from pinn_engine.aha import SliceGeometry, assign_aha

    first, pm, seg, tracking, _, _ = _report_inputs(series, tmp_path)
    labels = series[1]["labels"]
    geom = [SliceGeometry(np.array(d.ImageOrientationPatient[:3], float),
                          np.array(d.ImageOrientationPatient[3:], float),
                          tuple(map(float, d.PixelSpacing)), np.array(d.ImagePositionPatient, float)) for d in first]
    seg_ref, ref_tracking = segmentation_reference(first, assign_aha(labels, geom).labels, ALG)
    pm_ref = parametric_map_reference(first, t2_map_spec(), ALG)
    assert ref_tracking == tracking
    for ref, obj in ((seg_ref, seg), (pm_ref, pm)):
        for kw in ("StudyInstanceUID", "SeriesInstanceUID", "SOPClassUID", "SOPInstanceUID"):
            assert ref[kw].value == obj[kw].value, kw
