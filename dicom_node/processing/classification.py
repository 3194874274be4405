"""What a stored series is, from its headers: T2-prep multi-echo, first-pass perfusion, ASL, other.

Rules (first match wins):
1. configured overrides (regular expressions on SeriesDescription / ProtocolName, or a SOP
   Class UID) name the kind directly;
2. not MR or not an image -> other (stored and served, not processed);
3. the scanner's own parameter maps -> other, whatever the first value of Image Type says
   (Philips marks its maps ORIGINAL): a "... MAP" value in Image Type ("T2 MAP", "T1_MAP",
   "T2MAP", or "T2" then "MAP" as separate values), or a description ending "_T1", "_T2",
   "_T2STAR", "_T1MAP" (Siemens MyoMaps names its maps "T2Map_MOCO_T2", "MOLLI_MOCO_T1");
4. DERIVED first in Image Type -> other, except motion-corrected source images (MOCO in
   Image Type, with or without DERIVED: Siemens MyoMaps' registered source images);
5. ASL: Image Type or the description says ASL / label / control (pCASL, PASL ...);
6. T1 mapping -> other: Image Comments "TIeff <n> ms", MOLLI / ShMOLLI / SASHA in the
   description or protocol, or InversionTime varying at a slice position;
7. T2-prep multi-echo: at every slice position >= 3 distinct preparation times, the same set
   everywhere. The preparation time (``preparation_times``) is, in this order: a text value
   in the sequence name or image comments of every image ("T2 prep. duration = 25 ms", also
   after other text, as Siemens writes it; "T2prep 35"; "T2 preparation 55 ms"); else
   EchoTime (GE writes the preparation time there, multi-echo spin echo its echo times);
   else, when EchoTime is constant (the bSSFP readout TE) and nothing else says it, the
   Siemens CSA protocol's ``sPrepPulses.adT2PrepDuration`` -- only under the conditions of
   ``csa_preparation_times``, because T1 (MOLLI/ShMOLLI) protocols carry default values in
   the same array: when in doubt the series is stored and the reason says why;
8. perfusion: >= 10 instances per slice position with varying TriggerTime /
   AcquisitionTime / TemporalPositionIdentifier at constant echo time; a dynamic series
   whose description or protocol says pre-bolus / low dose / test bolus is a "prebolus"
   (not processed itself: the perfusion job of the same study takes its arterial input
   from it).
Anything else, fewer than 3 distinct preparation/echo times included, is "other".

``Classification.reason`` names the field that decided (the job log's ``series.classified``).
Only attributes an image (or one frame's header view of an Enhanced MR image) carries are
read: ImageType, ImageComments, EchoTime, SequenceName, InversionTime, SeriesDescription,
ProtocolName, geometry, and for the CSA fallback alone InstanceNumber, AcquisitionTime and
the private CSA series header (0029,1020).
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np
from pydicom.dataset import Dataset

from dicom_node.encode import DERIVED_SUFFIX
from dicom_node.processing.frames import field_name
from dicom_node.processing.kinds import SeriesKind
from pinn_engine.aha import apex_normal

MR_STORAGE = {"1.2.840.10008.5.1.4.1.1.4", "1.2.840.10008.5.1.4.1.1.4.1"}
# "T2prep35", "T2 preparation 35 ms", "T2-prep 35", Siemens' "T2 prep. duration = 35 ms"
_T2PREP_RE = re.compile(r"(?P<label>t2\s*-?\s*prep(?:aration|\.)?(?:\s*duration)?)\D{0,6}?(?P<ms>\d+(?:\.\d+)?)",
                        re.IGNORECASE)
_ASL_RE = re.compile(r"\b(p?c?asl|arterial spin|label|control)\b", re.IGNORECASE)
# letters must not touch the words, but "_" may (vendor names like "perf_LOW_DOSE")
_PREBOLUS_RE = re.compile(r"(?<![a-z])(pre[-_ ]?bolus|low[-_ ]?dose|test[-_ ]?bolus)(?![a-z])", re.IGNORECASE)
# an Image Type value that names a map: "T2 MAP", "T1_MAP", "T2MAP", "T2*MAP", "MAP" (after "T2")
_MAP_VALUE_RE = re.compile(r"(?:[A-Z0-9*]{1,8}[ _]?)?MAP")
# a description as the scanner names its own maps: "T2Map_MOCO_T2", "MOLLI_MOCO_T1", "..._T1MAP"
_MAP_DESCRIPTION_RE = re.compile(r"_(?:T1|T2|T2\*|T2STAR|T1_?MAP)$", re.IGNORECASE)
_T1_NAME_RE = re.compile(r"(?<![a-z0-9])(sh)?molli|(?<![a-z0-9])sasha(?![a-z])", re.IGNORECASE)
_TIEFF_RE = re.compile(r"\bTI\s*eff\b\D{0,4}\d", re.IGNORECASE)
# what makes a series "demonstrably T2-prepared" by name, for the CSA fallback
_T2_NAME_RE = re.compile(r"(?<![a-z0-9])t2[\s_-]*(?:map|prep)", re.IGNORECASE)
# Siemens 2D bSSFP (tfi) / FLASH (tfl) single-shot readouts: "*tfi2d1_63", "*tfl2d1"
_SIEMENS_READOUT_RE = re.compile(r"^\*?tf[il]2d", re.IGNORECASE)
_CSA_CREATOR = "SIEMENS CSA HEADER"
_ASCCONV_RE = re.compile(rb"### ASCCONV BEGIN.*?### ASCCONV END ###", re.DOTALL)
_CSA_T2PREP_SIZE_RE = re.compile(r"^\s*sPrepPulses\.adT2PrepDuration\.__attribute__\.size\s*=\s*(\d+)", re.MULTILINE)
_CSA_T2PREP_RE = re.compile(r"^\s*sPrepPulses\.adT2PrepDuration\[(\d+)\]\s*=\s*([-+0-9.eE]+)", re.MULTILINE)
CSA_SOURCE = "CSA protocol sPrepPulses.adT2PrepDuration"


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


def _float(value) -> float | None:
    try:
        return float(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def _ms(values: Iterable[float]) -> str:
    return "/".join(f"{v:g}" for v in values)


def preparation_time_text(ds: Dataset) -> tuple[float, str] | None:
    """The T2-preparation duration written as text (sequence name, else image comments) and the
    field it came from as the reason names it (``ImageComments 'T2 prep. duration'``); None without."""
    for kw in ("SequenceName", "ImageComments"):
        m = _T2PREP_RE.search(str(ds.get(kw, "") or ""))
        if m:
            return float(m.group("ms")), f"{field_name(ds, kw)} '{' '.join(m.group('label').split())}'"
    return None


def preparation_time_ms(ds: Dataset) -> float | None:
    """One image's T2-preparation duration: from vendor text fields, else EchoTime (the CSA
    protocol fallback needs the whole series: ``preparation_times``)."""
    text = preparation_time_text(ds)
    return text[0] if text is not None else _float(ds.get("EchoTime"))


@dataclass(frozen=True)
class PreparationTimes:
    """The preparation time of each image of a series (None: none found) and where they came from."""

    times: tuple[float | None, ...]  # in the order of the headers given
    source: str  # the deciding field, as the reason names it
    note: str = ""  # why the CSA protocol was not used, where a series carries one
    partial: bool = False  # a text field gave the time of some images only
    by_order: bool = False  # from the CSA protocol, by image order: loading checks the signal falls


def csa_t2prep_durations(ds: Dataset) -> tuple[float, ...] | None:
    """``sPrepPulses.adT2PrepDuration`` of the Siemens protocol (ASCII part of the CSA series
    header, private (0029,xx20) of "SIEMENS CSA HEADER"); None without it or without its size.

    The protocol lists only values that differ from 0, so an index below the size that is not
    listed is 0 ms (the first image of a MyoMaps T2 series is not T2-prepared).
    """
    try:
        value = ds.private_block(0x0029, _CSA_CREATOR)[0x20].value
    except (KeyError, ValueError, AttributeError):
        return None
    if isinstance(value, str):
        value = value.encode("latin-1", "replace")
    if not isinstance(value, (bytes, bytearray)):
        return None
    block = _ASCCONV_RE.search(bytes(value))
    if block is None:
        return None
    text = block.group(0).decode("latin-1")
    size = _CSA_T2PREP_SIZE_RE.search(text)
    if size is None:
        return None
    n = int(size.group(1))
    values = [0.0] * n
    for m in _CSA_T2PREP_RE.finditer(text):
        i = int(m.group(1))
        if i >= n:
            return None  # the array contradicts its own size: not to be trusted
        try:
            values[i] = float(m.group(2))
        except ValueError:
            return None
    return tuple(values)


def csa_preparation_times(headers: Sequence[Dataset]) -> tuple[tuple[float, ...] | None, str]:
    """The preparation time of each image from the Siemens CSA protocol, for software that
    writes no Image Comments, and what was concluded (why not, when the times are None).

    Used only when the series is demonstrably T2-prepared, since T1 (MOLLI/ShMOLLI) protocols
    carry default values in the same array: every image has the same array of >= 3 distinct
    values in 0-300 ms; description or protocol name says T2 map / T2 prep and nothing says
    T1 mapping; a Siemens single-shot tfi/tfl 2D readout with constant EchoTime and no
    InversionTime; at every slice position one image per value of the array, ordered by
    InstanceNumber (unique there, and not contradicted by AcquisitionTime); image k of a
    position gets value k. Loading also checks that the signal falls with longer preparation.
    """
    arrays = [csa_t2prep_durations(h) for h in headers]
    if not headers or all(a is None for a in arrays):
        return None, ""
    why = f"{CSA_SOURCE} not used: "
    if any(a is None for a in arrays):
        return None, why + "not in every image"
    if len(set(arrays)) != 1:
        return None, why + "it differs between the images"
    values = arrays[0]
    if len(values) < 3 or len(set(values)) != len(values) or not all(0.0 <= v <= 300.0 for v in values):
        return None, why + f"{_ms(values)} ms are not >= 3 distinct preparation times"
    for kw in ("SeriesDescription", "ProtocolName"):
        if len({str(h.get(kw, "")) for h in headers}) != 1:
            return None, why + f"{kw} differs between the images"
    first = headers[0]
    named = [(kw, str(first.get(kw, ""))) for kw in ("SeriesDescription", "ProtocolName")]
    if any(_T1_NAME_RE.search(text) for _, text in named):
        return None, why + "the series is named as T1 mapping"
    t2_named = next(((kw, text) for kw, text in named if _T2_NAME_RE.search(text)), None)
    if t2_named is None:
        return None, why + "neither SeriesDescription nor ProtocolName says T2 map / T2 prep"
    if not all(_SIEMENS_READOUT_RE.match(str(h.get("SequenceName", "") or "")) for h in headers):
        return None, why + "SequenceName is not a Siemens tfi/tfl 2D readout"
    if len({_float(h.get("EchoTime")) for h in headers}) != 1:
        return None, why + "EchoTime varies"
    if any(_float(h.get("InversionTime")) not in (None, 0.0) for h in headers):
        return None, why + "the images carry an InversionTime"
    groups: dict[float | None, list[int]] = defaultdict(list)
    for k, h in enumerate(headers):
        groups[slice_key(h)].append(k)
    if None in groups:
        return None, why + "images without geometry"
    times: list[float] = [0.0] * len(headers)
    for members in groups.values():
        if len(members) != len(values):
            return None, why + f"{len(members)} images at a slice position for {len(values)} values"
        numbers = [_float(headers[k].get("InstanceNumber")) for k in members]
        if None in numbers or len(set(numbers)) != len(numbers):
            return None, why + "InstanceNumber missing or repeated at a slice position"
        ordered = [k for _, k in sorted(zip(numbers, members, strict=True))]
        clock = [str(headers[k].get("AcquisitionTime", "") or "") for k in ordered]
        if all(clock) and clock != sorted(clock):
            return None, why + "InstanceNumber and AcquisitionTime disagree on the order of the images"
        for k, value in zip(ordered, values, strict=True):
            times[k] = value
    kw, text = t2_named
    return tuple(times), f"by InstanceNumber; {kw} '{text}'"


def preparation_times(headers: Sequence[Dataset]) -> PreparationTimes:
    """Every image's preparation time, all from one source: the text fields (when any image
    has one), else EchoTime, else (EchoTime constant) the CSA protocol under the conditions of
    ``csa_preparation_times``."""
    texts = [preparation_time_text(h) for h in headers]
    found = [t for t in texts if t is not None]
    if found:
        source = " / ".join(sorted({label for _, label in found}))
        return PreparationTimes(tuple(None if t is None else t[0] for t in texts), source,
                                partial=len(found) < len(headers))
    echo = tuple(_float(h.get("EchoTime")) for h in headers)
    if None not in echo and len(set(echo)) == 1:
        csa, note = csa_preparation_times(headers)
        if csa is not None:
            return PreparationTimes(csa, f"{CSA_SOURCE}, {note}", by_order=True)
        return PreparationTimes(echo, _echo_field(headers), note=note)
    return PreparationTimes(echo, _echo_field(headers))


def _echo_field(headers: Sequence[Dataset]) -> str:
    """EchoTime, or EffectiveEchoTime where the headers are frames of Enhanced MR images."""
    return field_name(headers[0], "EchoTime") if headers else "EchoTime"


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


def _image_type(ds: Dataset) -> list[str]:
    """Image Type's values, upper case (a single value reads as a string, not a list of letters)."""
    value = ds.get("ImageType") or []
    return [str(v).strip().upper() for v in ([value] if isinstance(value, str) else value)]


