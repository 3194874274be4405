"""Series completion: a series is complete when no instance arrived for ``stable_seconds``.

Completion and the job it creates are one transaction, so a crash cannot complete a
series without queueing its work. A later instance re-opens the series (the index does
that on insert) and its next completion queues new work. What work a series gets is
decided by ``job_kind_for`` (the node's processing classifies the stored headers). A T2
series belongs to its study's stack: its completion queues (or postpones) one job for the
study, due ``stack_seconds`` after the last T2 series of the study completed.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable

from dicom_node.config import Config
from dicom_node.index import NO_JOB, Index
from dicom_node.logs import log_event
from dicom_node.processing import JobKind

STUDY_JOBS = (JobKind.T2,)  # job kinds that process a study's stack(s), not one series

LOG = logging.getLogger("dicom_node.series")

class SeriesTracker:
    def __init__(self, index: Index, config: Config,
                 job_kind_for: Callable[[str], JobKind | None] | None = None) -> None:
        self.index = index
        self.config = config
        self._job_kind_for = job_kind_for
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.wakeup = threading.Event()

    def job_kind_for(self, series_uid: str) -> JobKind | None:
        """What work a completed series gets: a job kind, or None (stored and served only)."""
        if self._job_kind_for is not None:
            return self._job_kind_for(series_uid)
        return JobKind.FORWARD

    def check_once(self, now: float | None = None) -> list[int]:
        """Complete every series idle for ``stable_seconds``; return the new job ids."""
        now = time.time() if now is None else now
        before = now - self.config.series.stable_seconds
        jobs = []
        for series_uid in self.index.open_series_idle_since(before):
            kind = self.job_kind_for(series_uid)
            # a T2 series is part of its study's stack: one job for the study, due once no further
            # T2 series has completed for stack_seconds
            study_delay = self.config.series.stack_seconds if kind in STUDY_JOBS else None
            job_id = self.index.complete_series(series_uid, before, None if kind is None else str(kind),
                                                 self.config.jobs.max_attempts, study_delay)
            if job_id is None:  # a new instance arrived meanwhile
                continue
            if job_id != NO_JOB:
                jobs.append(job_id)
            log_event(LOG, "series.complete", series_uid=series_uid, job_id=job_id or None, job_kind=kind)
        if jobs:
            self.wakeup.set()
        return jobs

    def _next_wait(self) -> float:
        """Seconds until the next pass: when the oldest open series becomes due, at most
        ``check_interval_s`` (a series completes on time, not up to an interval late)."""
        interval = self.config.series.check_interval_s
        oldest = self.index.oldest_open_series_activity()
        if oldest is None:
            return interval
        due = oldest + self.config.series.stable_seconds - time.time()
        return min(interval, max(due, 0.0) + 0.02)

    def _run(self) -> None:
        wait = self.config.series.check_interval_s
        while not self._stop.wait(wait):
            try:
                self.check_once()
                wait = self._next_wait()
            except Exception:  # keep tracking; the next pass retries
                LOG.exception("series tracker pass failed")
                wait = self.config.series.check_interval_s

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="series-tracker", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=5)
