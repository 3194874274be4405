"""The node and ``dicom-node process`` run the same processing: same config, same derived objects.

A T2 series and a perfusion series with its pre-bolus are pushed to a running node with
DCMTK ``storescu`` and, separately, processed offline from their folders with the node's
configuration file. Every derived object must be the same: UIDs, pixel values and the SR's
measurements, indeed every attribute but the moment it was made.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time

import pydicom
import pytest

from dicom_node.simulate import simulate_perfusion, simulate_t2
from tests.helpers import QUICK_T2_NODE_TOML, NodeProcess, results_folder, run

# when an object was made: the only attributes allowed to differ between two runs
WHEN_MADE = {"ContentDate", "ContentTime", "InstanceCreationDate", "InstanceCreationTime", "SeriesDate",
             "SeriesTime", "ContributionDateTime", "AcquisitionDateTime", "DateOfSecondaryCapture",
             "TimeOfSecondaryCapture"}
_PDF_DATES = re.compile(rb"/(CreationDate|ModDate)\s*\([^)]*\)")

CONFIG = QUICK_T2_NODE_TOML + """confidence = 0.9
perfusion_method = "nlls"
hematocrit = 0.42
[[classify]]
kind = "other"
series_description = "^Localizer"
"""


def _differences(a: pydicom.Dataset, b: pydicom.Dataset, where: str = "") -> list[str]:
    """Every attribute (recursively) in which ``a`` and ``b`` differ, but for when they were made."""
    out = []
    for tag in sorted(set(a.keys()) | set(b.keys())):
        name = pydicom.datadict.keyword_for_tag(tag) or str(tag)
        if name in WHEN_MADE:
            continue
        if tag not in a or tag not in b:
            out.append(f"{where}{name}: only in {'offline' if tag in a else 'node'}")
            continue
        ea, eb = a[tag], b[tag]
        if ea.VR == "SQ":
            if len(ea.value) != len(eb.value):
                out.append(f"{where}{name}: {len(ea.value)} vs {len(eb.value)} items")
                continue
            for k, (ia, ib) in enumerate(zip(ea.value, eb.value, strict=True)):
                out += _differences(ia, ib, f"{where}{name}[{k}].")
        elif name == "EncapsulatedDocument":  # the PDF says when it was written
            if _PDF_DATES.sub(b"", ea.value) != _PDF_DATES.sub(b"", eb.value):
                out.append(f"{where}{name}: the PDFs differ")
        elif ea.value != eb.value:
            out.append(f"{where}{name}: {str(ea.value)[:60]!r} vs {str(eb.value)[:60]!r}")
    return out


def _wait_for_jobs(node: NodeProcess, count: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        failed = node.index_count("SELECT COUNT(*) FROM jobs WHERE state = 'failed' OR attempts > 1")
        done = node.index_count("SELECT COUNT(*) FROM jobs WHERE state = 'done'")
        if failed or done >= count:
            break
        time.sleep(0.5)
    jobs = run([sys.executable, "-m", "dicom_node", "jobs", "--config", node.config_path]).stdout
    assert done == count and not failed, f"node jobs:\n{jobs}\n{node.output.read_text()[-3000:]}"


def _node_copy(node: NodeProcess, sop_instance_uid: str) -> pydicom.Dataset:
    path = node.index_count("SELECT path FROM instances WHERE sop_instance_uid = ?", [sop_instance_uid])
    return pydicom.dcmread(node.storage / path)


@pytest.mark.slow
def test_node_and_offline_processing_write_identical_derived_objects(tmp_path, dcmtk):
    t2 = tmp_path / "t2"
    simulate_t2(t2, seed=5, matrix=96, slices=2)
    perfusion = tmp_path / "perfusion"
    simulate_perfusion(perfusion, seed=6, matrix=96, frames=40, prebolus=True)
    node = NodeProcess(tmp_path / "node", extra_toml=CONFIG).start()
    try:
        # the pre-bolus first, as a scanner acquires it; the perfusion job pairs it from the index
        for folder in (perfusion / "prebolus", perfusion, t2):
            run(["storescu", "-aec", node.ae_title, "127.0.0.1", node.port, *sorted(folder.glob("*.dcm"))],
                check=True)
            time.sleep(1.0)  # each series completes on its own
        _wait_for_jobs(node, 2, timeout=600)
    finally:
        node.stop()

    checked = 0
    for name, folder in (("t2", t2), ("perfusion", perfusion)):
        out = tmp_path / f"offline-{name}"
        proc = subprocess.run([sys.executable, "-m", "dicom_node", "process", str(folder), "--out", str(out),
                               "--config", str(node.config_path)], capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr
        offline = sorted(out.glob("*.dcm"))
        assert len(offline) == (6 + 2 if name == "t2" else 8 + 3), offline  # + one background image per slice
        for path in offline:
            ours = pydicom.dcmread(path)
            theirs = _node_copy(node, str(ours.SOPInstanceUID))
            assert not _differences(ours, theirs), (path.name, _differences(ours, theirs)[:10])
            checked += 1
        # the node's results folder holds the same summary, but for timings
        ours = json.loads((out / "summary.json").read_text())
        series_uid = str(pydicom.dcmread(next(folder.glob("*.dcm")), stop_before_pixels=True).SeriesInstanceUID)
        theirs = json.loads((results_folder(node.storage, series_uid) / "summary.json").read_text())
        for summary in (ours, theirs):
            summary.pop("timings_s")
        assert ours == theirs
    assert checked == 19
    # the configuration reached both: the offline T2 map was fitted as the node's [engine] says
    summary = json.loads((tmp_path / "offline-t2" / "summary.json").read_text())
    assert (summary["method"], summary["confidence"]) == ("nlls", 0.9)
    perf = json.loads((tmp_path / "offline-perfusion" / "summary.json").read_text())
    assert perf["parameters"]["hct"] == 0.42 and perf["prebolus"]["used"]