def _map_in_image_type(values: Sequence[str]) -> str | None:
    """The Image Type value(s) that name a parameter map ("T2 MAP", or "T2\\MAP"), else None."""
    for i, v in enumerate(values):
        if _MAP_VALUE_RE.fullmatch(v):
            return f"{values[i - 1]}\\{v}" if v == "MAP" and i > 0 else v
    return None


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


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
    for h in headers:
        shown = _map_in_image_type(_image_type(h))
        if shown is not None:
            return Classification(SeriesKind.OTHER, f"a map made by the scanner (ImageType '{shown}')")
    description = str(first.get("SeriesDescription", "") or "").strip()
    if _MAP_DESCRIPTION_RE.search(description):
        return Classification(SeriesKind.OTHER, f"a map made by the scanner (SeriesDescription '{description}')")
    image_type = _image_type(first)
    moco = "MOCO" in image_type
    if image_type and image_type[0] == "DERIVED" and not moco:
        return Classification(SeriesKind.OTHER, "derived images (ImageType DERIVED, not MOCO)")
    text = " ".join(str(first.get(k, "")) for k in ("SeriesDescription", "ProtocolName"))
    if any("ASL" in v for v in image_type) or _ASL_RE.search(text):
        return Classification(SeriesKind.ASL, "ASL in Image Type or description")
    tieff = next((str(h.get("ImageComments")) for h in headers if _TIEFF_RE.search(str(h.get("ImageComments", "")))),
                 None)
    if tieff is not None:
        return Classification(SeriesKind.OTHER, f"T1 mapping (ImageComments '{tieff}')")
    for kw in ("SeriesDescription", "ProtocolName"):
        if _T1_NAME_RE.search(str(first.get(kw, "") or "")):
            return Classification(SeriesKind.OTHER, f"T1 mapping ({kw} '{first.get(kw)}')")
    by_position: dict[float | None, list[int]] = defaultdict(list)
    for k, ds in enumerate(headers):
        by_position[slice_key(ds)].append(k)
    if None in by_position:
        return Classification(SeriesKind.OTHER, "images without geometry")
    for members in by_position.values():
        inversion = {t for t in (_float(headers[k].get("InversionTime")) for k in members) if t is not None}
        if len(inversion) > 1:
            return Classification(SeriesKind.OTHER,
                                  f"T1 mapping (InversionTime varies: {len(inversion)} values at a slice position)")
    prep = preparation_times(headers)
    if prep.partial:
        n = sum(t is not None for t in prep.times)
        return Classification(SeriesKind.OTHER,
                              f"preparation time in {prep.source} for only {n} of {len(headers)} images")
    prep_sets = {pos: tuple(sorted({t for t in (prep.times[k] for k in members) if t is not None}))
                 for pos, members in by_position.items()}
    sets = set(prep_sets.values())
    n_times = len(next(iter(sets)))
    if len(sets) == 1 and n_times >= 3:
        moco_note = "; motion-corrected (ImageType MOCO)" if moco else ""
        return Classification(SeriesKind.T2, f"{_plural(len(by_position), 'slice position')} x {n_times} "
                                             f"preparation times ({prep.source}){moco_note}")
    per_pos = [len(g) for g in by_position.values()]
    echo_times = {str(d.get("EchoTime", "")) for d in headers}
    temporal = {str(d.get(k, "")) for d in headers for k in ("TriggerTime", "AcquisitionTime",
                                                              "TemporalPositionIdentifier")}
    if min(per_pos) >= 10 and len(echo_times) == 1 and len(temporal) > 2:
        what = f"{len(by_position)} slice positions x {min(per_pos)} dynamics"
        if _PREBOLUS_RE.search(text):
            return Classification(SeriesKind.PREBOLUS, f"{what}, pre-bolus in the description")
        return Classification(SeriesKind.PERFUSION, what)
    note = f"; {prep.note}" if prep.note else ""
    if len(sets) > 1:
        return Classification(SeriesKind.OTHER,
                              f"slice positions have different preparation times ({prep.source}){note}")
    values = next(iter(sets))
    return Classification(SeriesKind.OTHER, f"fewer than 3 distinct preparation/echo times "
                                            f"({_ms(values) or 'none'} ms, {prep.source}){note}")
