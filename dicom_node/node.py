"""The running node: store + index + SCP + series tracker + job workers."""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path

from pydicom import config as pydicom_config

from dicom_node.config import Config
from dicom_node.index import Index, Job
from dicom_node.jobs import JobRunner
from dicom_node.logs import log_event
from dicom_node.scp import NodeSCP
from dicom_node.send import OutgoingInstance, SendError, StorageSender
from dicom_node.series import JOB_KIND_FORWARD, SeriesTracker
from dicom_node.store import InstanceStore

LOG = logging.getLogger("dicom_node.node")


def open_index(config: Config) -> Index:
    return Index(config.storage_dir / "index.sqlite", config.node.index_synchronous)


class Node:
    def __init__(self, config: Config) -> None:
        # pydicom's read-time value validation only emits warnings, which the node does not
        # use (dicom_node.instance validates what matters itself); skipping it saves ~10 %
        # of CPU per received instance and most of the per-association set-up cost.
        pydicom_config.settings.reading_validation_mode = pydicom_config.IGNORE
        self.config = config
        root = config.storage_dir
        root.mkdir(parents=True, exist_ok=True)
        self.index = open_index(config)
        self.store = InstanceStore(root, self.index)
        self.sender = StorageSender(config.node.ae_title, config.send)
        self.scp = NodeSCP(config, self.store, self.index)
        self.tracker = SeriesTracker(self.index, config)
        self.jobs = JobRunner(self.index, config, {JOB_KIND_FORWARD: self.forward_series}, self.tracker.wakeup)
        self._stopped = threading.Event()

    # -- job work ----------------------------------------------------------------
    def outgoing(self, series_uid: str) -> list[OutgoingInstance]:
        return [
            OutgoingInstance(self.store.abspath(i.path), i.sop_class_uid, i.sop_instance_uid, i.transfer_syntax_uid)
            for i in self.index.series_instances(series_uid)
        ]

    def forward_series(self, job: Job) -> str:
        """Send a completed series to every ``routing.send_results_to`` destination."""
        names = self.config.routing.send_results_to
        if not names:
            return "no destinations configured"
        instances = self.outgoing(job.series_uid or "")
        if not instances:
            raise SendError(f"series {job.series_uid} has no stored instances")
        problems = []
        for name in names:
            dest = self.config.destination(name)
            report = self.sender.send(dest.ae_title, dest.host, dest.port, instances)
            log_event(LOG, "send.report", destination=name, acknowledged=len(report.acknowledged),
                      failed=len(report.failed), unacknowledged=len(report.unacknowledged),
                      associations=report.associations)
            if not report.complete:
                failed = ", ".join(f"0x{s:04X}" for s in sorted(set(report.failed.values())))
                problems.append(
                    f"{name}: {len(report.acknowledged)}/{len(instances)} acknowledged"
                    + (f", refused with {failed}" if failed else "")
                    + (f", {len(report.unacknowledged)} without response" if report.unacknowledged else "")
                )
        if problems:
            raise SendError("; ".join(problems))
        return f"sent {len(instances)} instances to {', '.join(names)}"

    # -- life cycle --------------------------------------------------------------
    def start(self) -> None:
        self.store.begin_session()
        self.jobs.start()
        self.tracker.start()
        self.scp.start()
        cfg = self.config.node
        log_event(LOG, "node.started", ae_title=cfg.ae_title, host=cfg.host, port=cfg.port,
                  storage=str(Path(cfg.storage).resolve()))

    def stop(self) -> None:
        self.scp.stop()
        self.tracker.stop()
        self.jobs.stop()
        self.index.close()
        self.store.end_session()
        log_event(LOG, "node.stopped")
        self._stopped.set()

    def serve_forever(self) -> None:
        """Run until SIGINT/SIGTERM."""
        stop = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        self.start()
        try:
            stop.wait()
        finally:
            self.stop()
