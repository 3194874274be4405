"""Vendor-style T2 studies pushed to a running node as scanners send them: one storescu association per series.

Checks what the node makes of every series (the job log's classification and reason), that the decoys
(the scanner's own maps, MOLLI) get no job, that classic T2 sources are quantified with the segment
values' truth inside their bounds, and that Enhanced MR sources are reported, not silently stored.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest

from dicom_node.processing import load_t2_series
from dicom_node.vendors import simulate_vendor_t2
from pinn_engine.aha import assign_aha
from pinn_engine.segmentation import Label
from tests.helpers import QUICK_T2_NODE_TOML, NodeProcess, run

# series description -> (classification, job state) the node must reach
EXPECTED = {
    "siemens": {"T2Map": ("t2", "done"), "T2Map_MOCO": ("t2", "done"), "T2Map_MOCO_T2": ("other", None),
                "MOLLI_5(3)3_SAX": ("other", None)},
    "ge": {"T2 Map SAX": ("t2", "done")},
    "philips": {"T2 Map SAX": ("t2", "failed"), "T2 Map SAX_T2": ("other", None)},
    "siemens-xa": {"T2Map": ("t2", "failed"), "T2Map_MOCO_T2": ("other", None), "MOLLI_5(3)3_SAX": ("other", None)},
}


def _truth_within_bounds(summary: dict, truth: np.lib.npyio.NpzFile, series_dir: Path) -> tuple[int, int]:
    """(segments whose true myocardial T2 lies within mean +/- bound, segments reported)."""
    series = load_t2_series(sorted(series_dir.glob("*.dcm")))
    aha = assign_aha(truth["labels"], series.geometry).labels  # the truth's own AHA segments
    myocardium = truth["labels"] == Label.MYOCARDIUM
    inside = 0
    for entry in summary["segments"]:
        true_t2 = float(truth["t2_ms"][myocardium & (aha == entry["aha"])].mean())
        inside += abs(entry["t2_ms"] - true_t2) <= entry["t2_bound_ms"]
    return inside, len(summary["segments"])


@pytest.mark.slow
def test_vendor_studies_through_the_node(tmp_path, dcmtk):
    studies, expected = {}, {}
    for seed, vendor in enumerate(EXPECTED, start=21):
        simulate_vendor_t2(tmp_path / vendor, vendor, seed=seed, matrix=96)
        studies[vendor] = sorted(p for p in (tmp_path / vendor).iterdir() if p.is_dir())
        for folder in studies[vendor]:
            header = pydicom.dcmread(next(folder.glob("*.dcm")), stop_before_pixels=True)
            expected[folder] = (str(header.SeriesInstanceUID), *EXPECTED[vendor][str(header.SeriesDescription)])
    node = NodeProcess(tmp_path / "node", extra_toml=QUICK_T2_NODE_TOML).start()
    try:
        pushed = 0
        for folders in studies.values():
            for folder in folders:  # one association per series, as scanners send
                run(["storescu", "-aec", node.ae_title, "127.0.0.1", node.port, *sorted(folder.glob("*.dcm"))],
                    check=True)
                pushed += 1
        deadline = time.monotonic() + 300
        want = sum(1 for _, _, state in expected.values() if state)
        while time.monotonic() < deadline:
            finished = node.index_count("SELECT COUNT(*) FROM jobs WHERE state IN ('done', 'failed')")
            if len(node.events("series.classified")) >= pushed and finished >= want:
                break
            time.sleep(0.5)
    finally:
        node.stop()

    classified = {e["series_uid"]: e for e in node.events("series.classified")}
    import sqlite3

    conn = sqlite3.connect(node.storage / "index.sqlite")
    jobs = {row[0]: (row[1], row[2], row[3]) for row in conn.execute(
        "SELECT series_uid, kind, state, last_error FROM jobs")}
    conn.close()
    within, reported = 0, 0
    for vendor, folders in studies.items():
        for folder in folders:
            uid, kind, state = expected[folder]
            description = folder.name
            assert classified[uid]["kind"] == kind, (vendor, description, classified[uid])
            if state is None:
                assert uid not in jobs, (vendor, description, jobs.get(uid))  # a decoy: stored and served
                continue
            job_kind, job_state, error = jobs[uid]
            assert (job_kind, job_state) == ("t2", state), (vendor, description, jobs[uid])
            if state == "failed":  # Enhanced MR: said why, in the job
                assert "Enhanced MR (multi-frame)" in error, error
                continue
            summary = json.loads((node.storage / "results" / uid / "summary.json").read_text())
            truth = np.load(tmp_path / vendor / "truth.npz")
            if vendor == "ge":  # the whole stack in one series: every level
                assert len(summary["segments"]) >= 16
                inside, n = _truth_within_bounds(summary, truth, folder)
                within, reported = within + inside, reported + n
    # the bound is a promise about the segment's mean over the node's mask; against the myocardium's true
    # T2 it holds less often (partial volume at the borders): at least most of the time here
    print(f"GE: truth within the bound in {within} of {reported} segments")
    assert reported and within / reported >= 0.5, (within, reported)
