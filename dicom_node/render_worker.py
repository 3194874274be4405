"""A helper process that draws the display pictures while the node encodes DICOM objects.

Drawing with matplotlib and building the SR with highdicom are both pure-Python work, so
threads would take turns on one core; a second process does them side by side (the
job's wall time drops by the drawing time on a machine with two cores or more). The
process is started once (``start``) and reused; without it, or on one core, or if it
breaks, drawing happens in the caller. It only ever receives arrays and returns pixels.
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
_pool: ProcessPoolExecutor | None = None


def _exit_with_parent(parent: int) -> None:
    """In the helper: leave when the node is gone (a kill -9 of the node closes no pipe we wait on)."""
    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(0)

    threading.Thread(target=watch, daemon=True).start()
    import dicom_node.encode.display  # noqa: F401, PLC0415  (matplotlib import: ~1 s, paid once)


def start() -> None:
    """Start the helper process (no-op on a single core or if already running)."""
    global _pool
    with _lock:
        if _pool is not None or (os.cpu_count() or 1) < 2:
            return
        _pool = ProcessPoolExecutor(max_workers=1, mp_context=mp.get_context("spawn"),
                                    initializer=_exit_with_parent, initargs=(os.getpid(),))
        _pool.submit(os.getpid)  # the process (and its imports) starts now, not with the first picture


def stop() -> None:
    global _pool
    with _lock:
        pool, _pool = _pool, None
    if pool is not None:
        pool.shutdown(wait=True, cancel_futures=True)


def submit(fn: Callable, *args) -> Callable[[], object]:
    """Run ``fn(*args)`` in the helper if it is running; returns a function giving the result."""
    with _lock:
        pool = _pool
    if pool is not None:
        try:
            future: Future = pool.submit(fn, *args)
        except Exception as exc:  # noqa: BLE001  (a broken pool: draw here instead)
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
