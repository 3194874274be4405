"""The node's storage SCU: re-association after aborts and lost responses, no false success."""

from __future__ import annotations

import sys
import time

import pydicom
import pytest
from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import Verification

from dicom_node.config import SendSection
from dicom_node.send import OutgoingInstance, StorageSender
from dicom_node.synthetic import write_mr_series
from tests.helpers import free_port, run


def outgoing(files):
    out = []
    for f in files:
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        out.append(OutgoingInstance(f, str(ds.SOPClassUID), str(ds.SOPInstanceUID),
                                    str(ds.file_meta.TransferSyntaxUID)))
    return out


class FlakySCP:
    """A pynetdicom storage SCP that misbehaves once, on the n-th C-STORE."""

    def __init__(self, mode: str, at: int, status: int = 0xA700):
        self.mode, self.at, self.status = mode, at, status
        self.calls = 0
        self.stored: set[str] = set()
        self.port = free_port()
        self.ae = AE("FLAKY")
        self.ae.dimse_timeout = 30
        for cx in AllStoragePresentationContexts:
            self.ae.add_supported_context(cx.abstract_syntax)
        self.ae.add_supported_context(Verification)

    def handle(self, event):
        self.calls += 1
        uid = str(event.request.AffectedSOPInstanceUID)
        if self.calls == self.at:
            if self.mode == "abort":
                event.assoc.abort()
                return 0x0000
            if self.mode == "silent":
                time.sleep(3.0)  # longer than the sender's DIMSE timeout: the response is lost
                self.stored.add(uid)
                return 0x0000
            if self.mode == "refuse":
                return self.status
        self.stored.add(uid)
        return 0x0000

    def __enter__(self):
        self.server = self.ae.start_server(("127.0.0.1", self.port), block=False,
                                           evt_handlers=[(evt.EVT_C_STORE, self.handle)])
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.ae.shutdown()


@pytest.mark.parametrize("mode", ["abort", "silent"])
def test_reassociates_and_resends_unacknowledged(tmp_path, mode):
    files = write_mr_series(tmp_path / "s", 10, rows=16, columns=16)
    with FlakySCP(mode, at=4) as scp:
        sender = StorageSender("PINN_NODE", SendSection(dimse_timeout_s=1.0, backoff_s=0.1, reassociations=3))
        report = sender.send("FLAKY", "127.0.0.1", scp.port, outgoing(files))
    assert report.complete
    assert len(set(report.acknowledged)) == 10
    assert report.associations == 2
    assert scp.stored == {o.sop_instance_uid for o in outgoing(files)}


def test_refusal_is_not_reported_as_success(tmp_path):
    files = write_mr_series(tmp_path / "s", 5, rows=16, columns=16)
    with FlakySCP("refuse", at=2, status=0xA700) as scp:
        report = StorageSender("PINN_NODE").send("FLAKY", "127.0.0.1", scp.port, outgoing(files))
    assert not report.complete
    refused = outgoing(files)[1].sop_instance_uid
    assert report.failed == {refused: 0xA700}
    assert refused not in report.acknowledged and len(report.acknowledged) == 4


def test_unreachable_peer_is_unacknowledged(tmp_path):
    files = write_mr_series(tmp_path / "s", 2, rows=16, columns=16)
    sender = StorageSender("PINN_NODE", SendSection(reassociations=1, backoff_s=0.05, acse_timeout_s=1))
    report = sender.send("NOBODY", "127.0.0.1", free_port(), outgoing(files))
    assert not report.complete and len(report.unacknowledged) == 2 and not report.acknowledged


def test_cli_echo_and_send(storescp_factory, tmp_path):
    dest = storescp_factory(ae_title="DEST")
    addr = f"DEST@127.0.0.1:{dest.port}"
    echo = run([sys.executable, "-m", "dicom_node", "echo", addr])
    assert echo.returncode == 0 and "success" in echo.stdout
    files = write_mr_series(tmp_path / "s", 7, rows=16, columns=16)
    (tmp_path / "s" / "notes.txt").write_text("not dicom")
    send = run([sys.executable, "-m", "dicom_node", "send", "--to", addr, str(tmp_path / "s")])
    assert send.returncode == 0, send.stderr
    assert "sent 7/7 instances" in send.stdout and "1 non-DICOM files skipped" in send.stdout
    assert {o.sop_instance_uid for o in outgoing(files)} <= dest.received_sop_uids()
    down = run([sys.executable, "-m", "dicom_node", "echo", f"DEST@127.0.0.1:{free_port()}", "--timeout", "2"])
    assert down.returncode == 1
    bad = run([sys.executable, "-m", "dicom_node", "send", "--to", "not-an-address", str(files[0])])
    assert bad.returncode == 2


def test_a_response_the_reactor_takes_during_a_send_is_kept_for_it():
    # pynetdicom's reactor can take the response a send_*() waits for (its pause handshake has a
    # window); it must go back on the DIMSE queue, or the send waits out the DIMSE timeout
    from pynetdicom.association import Association
    from pynetdicom.dimse_primitives import C_STORE

    from dicom_node.netutil import _ResponseKeepingAssociation

    assoc = Association(AE(), "requestor")
    assoc.__class__ = _ResponseKeepingAssociation
    rsp = C_STORE()
    rsp.MessageIDBeingRespondedTo = 1
    rsp.Status = 0x0000
    assoc._reactor_checkpoint.clear()  # a send_*() is waiting for its response
    assoc._serve_request(rsp, 1)
    assert assoc.dimse.msg_queue.get_nowait() == (1, rsp)
    assoc._reactor_checkpoint.set()  # nobody waiting: pynetdicom's own handling (dropped, logged)
    assoc._serve_request(rsp, 1)
    assert assoc.dimse.msg_queue.empty()


@pytest.mark.parametrize("accept_all", [True, False])
def test_an_rle_display_copy_reaches_a_peer_that_refuses_compression_decompressed(storescp_factory, tmp_path,
                                                                                  accept_all):
    """The Secondary Capture is RLE Lossless; a PACS that takes only uncompressed syntaxes gets the
    same pixels uncompressed instead of a refusal."""
    import numpy as np
    import pydicom

    from dicom_node.encode import Algorithm, encode_secondary_capture
    from dicom_node.synthetic import mr_image

    rgb = np.zeros((120, 200, 3), np.uint8)
    rgb[20:80, 30:150] = (200, 40, 10)
    sc = encode_secondary_capture(rgb, mr_image(study_uid="1.2.3.4", series_uid="1.2.3.4.5"), Algorithm("test"),
                                  "T2", 9105)
    path = tmp_path / "sc.dcm"
    sc.save_as(path, enforce_file_format=True)
    assert str(sc.file_meta.TransferSyntaxUID) == "1.2.840.10008.1.2.5"
    dest = storescp_factory(accept_all=accept_all)
    report = StorageSender("PINN_NODE").send(dest.ae_title, "127.0.0.1", dest.port, [
        OutgoingInstance(path, str(sc.SOPClassUID), str(sc.SOPInstanceUID), str(sc.file_meta.TransferSyntaxUID))])
    assert report.complete and report.acknowledged == [str(sc.SOPInstanceUID)], report
    received = pydicom.dcmread(next(p for p in dest.dir.iterdir() if p.is_file()))
    assert received.file_meta.TransferSyntaxUID.is_compressed == accept_all
    assert np.array_equal(received.pixel_array, rgb)
