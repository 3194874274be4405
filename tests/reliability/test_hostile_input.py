"""Hostile and malformed input: the data set parser, C-STORE over a real association, raw PDUs.

Three targets, each with its own oracle:

* ``dicom_node.instance.parse_instance`` gets mutated encodings of valid data sets (all
  uncompressed transfer syntaxes and deflate): truncation, bit flips, inserted/deleted
  bytes, overwritten length fields, huge lengths, wrong VRs, changed tags, damaged
  sequences. It must return a consistent result or raise ``InvalidInstance`` with one of
  the node's failure statuses, never anything else, and never take long.
* A running node (``dicom-node serve``) gets good and malformed instances interleaved on
  one association: every malformed one is refused with its status and a ``store.rejected``
  log line, every good one (odd character sets and non-image classes included) is stored
  byte for byte, and the node answers C-ECHO and C-FIND afterwards.
* Raw TCP peers send random bytes, corrupted A-ASSOCIATE-RQs and, on an established
  association, malformed P-DATA-TF PDUs. Every connection must be answered or closed in
  time, the node must stay up (``echoscu`` after every case) and store nothing it did not
  acknowledge.

Example counts are small for the CI suite; ``FUZZ_EXAMPLES`` (hypothesis examples per
test) and ``FUZZ_PDU_CASES`` (raw PDU cases per family) raise them, ``FUZZ_SEED`` changes
the PDU seed and ``FUZZ_RANDOM=1`` lets hypothesis draw new examples on every run.
``benchmarks/fuzz.py`` runs the same generators with thousands of cases.

Known bugs found by these tests are kept as ``xfail(strict=True)`` tests (see their reasons).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import io
import os
import random
import signal
import socket
import struct
import subprocess
import sys
import textwrap
import time
import warnings
import zlib
from datetime import timedelta
from functools import cache
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    MRImageStorage,
)

from dicom_node.instance import InvalidInstance, is_valid_uid, parse_instance
from dicom_node.status import (
    CANNOT_UNDERSTAND_INVALID_UID,
    CANNOT_UNDERSTAND_MALFORMED,
    CANNOT_UNDERSTAND_MISSING_UID,
    CANNOT_UNDERSTAND_UID_MISMATCH,
    DATA_SET_DOES_NOT_MATCH_SOP_CLASS,
)
from dicom_node.synthetic import mr_image, synthetic_uid
from tests.helpers import NodeProcess, chunked_sending, encode_parts, run

FUZZ_EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "150"))
FUZZ_PDU_CASES = int(os.environ.get("FUZZ_PDU_CASES", "12"))
FUZZ_SEED = int(os.environ.get("FUZZ_SEED", "20261121"))
FUZZ_RANDOM = os.environ.get("FUZZ_RANDOM", "") not in ("", "0")

# What the node may answer a refused C-STORE with (dicom_node.status)
FAILURE_STATUSES = {CANNOT_UNDERSTAND_MALFORMED, CANNOT_UNDERSTAND_MISSING_UID, CANNOT_UNDERSTAND_INVALID_UID,
                    CANNOT_UNDERSTAND_UID_MISMATCH, DATA_SET_DOES_NOT_MATCH_SOP_CLASS}
PARSE_TIME_LIMIT_S = 5.0  # one parse of a ~1 kB data set takes about a millisecond
CONNECTION_END_TIMEOUT_S = 10.0  # a raw peer's connection must end this soon after it stops sending

BASIC_TEXT_SR = "1.2.840.10008.5.1.4.1.1.88.11"
ENCAPSULATED_PDF = "1.2.840.10008.5.1.4.1.1.104.1"
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
VERIFICATION = "1.2.840.10008.1.1"
PATIENT_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.1.1"

HYPOTHESIS = settings(
    max_examples=FUZZ_EXAMPLES,
    deadline=timedelta(seconds=2),  # a hang or a pathological slow path fails the example
    derandomize=not FUZZ_RANDOM,  # the CI suite sees the same examples every run
    database=None,  # no .hypothesis/ directory in the working tree
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)


# =====================================================================================
# Part 1: the parser
# =====================================================================================

class Hang(BaseException):
    """Raised by the alarm; a BaseException so that ``except Exception`` cannot swallow it."""


class Finding(AssertionError):
    """The parser did something it must never do; the message is a reproducer."""


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Interrupt the block (Python code, main thread) after ``seconds`` with :class:`Hang`."""

    def on_alarm(signum, frame):
        raise Hang(f"no result within {seconds} s")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
VR_CHOICES = [b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FD", b"FL", b"IS", b"LO", b"LT", b"OB", b"OD",
              b"OF", b"OL", b"OV", b"OW", b"PN", b"SH", b"SL", b"SQ", b"SS", b"ST", b"SV", b"TM", b"UC", b"UI",
              b"UL", b"UN", b"UR", b"US", b"UT", b"UV", b"\x00\x00", b"ZZ", b"  ", b"\xff\xff", b"ob"]
TAG_CHOICES = [0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD, 0x00020010, 0x00000000, 0xFFFFFFFF, 0x7FE00010, 0x00080018,
               "prev", "next"]
LENGTH_CHOICES = ["+1", "-1", "+2", "-2", "+100", "buffer", "undefined", "max", 0, 1, 3, 0x7FFFFFFF]
BYTE_OPS = ("truncate", "flip", "insert", "delete")


@dataclasses.dataclass(frozen=True)
class Field:
    """Where one element, item or delimiter header sits in an encoded data set."""

    kind: str  # element | item | item_delim | seq_delim
    tag: int
    offset: int  # of the tag
    vr_offset: int | None  # explicit VR only
    len_offset: int
    len_size: int  # 2 or 4
    length: int
    depth: int  # 0: top level; sequence items and their elements count one level each


def layout(buf: bytes, implicit: bool, little: bool) -> tuple[Field, ...]:
    """Every header of a *valid* encoded data set, nested sequences included."""
    e = "<" if little else ">"
    out: list[Field] = []

    def walk(pos: int, end: int, depth: int) -> int:
        while pos + 8 <= end:
            group, elem = struct.unpack_from(e + "HH", buf, pos)
            tag = group << 16 | elem
            if group == 0xFFFE:
                length = struct.unpack_from(e + "I", buf, pos + 4)[0]
                kind = {0xE000: "item", 0xE00D: "item_delim", 0xE0DD: "seq_delim"}[elem]
                out.append(Field(kind, tag, pos, None, pos + 4, 4, length, depth))
                pos += 8
                if kind != "item":
                    return pos
                if length == 0xFFFFFFFF:
                    pos = walk(pos, end, depth + 1)
                else:
                    walk(pos, pos + length, depth + 1)
                    pos += length
                continue
            if implicit:
                vr = dictionary_VR(tag).encode()
                vr_offset, len_offset, len_size = None, pos + 4, 4
            else:
                vr, vr_offset = bytes(buf[pos + 4:pos + 6]), pos + 4
                len_offset, len_size = (pos + 8, 4) if vr in LONG_VRS else (pos + 6, 2)
            length = struct.unpack_from(e + ("I" if len_size == 4 else "H"), buf, len_offset)[0]
            out.append(Field("element", tag, pos, vr_offset, len_offset, len_size, length, depth))
            pos = len_offset + len_size
            if vr == b"SQ":
                if length == 0xFFFFFFFF:
                    pos = walk(pos, end, depth + 1)
                else:
                    walk(pos, pos + length, depth + 1)
                    pos += length
            else:
                pos += length
        return pos

    walk(0, len(buf), 0)
    return tuple(out)


def deflate(data: bytes) -> bytes:
    comp = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
    return comp.compress(data) + comp.flush()


def sample_dataset(tag: str = "base", undefined_sequences: bool = False, rows: int = 8) -> Dataset:
    """A small valid MR image with two levels of nested sequences (synthetic, deterministic)."""
    ds = mr_image(
        study_uid=synthetic_uid("hostile", tag, "study"), series_uid=synthetic_uid("hostile", tag, "series"),
        sop_instance_uid=synthetic_uid("hostile", tag, "sop"), rows=rows, columns=rows, study_date="20240101",
        rng=np.random.default_rng(0), patient_id="HOSTILE0", patient_name="Fuzz^Base",
    )
    ref = Dataset()
    ref.ReferencedSOPClassUID = MRImageStorage
    ref.ReferencedSOPInstanceUID = synthetic_uid("hostile", tag, "ref")
    ds.ReferencedImageSequence = [ref]
    modifier = Dataset()
    modifier.CodeValue = "G-A101"
    modifier.CodingSchemeDesignator = "SRT"
    modifier.CodeMeaning = "Left"
    region = Dataset()
    region.CodeValue = "T-32000"
    region.CodingSchemeDesignator = "SRT"
    region.CodeMeaning = "Heart"
    region.AnatomicRegionModifierSequence = [modifier]
    ds.AnatomicRegionSequence = [region]
    if undefined_sequences:  # how most modalities and DCMTK write sequences
        for holder, keyword in ((ds, "ReferencedImageSequence"), (ds, "AnatomicRegionSequence"),
                                (region, "AnatomicRegionModifierSequence")):
            holder[keyword].is_undefined_length = True
            for item in holder[keyword].value:
                item.is_undefined_length_sequence_item = True
    return ds


