"""The running node: composes store, index, SCP, series tracker, job workers and processing.

What happens to a completed series lives in ``dicom_node.processing``; this module only
builds the parts and starts and stops them.
"""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path

from pydicom import config as pydicom_config

from dicom_node.audit import AuditLog
from dicom_node.config import Config
from dicom_node.index import open_index
from dicom_node.jobs import JobRunner
from dicom_node.logs import log_event
from dicom_node.processing import Destinations, Processor, StoredSeries, job_handlers
from dicom_node.scp import NodeSCP
from dicom_node.send import StorageSender
from dicom_node.series import STUDY_JOBS, SeriesTracker
from dicom_node.store import InstanceStore

LOG = logging.getLogger("dicom_node.node")


class Node:
    def __init__(self, config: Config) -> None:
        # pydicom's read-time value validation only emits warnings, which the node does not
        # use (dicom_node.instance validates what matters itself); skipping it saves ~10 %
        # of CPU per received instance and most of the per-association set-up cost.
        pydicom_config.settings.reading_validation_mode = pydicom_config.IGNORE
        self.config = config
        root = config.storage_dir
        root.mkdir(parents=True, exist_ok=True)
        self.index = open_index(root, config.node.index_synchronous, config.index.url)
        self.store = InstanceStore(root, self.index)
        self.audit = AuditLog(config.audit_path)
        self.scp = NodeSCP(config, self.store, self.index, self.audit)
        self.stored = StoredSeries(self.index, self.store)
        self.processor = Processor(config)
        self.destinations = Destinations(config, StorageSender(config.node.ae_title, config.send,
                                                               self._client_tls(config)), self.audit)
        self.tracker = SeriesTracker(self.index, config, lambda uid: self.processor.job_kind(self.stored, uid))
        self.jobs = JobRunner(self.index, config, job_handlers(self.processor, self.stored, self.destinations),
                              self.tracker.wakeup, tuple(str(k) for k in STUDY_JOBS))
        self.health = None
        self._stopped = threading.Event()

    @staticmethod
    def _client_tls(config: Config):
        """TLS context for destinations marked ``tls = true`` (None if none is)."""
        if not any(d.tls for d in config.destinations):
            return None
        from dicom_node.tls import client_context  # noqa: PLC0415

        return client_context(config.security)

    # -- life cycle --------------------------------------------------------------
    def start(self) -> None:
        self.store.begin_session()
        if self.config.engine.preload:
            threading.Thread(target=self.processor.warm_up, name="engine-warm-up", daemon=True).start()
        self.jobs.start()
        self.tracker.start()
        self.scp.start()
        if self.config.node.http_port:
            from dicom_node.health import HealthServer  # noqa: PLC0415

            self.health = HealthServer(self.config, lambda: bool(self.scp.servers))
            self.health.start()
        cfg = self.config.node
        log_event(LOG, "node.started", ae_title=cfg.ae_title, host=cfg.host, port=cfg.port,
                  storage=str(Path(cfg.storage).resolve()))

    def stop(self) -> None:
        if self.health is not None:
            self.health.stop()
        self.scp.stop()
        self.tracker.stop()
        self.jobs.stop()
        self.processor.stop()
        self.index.close()
        self.audit.close()
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
