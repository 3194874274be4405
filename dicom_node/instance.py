"""Checks a received data set and extracts what the index needs, without re-encoding it.

The node stores the bytes exactly as received. Before acknowledging, it verifies that
they are a structurally complete DICOM data set (every declared element length is
present, undefined lengths are delimited) and that the identifying UIDs are present and
valid. Value decoding is per attribute: a malformed optional attribute leaves the index
field empty instead of rejecting the instance.
"""

from __future__ import annotations

import hashlib
import re
import struct
import warnings
import zlib
from dataclasses import dataclass, field
from typing import Any

from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import Tag
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian, ImplicitVRLittleEndian

from dicom_node.status import (
    CANNOT_UNDERSTAND_INVALID_UID,
    CANNOT_UNDERSTAND_MALFORMED,
    CANNOT_UNDERSTAND_MISSING_UID,
    CANNOT_UNDERSTAND_UID_MISMATCH,
    DATA_SET_DOES_NOT_MATCH_SOP_CLASS,
)

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
_WANTED_TAG_INTS = {int(t) for t in _WANTED_TAGS}


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


# at most this much inflated data per deflated data set (a deflate "bomb" is refused, not inflated)
MAX_INFLATED_BYTES = 256 * 1024 * 1024
MAX_DEPTH = 32  # sequence nesting

_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"UC", b"UN", b"UR", b"UT", b"SV", b"UV"}
_SHORT_VRS = {b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FL", b"FD", b"IS", b"LO", b"LT", b"PN", b"SH",
              b"SL", b"SS", b"ST", b"TM", b"UI", b"UL", b"US"}
_ITEM, _ITEM_END, _SEQ_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_UNDEFINED = 0xFFFFFFFF
_PIXEL_DATA = 0x7FE00010
_GEOMETRY = {0x00280010: "rows", 0x00280011: "columns", 0x00280100: "bits", 0x00280002: "samples",
             0x00280008: "frames"}


def _inflate(data: bytes, chunk: int = 16 * 1024 * 1024) -> bytes:
    """Inflate in bounded chunks: memory grows with the real output only, up to the limit."""
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    parts, total, pending = [], 0, data
    try:
        while True:
            out = inflater.decompress(pending, chunk)
            total += len(out)
            if total > MAX_INFLATED_BYTES:
                raise InvalidInstance(CANNOT_UNDERSTAND_MALFORMED,
                                      f"deflated data set inflates beyond {MAX_INFLATED_BYTES} bytes")
            parts.append(out)
            pending = inflater.unconsumed_tail
            if not pending:
                break
        parts.append(inflater.flush())
    except zlib.error as exc:
        raise InvalidInstance(CANNOT_UNDERSTAND_MALFORMED, f"deflated data set does not inflate: {exc}") from exc
    return b"".join(parts)


def _is_sequence_implicit(tag: int) -> bool:
    from pydicom.datadict import dictionary_VR  # noqa: PLC0415

    try:
        return dictionary_VR(tag) == "SQ"
    except KeyError:
        return False


