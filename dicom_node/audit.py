"""Audit trail: one JSON line per association and per DIMSE operation.

Who (calling/called AE title, peer address, TLS certificate name), what (service, SOP
class, instance UID or sub-operation counts, move destination), when (UTC), result
(status). Never patient names or query values: identifiers may hold them. Written to its
own file (``[security] audit_log``, default ``<storage>/log/audit.jsonl``), flushed per line,
so that it survives a crash of the node up to the last completed operation.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path
from typing import Any

from pynetdicom import evt
from pynetdicom.status import STATUS_CANCEL, STATUS_PENDING, STATUS_SUCCESS, STATUS_WARNING, code_to_category

from dicom_node.status import UNABLE_TO_PROCESS
from dicom_node.tls import peer_subject

LOG = logging.getLogger("dicom_node.audit")
_RESULTS = {STATUS_SUCCESS: "success", STATUS_CANCEL: "cancel", STATUS_WARNING: "warning"}


def _result(status: int) -> str:
    """The audit line's result; a status of no known category counts as a failure."""
    return _RESULTS.get(code_to_category(status), "failure")


class AuditLog:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._file = open(path, "a", encoding="utf-8", buffering=1)  # noqa: SIM115  (held open)
        self._lock = threading.Lock()
        self.lost = 0  # lines that could not be written

    def write(self, kind: str, **fields: Any) -> None:
        now = time.time()
        entry = {"ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1000):03d}Z",
                 "kind": kind, **fields}
        line = json.dumps(entry, default=str, ensure_ascii=False)
        with self._lock:
            try:
                self._file.write(line + "\n")
            except (OSError, ValueError) as exc:
                # a full or failing volume must not break the DICOM service it audits; the
                # line goes to the main log (stderr) instead. Put the audit log on its own
                # volume ([security] audit_log) where that matters.
                self.lost += 1
                LOG.error("audit line not written (%s): %s", exc, line)

    def close(self) -> None:
        with self._lock:
            self._file.close()

    # -- pynetdicom event handlers ------------------------------------------------
    @staticmethod
    def _who(event: evt.Event) -> dict[str, Any]:
        assoc = event.assoc
        req = assoc.requestor
        sock = getattr(getattr(assoc.dul, "socket", None), "socket", None)
        who = {"calling_ae": req.ae_title, "called_ae": assoc.acceptor.ae_title if assoc.is_acceptor else "",
               "peer": f"{req.address}:{req.port}", "tls": sock is not None and hasattr(sock, "getpeercert")}
        subject = peer_subject(sock)
        if subject:
            who["peer_certificate"] = subject
        return who

    def handlers(self, rejection_reason) -> list[tuple]:
        """Handlers for the SCP; ``rejection_reason(event)`` explains a rejected association."""
        requests: dict[tuple[int, int], dict[str, Any]] = {}

        def association(name: str):
            def handler(event: evt.Event) -> None:
                fields = self._who(event)
                if name == "rejected":
                    fields["reason"] = rejection_reason(event)
                self.write("association", event=name, **fields)
                if name in ("released", "aborted"):
                    for key in [k for k in requests if k[0] == id(event.assoc)]:
                        requests.pop(key, None)
            return handler

        def received(event: evt.Event) -> None:
            msg = event.message
            name = type(msg).__name__
            if not name.endswith("_RQ"):
                return
            cs = msg.command_set
            what = {"service": name[:-3].replace("_", "-"), "sop_class": str(cs.get("AffectedSOPClassUID", ""))}
            if "MoveDestination" in cs:
                what["move_destination"] = str(cs.MoveDestination).strip()
            requests[(id(event.assoc), int(cs.get("MessageID", 0)))] = what

        def sent(event: evt.Event) -> None:
            msg = event.message
            name = type(msg).__name__
            if not name.endswith("_RSP"):
                return
            cs = msg.command_set
            status = int(cs.get("Status", UNABLE_TO_PROCESS))
            if code_to_category(status) == STATUS_PENDING:  # only the final response is audited
                return
            what = requests.pop((id(event.assoc), int(cs.get("MessageIDBeingRespondedTo", 0))), None) or {
                "service": name[:-4].replace("_", "-")}
            fields = {**self._who(event), **what, "status": f"0x{status:04X}", "result": _result(status)}
            if "AffectedSOPInstanceUID" in cs and name.startswith("C_STORE"):
                fields["sop_instance_uid"] = str(cs.AffectedSOPInstanceUID)
            for key, short in (("NumberOfCompletedSuboperations", "completed"),
                               ("NumberOfFailedSuboperations", "failed"),
                               ("NumberOfWarningSuboperations", "warning")):
                if key in cs and cs[key].value is not None:
                    fields[short] = int(cs[key].value)
            if "ErrorComment" in cs:
                fields["error_comment"] = str(cs.ErrorComment)
            self.write("operation", **fields)

        return [
            (evt.EVT_ACCEPTED, association("accepted")),
            (evt.EVT_REJECTED, association("rejected")),
            (evt.EVT_RELEASED, association("released")),
            (evt.EVT_ABORTED, association("aborted")),
            (evt.EVT_DIMSE_RECV, received),
            (evt.EVT_DIMSE_SENT, sent),
        ]
