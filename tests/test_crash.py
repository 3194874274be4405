"""kill -9 during ingest: every instance the sender saw acknowledged survives, nothing half-written."""

from __future__ import annotations

import sqlite3
import subprocess
import time

import pydicom
import pytest
from pynetdicom.dsutils import split_dataset

from dicom_node.synthetic import write_mr_series
from tests.helpers import DCMTK_ENV, NodeProcess, acknowledged_files


@pytest.mark.slow
@pytest.mark.parametrize("kill_after", [20, 120, 250])
def test_kill_9_during_storescu(tmp_path, dcmtk, kill_after):
    files = write_mr_series(tmp_path / "series", 300, rows=128, columns=128, seed=kill_after)
    node = NodeProcess(tmp_path / "node").start()
    db = node.storage / "index.sqlite"
    log = open(tmp_path / "storescu.log", "w")  # a file, not a pipe: a full pipe would stall storescu
    sender = subprocess.Popen(
        ["storescu", "-v", "-aec", node.ae_title, "127.0.0.1", str(node.port), *map(str, files)],
        stdout=log, stderr=subprocess.STDOUT, text=True, env=DCMTK_ENV,
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            conn = sqlite3.connect(db)
            try:
                n = conn.execute("SELECT COUNT(*) FROM instances").fetchone()[0]
            except sqlite3.OperationalError:
                n = 0
            finally:
                conn.close()
            if n >= kill_after:
                break
            time.sleep(0.005)
        assert n < 300, "the sender finished before the kill"
        node.kill9()
        sender.wait(timeout=60)
    finally:
        if sender.poll() is None:
            sender.kill()
        log.close()
    output = (tmp_path / "storescu.log").read_text()
    acked = acknowledged_files(output)
    assert 0 < len(acked) < 300, "the kill must land mid-transfer"

    node.start()  # restart on the same storage: the start-up check runs
    try:
        conn = sqlite3.connect(db)
        rows = dict(conn.execute("SELECT sop_instance_uid, path FROM instances").fetchall())
        conn.close()
        for path in acked:
            sop = str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)
            assert sop in rows, f"acknowledged instance {sop} lost"
            stored = node.storage / rows[sop]
            _, off_a = split_dataset(path)
            _, off_b = split_dataset(stored)
            assert stored.read_bytes()[off_b:] == open(path, "rb").read()[off_a:]
        # nothing half-written is visible: every stored file is complete and indexed
        on_disk = list((node.storage / "instances").rglob("*.dcm"))
        assert len(on_disk) == len(rows)
        for f in on_disk:
            ds = pydicom.dcmread(f)
            assert len(ds.PixelData) == 128 * 128 * 2
        assert list((node.storage / "tmp").iterdir()) == []
        checks = node.events("store.consistency_check")
        assert checks and checks[-1]["mode"] == "full"  # unclean shutdown -> full reconciliation
    finally:
        node.stop()
