"""DICOM series -> arrays + geometry for the engine; inconsistent series are refused with a reason."""

from __future__ import annotations

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


def load_t2_series(paths: Sequence[Path]) -> T2Series:
    datasets = [pydicom.dcmread(p) for p in paths]
    if not datasets:
        raise SeriesError("no instances")
    first = datasets[0]
    ref = (int(first.Rows), int(first.Columns), tuple(round(float(v), 4) for v in first.ImageOrientationPatient),
           tuple(round(float(v), 4) for v in first.PixelSpacing))
    by_pos: dict[float, dict[float, Dataset]] = defaultdict(dict)
    for ds in datasets:
        this = (int(ds.Rows), int(ds.Columns), tuple(round(float(v), 4) for v in ds.ImageOrientationPatient),
                tuple(round(float(v), 4) for v in ds.PixelSpacing))
        if this != ref:
            raise SeriesError(f"instance {ds.SOPInstanceUID} differs in size/orientation/spacing from the series")
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
    geometry = [SliceGeometry(np.array(d.ImageOrientationPatient[:3], float), np.array(d.ImageOrientationPatient[3:], float),
                              (float(d.PixelSpacing[0]), float(d.PixelSpacing[1])), np.array(d.ImagePositionPatient, float))
                for d in sources]
    return T2Series(images, te_ms, sources, [by_pos[p][t] for p in positions for t in te_ms], geometry,
                    (float(first.PixelSpacing[0]), float(first.PixelSpacing[1])))


def _pixels(ds: Dataset) -> np.ndarray:
    arr = ds.pixel_array.astype(np.float64)
    slope, intercept = float(ds.get("RescaleSlope", 1) or 1), float(ds.get("RescaleIntercept", 0) or 0)
    return arr * slope + intercept