class _Walker:
    """Strict structural walk of an encoded data set (PS3.5 7.1-7.5, A.4), without decoding values.

    Every element header must be complete, explicit VRs must be defined codes, lengths must
    fit, tags ascend within each data set, item/delimiter tags appear only where items and
    delimiters belong, undefined lengths only on sequences, items and encapsulated pixel
    data, and the walk must end exactly at the end of the data. Sequences are walked into.
    """

    def __init__(self, buf: bytes, implicit: bool, little: bool) -> None:
        self.buf, self.implicit, self.little = buf, implicit, little
        self.order = "<" if little else ">"
        self.wanted: dict[int, tuple[str | None, bytes, int]] = {}
        self.geometry: dict[str, int] = {}
        self.pixel_length: int | None = None

    def fail(self, reason: str) -> InvalidInstance:
        return InvalidInstance(CANNOT_UNDERSTAND_MALFORMED, reason)

    def header(self, pos: int, end: int) -> tuple[int, bytes | None, int, int]:
        """(tag, VR or None, length, position of the value) of the element at ``pos``."""
        if pos + 8 > end:
            raise self.fail(f"element header cut off at byte {pos}")
        group, elem = struct.unpack_from(self.order + "HH", self.buf, pos)
        tag = group << 16 | elem
        if group == 0xFFFE:  # items and delimiters: always tag + 4-byte length, no VR
            return tag, None, struct.unpack_from(self.order + "L", self.buf, pos + 4)[0], pos + 8
        if self.implicit:
            return tag, None, struct.unpack_from(self.order + "L", self.buf, pos + 4)[0], pos + 8
        vr = bytes(self.buf[pos + 4:pos + 6])
        if vr in _LONG_VRS:
            if pos + 12 > end:
                raise self.fail(f"element header cut off at byte {pos}")
            return tag, vr, struct.unpack_from(self.order + "L", self.buf, pos + 8)[0], pos + 12
        if vr in _SHORT_VRS:
            return tag, vr, struct.unpack_from(self.order + "H", self.buf, pos + 6)[0], pos + 8
        raise self.fail(f"element ({group:04X},{elem:04X}) has an undefined VR {vr!r}")

    def dataset(self, pos: int, end: int, depth: int, top: bool, until_item_end: bool = False) -> int:
        last = -1
        while pos < end:
            tag, vr, length, value = self.header(pos, end)
            if until_item_end and tag == _ITEM_END:
                if length != 0:
                    raise self.fail("item delimiter with a non-zero length")
                return value
            if tag >> 16 == 0xFFFE:
                raise self.fail(f"item or delimiter tag {tag:08X} where an element belongs (byte {pos})")
            if tag <= last:
                raise self.fail(f"element {tag:08X} out of order")
            last = tag
            if top and tag >> 16 == 0x0002:
                raise self.fail("file meta element inside the data set")
            is_sq = vr == b"SQ" or (vr in (None, b"UN") and length == _UNDEFINED and tag != _PIXEL_DATA) or (
                vr is None and _is_sequence_implicit(tag))
            if tag == _PIXEL_DATA and length == _UNDEFINED:
                pos = self.fragments(value, end)
                if top:
                    self.pixel_length = None
                continue
            if is_sq:
                pos = self.sequence(value, length, end, depth + 1)
                continue
            if length == _UNDEFINED:
                raise self.fail(f"element {tag:08X} has an undefined length but is not a sequence")
            if value + length > end:
                raise self.fail(f"element {tag:08X} declares {length} bytes but only {end - value} remain")
            if top:
                if tag in _WANTED_TAG_INTS:
                    self.wanted[tag] = (vr.decode() if vr else None, bytes(self.buf[value:value + length]), value)
                key = _GEOMETRY.get(tag)
                if key is not None:
                    self.geometry[key] = self.number(tag, vr, value, length)
                if tag == _PIXEL_DATA:
                    self.pixel_length = length
            pos = value + length
        if until_item_end:
            raise self.fail("undefined-length item without an item delimiter")
        return pos

    def number(self, tag: int, vr: bytes | None, value: int, length: int) -> int:
        raw = bytes(self.buf[value:value + length])
        if tag == 0x00280008 or vr == b"IS":  # NumberOfFrames is IS (text)
            try:
                return int(raw.decode("ascii", "replace").strip("\0 ").split("\\")[0] or 1)
            except ValueError:
                raise self.fail(f"element {tag:08X} is not an integer string") from None
        if length < 2:
            raise self.fail(f"element {tag:08X} is too short for an unsigned short")
        return struct.unpack_from(self.order + "H", raw, 0)[0]

    def sequence(self, pos: int, length: int, end: int, depth: int) -> int:
        if depth > MAX_DEPTH:
            raise self.fail(f"sequences nested deeper than {MAX_DEPTH}")
        stop = end if length == _UNDEFINED else pos + length
        if stop > end:
            raise self.fail(f"sequence declares {length} bytes but only {end - pos} remain")
        while pos < stop:
            tag, _, item_len, value = self.header(pos, stop)
            if tag == _SEQ_END:
                if length != _UNDEFINED or item_len != 0:
                    raise self.fail("unexpected sequence delimiter")
                return value
            if tag != _ITEM:
                raise self.fail(f"{tag:08X} inside a sequence where an item belongs")
            if item_len == _UNDEFINED:
                pos = self.dataset(value, stop, depth, top=False, until_item_end=True)
            else:
                if value + item_len > stop:
                    raise self.fail("sequence item runs past its sequence")
                if self.dataset(value, value + item_len, depth, top=False) != value + item_len:
                    raise self.fail("sequence item content does not fill the item")
                pos = value + item_len
        if length == _UNDEFINED:
            raise self.fail("undefined-length sequence without a sequence delimiter")
        if pos != stop:
            raise self.fail("sequence content does not fill the sequence")
        return pos

    def fragments(self, pos: int, end: int) -> int:
        """Encapsulated pixel data: items of defined length, then the sequence delimiter."""
        while True:
            tag, _, length, value = self.header(pos, end)
            if tag == _SEQ_END:
                return value
            if tag != _ITEM or length == _UNDEFINED or value + length > end:
                raise self.fail("encapsulated pixel data: a fragment is malformed or runs past the data")
            pos = value + length


