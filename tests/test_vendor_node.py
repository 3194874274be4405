"""Vendor-style T2 studies pushed to a running node as scanners send them: one storescu association per series.

Checks what the node makes of every series (the job log's classification and reason), that the decoys
(the scanner's own maps, MOLLI) get no job, that each study's T2 source series become one stack (one job,
one set of results naming the series it used: the motion-corrected Siemens copies, the Enhanced MR
instances of Siemens XA and Philips), with the segment values' truth inside their bounds; and that a
slice arriving after the stack was processed re-processes it, replacing the results in the PACS
(Orthanc) under the same UIDs rather than adding a contradicting second report.
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest

from dicom_node.vendors import simulate_vendor_t2
from tests.helpers import QUICK_T2_NODE_TOML, NodeProcess, results_folder, run, segment_truth
from tests.orthanc import OrthancProcess

# series description -> (classification, whether the study's stack uses it)
EXPECTED = {
    "siemens": {"T2Map": ("t2", False), "T2Map_MOCO": ("t2", True), "T2Map_MOCO_T2": ("other", False),
                "MOLLI_5(3)3_SAX": ("other", False)},
    "ge": {"T2 Map SAX": ("t2", True)},
    "philips": {"T2 Map SAX": ("t2", True), "T2 Map SAX_T2": ("other", False)},
    "siemens-xa": {"T2Map": ("t2", True), "T2Map_MOCO_T2": ("other", False), "MOLLI_5(3)3_SAX": ("other", False)},
}
STACK_S = 5.0  # the series of one study are pushed within this: they make one job


def _node_toml(stack_seconds: float) -> str:
    return QUICK_T2_NODE_TOML.replace("stack_seconds = 0", f"stack_seconds = {stack_seconds}")


def _series(folder: Path) -> tuple[str, str]:
    header = pydicom.dcmread(next(folder.glob("*.dcm")), stop_before_pixels=True)
    return str(header.SeriesInstanceUID), str(header.SeriesDescription)


def _wait(condition, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.5)
    return False


@pytest.mark.slow
def test_vendor_studies_through_the_node(tmp_path, dcmtk):
    studies: dict[str, list[Path]] = {}
    for seed, vendor in enumerate(EXPECTED, start=21):
        simulate_vendor_t2(tmp_path / vendor, vendor, seed=seed, matrix=96)
        studies[vendor] = sorted(p for p in (tmp_path / vendor).iterdir() if p.is_dir())
    node = NodeProcess(tmp_path / "node", extra_toml=_node_toml(STACK_S)).start()
    try:
        pushed = 0
        for folders in studies.values():
            for folder in folders:  # one association per series, as scanners send
                run(["storescu", "-aec", node.ae_title, "127.0.0.1", node.port, *sorted(folder.glob("*.dcm"))],
                    check=True)
                pushed += 1
        _wait(lambda: len(node.events("series.classified")) >= pushed and node.index_count(
            "SELECT COUNT(*) FROM jobs WHERE state IN ('done', 'failed')") >= len(studies), 300)
        time.sleep(0.5)  # no further job may appear
    finally:
        node.stop()

    classified = {e["series_uid"]: e for e in node.events("series.classified")}
    conn = sqlite3.connect(node.storage / "index.sqlite")
    jobs = conn.execute("SELECT series_uid, study_uid, kind, state, last_error FROM jobs").fetchall()
    conn.close()
    within, reported = 0, 0
    for vendor, folders in studies.items():
        series = {folder: _series(folder) for folder in folders}
        for uid, description in series.values():
            assert classified[uid]["kind"] == EXPECTED[vendor][description][0], (vendor, description,
                                                                                 classified[uid])
        used = {uid for uid, description in series.values() if EXPECTED[vendor][description][1]}
        study_uid = str(pydicom.dcmread(next(folders[0].glob("*.dcm")), stop_before_pixels=True).StudyInstanceUID)
        study_jobs = [j for j in jobs if j[1] == study_uid]
        # one T2 job for the study's stack, never one for a decoy
        assert [(kind, state) for _, _, kind, state, _ in study_jobs] == [("t2", "done")], (vendor, study_jobs)
        summary = json.loads((results_folder(node.storage, next(iter(used))) / "summary.json").read_text())
        assert set(summary["stack"]["source_series"]) == used, (vendor, summary["stack"])
        assert len(summary["segments"]) == 16, (vendor, [s["aha"] for s in summary["segments"]])
        used_folders = sorted((f for f, (uid, _) in series.items() if uid in used),
                              key=lambda f: summary["stack"]["source_series"].index(series[f][0]))
        rows = segment_truth(summary, np.load(tmp_path / vendor / "truth.npz"), used_folders)
        inside, n = sum(r["inside"] for r in rows), len(rows)
        print(f"{vendor}: {len(used)} source series in the stack; truth within the bound in {inside} of {n}")
        within, reported = within + inside, reported + n
    # the bound is a promise about the segment's mean over the node's mask; against the myocardium's true
    # T2 it holds less often (partial volume at the borders): at least most of the time here
    assert reported and within / reported >= 0.5, (within, reported)


@pytest.mark.slow
def test_a_late_slice_reprocesses_the_stack_and_replaces_the_results_in_the_pacs(tmp_path, dcmtk):
    simulate_vendor_t2(tmp_path / "siemens", "siemens", seed=31, matrix=96)
    moco = sorted(p for p in (tmp_path / "siemens").iterdir() if p.is_dir() and p.name.endswith("T2Map_MOCO"))
    assert len(moco) == 3
    node = NodeProcess(tmp_path / "node", extra_toml=_node_toml(1.0))
    orthanc = OrthancProcess(tmp_path / "orthanc", node_port=node.port).start()
    node.config_path.write_text(node.config_path.read_text() + orthanc.destination_toml()
                                + '[routing]\nsend_results_to = ["pacs"]\n')
    node.start()

    def jobs_done(n: int):
        return lambda: node.index_count("SELECT COUNT(*) FROM jobs WHERE state IN ('done', 'failed')") >= n

    def pacs_reports() -> list[dict]:
        return [orthanc.rest(f"/instances/{i}/simplified-tags") for s in orthanc.rest("/series?expand")
                if s["MainDicomTags"].get("Modality") == "SR" for i in s["Instances"]]

    try:
        for folder in moco[:2]:  # base and mid; the apex breath-hold comes later
            run(["storescu", "-aec", node.ae_title, "127.0.0.1", node.port, *sorted(folder.glob("*.dcm"))],
                check=True)
        assert _wait(jobs_done(1), 300)
        first = json.loads((results_folder(node.storage, _series(moco[0])[0]) / "summary.json").read_text())
        assert _wait(lambda: len(pacs_reports()) == 1, 60)
        run(["storescu", "-aec", node.ae_title, "127.0.0.1", node.port, *sorted(moco[2].glob("*.dcm"))], check=True)
        assert _wait(jobs_done(2), 300)
        second = json.loads((results_folder(node.storage, _series(moco[2])[0]) / "summary.json").read_text())
        time.sleep(1.0)
        reports = pacs_reports()
        maps = [s for s in orthanc.rest("/series?expand") if s["MainDicomTags"].get("SeriesDescription", "")
                == "T2 map (PINN node)"]
        background = [s for s in orthanc.rest("/series?expand") if "background" in
                      s["MainDicomTags"].get("SeriesDescription", "")]
        map_frames = int(orthanc.rest(f"/instances/{maps[0]['Instances'][0]}/simplified-tags")["NumberOfFrames"])
    finally:
        node.stop()
        orthanc.stop()
    assert node.index_count("SELECT COUNT(*) FROM jobs WHERE state = 'done'") == 2
    assert first["stack"]["uid"] == second["stack"]["uid"]
    assert len(first["stack"]["source_series"]) == 2 and len(second["stack"]["source_series"]) == 3
    # the same UIDs: the second run's objects replaced the first's, in the node and in the PACS
    # (background images are named by their position, so the third slice only adds one)
    assert {v["sop_instance_uid"] for v in first["derived"].values()} <= {
        v["sop_instance_uid"] for v in second["derived"].values()}
    assert len(second["derived"]) == len(first["derived"]) + 1
    assert len(reports) == 1 and reports[0]["SOPInstanceUID"] == second["derived"]["sr"]["sop_instance_uid"]
    assert len(maps) == 1 and len(maps[0]["Instances"]) == 1 and map_frames == 3  # the new content
    assert len(background) == 1 and len(background[0]["Instances"]) == 3
    assert len(first["segments"]) < len(second["segments"]) == 16