def encode_body(ds: Dataset, ts: str) -> bytes:
    ds = copy.deepcopy(ds)
    ds.file_meta.TransferSyntaxUID = ts
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return encode_parts(ds)[1]


@dataclasses.dataclass(frozen=True)
class Base:
    """A valid encoded data set the mutations start from."""

    name: str
    ts: str
    body: bytes  # the encoded data set (before deflate for the deflated syntax)
    fields: tuple[Field, ...]
    sop_class: str
    sop_instance: str
    implicit: bool
    little: bool
    deflated: bool

    def encoded(self, raw: bytes) -> bytes:
        return deflate(raw) if self.deflated else raw


def make_base(name: str, ds: Dataset, ts: str) -> Base:
    wire_ts = ExplicitVRLittleEndian if ts == DeflatedExplicitVRLittleEndian else ts
    body = encode_body(ds, wire_ts)
    implicit, little = wire_ts == ImplicitVRLittleEndian, wire_ts != ExplicitVRBigEndian
    return Base(name, str(ts), body, layout(body, implicit, little), str(ds.SOPClassUID), str(ds.SOPInstanceUID),
                implicit, little, ts == DeflatedExplicitVRLittleEndian)


@cache
def bases() -> dict[str, Base]:
    defined = sample_dataset()
    undefined = sample_dataset("undef", undefined_sequences=True)
    return {
        "explicit_le": make_base("explicit_le", defined, ExplicitVRLittleEndian),
        "implicit_le": make_base("implicit_le", defined, ImplicitVRLittleEndian),
        "explicit_be": make_base("explicit_be", defined, ExplicitVRBigEndian),
        "deflated": make_base("deflated", defined, DeflatedExplicitVRLittleEndian),
        "explicit_le_undefined_sq": make_base("explicit_le_undefined_sq", undefined, ExplicitVRLittleEndian),
        "implicit_le_undefined_sq": make_base("implicit_le_undefined_sq", undefined, ImplicitVRLittleEndian),
    }


def _length_value(choice: Any, field: Field, buffer_len: int) -> int:
    table = {"+1": field.length + 1, "-1": field.length - 1, "+2": field.length + 2, "-2": field.length - 2,
             "+100": field.length + 100, "buffer": buffer_len - field.len_offset, "undefined": 0xFFFFFFFF,
             "max": (1 << (8 * field.len_size)) - 1}
    value = table.get(choice, choice) if isinstance(choice, str) else choice
    return int(value) & ((1 << (8 * field.len_size)) - 1)


def _apply(buf: bytearray, base: Base, op: tuple) -> None:
    kind, *args = op
    n = len(buf)
    if kind == "truncate":
        del buf[args[0] % (n + 1):]
    elif kind == "flip":
        if n:
            buf[args[0] % n] ^= 1 << (args[1] % 8)
    elif kind == "insert":
        p = args[0] % (n + 1)
        buf[p:p] = args[1]
    elif kind == "delete":
        if n:
            p = args[0] % n
            del buf[p:p + args[1]]
    else:
        field = base.fields[args[0] % len(base.fields)]
        e = "<" if base.little else ">"
        if kind == "length" and field.len_offset + field.len_size <= n:
            fmt = e + ("I" if field.len_size == 4 else "H")
            struct.pack_into(fmt, buf, field.len_offset, _length_value(args[1], field, n))
        elif kind == "vr" and field.vr_offset is not None and field.vr_offset + 2 <= n:
            buf[field.vr_offset:field.vr_offset + 2] = args[1]
        elif kind == "tag" and field.offset + 4 <= n:
            tag = {"prev": field.tag - 1, "next": field.tag + 1}.get(args[1], args[1])
            struct.pack_into(e + "HH", buf, field.offset, (tag >> 16) & 0xFFFF, tag & 0xFFFF)
        elif kind == "drop":  # remove the header: an item without its tag, an element without its length...
            del buf[field.offset:field.len_offset + field.len_size]


def apply_ops(base: Base, ops: list[tuple]) -> bytes:
    """The mutated wire bytes: ops on the data set, then ``z*`` ops on the deflated stream."""
    buf = bytearray(base.body)
    for op in ops:
        if not op[0].startswith("z"):
            _apply(buf, base, op)
    data = bytearray(base.encoded(bytes(buf)))
    for op in ops:
        if op[0].startswith("z"):
            _apply(data, base, (op[0][1:], *op[1:]))
    return bytes(data)


def ops_strategy(base: Base) -> st.SearchStrategy[list[tuple]]:
    pos = st.integers(0, 1 << 20)
    index = st.integers(0, 1 << 16)
    byte_ops = [
        st.tuples(st.just("truncate"), pos),
        st.tuples(st.just("flip"), pos, st.integers(0, 7)),
        st.tuples(st.just("insert"), pos, st.binary(min_size=1, max_size=16)),
        st.tuples(st.just("delete"), pos, st.integers(1, 16)),
    ]
    structural = [
        st.tuples(st.just("length"), index, st.one_of(st.sampled_from(LENGTH_CHOICES), st.integers(0, 2**32 - 1))),
        st.tuples(st.just("tag"), index, st.sampled_from(TAG_CHOICES)),
        st.tuples(st.just("drop"), index),
    ]
    if not base.implicit:
        structural.append(st.tuples(st.just("vr"), index, st.sampled_from(VR_CHOICES)))
    if base.deflated:
        byte_ops += [
            st.tuples(st.just("ztruncate"), pos),
            st.tuples(st.just("zflip"), pos, st.integers(0, 7)),
            st.tuples(st.just("zinsert"), pos, st.binary(min_size=1, max_size=16)),
        ]
    return st.lists(st.one_of(*structural, *byte_ops), min_size=1, max_size=4)


def random_ops(rng: random.Random, base: Base) -> list[tuple]:
    """The same operations as :func:`ops_strategy`, drawn from a seeded generator (benchmark)."""
    kinds = ["length", "length", "tag", "drop", "truncate", "flip", "insert", "delete"]
    if not base.implicit:
        kinds += ["vr", "vr"]
    if base.deflated:
        kinds += ["ztruncate", "zflip"]
    ops = []
    for _ in range(rng.choice([1, 1, 1, 2, 2, 3, 4])):
        kind = rng.choice(kinds)
        pos, index = rng.randrange(1 << 20), rng.randrange(1 << 16)
        if kind in ("truncate", "ztruncate"):
            ops.append((kind, pos))
        elif kind in ("flip", "zflip"):
            ops.append((kind, pos, rng.randrange(8)))
        elif kind == "insert":
            ops.append((kind, pos, rng.randbytes(rng.randint(1, 16))))
        elif kind == "delete":
            ops.append((kind, pos, rng.randint(1, 16)))
        elif kind == "length":
            ops.append((kind, index, rng.choice(LENGTH_CHOICES + [rng.randrange(1 << 32)])))
        elif kind == "tag":
            ops.append((kind, index, rng.choice(TAG_CHOICES)))
        elif kind == "vr":
            ops.append((kind, index, rng.choice(VR_CHOICES)))
        else:
            ops.append((kind, index))
    return ops


def reproducer(ts: str, data: bytes, sop_class: str | None, sop_instance: str | None) -> str:
    return (f"from dicom_node.instance import parse_instance; "
            f"parse_instance(bytes.fromhex({data.hex()!r}), {ts!r}, {sop_class!r}, {sop_instance!r})")


def check_parse(data: bytes, ts: str, sop_class: str | None = None, sop_instance: str | None = None,
                limit_s: float = PARSE_TIME_LIMIT_S) -> str:
    """Parse as the node does; return 'accepted' or 'rejected 0xNNNN', raise Finding otherwise."""
    try:
        with time_limit(limit_s):
            info = parse_instance(data, ts, sop_class, sop_instance)
    except InvalidInstance as exc:
        if exc.status not in FAILURE_STATUSES or not exc.reason:
            raise Finding(f"unexpected status 0x{exc.status:04X} / reason {exc.reason!r}:\n"
                          + reproducer(ts, data, sop_class, sop_instance)) from None
        return f"rejected 0x{exc.status:04X}"
    except Hang:
        raise Finding(f"parse did not finish within {limit_s} s (hang):\n"
                      + reproducer(ts, data, sop_class, sop_instance)) from None
    except Exception as exc:
        raise Finding(f"{type(exc).__name__}: {exc} escaped parse_instance (the node would answer 0x0110):\n"
                      + reproducer(ts, data, sop_class, sop_instance)) from exc
    problems = []
    if sop_class and info.sop_class_uid != sop_class:
        problems.append(f"SOP class {info.sop_class_uid} accepted for request {sop_class}")
    if sop_instance and info.sop_instance_uid != sop_instance:
        problems.append(f"SOP instance {info.sop_instance_uid} accepted for request {sop_instance}")
    for uid in (info.sop_class_uid, info.sop_instance_uid, info.study_uid, info.series_uid):
        if not is_valid_uid(uid):
            problems.append(f"invalid UID {uid!r} accepted")
    if info.content_sha256 != hashlib.sha256(data).hexdigest():
        problems.append("content_sha256 is not the hash of the received bytes")
    for key, value in info.attributes.items():
        if value is not None and not isinstance(value, (str, int)):
            problems.append(f"{key} indexed as {type(value).__name__}")
        if isinstance(value, str):
            try:
                value.encode("utf-8")  # what SQLite needs
            except UnicodeEncodeError:
                problems.append(f"{key} is not storable text: {value!r}")
    if problems:
        raise Finding("; ".join(problems) + ":\n" + reproducer(ts, data, sop_class, sop_instance))
    return "accepted"


