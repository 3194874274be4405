"""DICOM series -> arrays + geometry for the engine; inconsistent series are refused with a reason."""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pydicom
from pydicom.dataset import Dataset

from dicom_node.jobs import PermanentJobError
from dicom_node.processing.classification import preparation_times, slice_key
from dicom_node.processing.frames import frame_number, frame_pixels, frame_views_of
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


def read_headers(paths: Sequence[Path]) -> list[Dataset]:
    """The headers of ``paths``: one per image, one per frame of a multi-frame image (``frames``)."""
    return frame_views_of([pydicom.dcmread(p, stop_before_pixels=True) for p in paths])


def _read_consistent(paths: Sequence[Path]) -> list[Dataset]:
    """All instances, checked to share matrix, orientation and pixel spacing."""
    datasets = frame_views_of([pydicom.dcmread(p) for p in paths])
    if not datasets:
        raise SeriesError("no instances")
    first = datasets[0]
    ref = (int(first.Rows), int(first.Columns), tuple(round(float(v), 4) for v in first.ImageOrientationPatient),
           tuple(round(float(v), 4) for v in first.PixelSpacing))
    for ds in datasets:
        this = (int(ds.Rows), int(ds.Columns), tuple(round(float(v), 4) for v in ds.ImageOrientationPatient),
                tuple(round(float(v), 4) for v in ds.PixelSpacing))
        if this != ref:
            raise SeriesError(f"instance {ds.SOPInstanceUID} differs in size/orientation/spacing from the series")
    return datasets


def _geometry(sources: Sequence[Dataset]) -> list[SliceGeometry]:
    return [SliceGeometry(np.array(d.ImageOrientationPatient[:3], float),
                          np.array(d.ImageOrientationPatient[3:], float),
                          (float(d.PixelSpacing[0]), float(d.PixelSpacing[1])), np.array(d.ImagePositionPatient, float))
            for d in sources]


def load_t2_series(paths: Sequence[Path]) -> T2Series:
    datasets = _read_consistent(paths)
    first = datasets[0]
    by_pos: dict[float, dict[float, Dataset]] = defaultdict(dict)
    prep = preparation_times(datasets)  # one source for the whole series (classification's)
    for ds, te in zip(datasets, prep.times, strict=True):
        pos = slice_key(ds)
        if pos is None or te is None:
            raise SeriesError(f"instance {ds.SOPInstanceUID} has no geometry or preparation time")
        if te in by_pos[pos]:
            raise SeriesError(f"two instances at position {pos} mm with preparation time {te} ms")
        by_pos[pos][te] = ds
    te_sets = {tuple(sorted(v)) for v in by_pos.values()}
    if len(te_sets) != 1:
        raise SeriesError(f"slice positions have different preparation times: {sorted(te_sets)}")
    te_ms = np.array(next(iter(te_sets)), dtype=float)
    if te_ms.size < 3:
        raise SeriesError(f"need >= 3 preparation times per slice, got {list(te_ms)}")
    positions = sorted(by_pos)
    images = np.stack([np.stack([_pixels(by_pos[p][t]) for t in te_ms]) for p in positions])
    if prep.by_order:  # times from the CSA protocol by image order: the signal must fall with longer preparation
        falling = np.all(np.diff(images.mean(axis=(2, 3)), axis=1) < 0, axis=1)
        if not falling.all():
            raise SeriesError(f"preparation times from the {prep.source} do not match the images: the signal does "
                              f"not fall with longer preparation at slice position(s) "
                              f"{[positions[k] for k in np.flatnonzero(~falling)]} mm")
    sources = [by_pos[p][te_ms[0]] for p in positions]
    return T2Series(images, te_ms, sources, [by_pos[p][t] for p in positions for t in te_ms], _geometry(sources),
                    (float(first.PixelSpacing[0]), float(first.PixelSpacing[1])))


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
                           saturation_delay_ms(first), timed[0][1])


def _pixels(ds: Dataset) -> np.ndarray:
    if frame_number(ds) is not None:  # a frame of an Enhanced MR image: its own rescale, from its groups
        return frame_pixels(ds)
    arr = ds.pixel_array.astype(np.float64)
    slope, intercept = float(ds.get("RescaleSlope", 1) or 1), float(ds.get("RescaleIntercept", 0) or 0)
    return arr * slope + intercept
