"""DICOM series -> arrays + geometry for the engine; inconsistent series are refused with a reason."""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pydicom
from pydicom.dataset import Dataset

from dicom_node.jobs import PermanentJobError
from dicom_node.processing.classification import preparation_times, slice_key
from dicom_node.processing.frames import frame_number, frame_pixels, frame_views_of, mr_scale_slope
from pinn_engine.aha import SliceGeometry


class SeriesError(PermanentJobError, ValueError):
    """The series cannot be processed as it is; the message says why (its job is not retried)."""


@dataclass
class T2Series:
    images: np.ndarray  # (slices, echoes, H, W), float64, slices base->apex order as stored by position
    te_ms: np.ndarray  # (echoes,)
    sources: list[Dataset]  # first-echo instance of each slice (geometry reference of the maps)
    datasets: list[Dataset]  # every instance used
    geometry: list[SliceGeometry]
    pixel_spacing_mm: tuple[float, float]
    subject_uid: str = ""  # the stack's identity (``stack_uid``): the derived objects' UIDs come from it
    notes: list[str] = field(default_factory=list)  # what was left out of the stack, and why
    series_uids: list[str] = field(default_factory=list)  # the source series used, in stack order


def stack_uid(ds: Dataset) -> str:
    """The identity of a T2 stack: its study, frame of reference and orientation.

    Whatever series of the study make the stack (one, or one per breath-hold, arriving over
    minutes), processing it again gives the same identity, hence the same derived UIDs: the
    new results replace the earlier ones.
    """
    from pydicom.uid import generate_uid  # noqa: PLC0415

    from dicom_node.encode import UID_ROOT  # noqa: PLC0415

    orientation = ",".join(f"{float(v):.3f}" for v in ds.ImageOrientationPatient)
    return str(generate_uid(prefix=UID_ROOT, entropy_srcs=["t2-stack", str(ds.get("StudyInstanceUID", "")),
                                                           str(ds.get("FrameOfReferenceUID", "")), orientation]))


def read_headers(paths: Sequence[Path]) -> list[Dataset]:
    """The headers of ``paths``: one per image, one per frame of a multi-frame image (``frames``)."""
    return frame_views_of([pydicom.dcmread(p, stop_before_pixels=True) for p in paths])


def _grid(ds: Dataset) -> tuple:
    return (int(ds.Rows), int(ds.Columns), tuple(round(float(v), 4) for v in ds.ImageOrientationPatient),
            tuple(round(float(v), 4) for v in ds.PixelSpacing))


def _check_same_grid(datasets: Sequence[Dataset]) -> None:
    ref = _grid(datasets[0])
    for ds in datasets:
        if _grid(ds) != ref:
            raise SeriesError(f"instance {ds.SOPInstanceUID} differs in size/orientation/spacing from the series")


def _read_consistent(paths: Sequence[Path]) -> list[Dataset]:
    """All instances, checked to share matrix, orientation and pixel spacing."""
    datasets = frame_views_of([pydicom.dcmread(p) for p in paths])
    if not datasets:
        raise SeriesError("no instances")
    _check_same_grid(datasets)
    return datasets


def _geometry(sources: Sequence[Dataset]) -> list[SliceGeometry]:
    return [SliceGeometry(np.array(d.ImageOrientationPatient[:3], float),
                          np.array(d.ImageOrientationPatient[3:], float),
                          (float(d.PixelSpacing[0]), float(d.PixelSpacing[1])), np.array(d.ImagePositionPatient, float))
            for d in sources]


def _t2_positions(datasets: Sequence[Dataset]) -> tuple[dict[float, dict[float, Dataset]], bool, str]:
    """One series' images by slice position and preparation time; whether the times came from
    the CSA protocol by image order (then the signal must be checked), and their source."""
    by_pos: dict[float, dict[float, Dataset]] = defaultdict(dict)
    prep = preparation_times(datasets)  # one source for the whole series (classification's)
    for ds, te in zip(datasets, prep.times, strict=True):
        pos = slice_key(ds)
        if pos is None or te is None:
            raise SeriesError(f"instance {ds.SOPInstanceUID} has no geometry or preparation time")
        if te in by_pos[pos]:
            raise SeriesError(f"two instances at position {pos} mm with preparation time {te} ms")
        by_pos[pos][te] = ds
    return by_pos, prep.by_order, prep.source


def load_t2_series(paths: Sequence[Path]) -> T2Series:
    """One T2 series (every slice and preparation time in it); refused with the reason if inconsistent."""
    return load_t2_stack([paths])


