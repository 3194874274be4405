"""Pairing a perfusion series with the pre-bolus (dual-bolus) series of its study.

Policy: the latest series of the same study classified ``prebolus`` whose first frame was
acquired no later than the perfusion series' first frame. Its dose ratio (main / pre-bolus)
comes from the same contrast dose attribute in both series' headers or else from
``[engine] prebolus_dose_ratio``; without either the pre-bolus is not used and the log
says why. The node and ``dicom-node process`` both pair through ``find_prebolus``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Iterable

from pydicom.dataset import Dataset

from dicom_node.logs import log_event
from dicom_node.processing.classification import Rule, classify
from dicom_node.processing.kinds import SeriesKind
from dicom_node.processing.load import PerfusionSeries, SeriesError, frame_time_s, load_perfusion_series
from dicom_node.processing.sources import SeriesSource

LOG = logging.getLogger("dicom_node.processing.prebolus")

# where a configured dose ratio is said to come from (summary.json, log)
CONFIGURED_RATIO_SOURCE = "[engine] prebolus_dose_ratio"


@dataclass(frozen=True)
class PreBolusSeries:
    """A pre-bolus series of the same study, for the arterial input (see pinn_engine.perfusion.prebolus)."""

    series: PerfusionSeries
    dose_ratio: float  # main / pre-bolus contrast dose
    dose_source: str  # where the ratio came from (headers, configuration)


def contrast_dose(ds: Dataset) -> tuple[str, float] | None:
    """(keyword, value) of the contrast dose the headers state, if any."""
    for keyword in ("ContrastBolusTotalDose", "ContrastBolusVolume"):
        try:
            value = float(ds.get(keyword, "") or 0)
        except (TypeError, ValueError):
            continue
        if value > 0:
            return keyword, value
    return None


def header_dose_ratio(main: Dataset, pre: Dataset) -> tuple[float, str] | None:
    """Main / pre-bolus dose from the same dose attribute in both series, if they carry one."""
    a, b = contrast_dose(main), contrast_dose(pre)
    if a is None or b is None or a[0] != b[0]:
        return None
    return a[1] / b[1], f"{a[0]} {a[1]:g} / {b[1]:g}"


def pair_prebolus(series: PerfusionSeries, pre: PerfusionSeries, fallback_ratio: float,
                  fallback_source: str = CONFIGURED_RATIO_SOURCE) -> PreBolusSeries | None:
    """``pre`` as the pre-bolus of ``series``, its dose ratio from the headers or else
    ``fallback_ratio`` (0: none given); None when neither says it."""
    from_headers = header_dose_ratio(series.sources[0], pre.sources[0])
    if from_headers is not None:
        return PreBolusSeries(pre, *from_headers)
    return PreBolusSeries(pre, fallback_ratio, fallback_source) if fallback_ratio else None


def find_prebolus(source: SeriesSource, series_uid: str, series: PerfusionSeries, rules: Iterable[Rule],
                  fallback_ratio: float) -> PreBolusSeries | None:
    """The pre-bolus series paired with perfusion series ``series_uid`` (module docstring), if any."""
    start = frame_time_s(series.sources[0])
    rules = list(rules)
    candidates = []
    for uid, paths in source.study_series(series_uid).items():
        try:
            headers = source.series_headers(uid)  # a folder source has them already
        except Exception:  # noqa: BLE001 - an unreadable series is simply not a candidate
            continue
        if classify(headers, rules).kind != SeriesKind.PREBOLUS:
            continue
        began = min((frame_time_s(h) or 0.0) for h in headers)
        if start is None or began <= start:
            candidates.append((began, uid, paths))
    if not candidates:
        return None
    _, uid, paths = max(candidates)
    try:
        pre = load_perfusion_series(paths)
    except SeriesError as exc:
        log_event(LOG, "perfusion.prebolus_unusable", logging.WARNING, series_uid=uid, error=str(exc))
        return None
    paired = pair_prebolus(series, pre, fallback_ratio)
    if paired is None:
        log_event(LOG, "perfusion.prebolus_unusable", logging.WARNING, series_uid=uid,
                  error="dose ratio unknown: the headers state no contrast dose and "
                        "[engine] prebolus_dose_ratio is 0")
        return None
    log_event(LOG, "perfusion.prebolus", series_uid=series_uid, prebolus_series_uid=uid,
              dose_ratio=paired.dose_ratio, dose_source=paired.dose_source)
    return paired
