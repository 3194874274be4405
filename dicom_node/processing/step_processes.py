"""Helper processes that fit, draw the display pictures and build the SR beside the job.

The NLLS fit, drawing with matplotlib and building the SR with highdicom are mostly
pure-Python work, so threads would take turns on one core; helper processes do them side
by side while the job's own thread segments, encodes the other objects and stores and
sends them (on two cores or more the job's wall time drops by all three). Work goes to
one of two lanes, each a single process with its own imports and warm caches: lane 0
fits and then draws, lane 1 builds the report, so the order of work within a lane is
the order a job needs it; lane 0 runs at a lower priority (``LANE_NICE``). The
processes are started once (``start``) and reused; without them, on one core, or if they
break, the work happens in the caller. They receive arrays and header-only datasets,
never file paths or the node's state.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import threading
import time
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Callable

from dicom_node.logs import log_event

LOG = logging.getLogger("dicom_node.render")
_lock = threading.Lock()
_pools: list[ProcessPoolExecutor] = []
LANES = 2


# Added niceness per lane. Lane 1 builds the report, the longest single step on a job's
# critical path (~0.7 s of highdicom); everything else a job does meanwhile (drawing in
# lane 0, encoding and sending in the job thread, which runs at jobs.JOB_NICE) can wait
# for it. On the 2-core machine, T2 NLLS end to end without these priorities 1.52 s, with
# them 1.31 s (medians of 5 alternating runs; the report's own wall time 0.92 -> 0.75 s).
LANE_NICE = (5, 0)


def _exit_with_parent(parent: int, lane: int = 0) -> None:
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


def start() -> None:
    """Start the helper processes (no-op on a single core or if already running)."""
    with _lock:
        if _pools or (os.cpu_count() or 1) < 2:
            return
        for lane in range(LANES):
            pool = ProcessPoolExecutor(max_workers=1, mp_context=mp.get_context("spawn"),
                                       initializer=_exit_with_parent, initargs=(os.getpid(), lane))
            pool.submit(os.getpid)  # the process (and its imports) starts now, not with the first job
            _pools.append(pool)


def stop() -> None:
    with _lock:
        pools = list(_pools)
        _pools.clear()
    for pool in pools:
        pool.shutdown(wait=True, cancel_futures=True)


def submit(fn: Callable, *args, lane: int = 0) -> Callable[[], object]:
    """Run ``fn(*args)`` in helper ``lane`` if the helpers run; returns a function giving the result."""
    with _lock:
        pool = _pools[lane % len(_pools)] if _pools else None
    if pool is not None:
        try:
            future: Future = pool.submit(fn, *args)
        except Exception as exc:  # noqa: BLE001  (a broken pool: work here instead)
            log_event(LOG, "render.worker_unavailable", level=logging.WARNING, error=str(exc))
        else:
            def result() -> object:
                try:
                    return future.result()
                except Exception as exc:  # noqa: BLE001
                    from concurrent.futures.process import BrokenProcessPool  # noqa: PLC0415

                    if not isinstance(exc, BrokenProcessPool):
                        raise
                    log_event(LOG, "render.worker_lost", level=logging.WARNING, error=str(exc))
                    stop()
                    return fn(*args)
            return result
    value = fn(*args)
    return lambda: value