PARSER_BASES = ["explicit_le", "implicit_le", "explicit_be", "deflated", "explicit_le_undefined_sq"]


@pytest.mark.parametrize("base_name", PARSER_BASES)
def test_unmodified_bases_are_accepted(base_name):
    """The mutation bases are valid and parse (undefined-length sequences included)."""
    base = bases()[base_name]
    outcome = check_parse(apply_ops(base, []), base.ts, base.sop_class, base.sop_instance)
    assert outcome == "accepted"
    assert len(base.fields) > 30 and max(f.depth for f in base.fields) >= 3


@pytest.mark.parametrize("base_name", PARSER_BASES)
def test_parser_survives_mutations(base_name):
    base = bases()[base_name]
    outcomes: list[str] = []

    @HYPOTHESIS
    @given(ops=ops_strategy(base))
    def check(ops):
        outcomes.append(check_parse(apply_ops(base, ops), base.ts, base.sop_class, base.sop_instance))

    check()
    assert len(outcomes) >= FUZZ_EXAMPLES // 2, len(outcomes)
    # the fuzzing reached the refusal path (a generator that only produced valid data would not)
    assert any(o.startswith("rejected") for o in outcomes), outcomes


@pytest.mark.parametrize("ts", [ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian,
                                DeflatedExplicitVRLittleEndian])
@HYPOTHESIS
@given(data=st.one_of(
    st.binary(max_size=512),
    # plausible element headers followed by anything: reaches deeper than pure noise
    st.lists(st.tuples(st.integers(0, 0xFFFFFFFF), st.sampled_from(VR_CHOICES), st.integers(0, 0xFFFF),
                       st.binary(max_size=24)), max_size=12).map(
        lambda elems: b"".join(struct.pack("<I", t) + vr + struct.pack("<H", n) + v for t, vr, n, v in elems)),
))
def test_parser_survives_random_bytes(ts, data):
    check_parse(data, str(ts))
    check_parse(data, str(ts), MRImageStorage, "1.2.3.4")


@pytest.mark.parametrize("base_name", ["explicit_le", "implicit_le", "explicit_be"])
def test_every_length_field_boundary(base_name):
    """Exhaustive: each header's length set to each boundary value (nested ones included)."""
    base = bases()[base_name]
    outcomes = {}
    for i, _field in enumerate(base.fields):
        for choice in LENGTH_CHOICES:
            outcomes[(i, choice)] = check_parse(apply_ops(base, [("length", i, choice)]), base.ts,
                                                base.sop_class, base.sop_instance)
    # a top-level element claiming more bytes than are left, or an undefined length, is never accepted
    for i, field in enumerate(base.fields):
        if field.depth == 0 and field.kind == "element":
            assert outcomes[(i, "buffer")] != "accepted", (field, "declared length beyond the buffer accepted")
            assert outcomes[(i, "undefined")] != "accepted", (field, "undefined length accepted")
    assert "accepted" in outcomes.values()  # (some nested changes are: see the xfail tests below)


def test_every_vr_replacement():
    """Exhaustive: each explicit VR replaced by every VR and some garbage, both byte orders."""
    for name in ("explicit_le", "explicit_be"):
        base = bases()[name]
        for i, field in enumerate(base.fields):
            if field.vr_offset is None:
                continue
            for vr in VR_CHOICES:
                outcome = check_parse(apply_ops(base, [("vr", i, vr)]), base.ts, base.sop_class, base.sop_instance)
                short_to_long = field.depth == 0 and field.len_size == 2 and vr in LONG_VRS and field.length
                if short_to_long:  # the header now has a 4-byte length made of value bytes: cannot fit
                    assert outcome != "accepted", (name, field, vr)


CHARSETS = ["ISO_IR 100", "ISO_IR 192", "GB18030", "\\ISO 2022 IR 87", "ISO 2022 IR 6\\ISO 2022 IR 87",
            "ISO 2022 IR 13\\ISO 2022 IR 87", "ISO 2022 IR 149", "ISO_IR 13", "ISO_IR 144", "ISO_IR 166",
            "GBK", "ISO 2022 IR 58", "UNKNOWN_CHARSET", "", "\\\\", "ISO_IR 100\\ISO_IR 192"]
TEXT_ATTRIBUTES = [(0x00081030, "LO", "StudyDescription"), (0x00080090, "PN", "ReferringPhysicianName"),
                   (0x0008103E, "LO", "SeriesDescription"), (0x00100010, "PN", "PatientName"),
                   (0x00100020, "LO", "PatientID"), (0x00181030, "LO", "ProtocolName")]


@HYPOTHESIS
@given(charset=st.sampled_from(CHARSETS),
       values=st.lists(st.one_of(st.binary(max_size=40),
                                 st.binary(max_size=20).map(lambda b: b"\x1b$B" + b),  # ISO 2022 escape + junk
                                 st.binary(max_size=20).map(lambda b: b"\x1b(J" + b + b"\x1b$)C")),
                       min_size=len(TEXT_ATTRIBUTES), max_size=len(TEXT_ATTRIBUTES)))
def test_odd_character_sets_and_bytes_never_refuse_or_crash(charset, values):
    """Text in any (even unknown or undecodable) character set is an index matter, never a refusal."""
    ds = sample_dataset("charset")
    ds.SpecificCharacterSet = charset.split("\\") if "\\" in charset else charset
    for (tag, vr, _), value in zip(TEXT_ATTRIBUTES, values, strict=True):
        value += b" " * (len(value) % 2)
        ds[tag] = RawDataElement(tag, vr, len(value), value, 0, False, True)
    for ts in (ExplicitVRLittleEndian, ImplicitVRLittleEndian):
        body = encode_body(ds, ts)
        assert check_parse(body, ts, str(ds.SOPClassUID), str(ds.SOPInstanceUID)) == "accepted"


ROUND_TRIP_CHARSETS = {"ISO_IR 100": "latin_1", "ISO_IR 192": "utf_8", "GB18030": "gb18030"}


@HYPOTHESIS
@given(charset=st.sampled_from(sorted(ROUND_TRIP_CHARSETS)),
       text=st.text(st.characters(categories=["L", "N"]), min_size=1, max_size=24))
def test_text_in_single_byte_utf8_and_gb18030_is_indexed_as_sent(charset, text):
    codec = ROUND_TRIP_CHARSETS[charset]
    try:
        text.encode(codec)
    except UnicodeEncodeError:
        text = "Z" + "".join(c for c in text if c.encode(codec, "ignore"))
    ds = sample_dataset("roundtrip")
    ds.SpecificCharacterSet = charset
    ds.StudyDescription = text
    ds.PatientName = f"{text}^{text[::-1]}"
    info = parse_instance(encode_body(ds, ExplicitVRLittleEndian), ExplicitVRLittleEndian)
    assert info.attributes["StudyDescription"] == text
    assert info.attributes["PatientName"] == f"{text}^{text[::-1]}"


def test_deeply_nested_sequences_are_refused_quickly():
    """10 000 levels of sequences: refused (or accepted) without a crash or a long parse."""
    depth = 10_000
    item_open = struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF)
    seq_close = struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
    item_close = struct.pack("<HHI", 0xFFFE, 0xE00D, 0) + seq_close
    sq_open = struct.pack("<HH2sHI", 0x0008, 0x1140, b"SQ", 0, 0xFFFFFFFF)
    nested = sq_open + (item_open + sq_open) * depth + seq_close + item_close * depth  # well formed
    base = bases()["explicit_le"]
    i = next(f.offset for f in base.fields if f.tag == 0x00081140)  # replace ReferencedImageSequence
    j = next(f.offset for f in base.fields if f.depth == 0 and f.tag > 0x00081140)
    data = base.body[:i] + nested + base.body[j:]
    t0 = time.monotonic()
    assert check_parse(data, ExplicitVRLittleEndian).startswith(("rejected", "accepted"))
    assert time.monotonic() - t0 < PARSE_TIME_LIMIT_S


@pytest.mark.parametrize("ts", [ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian])
def test_valid_instance_with_undefined_length_sequences_is_accepted(ts):
    ds = sample_dataset("undef", undefined_sequences=True)
    assert check_parse(encode_body(ds, ts), ts, str(ds.SOPClassUID), str(ds.SOPInstanceUID)) == "accepted"


def _nested_damage(kind: str) -> bytes:
    """Structural damage inside the defined-length sequences of the explicit VR LE base."""
    base = bases()["explicit_le"]
    buf = bytearray(base.body)
    f = base.fields
    if kind == "delimiter_inside_item":  # a nested element's tag replaced by a sequence delimiter
        field = next(x for x in f if x.tag == 0x00080104 and x.depth == 4)  # CodeMeaning in the modifier item
        struct.pack_into("<HH", buf, field.offset, 0xFFFE, 0xE0DD)
    elif kind == "item_without_item_tag":
        field = next(x for x in f if x.kind == "item" and x.depth == 3)
        struct.pack_into("<HH", buf, field.offset, 0x0008, 0x0100)
    elif kind == "nested_element_beyond_its_item":
        field = next(x for x in f if x.tag == 0x00081150 and x.depth == 2)  # ReferencedSOPClassUID
        struct.pack_into("<H", buf, field.len_offset, 200)
    elif kind == "nested_sequence_beyond_its_item":
        field = next(x for x in f if x.tag == 0x00082220 and x.depth == 2)  # AnatomicRegionModifierSequence
        struct.pack_into("<I", buf, field.len_offset, 999)
    elif kind == "pixel_data_declared_as_sequence":  # OW -> SQ: same header layout, pixels read as items
        field = next(x for x in f if x.tag == 0x7FE00010)
        buf[field.vr_offset:field.vr_offset + 2] = b"SQ"
    return bytes(buf)


