"""Delivery of a job's results: where the derived objects, summary and pictures go.

A job hands its derived objects over twice: ``early`` with those that are final while the
report is still being built (maps, SEG, then the display copies), and ``finish`` with the
whole outcome. ``NodeDelivery`` stores them in the node (so Q/R serves them), writes
``<storage>/results/<series UID>/`` and sends them to ``routing.send_results_to``;
``FolderDelivery`` (``dicom-node process``) writes them to a folder. ``Destinations`` sends
instances to configured peers, audited; forwarding a series unchanged uses it too.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Protocol, Sequence

from pydicom.dataset import Dataset
from pydicom.uid import UID, ExplicitVRLittleEndian

from dicom_node.audit import AuditLog
from dicom_node.config import Config
from dicom_node.encode import dataset_bytes
from dicom_node.filemeta import encode_file_meta
from dicom_node.index import Index
from dicom_node.instance import parse_instance
from dicom_node.logs import log_event
from dicom_node.processing.steps import Outcome
from dicom_node.send import OutgoingInstance, SendError, StorageSender
from dicom_node.store import InstanceStore

LOG = logging.getLogger("dicom_node.processing.delivery")


class Delivery(Protocol):
    def early(self, objects: dict[str, Dataset]) -> None:
        """Derived objects that are final before the job has made them all (kind -> dataset)."""
        ...

    def finish(self, series_uid: str, outcome: Outcome) -> str:
        """The job's whole outcome; returns the job's result line."""
        ...


def write_pictures(folder: Path, outcome: Outcome) -> None:
    from dicom_node.encode import png  # noqa: PLC0415  (matplotlib: imported where pictures are drawn)

    for name, rgb in outcome.pictures.items():
        (folder / name).write_bytes(png(rgb))


def write_summary(folder: Path, outcome: Outcome) -> None:
    (folder / "summary.json").write_text(json.dumps(outcome.summary, indent=2))


class FolderDelivery:
    """``dicom-node process``: each object as ``<kind>.dcm``, ``summary.json`` and the pictures in ``out``."""

    def __init__(self, out: Path) -> None:
        self.out = Path(out)

    def early(self, objects: dict[str, Dataset]) -> None:
        self._write(objects)

    def finish(self, series_uid: str, outcome: Outcome) -> str:
        self._write(outcome.objects)
        write_summary(self.out, outcome)
        write_pictures(self.out, outcome)
        return f"{len(outcome.objects)} derived objects written to {self.out}"

    def _write(self, objects: dict[str, Dataset]) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        for name, ds in objects.items():
            ds.save_as(self.out / f"{name}.dcm", enforce_file_format=True)


class Destinations:
    """Sends instances to destinations named in the configuration; every send is audited."""

    def __init__(self, config: Config, sender: StorageSender, audit: AuditLog) -> None:
        self.config = config
        self.sender = sender
        self.audit = audit

    def send(self, instances: list[OutgoingInstance], names: Sequence[str], what: str) -> str:
        """Send ``instances`` to every destination in ``names``; raise SendError unless all acknowledged."""
        if not names:
            return f"{what}: no destinations configured"
        if not instances:
            raise SendError(f"{what}: nothing to send")
        problems = []
        for name in names:
            dest = self.config.destination(name)
            report = self.sender.send(dest.ae_title, dest.host, dest.port, instances, tls=dest.tls)
            log_event(LOG, "send.report", destination=name, acknowledged=len(report.acknowledged),
                      failed=len(report.failed), unacknowledged=len(report.unacknowledged),
                      associations=report.associations)
            self.audit.write("send", called_ae=dest.ae_title, peer=f"{dest.host}:{dest.port}", tls=dest.tls,
                             calling_ae=self.config.node.ae_title, what=what, instances=len(instances),
                             acknowledged=len(report.acknowledged), failed=len(report.failed),
                             unacknowledged=len(report.unacknowledged), associations=report.associations,
                             result="success" if report.complete else "failure")
            if not report.complete:
                failed = ", ".join(f"0x{s:04X}" for s in sorted(set(report.failed.values())))
                problems.append(
                    f"{name}: {len(report.acknowledged)}/{len(instances)} acknowledged"
                    + (f", refused with {failed}" if failed else "")
                    + (f", {len(report.unacknowledged)} without response" if report.unacknowledged else "")
                )
        if problems:
            raise SendError("; ".join(problems))
        return f"{what}: sent {len(instances)} instances to {', '.join(names)}"


def store_derived(store: InstanceStore, ds: Dataset, ae_title: str) -> OutgoingInstance:
    """Store a dataset the node made, through the same durable path as received ones."""
    body = dataset_bytes(ds)  # the data set itself is always explicit VR little endian
    meta_ts = UID(str(ds.file_meta.get("TransferSyntaxUID", ""))) if hasattr(ds, "file_meta") else UID("")
    ts = str(meta_ts if meta_ts and meta_ts.is_compressed else ExplicitVRLittleEndian)  # compressed pixels keep it
    meta = encode_file_meta(str(ds.SOPClassUID), str(ds.SOPInstanceUID), ts, ae_title)
    info = parse_instance(body, ts, str(ds.SOPClassUID), str(ds.SOPInstanceUID))
    result = store.put(info, meta, body, ae_title)
    return OutgoingInstance(result.path, info.sop_class_uid, info.sop_instance_uid, ts)


def stored_series(index: Index, store: InstanceStore, series_uid: str) -> list[OutgoingInstance]:
    """The instances of a stored series, ready to send as they were received."""
    return [OutgoingInstance(store.abspath(i.path), i.sop_class_uid, i.sop_instance_uid, i.transfer_syntax_uid)
            for i in index.series_instances(series_uid)]


class NodeDelivery:
    """One job's delivery in the node: store (Q/R serves the objects), results folder, send.

    A send that fails at ``early`` is not an error yet: what was not sent is sent with the
    rest at ``finish`` (and the job fails then if the destination is still unreachable).
    """

    def __init__(self, config: Config, store: InstanceStore, destinations: Destinations) -> None:
        self.config = config
        self.store = store
        self.destinations = destinations
        self.stored: dict[str, OutgoingInstance] = {}
        self.sent: set[str] = set()

    def _store(self, ds: Dataset) -> OutgoingInstance:
        return store_derived(self.store, ds, self.config.node.ae_title)

    def early(self, objects: dict[str, Dataset]) -> None:
        stored = {k: self._store(ds) for k, ds in objects.items()}
        self.stored.update(stored)
        names = self.config.routing.send_results_to
        if not names:
            return
        try:
            self.destinations.send(list(stored.values()), names, f"{len(stored)} derived objects (first part)")
        except SendError as exc:
            log_event(LOG, "send.deferred", level=logging.WARNING, error=str(exc))
        else:
            self.sent.update(stored)

    def finish(self, series_uid: str, outcome: Outcome) -> str:
        """Write the summary, store what is not yet stored, send what is not yet sent; pictures last."""
        results = self.config.storage_dir / "results" / series_uid
        results.mkdir(parents=True, exist_ok=True)
        write_summary(results, outcome)
        try:
            stored = {k: self.stored.get(k) or self._store(ds) for k, ds in outcome.objects.items()}
            names = self.config.routing.send_results_to
            what = f"{len(stored)} derived objects"
            if names and self.sent:
                self.destinations.send([v for k, v in stored.items() if k not in self.sent], names,
                                       f"{what} (last part)")
                return f"{what}: sent {len(stored)} instances to {', '.join(names)}"
            return self.destinations.send(list(stored.values()), names, what)
        finally:  # the pictures are for people looking into the results folder: after the PACS has its objects
            write_pictures(results, outcome)
