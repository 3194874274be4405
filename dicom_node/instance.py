"""Checks a received data set and extracts what the index needs, without re-encoding it.

The node stores the bytes exactly as received. Before acknowledging, it verifies that
they are a structurally complete DICOM data set (every declared element length is
present, undefined lengths are delimited) and that the identifying UIDs are present and
valid. Value decoding is per attribute: a malformed optional attribute leaves the index
field empty instead of rejecting the instance.
"""

from __future__ import annotations

import hashlib
import io
import re
import warnings
import zlib
from dataclasses import dataclass, field
from typing import Any

from pydicom.dataset import Dataset
from pydicom.filereader import data_element_generator
from pydicom.tag import Tag
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian, ImplicitVRLittleEndian

# DIMSE C-STORE failure statuses (PS3.4 B.2.3; the C000 family is "Cannot understand")
STATUS_SUCCESS = 0x0000
STATUS_OUT_OF_RESOURCES = 0xA700
STATUS_SOP_CLASS_MISMATCH = 0xA900
STATUS_CANNOT_DECODE = 0xC210
STATUS_MISSING_UID = 0xC220
STATUS_INVALID_UID = 0xC221
STATUS_UID_MISMATCH = 0xC222

_UID_RE = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))+$")


def is_valid_uid(value: Any) -> bool:
    """PS3.5 9.1: digits and dots, no leading zeros in a component, at most 64 chars."""
    return isinstance(value, str) and len(value) <= 64 and bool(_UID_RE.match(value))


