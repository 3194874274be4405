"""The processing layer's entry points: what work a completed series gets, and doing it.

``Processor.process`` is the one function that turns a series into delivered results; the
node's job worker (through ``job_handlers``) and ``dicom-node process`` both call it, with
the same configuration (``[engine]``, ``[[classify]]`` rules, pre-bolus policy). The handler
of each quantified series kind is looked up in ``PIPELINES``.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from pydicom.dataset import Dataset

from dicom_node.config import Config
from dicom_node.index import Job
from dicom_node.logs import log_event
from dicom_node.processing.classification import Classification, Rule, classify, is_own_result
from dicom_node.processing.delivery import Delivery, Destinations, NodeDelivery, stored_series
from dicom_node.processing.kinds import QUANTIFIED, JobKind, SeriesKind
from dicom_node.processing.load import SeriesError, load_perfusion_series, load_t2_stack
from dicom_node.processing.sources import SeriesSource, StoredSeries
from dicom_node.processing.stacks import StackPlan, plan_t2_stacks
from dicom_node.processing.step_processes import StepProcesses
from dicom_node.processing.steps import Deliver, Outcome

LOG = logging.getLogger("dicom_node.processing")

Progress = Callable[[str], None]


@dataclass(frozen=True)
class Pipeline:
    """How one quantified series kind is processed."""

    # (processor, source, series UID) -> what to process: one loader per subject (a series, a
    # study's stack), each giving the loaded data (with its ``subject_uid``) or raising SeriesError
    subjects: Callable[["Processor", SeriesSource, str], list[Callable[[], Any]]]
    run: Callable[["Processor", str, Any, SeriesSource, Deliver, Progress | None], Outcome]
    event: str  # the log event of a processed series
    headline: Callable[[dict], dict]  # summary -> the figures the log line shows
    steps: tuple[str, ...]  # the pipeline's steps in order (progress display)


def _t2_subjects(p: "Processor", source: SeriesSource, series_uid: str) -> list[Callable[[], Any]]:
    """The T2 stacks of the series' study (``stacks``): every T2 source series of it takes part."""
    def is_t2_source(headers: Sequence[Dataset]) -> bool:
        return not is_own_result(headers) and p.classify(headers).kind == SeriesKind.T2

    plans = plan_t2_stacks(source, series_uid, is_t2_source)
    if not plans:
        raise SeriesError("the study holds no complete T2 source series (any more)")

    def loader(plan: StackPlan) -> Callable[[], Any]:
        def load():
            series = load_t2_stack([paths for _, paths in plan.members])
            series.notes[:0] = plan.notes
            return series
        return load

    return [loader(plan) for plan in plans]


def _series_subject(load: Callable[[Sequence[Path]], Any]):
    """A pipeline whose subject is the series itself."""
    def subjects(p: "Processor", source: SeriesSource, series_uid: str) -> list[Callable[[], Any]]:
        return [lambda: load(source.series_paths(series_uid))]
    return subjects


# The pipelines import the engine and the encoders (seconds): only when a series needs them.
def _run_t2(p: "Processor", series_uid: str, series, source: SeriesSource, deliver: Deliver,
            progress: Progress | None) -> Outcome:
    from dicom_node.processing.t2 import process_t2  # noqa: PLC0415

    engine = p.config.engine
    return process_t2(series, method=engine.t2_method, confidence=engine.confidence, segmenter=p.segmenter(),
                      progress=progress, deliver=deliver, helpers=p.helpers)


def _run_perfusion(p: "Processor", series_uid: str, series, source: SeriesSource, deliver: Deliver,
                   progress: Progress | None) -> Outcome:
    from dicom_node.processing.perfusion import process_perfusion  # noqa: PLC0415
    from dicom_node.processing.prebolus import find_prebolus  # noqa: PLC0415
    from pinn_engine.perfusion import PerfusionSettings  # noqa: PLC0415

    engine = p.config.engine
    settings = PerfusionSettings(hct=engine.hematocrit, density_g_ml=engine.myocardial_density_g_ml,
                                 saturation_delay_ms=engine.saturation_delay_ms, method=engine.perfusion_method)
    prebolus = find_prebolus(source, series_uid, series, p.rules, engine.prebolus_dose_ratio)
    return process_perfusion(series, settings, p.segmenter(), progress=progress, deliver=deliver,
                             prebolus=prebolus, helpers=p.helpers)


PIPELINES: dict[SeriesKind, Pipeline] = {
    SeriesKind.T2: Pipeline(_t2_subjects, _run_t2, "t2.processed",
                            lambda s: {"global_t2_ms": s["global"]["t2_ms"]},
                            ("segment", "fit", "aha", "encode", "display", "report")),
    SeriesKind.PERFUSION: Pipeline(_series_subject(load_perfusion_series), _run_perfusion, "perfusion.processed",
                                   lambda s: {"global_mbf_ml_min_g": s["global"]["mbf_ml_min_g"]},
                                   ("segment", "register", "segment_registered", "aha", "prebolus", "fit",
                                    "encode", "display", "report")),
}
assert set(PIPELINES) == set(QUANTIFIED), "every quantified series kind has a pipeline"


def configured_rules(config: Config) -> list[Rule]:
    """The ``[[classify]]`` overrides, as ``classify`` takes them."""
    return [Rule(SeriesKind(r.kind), r.series_description or None, r.protocol_name or None, r.sop_class_uid or None)
            for r in config.classify]


