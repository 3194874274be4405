"""Durable job queue and in-process workers.

Jobs live in the index (state pending -> running -> done | failed, attempts, last
error). A failed attempt is retried with exponential back-off until ``max_attempts``;
then the job is parked as ``failed`` (dead letter) for ``dicom-node jobs --retry``. A
``PermanentJobError`` (the series itself cannot be processed: another attempt would fail
the same way) parks the job at once, with its reason.
Jobs found ``running`` at start-up were interrupted by a crash and run again.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from typing import Callable

from dicom_node.config import Config
from dicom_node.index import Index, Job
from dicom_node.logs import log_event

LOG = logging.getLogger("dicom_node.jobs")

JobHandler = Callable[[Job], str]


class PermanentJobError(Exception):
    """A job that cannot succeed by trying again (e.g. a series the engine cannot process)."""


# Job threads run this much nicer than the threads receiving instances (an arriving
# C-STORE is never slowed by processing) and than the helper building the report (see
# render_worker.LANE_NICE).
JOB_NICE = 5


def _lower_thread_priority(nice: int) -> None:
    """Raise the calling thread's nice value by ``nice`` (Linux: per thread; elsewhere not at all)."""
    if not nice or not sys.platform.startswith("linux"):
        return
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, os.getpriority(os.PRIO_PROCESS, tid) + nice)
    except OSError:
        pass


class JobRunner:
    def __init__(self, index: Index, config: Config, handlers: dict[str, JobHandler], wakeup: threading.Event,
                 one_per_study: tuple[str, ...] = ()) -> None:
        self.index = index
        self.one_per_study = one_per_study  # job kinds of which one runs per study at a time
        self.config = config
        self.handlers = handlers
        self.wakeup = wakeup
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def backoff(self, attempts: int) -> float:
        cfg = self.config.jobs
        return min(cfg.retry_backoff_s * 2 ** max(attempts - 1, 0), cfg.retry_backoff_max_s)

    def run_one(self) -> Job | None:
        """Claim and run one job; return it (as claimed) or None if none was due."""
        job = self.index.claim_job(one_per_study=self.one_per_study)
        if job is None:
            return None
        handler = self.handlers.get(job.kind)
        started = time.monotonic()
        log_event(LOG, "job.start", job_id=job.id, kind=job.kind, series_uid=job.series_uid, attempt=job.attempts)
        try:
            if handler is None:
                raise RuntimeError(f"no handler for job kind {job.kind!r}")
            result = handler(job)
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
            final = isinstance(exc, PermanentJobError) or job.attempts >= job.max_attempts
            retry_at = None if final else time.time() + self.backoff(job.attempts)
            state = self.index.fail_job(job.id, error, retry_at)
            log_event(
                LOG,
                "job.failed" if state == "failed" else "job.retry",
                logging.ERROR if state == "failed" else logging.WARNING,
                job_id=job.id,
                kind=job.kind,
                attempt=job.attempts,
                max_attempts=job.max_attempts,
                error=error,
                retry_in_s=None if retry_at is None else round(retry_at - time.time(), 1),
            )
            return job
        self.index.finish_job(job.id, result)
        log_event(LOG, "job.done", job_id=job.id, kind=job.kind, result=result,
                  seconds=round(time.monotonic() - started, 3))
        return job

    def _loop(self) -> None:
        _lower_thread_priority(JOB_NICE)
        while not self._stop.is_set():
            try:
                ran = self.run_one()
            except Exception:
                LOG.exception("job worker pass failed")
                ran = None
            if ran is None:
                self.wakeup.wait(self.config.jobs.poll_interval_s)
                self.wakeup.clear()

    def start(self) -> None:
        recovered = self.index.recover_interrupted_jobs()
        if recovered:
            log_event(LOG, "job.recovered", logging.WARNING, jobs=recovered)
        for n in range(self.config.jobs.workers):
            t = threading.Thread(target=self._loop, name=f"job-worker-{n}", daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self) -> None:
        self._stop.set()
        self.wakeup.set()
        for t in self._threads:
            t.join(timeout=10)
