"""Helper processes that run a job's heavy side steps: the whole-image fit, drawing, the SR.

The NLLS fit of the whole image, drawing with matplotlib and building the SR with
highdicom are mostly pure-Python work, so threads would take turns on one core; helper
processes do them side by side while the job's own thread segments, encodes the other
objects and stores and sends them (on two cores or more the job's wall time drops by all
three). Work goes to one of two lanes, each a single process with its own imports and
warm caches: ``FIT_AND_DRAW`` fits and then draws, ``REPORT`` builds the SR, so the order of
work within a lane is the order a job needs it; ``FIT_AND_DRAW`` runs at a lower priority
(``LANE_NICE``). The owner (the node, or ``dicom-node process``) starts them once and stops
them; without them (not started, one core, or broken), the work happens in the caller.
They receive arrays and header-only datasets, never file paths or the node's state.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import threading
import time
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Callable

from dicom_node.logs import log_event

LOG = logging.getLogger("dicom_node.processing.step_processes")

FIT_AND_DRAW = 0  # lane: the whole-image fit, then the display picture
REPORT = 1  # lane: the TID 1500 SR
LANES = 2

# Added niceness per lane. The REPORT lane builds the SR, the longest single step on a job's
# critical path (~0.7 s of highdicom); everything else a job does meanwhile (drawing in
# FIT_AND_DRAW, encoding and sending in the job thread, which runs at jobs.JOB_NICE) can wait
# for it. On the 2-core machine, T2 NLLS end to end without these priorities 1.52 s, with
# them 1.31 s (medians of 5 alternating runs; the report's own wall time 0.92 -> 0.75 s).
LANE_NICE = (5, 0)


def _exit_with_parent(parent: int, lane: int = FIT_AND_DRAW) -> None:
    """In the helper: leave when the node is gone (a kill -9 of the node closes no pipe we wait on)."""
    try:  # relative to the node's main thread (a helper started from a job thread inherits its niceness)
        want = os.getpriority(os.PRIO_PROCESS, parent) + LANE_NICE[lane % len(LANE_NICE)]
        have = os.getpriority(os.PRIO_PROCESS, 0)
        if want > have:
            os.nice(want - have)
    except OSError:
        pass

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(0)

    threading.Thread(target=watch, daemon=True).start()
    import dicom_node.encode.display  # noqa: F401, PLC0415  (matplotlib import: ~1 s, paid once)
    import dicom_node.encode.report  # noqa: F401, PLC0415  (highdicom)
    import pinn_engine.t2  # noqa: F401, PLC0415  (scipy)


class StepProcesses:
    """The two helper processes of the module docstring; ``submit`` falls back to the caller."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pools: list[ProcessPoolExecutor] = []

    @property
    def running(self) -> bool:
        with self._lock:
            return bool(self._pools)

    def start(self) -> None:
        """Start the helper processes (no-op on a single core or if already running)."""
        with self._lock:
            if self._pools or (os.cpu_count() or 1) < 2:
                return
            for lane in range(LANES):
                pool = ProcessPoolExecutor(max_workers=1, mp_context=mp.get_context("spawn"),
                                           initializer=_exit_with_parent, initargs=(os.getpid(), lane))
                pool.submit(os.getpid)  # the process (and its imports) starts now, not with the first job
                self._pools.append(pool)

    def stop(self) -> None:
        with self._lock:
            pools = list(self._pools)
            self._pools.clear()
        for pool in pools:
            pool.shutdown(wait=True, cancel_futures=True)

    def submit(self, fn: Callable, *args, lane: int = FIT_AND_DRAW) -> Callable[[], object]:
        """Run ``fn(*args)`` in helper ``lane`` if the helpers run; returns a function giving the result."""
        with self._lock:
            pool = self._pools[lane % len(self._pools)] if self._pools else None
        if pool is not None:
            try:
                future: Future = pool.submit(fn, *args)
            except Exception as exc:  # noqa: BLE001  (a broken pool: work here instead)
                log_event(LOG, "helpers.unavailable", level=logging.WARNING, error=str(exc))
            else:
                def result() -> object:
                    try:
                        return future.result()
                    except BrokenProcessPool as exc:
                        log_event(LOG, "helpers.lost", level=logging.WARNING, error=str(exc))
                        self.stop()
                        return fn(*args)
                return result
        value = fn(*args)
        return lambda: value


# runs every step in the caller: for code called without helper processes (tests, benchmarks)
IN_CALLER = StepProcesses()
