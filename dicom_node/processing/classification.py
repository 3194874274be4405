"""What a stored series is, from its headers: T2-prep multi-echo, first-pass perfusion, ASL, other.

Rules (first match wins):
1. configured overrides (regular expressions on SeriesDescription / ProtocolName, or a SOP
   Class UID) name the kind directly;
2. not MR, not an image, or DERIVED in Image Type -> other (stored and served, not processed);
3. ASL: Image Type or the description says ASL / label / control (pCASL, PASL ...);
4. T2-prep multi-echo: at every slice position >= 3 distinct preparation times, the same set
   everywhere. The preparation time is EchoTime, or, when EchoTime is constant (bSSFP
   readouts carry the readout TE), a "T2prep <n>" / "T2 preparation <n> ms" value in the
   sequence name or image comments;
5. perfusion: >= 10 instances per slice position with varying TriggerTime /
   AcquisitionTime / TemporalPositionIdentifier at constant echo time; a dynamic series
   whose description or protocol says pre-bolus / low dose / test bolus is a "prebolus"
   (not processed itself: the perfusion job of the same study takes its arterial input
   from it).
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np
from pydicom.dataset import Dataset

from dicom_node.encode import DERIVED_SUFFIX
from dicom_node.processing.kinds import SeriesKind
from pinn_engine.aha import apex_normal

MR_STORAGE = {"1.2.840.10008.5.1.4.1.1.4", "1.2.840.10008.5.1.4.1.1.4.1"}
_T2PREP_RE = re.compile(r"t2\s*-?\s*prep(?:aration)?\D{0,6}?(\d+(?:\.\d+)?)", re.IGNORECASE)
_ASL_RE = re.compile(r"\b(p?c?asl|arterial spin|label|control)\b", re.IGNORECASE)
# letters must not touch the words, but "_" may (vendor names like "perf_LOW_DOSE")
_PREBOLUS_RE = re.compile(r"(?<![a-z])(pre[-_ ]?bolus|low[-_ ]?dose|test[-_ ]?bolus)(?![a-z])", re.IGNORECASE)


@dataclass(frozen=True)
class Rule:
    kind: SeriesKind
    series_description: str | None = None  # regular expressions
    protocol_name: str | None = None
    sop_class_uid: str | None = None

    def matches(self, ds: Dataset) -> bool:
        checks = []
        if self.series_description is not None:
            checks.append(re.search(self.series_description, str(ds.get("SeriesDescription", ""))) is not None)
        if self.protocol_name is not None:
            checks.append(re.search(self.protocol_name, str(ds.get("ProtocolName", ""))) is not None)
        if self.sop_class_uid is not None:
            checks.append(str(ds.get("SOPClassUID", "")) == self.sop_class_uid)
        return bool(checks) and all(checks)


@dataclass(frozen=True)
class Classification:
    kind: SeriesKind
    reason: str  # which fields decided, for the log


def preparation_time_ms(ds: Dataset) -> float | None:
    """The T2-preparation duration: from vendor text fields, else EchoTime."""
    for kw in ("SequenceName", "ImageComments", "ProtocolName", "SeriesDescription"):
        m = _T2PREP_RE.search(str(ds.get(kw, "")))
        if m and kw in ("SequenceName", "ImageComments"):
            return float(m.group(1))
    te = ds.get("EchoTime")
    return float(te) if te not in (None, "") else None


def slice_key(ds: Dataset) -> float | None:
    """Position along the slice normal (mm), rounded; None without geometry.

    The normal points base -> apex whatever handedness the images are stored with, so
    sorting by this key orders a short-axis stack from base to apex.
    """
    try:
        iop = np.array(ds.ImageOrientationPatient, dtype=float)
        ipp = np.array(ds.ImagePositionPatient, dtype=float)
        normal = apex_normal(iop[:3], iop[3:])
    except (AttributeError, ValueError, TypeError):
        return None
    return round(float(ipp @ normal), 1)


def is_own_result(headers: Sequence[Dataset]) -> bool:
    """Whether the series holds the node's own derived objects (already routed by their job)."""
    return bool(headers) and all(str(h.get("SeriesDescription", "")).endswith(DERIVED_SUFFIX) for h in headers)


def classify(headers: Sequence[Dataset], rules: Iterable[Rule] = ()) -> Classification:
    """The kind of the series whose instances' ``headers`` are given (rules: module docstring)."""
    if not headers:
        return Classification(SeriesKind.OTHER, "empty series")
    first = headers[0]
    for rule in rules:
        if rule.matches(first):
            return Classification(SeriesKind(rule.kind), "configured rule")
    if first.get("Modality") != "MR" or str(first.get("SOPClassUID")) not in MR_STORAGE:
        return Classification(SeriesKind.OTHER,
                              f"not an MR image series ({first.get('Modality')}, {first.get('SOPClassUID')})")
    image_type = [str(v).upper() for v in first.get("ImageType", [])]
    if image_type and image_type[0] == "DERIVED":
        return Classification(SeriesKind.OTHER, "derived images")
    text = " ".join(str(first.get(k, "")) for k in ("SeriesDescription", "ProtocolName"))
    if any("ASL" in v for v in image_type) or _ASL_RE.search(text):
        return Classification(SeriesKind.ASL, "ASL in Image Type or description")
    by_position: dict[float | None, list[Dataset]] = defaultdict(list)
    for ds in headers:
        by_position[slice_key(ds)].append(ds)
    if None in by_position:
        return Classification(SeriesKind.OTHER, "images without geometry")
    prep_sets = {pos: sorted({t for t in (preparation_time_ms(d) for d in group) if t is not None})
                 for pos, group in by_position.items()}
    sets = {tuple(v) for v in prep_sets.values()}
    if len(sets) == 1 and len(next(iter(sets))) >= 3:
        n = len(next(iter(sets)))
        return Classification(SeriesKind.T2, f"{len(by_position)} slice positions x {n} preparation times")
    per_pos = [len(g) for g in by_position.values()]
    echo_times = {str(d.get("EchoTime", "")) for d in headers}
    temporal = {str(d.get(k, "")) for d in headers for k in ("TriggerTime", "AcquisitionTime",
                                                              "TemporalPositionIdentifier")}
    if min(per_pos) >= 10 and len(echo_times) == 1 and len(temporal) > 2:
        what = f"{len(by_position)} slice positions x {min(per_pos)} dynamics"
        if _PREBOLUS_RE.search(text):
            return Classification(SeriesKind.PREBOLUS, f"{what}, pre-bolus in the description")
        return Classification(SeriesKind.PERFUSION, what)
    return Classification(SeriesKind.OTHER, "neither multi-echo T2 preparation nor a dynamic series")