def load_t2_stack(members: Sequence[Sequence[Path]]) -> T2Series:
    """A T2 stack from one or more series (``members``, the files of each, most preferred first).

    The stack's set of preparation times is the one most slice positions can be given; each
    position comes from the first member that has it with that set. Positions no member has
    with that set are left out and named in ``notes``; so are members of which no position is
    used.
    """
    candidates: dict[float, list[tuple[int, dict[float, Dataset], bool, str]]] = defaultdict(list)
    loaded = []
    for m, paths in enumerate(members):
        datasets = _read_consistent(paths)
        loaded.append(datasets)
        by_pos, ordered, prep_source = _t2_positions(datasets)
        for pos, images in by_pos.items():
            candidates[pos].append((m, images, ordered, prep_source))
    _check_same_grid([ds for found in candidates.values() for _, images, _, _ in found for ds in images.values()])
    offered = Counter(t for found in candidates.values() for t in {tuple(sorted(c[1])) for c in found})
    stack_set = max(offered, key=lambda t: (offered[t], len(t)))
    chosen: dict[float, dict[float, Dataset]] = {}
    from_member: dict[float, int] = {}
    by_order: dict[float, bool] = {}
    sources_named: dict[float, str] = {}
    notes: list[str] = []
    for pos in sorted(candidates):
        fitting = [c for c in candidates[pos] if tuple(sorted(c[1])) == stack_set]
        if not fitting:
            m, images = candidates[pos][0][:2]
            notes.append(f"slice position {pos} mm (series {_series_label(loaded[m][0])}) left out: "
                         f"preparation times {sorted(images)} ms differ from the stack's {list(stack_set)} ms")
            continue
        from_member[pos], chosen[pos], by_order[pos], sources_named[pos] = fitting[0]
    te_ms = np.array(stack_set, dtype=float)
    if te_ms.size < 3:
        raise SeriesError(f"need >= 3 preparation times per slice, got {list(te_ms)}")
    positions = sorted(chosen)
    if not positions:
        raise SeriesError("no slice position has the stack's preparation times: " + "; ".join(notes))
    images = np.stack([np.stack([_pixels(chosen[p][t]) for t in te_ms]) for p in positions])
    # times from the CSA protocol by image order: the signal must fall with longer preparation
    falling = np.all(np.diff(images.mean(axis=(2, 3)), axis=1) < 0, axis=1)
    wrong = [positions[k] for k in np.flatnonzero(~falling) if by_order[positions[k]]]
    if wrong:
        raise SeriesError(f"preparation times from the {sources_named[wrong[0]]} do not match the images: the signal "
                          f"does not fall with longer preparation at slice position(s) {wrong} mm")
    used = sorted({from_member[p] for p in positions})
    for m, datasets in enumerate(loaded):
        if m in used:
            continue
        own = {tuple(sorted(c[1])) for found in candidates.values() for c in found if c[0] == m}
        why = (f"its preparation times {[list(t) for t in sorted(own)]} ms differ from the stack's {list(stack_set)} ms"
               if stack_set not in own else
               "its slice positions come from other series of the stack (motion-corrected or later acquisitions "
               "are preferred)")
        notes.append(f"series {_series_label(datasets[0])} not used: {why}")
    sources = [chosen[p][te_ms[0]] for p in positions]
    first = sources[0]
    return T2Series(images, te_ms, sources, [chosen[p][t] for p in positions for t in te_ms], _geometry(sources),
                    (float(first.PixelSpacing[0]), float(first.PixelSpacing[1])), stack_uid(first), notes,
                    [str(loaded[m][0].SeriesInstanceUID) for m in used])


def _series_label(ds: Dataset) -> str:
    """How an operator finds a series: its number and description (and UID)."""
    return f"{ds.get('SeriesNumber', '')} '{ds.get('SeriesDescription', '')}' ({ds.get('SeriesInstanceUID', '')})"


@dataclass
class PerfusionSeries:
    images: np.ndarray  # (slices, frames, H, W) float64
    t_min: np.ndarray  # (slices, frames) acquisition time of each frame, minutes from the series' first
    sources: list[Dataset]  # first frame of each slice (geometry reference of the maps)
    datasets: list[Dataset]
    geometry: list[SliceGeometry]
    pixel_spacing_mm: tuple[float, float]
    saturation_delay_ms: float | None  # from the headers when they carry it
    time_source: str = "acquisition time"  # where the frame times came from
    subject_uid: str = ""  # the series' UID: the derived objects' UIDs come from it


_TS_RE = re.compile(r"(?:saturation delay|sr delay|\bTS)\D{0,4}(\d+(?:\.\d+)?)\s*ms", re.IGNORECASE)


