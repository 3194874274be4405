"""C-ECHO / C-STORE against the node process, with DCMTK and pynetdicom as peers."""

from __future__ import annotations

import socket
import struct
import threading
import time

import pydicom
import pytest
from pydicom.uid import generate_uid
from pynetdicom import AE
from pynetdicom.dsutils import split_dataset
from pynetdicom.sop_class import MRImageStorage, Verification

from dicom_node.synthetic import mr_image, write_mr_series
from tests.helpers import chunked_sending, run
from tests.sample_objects import write_study


@pytest.fixture(scope="module")
def node(tmp_path_factory, dcmtk):
    from tests.helpers import NodeProcess

    n = NodeProcess(tmp_path_factory.mktemp("recv")).start()
    yield n
    n.stop()


def test_echo(node):
    proc = run(["echoscu", "-aec", node.ae_title, "127.0.0.1", node.port])
    assert proc.returncode == 0, proc.stderr


def test_called_ae_must_match(node):
    proc = run(["echoscu", "-aec", "WRONG_AE", "127.0.0.1", node.port])
    assert proc.returncode != 0
    assert "Called AE Title Not Recognized" in proc.stderr or "Rejected" in proc.stderr


def _same_content(stored: pydicom.Dataset, sent: pydicom.Dataset) -> bool:
    """Equal element values; pixel data compared decoded (the byte order may differ)."""
    for ds in (stored, sent):
        for kw in ("PixelData", "FloatPixelData"):
            if kw in ds:
                ds.pixel_array  # noqa: B018 - decode before removing the element
    pixels = [ds.pixel_array.tolist() if ("PixelData" in ds or "FloatPixelData" in ds) else None
              for ds in (stored, sent)]
    for ds in (stored, sent):
        for kw in ("PixelData", "FloatPixelData"):
            if kw in ds:
                delattr(ds, kw)
    return stored == sent and pixels[0] == pixels[1]


def _index_rows(node, study):
    import sqlite3

    conn = sqlite3.connect(node.storage / "index.sqlite")
    try:
        return {r[0]: (r[1], r[2]) for r in conn.execute(
            "SELECT sop_instance_uid, transfer_syntax_uid, path FROM instances WHERE study_uid = ?", [study])}
    finally:
        conn.close()


def test_storescu_every_sop_class_of_a_cardiac_study(node, tmp_path):
    study, files = write_study(tmp_path / "study")
    proc = run(["storescu", "-R", "-aec", node.ae_title, "127.0.0.1", node.port, *files.values()])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = _index_rows(node, study)
    assert len(rows) == len(files)
    for kind, path in files.items():
        sent = pydicom.dcmread(path)
        ts, rel = rows[str(sent.SOPInstanceUID)]
        stored_path = node.storage / rel
        stored = pydicom.dcmread(stored_path)
        if ts == str(sent.file_meta.TransferSyntaxUID):
            # stored as received: the encoded data set bytes are identical
            _, off_sent = split_dataset(path)
            _, off_stored = split_dataset(stored_path)
            assert stored_path.read_bytes()[off_stored:] == path.read_bytes()[off_sent:], kind
        assert _same_content(stored, sent), kind


@pytest.mark.parametrize("name", ["implicit_le", "explicit_le", "explicit_be", "deflated"])
def test_each_transfer_syntax_is_stored_byte_exact(node, tmp_path, name):
    from pynetdicom import build_context

    from tests.sample_objects import TRANSFER_SYNTAXES

    study, files = write_study(tmp_path / "study")
    path = files[f"mr_{name}"]
    ae = AE("PYNETDICOM")
    ae.requested_contexts = [build_context(MRImageStorage, [TRANSFER_SYNTAXES[name]])]
    assoc = ae.associate("127.0.0.1", node.port, ae_title=node.ae_title)
    assert assoc.is_established
    try:
        with chunked_sending():  # the file's bytes, no re-encoding by the sender
            assert assoc.send_c_store(path).Status == 0x0000
    finally:
        assoc.release()
        ae.shutdown()
    sop = str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)
    ts, rel = _index_rows(node, study)[sop]
    assert ts == str(TRANSFER_SYNTAXES[name])
    _, off_sent = split_dataset(path)
    _, off_stored = split_dataset(node.storage / rel)
    assert (node.storage / rel).read_bytes()[off_stored:] == path.read_bytes()[off_sent:]


def _assoc(node, ae_title="PYNETDICOM"):
    from pydicom.uid import ExplicitVRLittleEndian

    ae = AE(ae_title)
    ae.add_requested_context(MRImageStorage, [ExplicitVRLittleEndian])
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", node.port, ae_title=node.ae_title)
    assert assoc.is_established
    return ae, assoc