class Processor:
    """Classifies completed series and processes them; owns the engine and the helper processes.

    The owner (the node, or ``dicom-node process``) calls ``start`` and ``stop``.
    """

    def __init__(self, config: Config, helpers: StepProcesses | None = None) -> None:
        self.config = config
        self.helpers = helpers if helpers is not None else StepProcesses()
        self.rules = configured_rules(config)
        self._segmenter = None
        self._engine_lock = threading.Lock()

    # -- life cycle --------------------------------------------------------------
    def start(self) -> None:
        """Start the helper processes (their imports overlap whatever comes next)."""
        self.helpers.start()

    def stop(self) -> None:
        self.helpers.stop()

    def segmenter(self):
        """The segmentation network, loaded once (torch import + weights: seconds)."""
        with self._engine_lock:
            if self._segmenter is None:
                from pinn_engine.segmentation import Segmenter  # noqa: PLC0415

                t0 = time.perf_counter()
                self._segmenter = Segmenter()
                log_event(LOG, "engine.loaded", seconds=round(time.perf_counter() - t0, 3))
            return self._segmenter

    def warm_up(self) -> None:
        """Load the engine and run the chain once, so that the first series does not wait for it."""
        self.start()  # the helpers' imports (~1 s) overlap the network's
        try:
            from dicom_node.processing.t2 import warm_up  # noqa: PLC0415

            segmenter = self.segmenter()
        except Exception as exc:  # noqa: BLE001  (the job will report the same error with its series)
            log_event(LOG, "engine.load_failed", level=logging.ERROR, error=str(exc))
            return
        t0 = time.perf_counter()
        try:
            warm_up(segmenter, self.helpers)
        except Exception as exc:  # noqa: BLE001  (only slower first jobs; they report their own errors)
            log_event(LOG, "engine.warm_up_failed", level=logging.WARNING, error=str(exc))
        log_event(LOG, "engine.ready", warm_up_seconds=round(time.perf_counter() - t0, 3))

    # -- what a series is --------------------------------------------------------
    def classify(self, headers: Sequence[Dataset]) -> Classification:
        """The series' kind under the configured rules."""
        return classify(headers, self.rules)

    def job_kind(self, source: SeriesSource, series_uid: str) -> JobKind | None:
        """The work a completed series gets: its quantification, a forward if configured, or None."""
        try:
            headers = source.series_headers(series_uid)
        except Exception as exc:  # noqa: BLE001 - unreadable files: keep them, do not process
            log_event(LOG, "series.unreadable", logging.ERROR, series_uid=series_uid, error=str(exc))
            headers = []
        if is_own_result(headers):  # already routed to send_results_to by their job
            log_event(LOG, "series.classified", series_uid=series_uid, kind="own-result", reason="derived by the node")
            return None
        found = self.classify(headers)
        log_event(LOG, "series.classified", series_uid=series_uid, kind=found.kind, reason=found.reason)
        if found.kind in QUANTIFIED:
            return QUANTIFIED[found.kind]
        # a pre-bolus series is not quantified itself: the perfusion job of its study uses it
        return JobKind.FORWARD if self.config.routing.forward_series_to else None

    # -- the work ----------------------------------------------------------------
    def process(self, kind: SeriesKind, series_uid: str, source: SeriesSource,
                delivery_for: Callable[[str], Delivery], progress: Progress | None = None) -> str:
        """Process series ``series_uid`` of ``kind`` from ``source``, with what belongs to it (for T2,
        the stacks of its study); each subject's results go to ``delivery_for(subject UID)``.

        Raises SeriesError with the reason(s) when a subject cannot be processed (after the
        others have been delivered).
        """
        pipeline = PIPELINES.get(SeriesKind(kind))
        if pipeline is None:
            raise SeriesError(f"series kind {kind!s} is stored and served, not processed")
        self.start()  # no-op once running
        results, problems = [], []
        for load in pipeline.subjects(self, source, series_uid):
            try:
                subject = load()
            except SeriesError as exc:
                problems.append(str(exc))
                continue
            if progress is not None:
                progress("load_model")
            self.segmenter()
            delivery = delivery_for(subject.subject_uid)
            try:
                outcome = pipeline.run(self, series_uid, subject, source, delivery.early, progress)
            except SeriesError as exc:
                problems.append(str(exc))
                continue
            log_event(LOG, pipeline.event, series_uid=series_uid, subject_uid=subject.subject_uid,
                      objects=len(outcome.objects), timings_s=outcome.summary["timings_s"],
                      **pipeline.headline(outcome.summary))
            results.append(delivery.finish(subject.subject_uid, outcome))
        if problems:
            done = f" ({len(results)} other stack(s) processed: {'; '.join(results)})" if results else ""
            raise SeriesError("; ".join(problems) + done)
        return "; ".join(results)


def job_handlers(processor: Processor, source: StoredSeries,
                 destinations: Destinations) -> dict[JobKind, Callable[[Job], str]]:
    """The node's job handler for every job kind: quantification through ``Processor.process``, forwarding."""
    config = processor.config

    def forward(job: Job) -> str:
        """Send a completed series unchanged to every ``routing.forward_series_to`` destination."""
        uid = job.series_uid or ""
        return destinations.send(stored_series(source.index, source.store, uid), config.routing.forward_series_to,
                                 f"series {uid}")

    def quantify(kind: SeriesKind) -> Callable[[Job], str]:
        def handler(job: Job) -> str:
            return processor.process(kind, job.series_uid or "", source,
                                     lambda subject: NodeDelivery(config, source.store, destinations))
        return handler

    handlers: dict[JobKind, Callable[[Job], str]] = {JobKind.FORWARD: forward}
    handlers.update({job_kind: quantify(series_kind) for series_kind, job_kind in QUANTIFIED.items()})
    return handlers
