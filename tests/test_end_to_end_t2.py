"""Scanner -> Orthanc (Lua auto-routing) -> node (T2 job) -> Orthanc, with real DCMTK peers."""

from __future__ import annotations

import io
import json
import sys
import time
import urllib.request

import numpy as np
import pydicom
import pytest

from dicom_node.simulate import simulate_t2
from tests.helpers import NodeProcess, results_folder, run
from tests.orthanc import OrthancProcess


def _file(orthanc: OrthancProcess, instance_id: str) -> pydicom.Dataset:
    with urllib.request.urlopen(f"http://127.0.0.1:{orthanc.http_port}/instances/{instance_id}/file", timeout=30) as r:
        return pydicom.dcmread(io.BytesIO(r.read()))


@pytest.mark.slow
def test_t2_series_round_trip_through_a_pacs(tmp_path, dcmtk):
    sim = tmp_path / "scanner"
    simulate_t2(sim, seed=31, snr=40, matrix=192, slices=3)
    truth = np.load(sim / "truth.npz")
    node = NodeProcess(tmp_path / "node", preload=True)
    orthanc = OrthancProcess(tmp_path / "orthanc", node_port=node.port).start()
    node.config_path.write_text(node.config_path.read_text()
                                + "[series]\nstable_seconds = 1.0\ncheck_interval_s = 0.2\nstack_seconds = 0\n"
                                + orthanc.destination_toml() + '[routing]\nsend_results_to = ["pacs"]\n')
    node.start()
    try:
        run(["storescu", "-aec", orthanc.ae_title, "127.0.0.1", orthanc.dicom_port, *sorted(sim.glob("*.dcm"))],
            check=True)
        pushed = time.monotonic()
        deadline = pushed + 240
        want = {"SEG", "SR", "OT", "DOC"}
        series = []
        while time.monotonic() < deadline:
            studies = orthanc.rest("/studies")
            if studies:
                series = orthanc.rest(f"/studies/{studies[0]}/series")
                modalities = {s["MainDicomTags"].get("Modality") for s in series}
                pms = [s for s in series if s["MainDicomTags"].get("SeriesDescription", "").startswith(
                    ("T2 map", "T2 error bound"))]
                if want <= modalities and len(pms) >= 2:
                    break
            time.sleep(1.0)
        else:
            jobs = run([sys.executable, "-m", "dicom_node", "jobs", "--config", node.config_path]).stdout
            raise AssertionError(f"derived objects did not reach Orthanc; series {series}; jobs:\n{jobs}")
        elapsed = time.monotonic() - pushed

        # the workstation view: findscu against Orthanc lists every derived series in the source study
        out = tmp_path / "find"
        out.mkdir()
        study_uid = str(pydicom.dcmread(next(sim.glob("*.dcm")), stop_before_pixels=True).StudyInstanceUID)
        run(["findscu", "-S", "-X", "-od", out, "-aec", orthanc.ae_title, "-k", "QueryRetrieveLevel=SERIES",
             "-k", f"StudyInstanceUID={study_uid}", "-k", "Modality", "-k", "SeriesDescription",
             "-k", "SeriesInstanceUID", "127.0.0.1", orthanc.dicom_port], check=True)
        found = [pydicom.dcmread(p) for p in out.glob("rsp*.dcm")]
        descriptions = {(str(d.Modality), str(d.SeriesDescription)) for d in found}
        for modality, words in ((None, "T2 map"), (None, "T2 error bound"), ("SEG", "Segmentation"),
                                ("SR", "measurement report"), ("OT", "display"), ("DOC", "report")):
            assert any(modality in (None, m) and words in desc for m, desc in descriptions), (words, descriptions)

        # the node's summary.json and the SR in Orthanc agree
        source_series = str(pydicom.dcmread(next(sim.glob("*.dcm")), stop_before_pixels=True).SeriesInstanceUID)
        results = results_folder(node.storage, source_series)
        summary = json.loads((results / "summary.json").read_text())
        picture = results / "t2_display.png"  # written just after the send
        deadline = time.monotonic() + 30
        while not picture.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        by_kind = {s["MainDicomTags"]["Modality"] + ":" + s["MainDicomTags"].get("SeriesDescription", ""): s
                   for s in series}
        sr_series = next(v for k, v in by_kind.items() if k.startswith("SR:"))
        seg_series = next(v for k, v in by_kind.items() if k.startswith("SEG:"))
        sr = _file(orthanc, sr_series["Instances"][0])
        seg = _file(orthanc, seg_series["Instances"][0])
        import highdicom as hd

        report = (hd.sr.Comprehensive3DSR.from_dataset(sr) if sr.SOPClassUID.endswith(".34")
                  else hd.sr.ComprehensiveSR.from_dataset(sr))
        sr_means = {}
        for group in report.content.get_volumetric_roi_measurement_groups():
            tracking = str(group.tracking_identifier)
            mean = next(m for m in group.get_measurements() if m.derivation and m.derivation.value == "373098007")
            sr_means[tracking] = mean.value
        for s in summary["segments"]:
            assert abs(sr_means[f"AHA segment {s['aha']}"] - s["t2_ms"]) < 1e-3
        assert abs(sr_means["LV myocardium"] - summary["global"]["t2_ms"]) < 1e-3

        # the values agree with the phantom's truth within the reported bounds
        first = sorted([pydicom.dcmread(p, stop_before_pixels=True) for p in sim.glob("*_e01.dcm")],
                       key=lambda d: d.InstanceNumber)
        iop = np.array(first[0].ImageOrientationPatient, float)
        normal = np.cross(iop[:3], iop[3:])
        z_src = [float(np.array(d.ImagePositionPatient, float) @ normal) for d in first]
        segment_of = {int(x.SegmentNumber): str(x.TrackingID) for x in seg.SegmentSequence}
        masks: dict[str, np.ndarray] = {}
        frames = seg.pixel_array if seg.pixel_array.ndim == 3 else seg.pixel_array[None]
        for frame, group in zip(frames, seg.PerFrameFunctionalGroupsSequence, strict=True):
            number = int(group.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
            z = float(np.array(group.PlanePositionSequence[0].ImagePositionPatient, float) @ normal)
            k = int(np.argmin([abs(z - v) for v in z_src]))
            masks.setdefault(segment_of[number], np.zeros(truth["t2_ms"].shape, bool))[k] |= frame.astype(bool)
        hits = []
        for s in summary["segments"]:
            mask = masks[f"AHA segment {s['aha']}"]
            true_mean = float(truth["t2_ms"][mask].mean())
            hits.append(abs(s["t2_ms"] - true_mean) <= s["t2_bound_ms"])
        assert len(hits) >= 12 and np.mean(hits) >= 0.94, (hits, summary["segments"])
        print(f"last instance pushed -> derived objects in Orthanc: {elapsed:.1f} s")
    finally:
        node.stop()
        orthanc.stop()
