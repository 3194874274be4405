"""What every processing job shares: its outcome, and timed, logged, progress-reported steps."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
from pydicom.dataset import Dataset

from dicom_node.encode import (
    Algorithm,
    Picture,
    RegionResult,
    ReportContext,
    dataset_bytes,
    dataset_from_bytes,
    draw,
    encode_background_series,
    encode_pdf,
    encode_report,
    encode_secondary_capture,
    header_only,
    raster_pdf,
)
from dicom_node.logs import log_event
from dicom_node.processing.step_processes import REPORT, StepProcesses

LOG = logging.getLogger("dicom_node.processing")

# receives derived objects (kind -> dataset) that are final, to store and send them early
Deliver = Callable[[dict[str, Dataset]], None]


def add_background(objects: dict[str, Dataset], sources: Sequence[Dataset], images: np.ndarray, subject_uid: str,
                   series_number: int, description: str, derivation: str) -> list[Dataset]:
    """Make the background series (``encode.background``) the job's maps and SEG reference.

    Its images join ``objects`` (``background-<n>``, n along the slice normal) ahead of the
    maps, so they are stored and sent before anything that references them.
    """
    images_ = encode_background_series(sources, images, subject_uid, series_number, description, derivation)
    for ds in sorted(images_, key=lambda d: int(d.InstanceNumber)):
        objects[f"background-{int(ds.InstanceNumber)}"] = ds
    return images_


def unique_instances(datasets: Sequence[Dataset]) -> list[Dataset]:
    """One dataset per SOP instance (the frames of an Enhanced MR image are one instance)."""
    seen: dict[str, Dataset] = {}
    for ds in datasets:
        seen.setdefault(str(ds.SOPInstanceUID), getattr(ds, "parent", ds))
    return list(seen.values())


@dataclass
class Outcome:
    objects: dict[str, Dataset]  # object kind -> derived DICOM object
    summary: dict  # summary.json
    # name -> RGB picture, written as PNG once the objects are sent (off the job's critical path)
    pictures: dict[str, np.ndarray] = field(default_factory=dict)


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


def submit_report(helpers: StepProcesses, sources: Sequence[Dataset], seg: Dataset, tracking: dict[str, int],
                  value_map: Dataset, regions: Sequence[RegionResult], ctx: ReportContext, algorithm: Algorithm,
                  series_number: int, evidence: Sequence[Dataset] = (),
                  timings: dict | None = None) -> Callable[[], Dataset]:
    """Build the TID 1500 report in a helper process; returns a function giving the SR.

    ``timings`` receives "report_build", the seconds the helper spent on it.

    Assembling an SR with highdicom is the slowest encoding step (pure Python, 0.5-0.7 s
    for 17 regions); it needs only the identities of the images it references, so those go
    to the helper without their pixels, and the SR comes back encoded.
    """
    timings = {} if timings is None else timings
    encoded = helpers.submit(
        _encoded_report, [header_only(d) for d in sources], header_only(seg), tracking, header_only(value_map),
        list(regions), ctx, algorithm, series_number, [header_only(d) for d in evidence], lane=REPORT,
    )

    def report() -> Dataset:
        body, seconds = encoded()
        timings["report_build"] = round(seconds, 3)  # in the helper, overlapping the job's steps
        return dataset_from_bytes(body)

    return report


def _encoded_report(*args) -> tuple[bytes, float]:
    t0 = time.perf_counter()
    # bytes cross the process boundary ~10x faster than a pickled tree of content items
    return dataset_bytes(encode_report(*args)), time.perf_counter() - t0


@dataclass(frozen=True)
class DisplayCopies:
    kind: str  # the quantity shown, e.g. "T2", "MBF"
    sc_series_number: int
    pdf_series_number: int
    pdf_title: str
    png_name: str  # the picture's name among the outcome's pictures


def encode_and_deliver(helpers: StepProcesses, timed: Steps, objects: dict[str, Dataset],
                       encode: Callable[[], None], picture: Picture, report: Callable[[], Dataset], source: Dataset,
                       algorithm: Algorithm, copies: DisplayCopies, deliver: Deliver | None) -> dict[str, np.ndarray]:
    """Make the remaining derived objects in the order that keeps both cores busy; return the pictures.

    With the report already building in one helper (``submit_report``), the picture is drawn
    in the other while ``encode`` makes the maps and SEG, which go to ``deliver`` at once;
    then the display copies (delivered too), and last the report.
    """
    drawn = helpers.submit(draw, picture)
    timed("encode", encode)
    if deliver is not None:  # stored and sent while the helpers draw and build the report
        timed("deliver_early", deliver, dict(objects))

    def display() -> dict[str, np.ndarray]:
        rgb, seconds = drawn()
        timed.timings["display_draw"] = round(seconds, 3)  # in a helper, overlapping "encode"
        objects["sc"] = encode_secondary_capture(rgb, source, algorithm, copies.kind, copies.sc_series_number)
        objects["pdf"] = encode_pdf(raster_pdf(rgb), source, algorithm, copies.kind, copies.pdf_series_number,
                                    copies.pdf_title)
        return {copies.png_name: rgb}

    pictures = timed("display", display)
    if deliver is not None:  # while the report is still being built
        timed("deliver_display", deliver, {k: objects[k] for k in ("sc", "pdf")})
    objects["sr"] = timed("report", report)
    return pictures
