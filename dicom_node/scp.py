"""The node's Application Entity: Verification, Storage and Query/Retrieve SCP.

Handlers stay small: C-STORE checks the received bytes, stores them durably and only
then answers; Q/R handlers translate identifiers through :mod:`dicom_node.qr`.
"""

from __future__ import annotations

import logging
from typing import Any, Iterator

from pydicom import dcmread
from pydicom import uid as _uid
from pydicom.dataset import Dataset
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, AllStoragePresentationContexts, build_context, evt
from pynetdicom.sop_class import (
    PatientRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelGet,
    PatientRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)

from dicom_node import qr
from dicom_node.audit import AuditLog
from dicom_node.config import Config
from dicom_node.filemeta import encode_file_meta
from dicom_node.index import Index, StoredInstance
from dicom_node.instance import InvalidInstance, is_valid_uid, parse_instance
from dicom_node.logs import log_event
from dicom_node.netutil import NODELAY_HANDLERS, stall_guard
from dicom_node.status import (
    CANCEL,
    CANNOT_UNDERSTAND_INVALID_UID,
    OUT_OF_RESOURCES,
    PENDING,
    PROCESSING_FAILURE,
    SUCCESS,
    UNABLE_TO_PROCESS,
)
from dicom_node.store import InstanceStore, StorageUnavailable

LOG = logging.getLogger("dicom_node.scp")

_UNCOMPRESSED = {ExplicitVRLittleEndian, ImplicitVRLittleEndian, UID("1.2.840.10008.1.2.2")}

# Transfer syntaxes a cardiac MR study arrives in (uncompressed, deflate and the common
# image compressions). pynetdicom deep-copies every supported context x syntax for each
# association, so offering all 45 known syntaxes would cost ~0.3 s of CPU per association.
# Order matters: pynetdicom accepts the first of these that the requestor proposes, and
# explicit VR keeps the value representations that implicit VR loses.
TRANSFER_SYNTAXES = [
    _uid.ExplicitVRLittleEndian,
    _uid.ImplicitVRLittleEndian,
    _uid.DeflatedExplicitVRLittleEndian,
    _uid.ExplicitVRBigEndian,
    _uid.JPEGBaseline8Bit,
    _uid.JPEGExtended12Bit,
    _uid.JPEGLossless,
    _uid.JPEGLosslessSV1,
    _uid.JPEGLSLossless,
    _uid.JPEGLSNearLossless,
    _uid.JPEG2000Lossless,
    _uid.JPEG2000,
    _uid.RLELossless,
    _uid.HTJ2KLossless,
    _uid.HTJ2K,
]

QR_MODELS = [
    PatientRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelMove,
    PatientRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelGet,
]


def _status(code: int, comment: str) -> Dataset:
    ds = Dataset()
    ds.Status = code
    ds.ErrorComment = comment[:64]
    return ds


def _peer(event: evt.Event) -> dict[str, Any]:
    req = event.assoc.requestor
    return {"calling_ae": req.ae_title, "peer": f"{req.address}:{req.port}"}


