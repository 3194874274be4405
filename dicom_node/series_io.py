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

from dicom_node.classify import preparation_time_ms, slice_key
from pinn_engine.aha import SliceGeometry


class SeriesError(ValueError):
    """The series cannot be processed as it is; the message says why."""


@dataclass
class T2Series:
    images: np.ndarray  # (slices, echoes, H, W), float64, slices base->apex order as stored by position
    te_ms: np.ndarray  # (echoes,)
    sources: list[Dataset]  # first-echo instance of each slice (geometry reference of the maps)
    datasets: list[Dataset]  # every instance used
    geometry: list[SliceGeometry]
    pixel_spacing_mm: tuple[float, float]


def read_headers(paths: Sequence[Path]) -> list[Dataset]:
    return [pydicom.dcmread(p, stop_before_pixels=True) for p in paths]


def _read_consistent(paths: Sequence[Path]) -> list[Dataset]:
    """All instances, checked to share matrix, orientation and pixel spacing."""
    datasets = [pydicom.dcmread(p) for p in paths]
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
    return [SliceGeometry(np.array(d.ImageOrientationPatient[:3], float), np.array(d.ImageOrientationPatient[3:], float),
                          (float(d.PixelSpacing[0]), float(d.PixelSpacing[1])), np.array(d.ImagePositionPatient, float))
            for d in sources]


def load_t2_series(paths: Sequence[Path]) -> T2Series:
    datasets = _read_consistent(paths)
    first = datasets[0]
    by_pos: dict[float, dict[float, Dataset]] = defaultdict(dict)
    for ds in datasets:
        pos, te = slice_key(ds), preparation_time_ms(ds)
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
    for kw in ("ImageComments", "SequenceName", "ProtocolName"):
        m = _TS_RE.search(str(ds.get(kw, "")))
        if m:
            return float(m.group(1))
    return None


def load_perfusion_series(paths: Sequence[Path]) -> PerfusionSeries:
    """Dynamics per slice position, ordered by acquisition time (temporal position as the tie-break)."""
    datasets = _read_consistent(paths)
    first = datasets[0]
    by_pos: dict[float, list[tuple[float, int, Dataset]]] = defaultdict(list)
    for ds in datasets:
        pos, t = slice_key(ds), frame_time_s(ds)
        if pos is None or t is None:
            raise SeriesError(f"instance {ds.SOPInstanceUID} has no geometry or acquisition time")
        by_pos[pos].append((t, int(ds.get("TemporalPositionIdentifier", 0) or 0), ds))
    counts = {len(v) for v in by_pos.values()}
    if len(counts) != 1:
        raise SeriesError(f"slice positions have different numbers of dynamics: {sorted(counts)}")
    frames = counts.pop()
    if frames < 10:
        raise SeriesError(f"need >= 10 dynamics per slice, got {frames}")
    positions = sorted(by_pos)
    ordered = [sorted(by_pos[p], key=lambda x: (x[0], x[1])) for p in positions]
    t0 = min(o[0][0] for o in ordered)
    t_min = np.array([[(t - t0) / 60.0 for t, _, _ in o] for o in ordered])
    if np.any(np.diff(t_min, axis=1) <= 0):
        raise SeriesError("two dynamics of a slice share an acquisition time")
    images = np.stack([np.stack([_pixels(ds) for _, _, ds in o]) for o in ordered])
    sources = [o[0][2] for o in ordered]
    return PerfusionSeries(images, t_min, sources, [ds for o in ordered for _, _, ds in o], _geometry(sources),
                           (float(first.PixelSpacing[0]), float(first.PixelSpacing[1])),
                           saturation_delay_ms(first))


def _pixels(ds: Dataset) -> np.ndarray:
    arr = ds.pixel_array.astype(np.float64)
    slope, intercept = float(ds.get("RescaleSlope", 1) or 1), float(ds.get("RescaleIntercept", 0) or 0)
    return arr * slope + intercept