def _read_top_level(data: bytes, transfer_syntax: UID) -> tuple[dict, bool, bool]:
    """Check the whole structure; return the wanted top-level elements as raw data elements."""
    if transfer_syntax == DeflatedExplicitVRLittleEndian:
        data = _inflate(data)
    implicit = transfer_syntax == ImplicitVRLittleEndian
    little = transfer_syntax != ExplicitVRBigEndian
    walker = _Walker(memoryview(data), implicit, little)
    try:
        walker.dataset(0, len(data), 0, top=True)
    except InvalidInstance:
        raise
    except (struct.error, ValueError, IndexError) as exc:
        raise InvalidInstance(CANNOT_UNDERSTAND_MALFORMED,
                              f"data set cannot be parsed: {type(exc).__name__}: {exc}") from exc
    if not walker.wanted:
        raise InvalidInstance(CANNOT_UNDERSTAND_MALFORMED, "data set contains no recognisable elements")
    _check_pixel_length(walker, transfer_syntax)
    wanted = {Tag(tag): RawDataElement(Tag(tag), vr, len(value), value, offset, implicit, little)
              for tag, (vr, value, offset) in walker.wanted.items()}
    return wanted, implicit, little


def _check_pixel_length(walker: _Walker, transfer_syntax: UID) -> None:
    """Native Pixel Data must hold what Rows x Columns x samples x bits x frames declare."""
    g = walker.geometry
    if walker.pixel_length is None or not {"rows", "columns", "bits"} <= g.keys():
        return
    bits = g["bits"]
    total_bits = g["rows"] * g["columns"] * g.get("samples", 1) * max(g.get("frames", 1), 1) * bits
    needed = (total_bits + 7) // 8
    if walker.pixel_length < needed:
        raise InvalidInstance(
            CANNOT_UNDERSTAND_MALFORMED,
            f"Pixel Data holds {walker.pixel_length} bytes; Rows {g['rows']} x Columns {g['columns']} x "
            f"{g.get('samples', 1)} samples x {max(g.get('frames', 1), 1)} frames x {bits} bits need {needed}",
        )


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
            raise InvalidInstance(CANNOT_UNDERSTAND_MISSING_UID, f"{kw} is missing or empty")
        if not is_valid_uid(value):
            raise InvalidInstance(CANNOT_UNDERSTAND_INVALID_UID, f"{kw} is not a valid UID: {value[:70]!r}")
        uids[kw] = value
    if affected_sop_class and uids["SOPClassUID"] != affected_sop_class:
        raise InvalidInstance(
            DATA_SET_DOES_NOT_MATCH_SOP_CLASS,
            f"SOPClassUID {uids['SOPClassUID']} differs from the request's {affected_sop_class}",
        )
    if affected_sop_instance and uids["SOPInstanceUID"] != affected_sop_instance:
        raise InvalidInstance(
            CANNOT_UNDERSTAND_UID_MISMATCH,
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