class InvalidInstance(Exception):
    """A received data set that must be refused; carries the DIMSE status."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


# Attributes copied into the index; keyword -> index level.
INDEX_ATTRIBUTES: dict[str, str] = {
    "PatientID": "study",
    "PatientName": "study",
    "PatientBirthDate": "study",
    "PatientSex": "study",
    "StudyDate": "study",
    "StudyTime": "study",
    "AccessionNumber": "study",
    "StudyID": "study",
    "StudyDescription": "study",
    "ReferringPhysicianName": "study",
    "Modality": "series",
    "SeriesNumber": "series",
    "SeriesDescription": "series",
    "SeriesDate": "series",
    "SeriesTime": "series",
    "BodyPartExamined": "series",
    "ProtocolName": "series",
    "InstanceNumber": "instance",
}

_WANTED_TAGS = {
    Tag(kw)
    for kw in [
        *INDEX_ATTRIBUTES,
        "SpecificCharacterSet",
        "SOPClassUID",
        "SOPInstanceUID",
        "StudyInstanceUID",
        "SeriesInstanceUID",
    ]
}


@dataclass
class InstanceInfo:
    sop_instance_uid: str
    sop_class_uid: str
    study_uid: str
    series_uid: str
    transfer_syntax_uid: str
    content_sha256: str
    attributes: dict[str, Any] = field(default_factory=dict)

    def level(self, level: str) -> dict[str, Any]:
        return {k: v for k, v in self.attributes.items() if INDEX_ATTRIBUTES[k] == level}


def _dataset_stream(data: bytes, transfer_syntax: UID) -> tuple[io.BytesIO, bool, bool]:
    if transfer_syntax == DeflatedExplicitVRLittleEndian:
        try:
            data = zlib.decompress(data, -zlib.MAX_WBITS)
        except zlib.error as exc:
            raise InvalidInstance(STATUS_CANNOT_DECODE, f"deflated data set does not inflate: {exc}") from exc
    implicit = transfer_syntax == ImplicitVRLittleEndian
    little = transfer_syntax != ExplicitVRBigEndian
    return io.BytesIO(data), implicit, little


def _read_top_level(data: bytes, transfer_syntax: UID) -> tuple[dict, bool, bool]:
    """Walk the top-level elements, checking lengths; return the wanted raw elements."""
    fp, implicit, little = _dataset_stream(data, transfer_syntax)
    end = len(fp.getbuffer())
    wanted: dict = {}
    last_tag = -1
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for raw in data_element_generator(fp, implicit, little, defer_size=None):
                if raw.tag <= last_tag:
                    raise InvalidInstance(STATUS_CANNOT_DECODE, f"element {raw.tag} out of order")
                last_tag = raw.tag
                if raw.tag >> 16 == 0x0002:
                    raise InvalidInstance(STATUS_CANNOT_DECODE, "file meta element inside the data set")
                if raw.length != 0xFFFFFFFF and raw.value is not None and len(raw.value) != raw.length:
                    raise InvalidInstance(
                        STATUS_CANNOT_DECODE,
                        f"element {raw.tag} declares {raw.length} bytes but only {len(raw.value)} were received",
                    )
                if raw.tag in _WANTED_TAGS:
                    wanted[raw.tag] = raw
    except InvalidInstance:
        raise
    except Exception as exc:  # pydicom raises many kinds on corrupt input
        raise InvalidInstance(STATUS_CANNOT_DECODE, f"data set cannot be parsed: {type(exc).__name__}: {exc}") from exc
    if fp.tell() != end:
        raise InvalidInstance(STATUS_CANNOT_DECODE, f"data set parsing stopped at byte {fp.tell()} of {end}")
    if not wanted:
        raise InvalidInstance(STATUS_CANNOT_DECODE, "data set contains no recognisable elements")
    return wanted, implicit, little


def normalise_time(value: str, upper: bool = False) -> str:
    """TM -> 'HHMMSS.ffffff' so that string order is time order; bounds pad to the range end."""
    v = value.strip().replace(":", "")
    whole, _, frac = v.partition(".")
    fill = "59" if upper else "00"
    while len(whole) < 6:
        whole += fill
    if not frac:
        frac = "999999" if upper else "000000"
    return f"{whole[:6]}.{frac.ljust(6, '0')[:6]}"



_KEYWORD_OF = {Tag(kw): kw for kw in INDEX_ATTRIBUTES}


def _plain(ds: Dataset, tag: Any, keyword: str) -> Any:
    """Decoded value of one present attribute as plain str/int, or None if undecodable."""
    try:
        elem = ds[tag]
        value = elem.value
    except Exception:
        return None
    if value is None or value == "":
        return None
    if keyword in ("SeriesNumber", "InstanceNumber"):
        try:
            return int(value)
        except (TypeError, ValueError):
            return None
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        value = "\\".join(str(v) for v in value)
    text = str(value).strip()
    if elem.VR == "PN":
        text = text.rstrip("^")
    elif elem.VR == "TM" and text:
        text = normalise_time(text)
    return text or None


def parse_instance(
    data: bytes,
    transfer_syntax: str,
    affected_sop_class: str | None = None,
    affected_sop_instance: str | None = None,
) -> InstanceInfo:
    """Check the encoded data set ``data`` and return its identity and index attributes.

    Raises :class:`InvalidInstance` with the DIMSE status to answer.
    """
    ts = UID(transfer_syntax)
    wanted, implicit, little = _read_top_level(data, ts)
    ds = Dataset(wanted)
    ds.set_original_encoding(implicit, little, None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return _extract(ds, ts, data, affected_sop_class, affected_sop_instance)


def _extract(
    ds: Dataset, ts: UID, data: bytes, affected_sop_class: str | None, affected_sop_instance: str | None
) -> InstanceInfo:
    uids = {}
    for kw in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"):
        value = _plain(ds, kw, kw) if kw in ds else None
        if value is None:
            raise InvalidInstance(STATUS_MISSING_UID, f"{kw} is missing or empty")
        if not is_valid_uid(value):
            raise InvalidInstance(STATUS_INVALID_UID, f"{kw} is not a valid UID: {value[:70]!r}")
        uids[kw] = value
    if affected_sop_class and uids["SOPClassUID"] != affected_sop_class:
        raise InvalidInstance(
            STATUS_SOP_CLASS_MISMATCH,
            f"SOPClassUID {uids['SOPClassUID']} differs from the request's {affected_sop_class}",
        )
    if affected_sop_instance and uids["SOPInstanceUID"] != affected_sop_instance:
        raise InvalidInstance(
            STATUS_UID_MISMATCH,
            f"SOPInstanceUID {uids['SOPInstanceUID']} differs from the request's {affected_sop_instance}",
        )

    attributes: dict[str, Any] = dict.fromkeys(INDEX_ATTRIBUTES)
    for tag in ds.keys():
        keyword = _KEYWORD_OF.get(tag)
        if keyword is not None:
            attributes[keyword] = _plain(ds, tag, keyword)
    return InstanceInfo(
        sop_instance_uid=uids["SOPInstanceUID"],
        sop_class_uid=uids["SOPClassUID"],
        study_uid=uids["StudyInstanceUID"],
        series_uid=uids["SeriesInstanceUID"],
        transfer_syntax_uid=str(ts),
        content_sha256=hashlib.sha256(data).hexdigest(),
        attributes=attributes,
    )
