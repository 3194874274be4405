"""Storage SCU: sends stored files to a peer, idempotently and without false success.

An instance counts as sent only when the peer returned a success or warning status for
it. An aborted association, a DIMSE timeout or a lost response (pynetdicom's SCU can
lose one under load: see ``netutil._ResponseKeepingAssociation``) makes the sender re-associate,
after a back-off, and resend what is not yet acknowledged; resending the same SOP
Instance UID is harmless for a PACS.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import pydicom
from pydicom.uid import UID, ExplicitVRLittleEndian, RLELossless
from pynetdicom import AE, _config, build_context
from pynetdicom.presentation import PresentationContext
from pynetdicom.status import STATUS_SUCCESS, STATUS_WARNING, code_to_category

from dicom_node.config import SendSection
from dicom_node.logs import log_event
from dicom_node.netutil import NODELAY_HANDLERS
from dicom_node.status import CANNOT_UNDERSTAND, SOP_CLASS_NOT_SUPPORTED

LOG = logging.getLogger("dicom_node.send")

# Send files as stored, streamed from disk, without decoding and re-encoding them.
_config.STORE_SEND_CHUNKED_DATASET = True

_DELIVERED = (STATUS_SUCCESS, STATUS_WARNING)  # the peer stored the instance
_MAX_CONTEXTS = 128
# compressed syntaxes pydicom decodes by itself: sent decompressed to a peer that refuses them
DECODABLE = frozenset({str(RLELossless)})


class SendError(Exception):
    """Not every instance was acknowledged by the peer."""


@dataclass(frozen=True)
class OutgoingInstance:
    path: Path
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str


@dataclass
class SendReport:
    acknowledged: list[str] = field(default_factory=list)
    warnings: dict[str, int] = field(default_factory=dict)
    failed: dict[str, int] = field(default_factory=dict)  # refused by the peer: sop -> status
    unacknowledged: list[str] = field(default_factory=list)  # no response after all retries
    associations: int = 0

    @property
    def complete(self) -> bool:
        return not self.failed and not self.unacknowledged


def contexts_for(instances: Iterable[OutgoingInstance]) -> list[list[PresentationContext]]:
    """Presentation contexts proposing each (SOP class, stored transfer syntax) pair, and for a
    compressed syntax pydicom can decode also (SOP class, explicit VR little endian): a peer
    that does not accept the compressed syntax gets the instance decompressed.

    Split into groups of at most 128 (one association each).
    """
    pairs = {(i.sop_class_uid, i.transfer_syntax_uid) for i in instances}
    pairs |= {(sop, str(ExplicitVRLittleEndian)) for sop, ts in pairs if ts in DECODABLE}
    contexts = [build_context(UID(sop), [UID(ts)]) for sop, ts in sorted(pairs)]
    return [contexts[i : i + _MAX_CONTEXTS] for i in range(0, len(contexts), _MAX_CONTEXTS)] or [[]]


class StorageSender:
    """Sends instances to one peer AE with re-association and back-off."""

    def __init__(self, calling_ae: str, settings: SendSection | None = None, tls_context=None) -> None:
        self.calling_ae = calling_ae
        self.settings = settings or SendSection()
        self.tls_context = tls_context  # ssl.SSLContext for peers reached with TLS

    def _new_ae(self, contexts: Sequence[PresentationContext]) -> AE:
        ae = AE(ae_title=self.calling_ae)
        ae.acse_timeout = self.settings.acse_timeout_s
        ae.dimse_timeout = self.settings.dimse_timeout_s
        ae.network_timeout = max(self.settings.dimse_timeout_s, 30.0)
        ae.requested_contexts = list(contexts)
        return ae

    def send(self, ae_title: str, host: str, port: int, instances: Sequence[OutgoingInstance],
             tls: bool = False) -> SendReport:
        """Send ``instances``; the report says which the peer acknowledged."""
        if tls and self.tls_context is None:
            raise SendError(f"{ae_title}@{host}:{port} needs TLS but no TLS certificates are configured")
        tls_args = (self.tls_context, host) if tls else None
        report = SendReport()
        for group in contexts_for(instances):
            keys = {(str(c.abstract_syntax), str(c.transfer_syntax[0])) for c in group}
            todo = [i for i in instances if (i.sop_class_uid, i.transfer_syntax_uid) in keys]
            self._send_group(ae_title, host, port, group, todo, report, tls_args)
        return report

    def _send_group(
        self,
        ae_title: str,
        host: str,
        port: int,
        contexts: list[PresentationContext],
        todo: list[OutgoingInstance],
        report: SendReport,
        tls_args: tuple | None = None,
    ) -> None:
        pending = list(todo)
        tries = 0
        while pending:
            if tries > self.settings.reassociations:
                report.unacknowledged.extend(i.sop_instance_uid for i in pending)
                return
            if tries:
                time.sleep(self.settings.backoff_s * 2 ** (tries - 1))
            tries += 1
            ae = self._new_ae(contexts)
            assoc = ae.associate(host, port, ae_title=ae_title, evt_handlers=NODELAY_HANDLERS, tls_args=tls_args)
            report.associations += 1
            if not assoc.is_established:
                reason = "rejected" if assoc.is_rejected else "aborted" if assoc.is_aborted else "no connection"
                log_event(LOG, "send.associate_failed", logging.WARNING, peer=f"{ae_title}@{host}:{port}",
                          reason=reason, attempt=tries)
                continue
            try:
                pending = self._send_on(assoc, pending, report)
                if pending:
                    log_event(LOG, "send.reassociate", logging.WARNING, peer=f"{ae_title}@{host}:{port}",
                              remaining=len(pending), attempt=tries)
                else:
                    tries = 0
            finally:
                if assoc.is_established:
                    assoc.release()
                ae.shutdown()

    def _send_on(self, assoc, pending: list[OutgoingInstance], report: SendReport) -> list[OutgoingInstance]:
        """Send on an open association; return what must be resent on a new one."""
        accepted = {(str(c.abstract_syntax), str(c.transfer_syntax[0])) for c in assoc.accepted_contexts}
        for n, inst in enumerate(pending):
            as_stored = (inst.sop_class_uid, inst.transfer_syntax_uid) in accepted
            decompress = (not as_stored and inst.transfer_syntax_uid in DECODABLE
                          and (inst.sop_class_uid, str(ExplicitVRLittleEndian)) in accepted)
            if not (as_stored or decompress):
                report.failed[inst.sop_instance_uid] = SOP_CLASS_NOT_SUPPORTED  # no accepted context for it
                continue
            try:
                status = assoc.send_c_store(_decompressed(inst.path) if decompress else inst.path)
            except (OSError, ValueError, AttributeError, RuntimeError) as exc:
                if not assoc.is_established:
                    return pending[n:]
                log_event(LOG, "send.instance_error", logging.ERROR, sop_instance_uid=inst.sop_instance_uid,
                          error=str(exc))
                report.failed[inst.sop_instance_uid] = CANNOT_UNDERSTAND  # failed on this side, before a response
                continue
            code = getattr(status, "Status", None)
            if code is None:  # no response: timeout, abort or lost response
                if assoc.is_established:
                    assoc.abort()
                return pending[n:]
            category = code_to_category(code)
            if category in _DELIVERED:
                report.acknowledged.append(inst.sop_instance_uid)
                if category == STATUS_WARNING:
                    report.warnings[inst.sop_instance_uid] = code
            else:
                report.failed[inst.sop_instance_uid] = code
        return []


def _decompressed(path: Path) -> Any:
    """The instance at ``path`` with its pixel data decoded (explicit VR little endian)."""
    ds = pydicom.dcmread(path)
    ds.decompress()
    return ds


def echo(ae_title: str, host: str, port: int, calling_ae: str = "PINN_NODE", timeout_s: float = 15.0) -> int:
    """C-ECHO the peer; return the status (0 = success), or -1 without an association."""
    from pynetdicom.sop_class import Verification  # noqa: PLC0415

    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = timeout_s
    ae.dimse_timeout = timeout_s
    ae.add_requested_context(Verification)
    assoc = ae.associate(host, port, ae_title=ae_title, evt_handlers=NODELAY_HANDLERS)
    if not assoc.is_established:
        return -1
    try:
        status = assoc.send_c_echo()
        return int(getattr(status, "Status", -1))
    finally:
        if assoc.is_established:
            assoc.release()
        ae.shutdown()