def test_bad_instances_get_failure_status_and_association_survives(node, tmp_path):
    study, series = generate_uid(), generate_uid()
    good = mr_image(study_uid=study, series_uid=series, instance_number=1)
    no_series = mr_image(study_uid=study, series_uid=series, instance_number=2)
    del no_series.SeriesInstanceUID
    bad_uid = mr_image(study_uid=study, series_uid=series, instance_number=3)
    bad_uid.StudyInstanceUID = "1.2.abc.4"
    truncated_path = tmp_path / "trunc.dcm"
    full = mr_image(study_uid=study, series_uid=series, instance_number=4)
    full.save_as(truncated_path, enforce_file_format=True)
    truncated_path.write_bytes(truncated_path.read_bytes()[:-1000])
    after = mr_image(study_uid=study, series_uid=series, instance_number=5)

    ae, assoc = _assoc(node)
    try:
        assert assoc.send_c_store(good).Status == 0x0000
        assert assoc.send_c_store(no_series).Status == 0xC220
        assert assoc.send_c_store(bad_uid).Status == 0xC221
        with chunked_sending():  # send the truncated bytes as they are
            status = assoc.send_c_store(truncated_path)
        assert status.Status == 0xC210
        assert "declares" in status.ErrorComment
        assert assoc.send_c_store(after).Status == 0x0000
        assert assoc.send_c_echo().Status == 0x0000
    finally:
        assoc.release()
        ae.shutdown()
    assert node.index_count("SELECT COUNT(*) FROM instances WHERE series_uid = ?", [series]) == 2
    stored = {p.name for p in (node.storage / "instances").rglob("*.dcm") if series in str(p)}
    assert stored == {f"{good.SOPInstanceUID}.dcm", f"{after.SOPInstanceUID}.dcm"}
    reasons = [e["reason"] for e in node.events("store.rejected")]
    assert any("SeriesInstanceUID is missing" in r for r in reasons)
    assert any("not a valid UID" in r for r in reasons)
    assert any("declares" in r for r in reasons)


def test_garbage_pdata_aborts_only_that_association(node, tmp_path):
    ae, assoc = _assoc(node)
    sock = assoc.dul.socket.socket
    # A P-DATA-TF PDU whose PDV claims to be a complete command set but holds garbage
    pdv_data = b"\x03" + b"\xde\xad\xbe\xef" * 20  # control header: command, last fragment
    pdv = struct.pack(">IB", len(pdv_data) + 1, 1) + pdv_data
    sock.sendall(struct.pack(">BBI", 0x04, 0x00, len(pdv)) + pdv)
    deadline = time.monotonic() + 10
    while assoc.is_established and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not assoc.is_established  # the node aborted the association
    ae.shutdown()
    # the node keeps working for everyone else
    files = write_mr_series(tmp_path / "after", 3)
    proc = run(["storescu", "-aec", node.ae_title, "127.0.0.1", node.port, *files])
    assert proc.returncode == 0, proc.stderr
    assert run(["echoscu", "-aec", node.ae_title, "127.0.0.1", node.port]).returncode == 0


def test_eight_concurrent_associations(node, tmp_path):
    series_dirs = []
    for k in range(8):
        write_mr_series(tmp_path / f"s{k}", 40, seed=k)
        series_dirs.append(tmp_path / f"s{k}")
    results: list = [None] * 8

    def send(k):
        results[k] = run(["storescu", "+sd", "-aec", node.ae_title, "127.0.0.1", node.port, series_dirs[k]])

    threads = [threading.Thread(target=send, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(180)
    assert all(r is not None and r.returncode == 0 for r in results), [r.stderr for r in results if r]
    uids = [str(pydicom.dcmread(next(d.iterdir()), stop_before_pixels=True).SeriesInstanceUID) for d in series_dirs]
    for uid in uids:
        assert node.index_count("SELECT COUNT(*) FROM instances WHERE series_uid = ?", [uid]) == 40


def test_accepted_sockets_use_tcp_nodelay(tmp_path, dcmtk):
    """Nagle off, and a DUL poll that is quick while PDUs flow and slows once the association idles."""
    import time

    from dicom_node.config import Config, NodeSection
    from dicom_node.netutil import _AdaptivePollDUL, _ResponseKeepingAssociation
    from dicom_node.node import Node
    from tests.helpers import free_port

    cfg = Config(node=NodeSection(port=free_port(), storage=str(tmp_path / "var")))
    n = Node(cfg)
    n.start()
    try:
        ae = AE("CHECK")
        ae.add_requested_context(Verification)
        assoc = ae.associate("127.0.0.1", cfg.node.port, ae_title="PINN_NODE")
        assert assoc.is_established
        server_assocs = n.scp.servers[0].active_associations
        assert server_assocs
        server_sock = server_assocs[0].dul.socket.socket
        assert server_sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
        dul = server_assocs[0].dul
        assert isinstance(dul, _AdaptivePollDUL)
        assert isinstance(server_assocs[0], _ResponseKeepingAssociation)  # C-GET sends on it
        dul.QUIET_S = 30.0  # no slow test machine can make this idle
        assert assoc.send_c_echo().Status == 0
        assert dul._run_loop_delay == dul.BUSY_DELAY_S
        dul.QUIET_S = 0.05
        time.sleep(0.2)
        assert dul._run_loop_delay == dul.IDLE_DELAY_S
        assert assoc.send_c_echo().Status == 0  # answered after an idle spell
        assoc.release()
        ae.shutdown()
    finally:
        n.stop()
