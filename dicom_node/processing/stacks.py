"""Study stacks: the T2 source series of a study that together make one short-axis stack.

Scanners often write one series per breath-hold, i.e. per slice (Siemens MyoMaps), and
add a motion-corrected copy of each; a stack may also be several multi-slice series. The
series of one study that are T2 sources and share a frame of reference and an orientation
form one stack, quantified together: one set of derived objects with AHA segments from
every level. Within a stack each slice position comes from one series: a motion-corrected
one (Image Type MOCO) before the original, then the later acquisition (a repeated
breath-hold replaces the earlier one). Series on another matrix or pixel spacing than the
stack's are left out and named, never resampled silently.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from pydicom.dataset import Dataset

from dicom_node.processing.classification import slice_key
from dicom_node.processing.sources import SeriesSource


@dataclass
class StackPlan:
    """The series of one stack, most preferred first, and what was left out of it."""

    members: list[tuple[str, list[Path]]]  # (series UID, its files)
    notes: list[str] = field(default_factory=list)


def _orientation_key(ds: Dataset) -> tuple:
    return (str(ds.get("FrameOfReferenceUID", "")),
            tuple(round(float(v), 3) for v in ds.get("ImageOrientationPatient", []) or []))


def _grid_key(ds: Dataset) -> tuple:
    return (int(ds.get("Rows", 0)), int(ds.get("Columns", 0)),
            tuple(round(float(v), 4) for v in ds.get("PixelSpacing", []) or []))


def _is_moco(headers: Sequence[Dataset]) -> bool:
    return any("MOCO" in [str(v).upper() for v in (h.get("ImageType") or [])] for h in headers)


def _acquired(headers: Sequence[Dataset]) -> str:
    """A sortable acquisition time stamp (YYYYMMDDHHMMSS.ffffff) of the series' first image."""
    h = headers[0]
    stamp = str(h.get("AcquisitionDateTime", "") or "")
    if not stamp:
        date = str(h.get("AcquisitionDate", "") or h.get("SeriesDate", "") or h.get("StudyDate", ""))
        stamp = date + str(h.get("AcquisitionTime", "") or h.get("SeriesTime", "") or "")
    return stamp


def _label(uid: str, headers: Sequence[Dataset]) -> str:
    h = headers[0]
    return f"{h.get('SeriesNumber', '')} '{h.get('SeriesDescription', '')}' ({uid})"


def plan_t2_stacks(source: SeriesSource, series_uid: str,
                   is_t2_source: Callable[[Sequence[Dataset]], bool]) -> list[StackPlan]:
    """The T2 stacks of the study of ``series_uid``: every T2 source series of the study
    (``is_t2_source`` decides) grouped by frame of reference and orientation."""
    candidates = {series_uid: source.series_paths(series_uid), **source.study_series(series_uid)}
    headers: dict[str, list[Dataset]] = {}
    for uid in candidates:
        found = source.series_headers(uid)
        if found and is_t2_source(found):
            headers[uid] = found
    groups: dict[tuple, list[str]] = defaultdict(list)
    for uid, found in headers.items():
        groups[_orientation_key(found[0])].append(uid)

    plans = []
    for uids in groups.values():
        positions = {uid: {slice_key(h) for h in headers[uid]} for uid in uids}
        by_grid = Counter()
        for uid in uids:
            by_grid[_grid_key(headers[uid][0])] += len(positions[uid])
        grid = by_grid.most_common(1)[0][0]
        notes = [f"series {_label(uid, headers[uid])} not used: its matrix and pixel spacing "
                 f"{_grid_key(headers[uid][0])} differ from the stack's {grid}"
                 for uid in uids if _grid_key(headers[uid][0]) != grid]
        members = [uid for uid in uids if _grid_key(headers[uid][0]) == grid]
        members.sort(key=lambda uid: (_is_moco(headers[uid]), _acquired(headers[uid]),
                                      int(headers[uid][0].get("SeriesNumber", 0) or 0)), reverse=True)
        plans.append(StackPlan([(uid, candidates[uid]) for uid in members], notes))
    return plans
