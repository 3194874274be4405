"""What every processing job shares: its outcome, and timed, logged, progress-reported steps."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Callable

from pydicom.dataset import Dataset

from dicom_node.logs import log_event

LOG = logging.getLogger("dicom_node.pipeline")


@dataclass
class Outcome:
    objects: dict[str, Dataset]  # object kind -> derived DICOM object
    summary: dict  # summary.json
    pictures: dict[str, bytes] = field(default_factory=dict)  # name -> PNG


class Steps:
    """Runs named steps: reports each to ``progress``, times it into ``timings`` and logs it."""

    def __init__(self, series_uid: str, progress: Callable[[str], None] | None = None) -> None:
        self.series_uid = series_uid
        self.timings: dict[str, float] = {}
        self.announce = progress or (lambda name: None)

    def __call__(self, name: str, fn, *args, **kwargs):
        self.announce(name)
        t0 = time.perf_counter()
        out = fn(*args, **kwargs)
        self.timings[name] = round(time.perf_counter() - t0, 3)
        log_event(LOG, "pipeline.step", step=name, seconds=self.timings[name], series_uid=self.series_uid)
        return out
