"""The running node: store + index + SCP + series tracker + job workers."""

from __future__ import annotations

import logging
import signal
import time
import threading
from pathlib import Path

from pydicom import config as pydicom_config

from dicom_node.audit import AuditLog
from dicom_node.config import Config
from dicom_node.index import Index, Job
from dicom_node.jobs import JobRunner
from dicom_node.logs import log_event
from dicom_node.scp import NodeSCP
from dicom_node.send import OutgoingInstance, SendError, StorageSender
from dicom_node.series import JOB_KIND_FORWARD, JOB_KIND_PERFUSION, JOB_KIND_T2, SeriesTracker
from dicom_node.store import InstanceStore

LOG = logging.getLogger("dicom_node.node")


class _EarlyDelivery:
    """Stores and sends the derived objects a job hands over before it has made them all.

    A send that fails here is not an error yet: what was not sent is sent with the rest
    (and the job fails then if the destination is still unreachable).
    """

    def __init__(self, node: "Node") -> None:
        self.node = node
        self.stored: dict[str, OutgoingInstance] = {}
        self.sent: set[str] = set()

    def __call__(self, objects: dict) -> None:
        stored = {k: self.node.store_dataset(ds) for k, ds in objects.items()}
        self.stored.update(stored)
        names = self.node.config.routing.send_results_to
        if not names:
            return
        try:
            self.node._send(list(stored.values()), names, f"{len(stored)} derived objects (first part)")
        except SendError as exc:
            log_event(LOG, "send.deferred", level=logging.WARNING, error=str(exc))
        else:
            self.sent.update(stored)


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
        self.sender = StorageSender(config.node.ae_title, config.send, self._client_tls(config))
        self.audit = AuditLog(config.audit_path)
        self.scp = NodeSCP(config, self.store, self.index, self.audit)
        self.tracker = SeriesTracker(self.index, config, self.job_kind_for)
        self.jobs = JobRunner(self.index, config, {JOB_KIND_FORWARD: self.forward_series, JOB_KIND_T2: self.process_t2,
                                                   JOB_KIND_PERFUSION: self.process_perfusion},
                              self.tracker.wakeup)
        self._segmenter = None
        self._engine_lock = threading.Lock()
        self.health = None
        self._stopped = threading.Event()

    @staticmethod
    def _client_tls(config: Config):
        """TLS context for destinations marked ``tls = true`` (None if none is)."""
        if not any(d.tls for d in config.destinations):
            return None
        from dicom_node.tls import client_context  # noqa: PLC0415

        return client_context(config.security)

    # -- job work ----------------------------------------------------------------
    def segmenter(self):
        """The segmentation network, loaded once (torch import + weights: seconds)."""
        with self._engine_lock:
            if self._segmenter is None:
                from pinn_engine.segmentation.infer import Segmenter  # noqa: PLC0415

                t0 = time.perf_counter()
                self._segmenter = Segmenter()
                log_event(LOG, "engine.loaded", seconds=round(time.perf_counter() - t0, 3))
            return self._segmenter

    def _warm_engine(self) -> None:
        """Load the engine at start-up so that the first series does not wait for it."""
        from dicom_node import render_worker  # noqa: PLC0415

        render_worker.start()  # its imports (~1 s) overlap the network's
        try:
            from dicom_node.pipeline_t2 import warm_up  # noqa: PLC0415

            segmenter = self.segmenter()
        except Exception as exc:  # noqa: BLE001  (the job will report the same error with its series)
            log_event(LOG, "engine.load_failed", level=logging.ERROR, error=str(exc))
            return
        t0 = time.perf_counter()
        try:
            warm_up(segmenter)
        except Exception as exc:  # noqa: BLE001  (only slower first jobs; they report their own errors)
            log_event(LOG, "engine.warm_up_failed", level=logging.WARNING, error=str(exc))
        log_event(LOG, "engine.ready", warm_up_seconds=round(time.perf_counter() - t0, 3))

    def outgoing(self, series_uid: str) -> list[OutgoingInstance]:
        return [
            OutgoingInstance(self.store.abspath(i.path), i.sop_class_uid, i.sop_instance_uid, i.transfer_syntax_uid)
            for i in self.index.series_instances(series_uid)
        ]

    def _classify_rules(self):
        """The configured classification overrides, as ``classify`` takes them."""
        from dicom_node.classify import Rule  # noqa: PLC0415

        return [Rule(r.kind, r.series_description or None, r.protocol_name or None, r.sop_class_uid or None)
                for r in self.config.classify]

    def job_kind_for(self, series_uid: str) -> str | None:
        """T2 series are processed; others are forwarded if configured, else only stored."""
        from dicom_node.classify import classify  # noqa: PLC0415
        from dicom_node.series_io import read_headers  # noqa: PLC0415

        paths = [self.store.abspath(i.path) for i in self.index.series_instances(series_uid)]
        try:
            headers = read_headers(paths)
        except Exception as exc:  # unreadable files: keep them, do not process
            log_event(LOG, "series.unreadable", logging.ERROR, series_uid=series_uid, error=str(exc))
            headers = []
        from dicom_node.encode.common import DERIVED_SUFFIX  # noqa: PLC0415

        if headers and all(str(h.get("SeriesDescription", "")).endswith(DERIVED_SUFFIX) for h in headers):
            # the node's own results: already routed to send_results_to by their job
            log_event(LOG, "series.classified", series_uid=series_uid, kind="own-result", reason=DERIVED_SUFFIX)
            return None
        kind = classify(headers, self._classify_rules())
        log_event(LOG, "series.classified", series_uid=series_uid, kind=kind.kind, reason=kind.reason)
        if kind.kind == "t2":
            return JOB_KIND_T2
        if kind.kind == "perfusion":
            return JOB_KIND_PERFUSION
        # a pre-bolus series is not quantified itself: the perfusion job of its study uses it
        return JOB_KIND_FORWARD if self.config.routing.forward_series_to else None

    def forward_series(self, job: Job) -> str:
        """Send a completed series unchanged to every ``routing.forward_series_to`` destination."""
        return self._send(self.outgoing(job.series_uid or ""), self.config.routing.forward_series_to,
                          f"series {job.series_uid}")

    def process_t2(self, job: Job) -> str:
        """The T2 job: process the series, store the derived objects, send them on."""
        from dicom_node.pipeline_t2 import process_t2  # noqa: PLC0415
        from dicom_node.series_io import load_t2_series  # noqa: PLC0415

        from dicom_node import render_worker  # noqa: PLC0415

        render_worker.start()  # no-op once running
        series = load_t2_series(self._series_paths(job))
        engine = self.config.engine
        early = _EarlyDelivery(self)
        outcome = process_t2(series, method=engine.t2_method, confidence=engine.confidence,
                             segmenter=self.segmenter(), deliver=early)
        return self._deliver(job, outcome, "t2.processed", early, global_t2_ms=outcome.summary["global"]["t2_ms"])

    def process_perfusion(self, job: Job) -> str:
        """The perfusion job: motion correction, AIF, 2CXM per pixel and AHA segment, objects, send."""
        from dicom_node import render_worker  # noqa: PLC0415
        from dicom_node.pipeline_perfusion import process_perfusion  # noqa: PLC0415
        from dicom_node.series_io import load_perfusion_series  # noqa: PLC0415
        from pinn_engine.perfusion.quantify import PerfusionSettings  # noqa: PLC0415

        render_worker.start()
        engine = self.config.engine
        settings = PerfusionSettings(hct=engine.hematocrit, density_g_ml=engine.myocardial_density_g_ml,
                                     saturation_delay_ms=engine.saturation_delay_ms, method=engine.perfusion_method)
        early = _EarlyDelivery(self)
        series = load_perfusion_series(self._series_paths(job))
        outcome = process_perfusion(series, settings, self.segmenter(), deliver=early,
                                    prebolus=self._find_prebolus(job.series_uid or "", series))
        return self._deliver(job, outcome, "perfusion.processed", early,
                             global_mbf_ml_min_g=outcome.summary["global"]["mbf_ml_min_g"])

    def _find_prebolus(self, series_uid: str, series):
        """The latest pre-bolus series of the same study acquired before ``series``, if any.

        Its dose ratio comes from the headers (the same contrast dose attribute in both
        series) or from ``[engine] prebolus_dose_ratio``; without either it is not used.
        """
        from dicom_node.classify import classify  # noqa: PLC0415
        from dicom_node.pipeline_perfusion import prebolus_series  # noqa: PLC0415
        from dicom_node.series_io import SeriesError, frame_time_s, load_perfusion_series, read_headers  # noqa: PLC0415

        study = self.index.series_instances(series_uid)[0].study_uid
        by_series: dict[str, list[Path]] = {}
        for inst in self.index.instances_where("study_uid", [study]):
            if inst.series_uid != series_uid:
                by_series.setdefault(inst.series_uid, []).append(self.store.abspath(inst.path))
        rules = self._classify_rules()
        start = frame_time_s(series.sources[0])
        candidates = []
        for uid, paths in by_series.items():
            try:
                headers = read_headers(paths)
            except Exception:  # noqa: BLE001 - an unreadable series is simply not a candidate
                continue
            if classify(headers, rules).kind != "prebolus":
                continue
            began = min((frame_time_s(h) or 0.0) for h in headers)
            if start is None or began <= start:
                candidates.append((began, uid, paths))
        if not candidates:
            return None
        _, uid, paths = max(candidates)
        try:
            pre = load_perfusion_series(paths)
        except SeriesError as exc:
            log_event(LOG, "perfusion.prebolus_unusable", logging.WARNING, series_uid=uid, error=str(exc))
            return None
        paired = prebolus_series(series, pre, self.config.engine.prebolus_dose_ratio, "[engine] prebolus_dose_ratio")
        if paired is None:
            log_event(LOG, "perfusion.prebolus_unusable", logging.WARNING, series_uid=uid,
                      error="dose ratio unknown: the headers state no contrast dose and "
                            "[engine] prebolus_dose_ratio is 0")
            return None
        log_event(LOG, "perfusion.prebolus", series_uid=series_uid, prebolus_series_uid=uid,
                  dose_ratio=paired.dose_ratio, dose_source=paired.dose_source)
        return paired

    def _series_paths(self, job: Job) -> list[Path]:
        return [self.store.abspath(i.path) for i in self.index.series_instances(job.series_uid or "")]

    def _deliver(self, job: Job, outcome, event: str, early: "_EarlyDelivery | None" = None, **fields) -> str:
        """Write summary and pictures, store the derived objects (served by Q/R), send them on.

        Objects the job already handed to ``early`` are stored; those it also sent are not
        sent again.
        """
        import json  # noqa: PLC0415

        early = early or _EarlyDelivery(self)
        results = self.config.storage_dir / "results" / str(job.series_uid)
        results.mkdir(parents=True, exist_ok=True)
        (results / "summary.json").write_text(json.dumps(outcome.summary, indent=2))
        try:
            stored = {k: early.stored.get(k) or self.store_dataset(ds) for k, ds in outcome.objects.items()}
            log_event(LOG, event, series_uid=job.series_uid, objects=len(stored),
                      timings_s=outcome.summary["timings_s"], **fields)
            names = self.config.routing.send_results_to
            what = f"{len(stored)} derived objects"
            if names and early.sent:
                self._send([v for k, v in stored.items() if k not in early.sent], names, f"{what} (last part)")
                return f"{what}: sent {len(stored)} instances to {', '.join(names)}"
            return self._send(list(stored.values()), names, what)
        finally:  # the pictures are for people looking into the results folder: after the PACS has its objects
            from dicom_node.encode.display import png  # noqa: PLC0415

            for name, rgb in outcome.pictures.items():
                (results / name).write_bytes(png(rgb))

    def store_dataset(self, ds) -> OutgoingInstance:
        """Store a dataset the node made, through the same durable path as received ones."""
        from pydicom.uid import ExplicitVRLittleEndian  # noqa: PLC0415

        from dicom_node.encode.common import dataset_bytes  # noqa: PLC0415
        from dicom_node.filemeta import encode_file_meta  # noqa: PLC0415
        from dicom_node.instance import parse_instance  # noqa: PLC0415

        body = dataset_bytes(ds)
        ts = str(ExplicitVRLittleEndian)
        meta = encode_file_meta(str(ds.SOPClassUID), str(ds.SOPInstanceUID), ts, self.config.node.ae_title)
        info = parse_instance(body, ts, str(ds.SOPClassUID), str(ds.SOPInstanceUID))
        result = self.store.put(info, meta, body, self.config.node.ae_title)
        return OutgoingInstance(result.path, info.sop_class_uid, info.sop_instance_uid, ts)

    def _send(self, instances: list[OutgoingInstance], names, what: str) -> str:
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

    # -- life cycle --------------------------------------------------------------
    def start(self) -> None:
        self.store.begin_session()
        if self.config.engine.preload:
            threading.Thread(target=self._warm_engine, name="engine-warm-up", daemon=True).start()
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
        from dicom_node import render_worker  # noqa: PLC0415

        render_worker.stop()
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