class NodeSCP:
    """Builds the AE and implements the DIMSE handlers over the store and index."""

    def __init__(self, config: Config, store: InstanceStore, index: Index, audit: AuditLog | None = None) -> None:
        self.config = config
        self.store = store
        self.index = index
        self.audit = audit
        self.ae = self._build_ae()
        self.servers: list = []

    def _build_ae(self) -> AE:
        cfg = self.config.node
        ae = AE(ae_title=cfg.ae_title)
        ae.maximum_associations = cfg.max_associations
        ae.maximum_pdu_size = cfg.max_pdu_size
        ae.acse_timeout = cfg.acse_timeout_s
        ae.dimse_timeout = cfg.dimse_timeout_s
        ae.network_timeout = cfg.network_timeout_s
        ae.require_called_aet = True
        if self.config.security.allowed_calling_aes:
            ae.require_calling_aet = list(self.config.security.allowed_calling_aes)
        ae.add_supported_context(Verification, TRANSFER_SYNTAXES)
        for cx in AllStoragePresentationContexts:
            # scp_role: a C-GET requestor receives the retrieved instances on this association
            ae.add_supported_context(cx.abstract_syntax, TRANSFER_SYNTAXES, scu_role=True, scp_role=True)
        for model in QR_MODELS:
            ae.add_supported_context(model, TRANSFER_SYNTAXES)
        return ae

    def handlers(self) -> list[tuple]:
        return [
            *NODELAY_HANDLERS,
            (evt.EVT_CONN_OPEN, stall_guard(self.config.node.network_timeout_s, self._max_pdu_bytes())),
            (evt.EVT_C_ECHO, self.handle_echo),
            (evt.EVT_C_STORE, self.handle_store),
            (evt.EVT_C_FIND, self.handle_find),
            (evt.EVT_C_MOVE, self.handle_move),
            (evt.EVT_C_GET, self.handle_get),
            (evt.EVT_ACCEPTED, self._log_assoc("association.accepted")),
            (evt.EVT_REJECTED, self._log_assoc("association.rejected", logging.WARNING)),
            (evt.EVT_ABORTED, self._log_assoc("association.aborted", logging.WARNING)),
            (evt.EVT_RELEASED, self._log_assoc("association.released")),
            *(self.audit.handlers(self.rejection_reason) if self.audit else ()),
        ]

    def _max_pdu_bytes(self) -> int:
        """The largest PDU body accepted: peers must respect our maximum PDU length (P-DATA);
        association PDUs are small. 0 (unlimited) still bounds it, at 64 MiB."""
        return max(self.config.node.max_pdu_size or 64 * 1024 * 1024, 1024 * 1024) + 1024

    @staticmethod
    def rejection_reason(event: evt.Event) -> str:
        """The A-ASSOCIATE-RJ's result, source and reason as the standard words them (PS3.8 9.3.4)."""
        rj = event.assoc.acceptor.primitive
        try:
            return f"{rj.result_str}, {rj.source_str}: {rj.reason_str}"
        except AttributeError:
            return "rejected"

    def start(self) -> None:
        cfg = self.config.node
        self.servers.append(self.ae.start_server((cfg.host, cfg.port), block=False, evt_handlers=self.handlers()))
        if cfg.tls_port:
            from dicom_node.tls import server_context  # noqa: PLC0415

            self.servers.append(self.ae.start_server((cfg.host, cfg.tls_port), block=False,
                                                     evt_handlers=self.handlers(),
                                                     ssl_context=server_context(self.config.security)))

    def stop(self) -> None:
        for server in self.servers:
            server.shutdown()
        self.servers = []
        self.ae.shutdown()

    @staticmethod
    def _log_assoc(name: str, level: int = logging.INFO):
        def handler(event: evt.Event) -> None:
            extra = {"reason": NodeSCP.rejection_reason(event)} if name == "association.rejected" else {}
            log_event(LOG, name, level, **_peer(event), **extra)

        return handler

    # -- C-ECHO ----------------------------------------------------------------
    def handle_echo(self, event: evt.Event) -> int:
        return SUCCESS

    # -- C-STORE ---------------------------------------------------------------
    def handle_store(self, event: evt.Event) -> int | Dataset:
        req = event.request
        calling_ae = event.assoc.requestor.ae_title
        staged = None
        try:
            body = req.DataSet.getvalue() if req.DataSet is not None else b""
            ts = str(event.context.transfer_syntax)
            sop_class, sop_instance = str(req.AffectedSOPClassUID), str(req.AffectedSOPInstanceUID)
            if not (is_valid_uid(sop_class) and is_valid_uid(sop_instance)):
                raise InvalidInstance(CANNOT_UNDERSTAND_INVALID_UID,
                                      "the request's affected SOP class/instance UID is invalid")
            # the file write + fsync runs while the data set is checked
            staged = self.store.stage(encode_file_meta(sop_class, sop_instance, ts, calling_ae), body)
            info = parse_instance(body, ts, sop_class, sop_instance)
            result = self.store.commit(info, staged, calling_ae)
            staged = None
        except InvalidInstance as exc:
            log_event(
                LOG, "store.rejected", logging.WARNING, calling_ae=calling_ae, status=f"0x{exc.status:04X}",
                affected_sop_instance_uid=str(req.AffectedSOPInstanceUID)[:64], reason=exc.reason,
            )
            return _status(exc.status, exc.reason)
        except StorageUnavailable as exc:
            staged = None  # commit removed it
            log_event(LOG, "store.out_of_resources", logging.ERROR, calling_ae=calling_ae, reason=str(exc))
            return _status(OUT_OF_RESOURCES, str(exc))
        except Exception as exc:
            LOG.exception("unexpected error while storing")
            return _status(PROCESSING_FAILURE, f"{type(exc).__name__}: {exc}")
        finally:
            if staged is not None:
                self.store.discard(staged)
        if result.outcome != "stored":
            log_event(LOG, f"instance.{result.outcome}", sop_instance_uid=info.sop_instance_uid,
                      series_uid=info.series_uid, calling_ae=calling_ae)
        if result.reopened_series:
            log_event(LOG, "series.reopened", logging.WARNING, series_uid=info.series_uid)
        return SUCCESS

    # -- C-FIND ----------------------------------------------------------------
    def handle_find(self, event: evt.Event) -> Iterator[tuple[Any, Any]]:
        sop_class = str(event.request.AffectedSOPClassUID)
        try:
            identifier = event.identifier
            results = list(qr.find(self.index, identifier, sop_class, self.config.node.ae_title))
        except qr.QueryError as exc:
            log_event(LOG, "find.rejected", logging.WARNING, **_peer(event), status=f"0x{exc.status:04X}",
                      reason=exc.reason)
            yield _status(exc.status, exc.reason), None
            return
        except Exception as exc:
            LOG.exception("C-FIND failed")
            yield _status(UNABLE_TO_PROCESS, f"{type(exc).__name__}: {exc}"), None
            return
        log_event(LOG, "find", **_peer(event), qr_level=str(identifier.get("QueryRetrieveLevel", "")),
                  matches=len(results))
        for rsp in results:
            if event.is_cancelled:
                yield CANCEL, None
                return
            yield PENDING, rsp

    # -- C-MOVE / C-GET --------------------------------------------------------
    def _select(self, event: evt.Event) -> list[StoredInstance]:
        try:
            return qr.select_instances(self.index, event.identifier, str(event.request.AffectedSOPClassUID))
        except qr.QueryError as exc:
            log_event(LOG, "retrieve.rejected", logging.WARNING, **_peer(event), status=f"0x{exc.status:04X}",
                      reason=exc.reason)
            raise

    def _datasets(self, event: evt.Event, instances: list[StoredInstance]) -> Iterator[tuple[int, Dataset | None]]:
        for inst in instances:
            if event.is_cancelled:
                yield CANCEL, None
                return
            try:
                ds = dcmread(self.store.abspath(inst.path))
            except Exception as exc:
                log_event(LOG, "retrieve.unreadable", logging.ERROR, sop_instance_uid=inst.sop_instance_uid,
                          error=str(exc))
                continue
            yield PENDING, ds

    @staticmethod
    def _move_contexts(instances: list[StoredInstance]) -> list:
        by_class: dict[str, set[str]] = {}
        for inst in instances:
            by_class.setdefault(inst.sop_class_uid, set()).add(inst.transfer_syntax_uid)
        contexts = []
        for sop_class, syntaxes in sorted(by_class.items()):
            ts = sorted(syntaxes)
            if all(UID(t) in _UNCOMPRESSED for t in ts):
                # pynetdicom converts between uncompressed syntaxes; offer the common ones
                ts = list(dict.fromkeys([*ts, str(ExplicitVRLittleEndian), str(ImplicitVRLittleEndian)]))
            contexts.append(build_context(sop_class, ts))
        return contexts[:128]

    def handle_move(self, event: evt.Event) -> Iterator[Any]:
        destination = self.config.destination_by_ae(str(event.move_destination or ""))
        if destination is None:
            log_event(LOG, "move.unknown_destination", logging.WARNING, **_peer(event),
                      move_destination=str(event.move_destination))
            yield None, None  # pynetdicom answers status.MOVE_DESTINATION_UNKNOWN
            return
        instances = None
        try:
            instances = self._select(event)
        except qr.QueryError:
            pass
        options = {
            "contexts": self._move_contexts(instances or []) or [build_context(Verification)],
            "evt_handlers": NODELAY_HANDLERS,
        }
        if destination.tls:
            from dicom_node.tls import client_context  # noqa: PLC0415

            options["tls_args"] = (client_context(self.config.security), destination.host)
        yield destination.host, destination.port, options
        if instances is None:
            raise ValueError("invalid C-MOVE identifier")  # pynetdicom answers status.MOVE_UNABLE_TO_PROCESS
        log_event(LOG, "move", **_peer(event), destination=destination.name, instances=len(instances))
        yield len(instances)
        yield from self._datasets(event, instances)

    def handle_get(self, event: evt.Event) -> Iterator[Any]:
        instances = self._select(event)  # a QueryError: pynetdicom answers status.GET_UNABLE_TO_PROCESS
        log_event(LOG, "get", **_peer(event), instances=len(instances))
        yield len(instances)
        yield from self._datasets(event, instances)