def frame_time_s(ds: Dataset) -> float | None:
    """Acquisition time of a dynamic in seconds: TriggerTime is per heartbeat (R-R), so the
    clock time (AcquisitionDateTime / AcquisitionTime) orders and spaces the frames."""
    for kw in ("AcquisitionDateTime", "AcquisitionTime", "ContentTime"):
        value = str(ds.get(kw, "")).strip()
        if value:
            try:
                tm = value[8:] if kw == "AcquisitionDateTime" else value
                hh, mm, ss = int(tm[0:2]), int(tm[2:4]), float(tm[4:] or 0)
                return hh * 3600 + mm * 60 + ss
            except ValueError:
                continue
    return None


def saturation_delay_ms(ds: Dataset) -> float | None:
    """The saturation-recovery delay: text fields, else InversionTime (where e.g. GE puts it)."""
    for kw in ("ImageComments", "SequenceName", "ProtocolName"):
        m = _TS_RE.search(str(ds.get(kw, "")))
        if m:
            return float(m.group(1))
    ti = ds.get("InversionTime")
    try:
        return float(ti) if ti not in (None, "") and float(ti) > 0 else None
    except (TypeError, ValueError):
        return None


def _frame_times_s(group: list[Dataset]) -> tuple[np.ndarray, str]:
    """Times (s) of one slice's dynamics, already in acquisition order, and where they came from.

    The acquisition clock is used when it resolves every frame; vendors that stamp all frames
    with the same second instead count TriggerTime from the first R wave across the series
    (GE); failing both, the frames are spaced by the R-R interval (nominal or 1 s).
    """
    clock = [frame_time_s(ds) for ds in group]
    if all(c is not None for c in clock) and np.all(np.diff(clock) > 0.05):
        return np.asarray(clock, dtype=float), "acquisition time"
    trigger = [ds.get("TriggerTime") for ds in group]
    try:
        tt = np.asarray([float(v) for v in trigger]) / 1000.0
        if np.all(np.diff(tt) > 0.05) and tt[-1] - tt[0] > 0.3 * len(group):
            return tt, "trigger time (cumulative)"
    except (TypeError, ValueError):
        pass
    heart_rate = group[0].get("HeartRate")
    rr = group[0].get("NominalInterval") or (60000.0 / float(heart_rate) if heart_rate else 1000.0)
    return np.arange(len(group)) * float(rr) / 1000.0, "R-R interval (no usable time stamps)"


def load_perfusion_series(paths: Sequence[Path]) -> PerfusionSeries:
    """Dynamics per slice position, in acquisition order (temporal position, instance number,
    acquisition time); each slice keeps its own frame times."""
    datasets = _read_consistent(paths)
    first = datasets[0]
    by_pos: dict[float, list[Dataset]] = defaultdict(list)
    for ds in datasets:
        pos = slice_key(ds)
        if pos is None:
            raise SeriesError(f"instance {ds.SOPInstanceUID} has no geometry")
        by_pos[pos].append(ds)
    counts = {len(v) for v in by_pos.values()}
    if len(counts) != 1:
        raise SeriesError(f"slice positions have different numbers of dynamics: {sorted(counts)}")
    frames = counts.pop()
    if frames < 10:
        raise SeriesError(f"need >= 10 dynamics per slice, got {frames}")
    positions = sorted(by_pos)

    def order(ds: Dataset) -> tuple:
        return (int(ds.get("TemporalPositionIdentifier", 0) or 0), int(ds.get("InstanceNumber", 0) or 0),
                frame_time_s(ds) or 0.0)

    ordered = [sorted(by_pos[p], key=order) for p in positions]
    timed = [_frame_times_s(o) for o in ordered]
    t0 = min(t[0][0] for t in timed)
    t_min = np.array([(t - t0) / 60.0 for t, _ in timed])
    images = np.stack([np.stack([_pixels(ds) for ds in o]) for o in ordered])
    sources = [o[0] for o in ordered]
    return PerfusionSeries(images, t_min, sources, [ds for o in ordered for ds in o], _geometry(sources),
                           (float(first.PixelSpacing[0]), float(first.PixelSpacing[1])),
                           saturation_delay_ms(first), timed[0][1], str(first.SeriesInstanceUID))


def _pixels(ds: Dataset) -> np.ndarray:
    """An image's (or frame's) values: the displayed values DV = SV * RS + RI of its stored values SV,
    or, where Philips gives an MR Scale Slope SS, its floating-point values FP = DV / (RS * SS)."""
    slope = float(ds.get("RescaleSlope", 1) or 1)
    if frame_number(ds) is not None:  # a frame of an Enhanced MR image: its own rescale, from its groups
        values = frame_pixels(ds)
    else:
        values = ds.pixel_array.astype(np.float64) * slope + float(ds.get("RescaleIntercept", 0) or 0)
    scale = mr_scale_slope(ds)
    return values if scale is None else values / (slope * scale)
