from __future__ import annotations

import zlib

import pytest
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid

from dicom_node.instance import InvalidInstance, is_valid_uid, parse_instance
from dicom_node.status import (
    CANNOT_UNDERSTAND_INVALID_UID,
    CANNOT_UNDERSTAND_MALFORMED,
    CANNOT_UNDERSTAND_MISSING_UID,
    DATA_SET_DOES_NOT_MATCH_SOP_CLASS,
)
from dicom_node.synthetic import mr_image


def encode(ds, ts=ExplicitVRLittleEndian) -> bytes:
    buf = DicomBytesIO()
    buf.is_implicit_VR = ts == ImplicitVRLittleEndian
    buf.is_little_endian = ts != ExplicitVRBigEndian
    write_dataset(buf, ds)
    return buf.getvalue()


def image(**kw):
    return mr_image(study_uid=generate_uid(), series_uid=generate_uid(), **kw)


@pytest.mark.parametrize("ts", [ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian])
def test_parse_valid(ts):
    ds = image(series_description="T2prep", series_number=7, study_time="1015")
    info = parse_instance(encode(ds, ts), ts, str(ds.SOPClassUID), str(ds.SOPInstanceUID))
    assert info.sop_instance_uid == ds.SOPInstanceUID
    assert info.series_uid == ds.SeriesInstanceUID and info.study_uid == ds.StudyInstanceUID
    assert info.attributes["SeriesDescription"] == "T2prep"
    assert info.attributes["SeriesNumber"] == 7
    assert info.attributes["PatientName"] == "Synthetic^Patient"
    assert info.attributes["StudyTime"] == "101500.000000"
    assert len(info.content_sha256) == 64


def test_parse_deflated():
    ds = image()
    raw = encode(ds)
    comp = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    deflated = comp.compress(raw) + comp.flush()
    info = parse_instance(deflated, "1.2.840.10008.1.2.1.99")
    assert info.sop_instance_uid == ds.SOPInstanceUID


def test_character_set_is_decoded():
    ds = image(patient_name="Müller^Jürgen")
    ds.SpecificCharacterSet = "ISO_IR 100"
    info = parse_instance(encode(ds), ExplicitVRLittleEndian)
    assert info.attributes["PatientName"] == "Müller^Jürgen"


@pytest.mark.parametrize("cut", [1, 100, 5000])
def test_truncated_is_refused(cut):
    raw = encode(image())
    with pytest.raises(InvalidInstance) as info:
        parse_instance(raw[:-cut], ExplicitVRLittleEndian)
    assert info.value.status == CANNOT_UNDERSTAND_MALFORMED


def test_garbage_is_refused():
    with pytest.raises(InvalidInstance) as info:
        parse_instance(b"\x08\x00\x18\x00UI\xff\xffgarbage" * 5, ExplicitVRLittleEndian)
    assert info.value.status == CANNOT_UNDERSTAND_MALFORMED
    with pytest.raises(InvalidInstance):
        parse_instance(b"", ExplicitVRLittleEndian)


@pytest.mark.parametrize("keyword", ["StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"])
def test_missing_uid(keyword):
    ds = image()
    delattr(ds, keyword)
    with pytest.raises(InvalidInstance) as info:
        parse_instance(encode(ds), ExplicitVRLittleEndian)
    assert info.value.status == CANNOT_UNDERSTAND_MISSING_UID and keyword in info.value.reason


@pytest.mark.parametrize("bad", ["1.2.03.4", "1..2", "abc", "1.2." + "3" * 70])
def test_invalid_uid(bad):
    ds = image()
    ds["SeriesInstanceUID"].value = bad
    with pytest.raises(InvalidInstance) as info:
        parse_instance(encode(ds), ExplicitVRLittleEndian)
    assert info.value.status == CANNOT_UNDERSTAND_INVALID_UID


def test_sop_class_mismatch():
    ds = image()
    with pytest.raises(InvalidInstance) as info:
        parse_instance(encode(ds), ExplicitVRLittleEndian, affected_sop_class="1.2.840.10008.5.1.4.1.1.7")
    assert info.value.status == DATA_SET_DOES_NOT_MATCH_SOP_CLASS


def test_uid_rules():
    assert is_valid_uid("1.2.840.10008.1.2.1")
    assert is_valid_uid("2.25.0")
    assert not is_valid_uid("1.02")
    assert not is_valid_uid("1")
    assert not is_valid_uid("1.2.3.")
