from __future__ import annotations

import io

import pytest
from pydicom import dcmread
from pydicom.dataset import FileMetaDataset
from pydicom.filewriter import write_file_meta_info

from dicom_node.filemeta import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME, encode_file_meta


@pytest.mark.parametrize("ae", [None, "STORESCU", "ODD_AE", "A"])
@pytest.mark.parametrize("sop", ["1.2.840.10008.5.1.4.1.1.4", "1.2.840.10008.5.1.4.1.1.88.33"])
def test_identical_to_pydicom(ae, sop):
    inst, ts = "1.2.826.0.1.3680043.8.498.123456789", "1.2.840.10008.1.2.1"
    meta = FileMetaDataset()
    meta.FileMetaInformationVersion = b"\x00\x01"
    meta.MediaStorageSOPClassUID = sop
    meta.MediaStorageSOPInstanceUID = inst
    meta.TransferSyntaxUID = ts
    meta.ImplementationClassUID = IMPLEMENTATION_CLASS_UID
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
    if ae:
        meta.SourceApplicationEntityTitle = ae
    buf = io.BytesIO()
    buf.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(buf, meta, enforce_standard=True)
    ours = encode_file_meta(sop, inst, ts, ae)
    assert ours == buf.getvalue()
    parsed = dcmread(io.BytesIO(ours)).file_meta
    assert parsed.MediaStorageSOPInstanceUID == inst and parsed.TransferSyntaxUID == ts