def dcmtk_reads(path: Path) -> tuple[bool, str]:
    """Whether DCMTK (dcmdump) reads the whole file without a parse error: an independent oracle."""
    proc = subprocess.run(["dcmdump", str(path)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          text=True, errors="replace", timeout=30)
    errors = [line for line in proc.stderr.splitlines() if line.startswith(("E:", "F:"))]
    return proc.returncode == 0 and not errors, "\n".join(errors)[-300:]


@pytest.mark.parametrize("kind", ["delimiter_inside_item", "item_without_item_tag", "nested_element_beyond_its_item",
                                  "nested_sequence_beyond_its_item", "pixel_data_declared_as_sequence"])
def test_damage_inside_a_sequence_is_refused(kind, tmp_path, dcmtk):
    data = _nested_damage(kind)
    base = bases()["explicit_le"]
    readable, _ = dcmtk_reads(raw_file(tmp_path / "damaged.dcm", base.sop_class, base.sop_instance, base.ts, data))
    assert not readable  # the damage is real: DCMTK refuses the file
    assert dcmtk_reads(raw_file(tmp_path / "valid.dcm", base.sop_class, base.sop_instance, base.ts, base.body))[0]
    assert check_parse(data, ExplicitVRLittleEndian, base.sop_class, base.sop_instance) == "rejected 0xC210"


@pytest.mark.parametrize("base_name", ["explicit_le", "implicit_le", "explicit_be"])
@pytest.mark.parametrize("cut", [1, 4, 7])
def test_data_set_cut_inside_an_element_header_is_refused(base_name, cut):
    base = bases()[base_name]
    pixel_data = next(f for f in base.fields if f.tag == 0x7FE00010)
    data = base.body[:pixel_data.offset + cut]  # the Pixel Data header is cut after ``cut`` bytes
    assert check_parse(data, base.ts, base.sop_class, base.sop_instance) == "rejected 0xC210"


@pytest.mark.parametrize("vr", [b"ZZ", b"QQ"])
def test_undefined_vr_code_is_refused(vr, tmp_path, dcmtk):
    base = bases()["explicit_le"]
    index = next(i for i, f in enumerate(base.fields) if f.tag == 0x00080050)  # AccessionNumber
    data = apply_ops(base, [("vr", index, vr)])
    assert not dcmtk_reads(raw_file(tmp_path / "vr.dcm", base.sop_class, base.sop_instance, base.ts, data))[0]
    assert check_parse(data, base.ts, base.sop_class, base.sop_instance) == "rejected 0xC210"


@pytest.mark.parametrize("tag", [0xFFFEE000, 0xFFFEE0DD])
@pytest.mark.parametrize("base_name", ["explicit_le", "implicit_le"])
def test_item_or_delimiter_tag_at_the_top_level_is_refused(base_name, tag):
    base = bases()[base_name]
    index = next(i for i, f in enumerate(base.fields) if f.tag == 0x7FE00010)  # Pixel Data's tag replaced
    data = apply_ops(base, [("tag", index, tag)])
    assert check_parse(data, base.ts, base.sop_class, base.sop_instance) == "rejected 0xC210"


DEFLATE_BOMB_CHECK = textwrap.dedent("""
    import resource, sys, zlib
    resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))
    from dicom_node.instance import InvalidInstance, parse_instance
    comp = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    segment = comp.compress(bytes(1 << 24)) + comp.flush(zlib.Z_FULL_FLUSH)
    bomb = segment * 256 + comp.flush()  # 4 MB that inflate to 4 GiB
    try:
        parse_instance(bomb, "1.2.840.10008.1.2.1.99")
        print("accepted")
    except InvalidInstance as exc:
        print(f"refused 0x{exc.status:04X}")
    except BaseException as exc:
        print(f"{type(exc).__name__}: {exc}")
""")


def test_deflate_bomb_is_refused_without_inflating_it():
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.run([sys.executable, "-c", DEFLATE_BOMB_CHECK], capture_output=True, text=True, timeout=60,
                          cwd=root, env={**os.environ, "PYTHONPATH": str(root)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().startswith("refused 0x"), proc.stdout + proc.stderr[-2000:]


# =====================================================================================
# Part 2: hostile instances on one association, against the node process
# =====================================================================================

def raw_file(path: Path, sop_class: str, sop_instance: str, ts: str, body: bytes) -> Path:
    """A DICOM file whose data set is exactly ``body``: pynetdicom sends such files unchanged."""
    meta = Dataset()
    meta.FileMetaInformationVersion = b"\x00\x01"
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_instance
    meta.TransferSyntaxUID = ts
    meta.ImplementationClassUID = "1.2.826.0.1.3680043.8.498.1"
    buf = io.BytesIO()
    buf.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(buf, meta, enforce_standard=True)
    path.write_bytes(buf.getvalue() + body)
    return path


@dataclasses.dataclass
class Case:
    name: str
    path: Path
    sop_instance: str
    body: bytes
    expected: int  # DIMSE status
    reason_has: str = ""  # a word the store.rejected reason must contain
    patient_id: str = ""
    patient_name: str = ""
    data_set_sop: str = ""  # the SOPInstanceUID inside the data set (differs from the request's in one case)


def _instance(study: str, series: str, n: int, **kw) -> Dataset:
    return mr_image(study_uid=study, series_uid=series, sop_instance_uid=synthetic_uid("hostile-net", study, n),
                    instance_number=n, rows=16, columns=16, study_date="20240101", **kw)


def _non_image(ds: Dataset, sop_class: str) -> Dataset:
    for kw in ("Rows", "Columns", "SamplesPerPixel", "PhotometricInterpretation", "BitsAllocated", "BitsStored",
               "HighBit", "PixelRepresentation", "PixelData", "ImageType"):
        delattr(ds, kw)
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = sop_class
    if sop_class == BASIC_TEXT_SR:
        ds.Modality = "SR"
        ds.ValueType = "CONTAINER"
        ds.ContinuityOfContent = "SEPARATE"
        concept = Dataset()
        concept.CodeValue, concept.CodingSchemeDesignator, concept.CodeMeaning = "121070", "DCM", "Findings"
        ds.ConceptNameCodeSequence = [concept]
        text = Dataset()
        text.RelationshipType, text.ValueType, text.TextValue = "CONTAINS", "TEXT", "Synthetic finding, no patient"
        text.ConceptNameCodeSequence = [concept]
        ds.ContentSequence = [text]
        ds.CompletionFlag, ds.VerificationFlag = "COMPLETE", "UNVERIFIED"
    else:
        ds.Modality = "DOC"
        ds.MIMETypeOfEncapsulatedDocument = "application/pdf"
        ds.DocumentTitle = "synthetic"
        ds.EncapsulatedDocument = b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n"
    return ds


def _with_header_change(body: bytes, ts: str, tag: int, **change) -> bytes:
    implicit, little = ts == ImplicitVRLittleEndian, ts != ExplicitVRBigEndian
    fields = layout(body, implicit, little)
    index = next(i for i, f in enumerate(fields) if f.tag == tag and f.depth == 0)
    base = Base("x", ts, body, fields, "", "", implicit, little, False)
    ((kind, value),) = change.items()
    return apply_ops(base, [(kind, index, value)])


def hostile_cases(tmp: Path) -> list[Case]:
    """Good and malformed instances in the order they are sent."""
    study, series = synthetic_uid("hostile-net", tmp, "study"), synthetic_uid("hostile-net", tmp, "series")
    pid = hashlib.sha256(str(tmp).encode()).hexdigest()[:8]  # patient IDs unique to this call
    cases: list[Case] = []
    n = 0

    def add(name: str, ds: Dataset, expected: int, *, body: bytes | None = None, ts: str = ExplicitVRLittleEndian,
            sop_class: str | None = None, sop_instance: str | None = None, reason_has: str = "") -> None:
        if body is None:
            body = encode_body(ds, ts)
        sop_class = sop_class or str(ds.SOPClassUID)
        sop_instance = sop_instance or str(ds.SOPInstanceUID)
        path = raw_file(tmp / f"{len(cases):02d}_{name}.dcm", sop_class, sop_instance, ts, body)
        cases.append(Case(name, path, sop_instance, body, expected, reason_has, str(ds.get("PatientID", "")),
                          str(ds.get("PatientName", "")), str(ds.get("SOPInstanceUID", ""))))

    def image(**kw) -> Dataset:
        nonlocal n
        n += 1
        if "patient_id" in kw:  # a patient of its own: its own study and series
            return _instance(synthetic_uid(study, kw["patient_id"]), synthetic_uid(series, kw["patient_id"]), n, **kw)
        return _instance(study, series, n, **kw)

    add("good_first", image(), 0x0000)
    ds = image()
    full = encode_body(ds, ExplicitVRLittleEndian)
    add("truncated_pixel_data", ds, CANNOT_UNDERSTAND_MALFORMED, body=full[:-200], reason_has="declares")
    add("good_charset_latin1", image(patient_name="Müller^Jürgen", patient_id=f"HOSTILE-L1-{pid}",
                                     SpecificCharacterSet="ISO_IR 100", StudyDescription="Herz-MRT für Ärzte"), 0)
    ds = image()
    add("wrong_vr_study_uid_ob", ds, CANNOT_UNDERSTAND_MALFORMED,
        body=_with_header_change(encode_body(ds, ExplicitVRLittleEndian), ExplicitVRLittleEndian, 0x0020000D,
                                 vr=b"OB"))
    add("good_charset_iso2022_jp",
        image(patient_name="Yamada^Tarou=山田^太郎=やまだ^たろう", patient_id=f"HOSTILE-JA-{pid}",
              SpecificCharacterSet=["", "ISO 2022 IR 87"], StudyDescription="心臓MRI"), 0)
    ds = image()
    add("wrong_vr_sop_uid_us", ds, CANNOT_UNDERSTAND_INVALID_UID,
        body=_with_header_change(encode_body(ds, ExplicitVRLittleEndian), ExplicitVRLittleEndian, 0x00080018,
                                 vr=b"US"), reason_has="not a valid UID")
    add("good_charset_gb18030", image(patient_name="Wang^XiaoDong=王^小东", patient_id=f"HOSTILE-GB-{pid}",
                                      SpecificCharacterSet="GB18030", StudyDescription="心脏磁共振"), 0)
    ds = image()
    add("length_beyond_buffer", ds, CANNOT_UNDERSTAND_MALFORMED,
        body=_with_header_change(encode_body(ds, ExplicitVRLittleEndian), ExplicitVRLittleEndian, 0x7FE00010,
                                 length=0x7FFFFFF0), reason_has="declares")
    add("good_charset_utf8", image(patient_name="Łukasz^Żółć=ルカシュ^🙂", patient_id=f"HOSTILE-U8-{pid}",
                                   SpecificCharacterSet="ISO_IR 192", StudyDescription="Ŝerco — MR ♥"), 0)
    ds = image()
    add("middle_length_beyond_buffer", ds, CANNOT_UNDERSTAND_MALFORMED,
        body=_with_header_change(encode_body(ds, ExplicitVRLittleEndian), ExplicitVRLittleEndian, 0x00081030,
                                 length=0xFFFF))
    add("good_basic_text_sr", _non_image(image(), BASIC_TEXT_SR), 0)
    add("sop_class_mismatch", image(SOPClassUID=CT_IMAGE), DATA_SET_DOES_NOT_MATCH_SOP_CLASS,
        sop_class=MRImageStorage, reason_has="differs")
    add("good_encapsulated_pdf", _non_image(image(), ENCAPSULATED_PDF), 0)
    ds = image()
    add("sop_instance_mismatch", ds, CANNOT_UNDERSTAND_UID_MISMATCH,
        sop_instance=synthetic_uid("hostile-net", "other", n), reason_has="differs")
    add("good_implicit_le", image(), 0, ts=ImplicitVRLittleEndian)
    ds = image()
    del ds.StudyInstanceUID
    add("missing_study_uid", ds, CANNOT_UNDERSTAND_MISSING_UID, reason_has="StudyInstanceUID")
    add("good_explicit_be", image(), 0, ts=ExplicitVRBigEndian)
    ds = image()
    add("garbage", ds, CANNOT_UNDERSTAND_MALFORMED, body=random.Random(7).randbytes(3000))
    ds = image()
    truncated_be = encode_body(ds, ExplicitVRBigEndian)[:-77]
    add("truncated_big_endian", ds, CANNOT_UNDERSTAND_MALFORMED, body=truncated_be, ts=ExplicitVRBigEndian)
    ds = image()
    body = encode_body(ds, ImplicitVRLittleEndian)
    add("implicit_huge_length", ds, CANNOT_UNDERSTAND_MALFORMED, ts=ImplicitVRLittleEndian,
        body=_with_header_change(body, ImplicitVRLittleEndian, 0x00100010, length=0xFFFFFFF0))
    add("good_last", image(), 0x0000)
    return cases


def _requested_contexts() -> list:
    from pynetdicom import build_context

    contexts = []
    for sop_class in (MRImageStorage, BASIC_TEXT_SR, ENCAPSULATED_PDF):
        for ts in (ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian):
            contexts.append(build_context(sop_class, [ts]))
    contexts += [build_context(VERIFICATION), build_context(PATIENT_ROOT_FIND)]
    return contexts


@contextlib.contextmanager
def association(node: NodeProcess) -> Iterator[Any]:
    from pynetdicom import AE

    ae = AE("HOSTILESCU")
    ae.requested_contexts = _requested_contexts()
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    assoc = ae.associate("127.0.0.1", node.port, ae_title=node.ae_title)
    assert assoc.is_established, "the node did not accept the association"
    try:
        yield assoc
    finally:
        if assoc.is_established:
            assoc.release()
        ae.shutdown()


def stored_data_set(node: NodeProcess, sop_instance: str) -> bytes | None:
    """The data set bytes of the stored file (after its file meta), or None if not indexed."""
    import sqlite3

    from pynetdicom.dsutils import split_dataset

    conn = sqlite3.connect(node.storage / "index.sqlite")
    try:
        row = conn.execute("SELECT path FROM instances WHERE sop_instance_uid = ?", [sop_instance]).fetchone()
    finally:
        conn.close()
    if row is None:
        return None
    path = node.storage / row[0]
    _, offset = split_dataset(path)
    return path.read_bytes()[offset:]


def stored_path(node: NodeProcess, sop_instance: str) -> Path:
    import sqlite3

    conn = sqlite3.connect(node.storage / "index.sqlite")
    try:
        return node.storage / conn.execute("SELECT path FROM instances WHERE sop_instance_uid = ?",
                                           [sop_instance]).fetchone()[0]
    finally:
        conn.close()


def files_named(node: NodeProcess, sop_instance: str) -> list[Path]:
    return [p for p in node.storage.rglob(f"*{sop_instance}*") if p.is_file()]


def echoscu_ok(node: NodeProcess) -> tuple[bool, str]:
    proc = run(["echoscu", "-to", "10", "-ta", "10", "-td", "10", "-aec", node.ae_title, "127.0.0.1", node.port],
               timeout=40)
    return proc.returncode == 0, proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def node(tmp_path_factory, dcmtk):
    n = NodeProcess(tmp_path_factory.mktemp("hostile-node"),
                    extra_toml="[series]\nstable_seconds = 3600\n").start()
    yield n
    n.stop()


def test_hostile_instances_interleaved_on_one_association(node, tmp_path):
    cases = hostile_cases(tmp_path)
    before = node.index_count()
    statuses: dict[str, Any] = {}
    with association(node) as assoc, chunked_sending():
        for case in cases:
            rsp = assoc.send_c_store(case.path)
            assert "Status" in rsp, f"{case.name}: no C-STORE response (association {assoc.is_established})"
            statuses[case.name] = rsp
        # the association itself survived all of it
        assert assoc.send_c_echo().Status == 0x0000
    assert node.proc.poll() is None, "the node process died"

    wrong = {c.name: f"0x{statuses[c.name].Status:04X} (expected 0x{c.expected:04X})"
             for c in cases if statuses[c.name].Status != c.expected}
    assert not wrong, wrong

    good = [c for c in cases if c.expected == 0]
    bad = [c for c in cases if c.expected != 0]
    assert node.index_count() == before + len(good)
    for c in good:  # indexed and stored exactly as received, and readable by DCMTK
        assert stored_data_set(node, c.sop_instance) == c.body, f"{c.name}: stored bytes differ from those sent"
        readable, err = dcmtk_reads(stored_path(node, c.sop_instance))
        assert readable, (c.name, err)
    rejected = {e.get("affected_sop_instance_uid"): e for e in node.events("store.rejected")}
    for c in bad:  # not indexed, no file anywhere (not even a staged one), a clear log line
        for uid in {c.sop_instance, c.data_set_sop} - {""}:
            assert stored_data_set(node, uid) is None, c.name
            assert not files_named(node, uid), c.name
        event = rejected.get(c.sop_instance)
        assert event is not None, f"{c.name}: no store.rejected line"
        assert event["status"] == f"0x{c.expected:04X}" and event["level"] == "warning", event
        assert c.reason_has in event["reason"] and len(event["reason"]) > 10, event
        assert statuses[c.name].get("ErrorComment"), f"{c.name}: no ErrorComment in the response"
    assert not list((node.storage / "tmp").iterdir()), "staged files left behind"
    assert not node.events("unexpected error while storing")
    ok, out = echoscu_ok(node)
    assert ok, out


def test_c_find_returns_the_odd_character_set_instances(node, tmp_path):
    from pynetdicom import AE

    cases = [c for c in hostile_cases(tmp_path) if c.name.startswith("good_charset")]
    with association(node) as assoc, chunked_sending():
        for c in cases:
            assert assoc.send_c_store(c.path).Status == 0x0000, c.name
    ae = AE("HOSTILESCU")
    ae.add_requested_context(PATIENT_ROOT_FIND)
    assoc = ae.associate("127.0.0.1", node.port, ae_title=node.ae_title)
    assert assoc.is_established
    # each name also matched by a wildcard on its non-ASCII part, sent in the instance's own character set
    name_keys = {"good_charset_latin1": ("Müller*", "ISO_IR 100"),
                 "good_charset_iso2022_jp": ("*山田*", ["", "ISO 2022 IR 87"]),
                 "good_charset_gb18030": ("*王^小东", "GB18030"), "good_charset_utf8": ("Łukasz^Żół*", "ISO_IR 192")}
    try:
        for c in cases:
            for name_key, charset in [("", None), name_keys[c.name]]:
                query = Dataset()
                if charset:
                    query.SpecificCharacterSet = charset
                query.QueryRetrieveLevel = "PATIENT"
                query.PatientID = c.patient_id
                query.PatientName = name_key
                answers = [(status.Status, ident) for status, ident in assoc.send_c_find(query, PATIENT_ROOT_FIND)]
                assert answers and answers[-1][0] == 0x0000, (c.name, name_key, answers)
                matches = [ident for status, ident in answers if status == 0xFF00]
                assert len(matches) == 1, (c.name, name_key, matches)
                assert str(matches[0].PatientName) == c.patient_name, (c.name, name_key)
    finally:
        assoc.release()
        ae.shutdown()
    assert node.proc.poll() is None


def test_huge_declared_dimensions_are_refused(node, tmp_path):
    study, series = synthetic_uid("huge", tmp_path), synthetic_uid("huge", tmp_path, "series")
    good = _instance(study, series, 1)
    huge = _instance(study, series, 2)  # 16 x 16 pixels
    huge.Rows = huge.Columns = 65535
    after = _instance(study, series, 3)
    paths = [raw_file(tmp_path / f"{i}.dcm", MRImageStorage, str(ds.SOPInstanceUID), ExplicitVRLittleEndian,
                      encode_body(ds, ExplicitVRLittleEndian)) for i, ds in enumerate((good, huge, after))]
    with association(node) as assoc, chunked_sending():
        statuses = [assoc.send_c_store(p).Status for p in paths]
    assert statuses[0] == 0x0000 and statuses[2] == 0x0000  # the good ones around it are kept
    assert node.proc.poll() is None
    assert statuses[1] in FAILURE_STATUSES, f"huge image answered 0x{statuses[1]:04X}"
    assert stored_data_set(node, str(huge.SOPInstanceUID)) is None


def test_data_set_cut_inside_an_element_header_is_refused_over_the_network(node, tmp_path):
    study, series = synthetic_uid("cut", tmp_path), synthetic_uid("cut", tmp_path, "series")
    good, cut, after = (_instance(study, series, n) for n in (1, 2, 3))
    bodies = [encode_body(ds, ExplicitVRLittleEndian) for ds in (good, cut, after)]
    bodies[1] = bodies[1][:bodies[1].rindex(b"\xe0\x7f\x10\x00OW") + 4]
    paths = [raw_file(tmp_path / f"{i}.dcm", MRImageStorage, str(ds.SOPInstanceUID), ExplicitVRLittleEndian, body)
             for i, (ds, body) in enumerate(zip((good, cut, after), bodies, strict=True))]
    with association(node) as assoc, chunked_sending():
        statuses = [assoc.send_c_store(p).Status for p in paths]
    assert statuses[0] == 0x0000 and statuses[2] == 0x0000
    assert statuses[1] == CANNOT_UNDERSTAND_MALFORMED, f"a data set without its Pixel Data answered 0x{statuses[1]:04X}"
    assert stored_data_set(node, str(cut.SOPInstanceUID)) is None


def test_scu_instance_with_undefined_length_sequences_is_stored(node, tmp_path):
    import pydicom

    ds = sample_dataset(f"undef-net-{tmp_path.name}", undefined_sequences=True)
    path = raw_file(tmp_path / "undef.dcm", str(ds.SOPClassUID), str(ds.SOPInstanceUID), ExplicitVRLittleEndian,
                    encode_body(ds, ExplicitVRLittleEndian))
    with association(node) as assoc:
        status = assoc.send_c_store(pydicom.dcmread(path))  # pynetdicom encodes it; lengths stay undefined
    assert status.Status == 0x0000, f"0x{status.Status:04X} {status.get('ErrorComment')}"
    assert stored_data_set(node, str(ds.SOPInstanceUID)) is not None


# =====================================================================================
# Part 3: raw PDUs
# =====================================================================================

APP_CONTEXT = b"1.2.840.10008.3.1.1.1"
IMPLICIT_TS = str(ImplicitVRLittleEndian).encode()
EXPLICIT_TS = str(ExplicitVRLittleEndian).encode()
PDU_NAMES = {1: "A-ASSOCIATE-RQ", 2: "A-ASSOCIATE-AC", 3: "A-ASSOCIATE-RJ", 4: "P-DATA-TF", 5: "A-RELEASE-RQ",
             6: "A-RELEASE-RP", 7: "A-ABORT"}
# presentation contexts of the raw peer: id -> (abstract syntax, transfer syntax)
RAW_CONTEXTS = {1: (VERIFICATION, IMPLICIT_TS), 3: (str(MRImageStorage), EXPLICIT_TS),
                5: (str(MRImageStorage), IMPLICIT_TS)}


def _item(item_type: int, payload: bytes, length: int | None = None) -> bytes:
    return struct.pack(">BBH", item_type, 0, len(payload) if length is None else length) + payload


def _pdu(pdu_type: int, payload: bytes, length: int | None = None) -> bytes:
    return struct.pack(">BBI", pdu_type, 0, len(payload) if length is None else length) + payload


def associate_rq_items() -> list[bytes]:
    """The variable items of a valid A-ASSOCIATE-RQ (application context, contexts, user info)."""
    items = [_item(0x10, APP_CONTEXT)]
    for ctx_id, (abstract, ts) in RAW_CONTEXTS.items():
        items.append(_item(0x20, bytes([ctx_id, 0, 0, 0]) + _item(0x30, abstract.encode()) + _item(0x40, ts)))
    user = (_item(0x51, struct.pack(">I", 16384)) + _item(0x52, b"1.2.826.0.1.3680043.8.498.77")
            + _item(0x55, b"RAWFUZZ_1"))
    items.append(_item(0x50, user))
    return items


def associate_rq(called: bytes = b"PINN_NODE", calling: bytes = b"RAWFUZZ", items: list[bytes] | None = None,
                 version: int = 1) -> bytes:
    head = struct.pack(">HH", version, 0) + called.ljust(16)[:16] + calling.ljust(16)[:16] + b"\x00" * 32
    return _pdu(1, head + b"".join(associate_rq_items() if items is None else items))


def _ui(uid: str) -> bytes:
    raw = uid.encode()
    return raw + b"\x00" * (len(raw) % 2)


def command_set(elements: list[tuple[int, bytes]]) -> bytes:
    """An implicit VR little endian DIMSE command set with its group length."""
    body = b"".join(struct.pack("<HHI", 0, el, len(v)) + v for el, v in elements)
    return struct.pack("<HHII", 0, 0, 4, len(body)) + body


def echo_rq(msg_id: int = 1) -> bytes:
    return command_set([(0x0002, _ui(VERIFICATION)), (0x0100, struct.pack("<H", 0x0030)),
                        (0x0110, struct.pack("<H", msg_id)), (0x0800, struct.pack("<H", 0x0101))])


def store_rq(sop_class: str, sop_instance: str, msg_id: int = 1) -> bytes:
    return command_set([(0x0002, _ui(sop_class)), (0x0100, struct.pack("<H", 0x0001)),
                        (0x0110, struct.pack("<H", msg_id)), (0x0700, struct.pack("<H", 0)),
                        (0x0800, struct.pack("<H", 0x0000)), (0x1000, _ui(sop_instance))])


def pdv(ctx_id: int, control: int, data: bytes, length: int | None = None) -> bytes:
    return struct.pack(">IBB", len(data) + 2 if length is None else length, ctx_id, control) + data


def p_data(*pdvs: bytes, length: int | None = None) -> bytes:
    return _pdu(4, b"".join(pdvs), length)


@dataclasses.dataclass
class PduCase:
    family: str
    name: str
    data: bytes
    associate_first: bool = False  # send a valid A-ASSOCIATE-RQ and read the AC before ``data``
    expects_reply: bool = False  # the node should answer something before we stop sending
    store: tuple[str, bytes] | None = None  # (SOP instance UID, data set) if ``data`` carries a C-STORE


def _mutate_bytes(rng: random.Random, data: bytes, n_ops: int | None = None) -> bytes:
    buf = bytearray(data)
    for _ in range(n_ops or rng.randint(1, 3)):
        kind = rng.choice(["flip", "flip", "truncate", "insert", "delete", "overwrite"])
        n = len(buf)
        if kind == "flip" and n:
            buf[rng.randrange(n)] ^= 1 << rng.randrange(8)
        elif kind == "truncate":
            del buf[rng.randrange(n + 1):]
        elif kind == "insert":
            p = rng.randrange(n + 1)
            buf[p:p] = rng.randbytes(rng.randint(1, 32))
        elif kind == "delete" and n:
            p = rng.randrange(n)
            del buf[p:p + rng.randint(1, 32)]
        elif kind == "overwrite" and n:
            p = rng.randrange(n)
            chunk = rng.randbytes(rng.randint(1, 8))
            buf[p:p + len(chunk)] = chunk
    return bytes(buf)


def _length(rng: random.Random, true: int, bits: int) -> int:
    return rng.choice([0, 1, 2, true - 1, true + 1, true + rng.randint(2, 5000), (1 << bits) - 1,
                       rng.randrange(1 << bits)]) & ((1 << bits) - 1)


def bytes_case(rng: random.Random, i: int) -> PduCase:
    choice = rng.randrange(6)
    if choice == 0:
        return PduCase("bytes", "random", rng.randbytes(rng.randint(1, 4096)))
    if choice == 1:  # a known PDU type with a random length and body
        t = rng.randint(1, 7)
        body = rng.randbytes(rng.randint(0, 600))
        return PduCase("bytes", f"type{t}_random_body", _pdu(t, body, _length(rng, len(body), 32)))
    if choice == 2:  # an unknown PDU type
        return PduCase("bytes", "unknown_type", _pdu(rng.choice([0, 8, 0x10, 0x7F, 0xFF]), rng.randbytes(20)))
    if choice == 3:  # a huge declared length and a little data
        return PduCase("bytes", "huge_length", _pdu(rng.randint(1, 7), rng.randbytes(100), 0xFFFFFFF0))
    if choice == 4:  # many tiny PDUs in a row
        return PduCase("bytes", "pdu_storm", b"".join(_pdu(rng.randint(1, 7), rng.randbytes(rng.randint(0, 8)))
                                                     for _ in range(rng.randint(2, 200))))
    return PduCase("bytes", "text_protocol", rng.choice([b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
                                                         b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(200),
                                                         b"SSH-2.0-OpenSSH_9.0\r\n"]))


def associate_case(rng: random.Random, i: int) -> PduCase:
    items = associate_rq_items()
    choice = rng.randrange(9)
    if choice == 0:  # the PDU length disagrees with the content
        valid = associate_rq()
        return PduCase("associate", "pdu_length", _pdu(1, valid[6:], _length(rng, len(valid) - 6, 32)))
    if choice == 1:  # an item or sub-item length field corrupted
        k = rng.randrange(len(items))
        item = bytearray(items[k])
        # the item's own header, or its first sub-item's (abstract syntax / maximum length)
        offsets = [0] + ([8] if items[k][0] == 0x20 else [4] if items[k][0] == 0x50 else [])
        off = rng.choice(offsets)
        if off + 4 <= len(item):
            struct.pack_into(">H", item, off + 2, _length(rng, struct.unpack_from(">H", item, off + 2)[0], 16))
        items[k] = bytes(item)
        return PduCase("associate", "item_length", associate_rq(items=items))
    if choice == 2:  # item types replaced
        k = rng.randrange(len(items))
        items[k] = bytes([rng.choice([0x00, 0x21, 0x30, 0x40, 0x51, 0x5F, 0xFF])]) + items[k][1:]
        return PduCase("associate", "item_type", associate_rq(items=items))
    if choice == 3:  # random mutation of the whole PDU
        return PduCase("associate", "mutated", _mutate_bytes(rng, associate_rq()))
    if choice == 4:  # odd AE titles
        ae = rng.choice([b"", b"\x00" * 16, b"\xff" * 16, b"A\\B", b"\x1b$B;3\x1b(B", rng.randbytes(16)])
        return PduCase("associate", "ae_title", associate_rq(called=ae if rng.random() < 0.5 else b"PINN_NODE",
                                                             calling=ae), expects_reply=True)
    if choice == 5:  # many or odd presentation contexts
        ctx = [_item(0x20, bytes([rng.randrange(256), 0, 0, 0]) + _item(0x30, rng.choice(
            [b"", b"1.2.3", b"9" * 200, MRImageStorage.encode()])) + _item(0x40, rng.choice([b"", IMPLICIT_TS, b"x"])))
            for _ in range(rng.randint(0, 300))]
        return PduCase("associate", "contexts", associate_rq(items=[items[0], *ctx, items[-1]]), expects_reply=True)
    if choice == 6:  # user information sub-items: max length 0, user identity / role / extended negotiation junk
        user = _item(0x51, struct.pack(">I", rng.choice([0, 1, 0xFFFFFFFF])))
        user += _item(0x58, bytes([rng.randint(0, 6), rng.randint(0, 1)]) + struct.pack(">H", rng.randint(0, 0xFFFF))
                      + rng.randbytes(rng.randint(0, 40)))
        user += _item(0x54, struct.pack(">H", 0xFFFF) + rng.randbytes(10))
        user += _item(0x56, struct.pack(">H", 3) + b"1.2" + rng.randbytes(rng.randint(0, 12)))
        user += _item(0x53, rng.randbytes(rng.randint(0, 6)))
        return PduCase("associate", "user_info", associate_rq(items=[*items[:-1], _item(0x50, user)]))
    if choice == 7:  # protocol version / missing application context / no contexts at all
        kind = rng.randrange(3)
        rq = (associate_rq(version=rng.choice([0, 2, 0xFFFF])) if kind == 0 else
              associate_rq(items=items[1:]) if kind == 1 else associate_rq(items=[items[0], items[-1]]))
        return PduCase("associate", "version_or_missing_items", rq, expects_reply=True)
    # a valid request cut short
    valid = associate_rq()
    return PduCase("associate", "truncated", valid[:rng.randrange(len(valid))])


def pdata_case(rng: random.Random, i: int, store_bodies: list[Base] | None = None) -> PduCase:
    """Malformed traffic on an established association (contexts: RAW_CONTEXTS)."""
    echo = echo_rq(i + 1)
    choice = rng.randrange(11)
    if choice == 0:  # PDV length wrong
        return PduCase("pdata", "pdv_length", p_data(pdv(1, 3, echo, _length(rng, len(echo) + 2, 32))))
    if choice == 1:  # PDU length disagrees with the PDVs
        body = pdv(1, 3, echo)
        return PduCase("pdata", "pdu_length", p_data(body, length=_length(rng, len(body), 32)))
    if choice == 2:  # context not negotiated
        return PduCase("pdata", "unknown_context", p_data(pdv(rng.choice([0, 2, 7, 255]), 3, echo)), True)
    if choice == 3:  # message control header with reserved bits / wrong type
        return PduCase("pdata", "control_header", p_data(pdv(1, rng.choice([0, 2, 0xFC, 0xFF, 0x83]), echo)))
    if choice == 4:  # damaged command set
        return PduCase("pdata", "command_mutated", p_data(pdv(1, 3, _mutate_bytes(rng, echo))))
    if choice == 5:  # a data set fragment where a command is due
        return PduCase("pdata", "data_first", p_data(pdv(3, 2, rng.randbytes(rng.randint(0, 200)))))
    if choice == 6:  # no PDV at all / zero-length PDVs
        return PduCase("pdata", "empty", p_data(*[pdv(1, 3, b"", 0)] * rng.randint(0, 3)))
    if choice == 7:  # command announced with a data set that never completes
        cmd = store_rq(str(MRImageStorage), synthetic_uid("pdu-never", i))
        return PduCase("pdata", "unfinished_data_set",
                       p_data(pdv(3, 3, cmd)) + p_data(pdv(3, 0, rng.randbytes(rng.randint(0, 3000)))))
    if choice == 8:  # release / abort / a second association request with odd lengths
        t = rng.choice([1, 5, 6, 7])
        return PduCase("pdata", f"{PDU_NAMES[t]}_in_session", _pdu(t, rng.randbytes(rng.choice([0, 4, 10])),
                                                                    _length(rng, 4, 32)))
    if choice == 9:  # random bytes on the association
        return PduCase("pdata", "random", rng.randbytes(rng.randint(1, 2000)))
    # a complete C-STORE whose data set is a mutated valid one: must be answered, not crash
    tag = f"pdu-store-{FUZZ_SEED}-{rng.randrange(1 << 30)}"
    ds = sample_dataset(tag)
    base = make_base(tag, ds, ExplicitVRLittleEndian if rng.random() < 0.5 else ImplicitVRLittleEndian)
    body = apply_ops(base, random_ops(rng, base))
    ctx = 3 if base.ts == str(ExplicitVRLittleEndian) else 5
    cmd = store_rq(base.sop_class, base.sop_instance, i + 1)
    split = rng.randint(0, len(body))
    data = p_data(pdv(ctx, 3, cmd)) + p_data(pdv(ctx, 0, body[:split]), pdv(ctx, 2, body[split:]))
    return PduCase("pdata", "store_mutated_data_set", data, expects_reply=True, store=(base.sop_instance, body))


PDU_FAMILIES = {"bytes": bytes_case, "associate": associate_case, "pdata": pdata_case}


def pdu_cases(family: str, count: int, seed: int = FUZZ_SEED) -> Iterator[PduCase]:
    for i in range(count):
        rng = random.Random(f"{seed}-{family}-{i}")  # each case reproducible on its own
        case = PDU_FAMILIES[family](rng, i)
        case.associate_first = family == "pdata"
        case.name = f"{family}#{i}:{case.name}"
        yield case


class PduStream:
    """Splits what the node sends into PDUs."""

    def __init__(self) -> None:
        self.buf = b""
        self.pdus: list[tuple[int, bytes]] = []

    def feed(self, data: bytes) -> None:
        self.buf += data
        while len(self.buf) >= 6:
            t, _, n = struct.unpack_from(">BBI", self.buf)
            if len(self.buf) < 6 + n:
                break
            self.pdus.append((t, self.buf[6:6 + n]))
            self.buf = self.buf[6 + n:]


def dimse_status(pdu_body: bytes) -> int | None:
    """The Status (0000,0900) of a command set carried whole in one P-DATA-TF, if any."""
    pos = 0
    while pos + 6 <= len(pdu_body):
        n, _, control = struct.unpack_from(">IBB", pdu_body, pos)
        data = pdu_body[pos + 6:pos + 4 + n]
        pos += 4 + n
        if control & 1:
            p = 0
            while p + 8 <= len(data):
                group, elem, length = struct.unpack_from("<HHI", data, p)
                if (group, elem) == (0, 0x0900) and length == 2:
                    return struct.unpack_from("<H", data, p + 8)[0]
                p += 8 + length
    return None


def run_pdu_case(port: int, case: PduCase, reply_wait_s: float = 5.0) -> dict[str, Any]:
    """Play one case; return what happened. 'hang' means the connection outlived the timeout."""
    result: dict[str, Any] = {"case": case.name, "replies": [], "status": None}
    stream = PduStream()
    with socket.create_connection(("127.0.0.1", port), timeout=CONNECTION_END_TIMEOUT_S) as sock:
        if case.associate_first:
            sock.sendall(associate_rq())
            while not stream.pdus:
                try:
                    chunk = sock.recv(65536)
                except socket.timeout:
                    result["outcome"] = "setup failed: no A-ASSOCIATE-AC"
                    return result
                if not chunk:
                    result["outcome"] = "setup failed: connection closed"
                    return result
                stream.feed(chunk)
            if stream.pdus[0][0] != 2:
                result["outcome"] = f"setup failed: {PDU_NAMES.get(stream.pdus[0][0])}"
                return result
            stream.pdus.clear()
        try:
            sock.sendall(case.data)
        except (BrokenPipeError, ConnectionResetError):
            result["outcome"] = "closed while sending"
            return result
        # wait briefly (longer where an answer is due) for the node to answer, then stop sending
        deadline = time.monotonic() + (reply_wait_s if case.expects_reply else 0.05)
        closed = False
        while time.monotonic() < deadline and not closed:
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                chunk = sock.recv(65536)
            except socket.timeout:
                break
            except ConnectionResetError:
                closed = True
                break
            if not chunk:
                closed = True
                break
            stream.feed(chunk)
            if case.expects_reply and stream.pdus:
                break
        if not closed:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_WR)
            sock.settimeout(CONNECTION_END_TIMEOUT_S)
            t0 = time.monotonic()
            try:
                while True:
                    chunk = sock.recv(65536)
                    if not chunk:
                        break
                    stream.feed(chunk)
                    if time.monotonic() - t0 > CONNECTION_END_TIMEOUT_S:
                        raise socket.timeout
            except socket.timeout:
                result["outcome"] = "hang"
                return result
            except ConnectionResetError:
                pass
    result["replies"] = [PDU_NAMES.get(t, f"0x{t:02X}") for t, _ in stream.pdus]
    for t, body in stream.pdus:
        if t == 4 and result["status"] is None:
            result["status"] = dimse_status(body)
    first = result["replies"][0] if result["replies"] else None
    result["outcome"] = (
        f"answered status 0x{result['status']:04X}" if result["status"] is not None else
        {"A-ABORT": "aborted", "A-ASSOCIATE-RJ": "rejected", "A-ASSOCIATE-AC": "accepted",
         "A-RELEASE-RP": "released"}.get(first, f"replied {first}" if first else "closed"))
    return result


def check_node_after_pdu_cases(node: NodeProcess, results: list[dict], stores_before: int) -> None:
    """No hang, a living node, and only instances it acknowledged stored, byte for byte."""
    hangs = [r["case"] for r in results if r["outcome"] == "hang" or r["outcome"].startswith("setup failed")]
    assert not hangs, hangs
    assert node.proc.poll() is None, "the node process died"
    acknowledged = {}
    for r in results:
        if r.get("store") and r["status"] is not None:
            assert r["status"] == 0 or r["status"] in FAILURE_STATUSES, r
            if r["status"] == 0:
                acknowledged[r["store"][0]] = r["store"][1]
    assert node.index_count() == stores_before + len(acknowledged)
    for sop, body in acknowledged.items():
        assert stored_data_set(node, sop) == body
    assert not node.events("unexpected error while storing")


@pytest.fixture(scope="module")
def fuzz_node(tmp_path_factory, dcmtk):
    # A short ACSE timeout and more association slots: every closed raw connection holds a slot
    # for acse_timeout_s (see test_closed_connections_do_not_use_up_association_slots), which
    # would otherwise turn this many cases into "Local Limit Exceeded" for echoscu.
    n = NodeProcess(tmp_path_factory.mktemp("fuzz-node"), extra_toml=(
        "acse_timeout_s = 2\nnetwork_timeout_s = 3\nmax_associations = 128\n"
        "[series]\nstable_seconds = 3600\n")).start()
    yield n
    n.stop()


@pytest.mark.parametrize("family", list(PDU_FAMILIES))
def test_raw_pdu_fuzz(fuzz_node, family):
    stores_before = fuzz_node.index_count()
    results = []
    for case in pdu_cases(family, FUZZ_PDU_CASES):
        result = run_pdu_case(fuzz_node.port, case)
        result["store"] = case.store
        results.append(result)
        assert result["outcome"] != "hang", f"{case.name}: connection neither answered nor closed"
        ok, out = echoscu_ok(fuzz_node)
        assert ok, f"C-ECHO failed after {case.name} ({result['outcome']}):\n{out}"
    check_node_after_pdu_cases(fuzz_node, results, stores_before)
    outcomes = {r["outcome"] for r in results}
    assert outcomes - {"closed"}, "the node never answered anything: the cases did not reach it"


def test_raw_valid_echo_is_answered(fuzz_node):
    """The raw peer itself works: a well-formed C-ECHO on a raw association gets status 0x0000."""
    result = run_pdu_case(fuzz_node.port, PduCase("pdata", "valid_echo", p_data(pdv(1, 3, echo_rq(9))),
                                                  associate_first=True, expects_reply=True))
    assert result["outcome"] == "answered status 0x0000", result


def test_stalled_partial_pdus_are_dropped_and_do_not_lock_out_others(node_factory):
    n = node_factory("stall", extra_toml="acse_timeout_s = 1\nnetwork_timeout_s = 1\n").start()
    stalled = []
    try:
        for _ in range(16):  # max_associations
            sock = socket.create_connection(("127.0.0.1", n.port), timeout=5)
            sock.sendall(associate_rq()[:40])
            stalled.append(sock)
        time.sleep(3)  # well past both timeouts
        ok, out = echoscu_ok(n)
        stalled[0].settimeout(1)
        try:
            dropped = stalled[0].recv(65536) in (b"", b"\x07\x00")
        except socket.timeout:
            dropped = False
        except ConnectionResetError:
            dropped = True
        assert dropped, "a peer stalled in the middle of a PDU is still connected after 3 s"
        assert ok, out
    finally:
        for sock in stalled:
            sock.close()


@pytest.mark.xfail(strict=True, reason=(
    "BUG: connections that end before an association is established keep their association slot "
    "until acse_timeout_s (30 s): pynetdicom's acceptor thread waits for the A-ASSOCIATE-RQ for "
    "the full ACSE timeout even after the peer closed the socket. 16 (max_associations) plain TCP "
    "connects or garbage connections make the node answer every real peer 'Local Limit Exceeded' "
    "for 30 s; no authentication is needed (allowed_calling_aes is checked later)"))
def test_closed_connections_do_not_use_up_association_slots(node_factory):
    n = node_factory("slots").start()
    for i in range(20):
        if i % 2:
            with socket.create_connection(("127.0.0.1", n.port)):
                pass
        else:
            run_pdu_case(n.port, PduCase("bytes", "garbage", random.Random(i).randbytes(64)))
    time.sleep(0.5)
    ok, out = echoscu_ok(n)
    assert ok, out


def test_oversized_pdu_is_refused_without_buffering(node):
    # the default network timeout (60 s): with a short one the node's idle timeout could close it in time
    with socket.create_connection(("127.0.0.1", node.port), timeout=10) as sock:
        sock.sendall(struct.pack(">BBI", 1, 0, 0xFFFFFFF0))
        answered = False
        try:
            for _ in range(8):  # 8 MiB, far beyond any sane A-ASSOCIATE-RQ
                sock.sendall(bytes(1 << 20))
            sock.settimeout(2)
            answered = sock.recv(65536)[:1] in (b"", b"\x03", b"\x07")  # closed, rejected or aborted
        except (BrokenPipeError, ConnectionResetError):
            answered = True
        except socket.timeout:
            answered = False
    assert answered, "the node kept reading a 4 GiB A-ASSOCIATE-RQ"
