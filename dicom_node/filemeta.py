"""Part 10 file meta information (PS3.10 7.1) for received instances, on the C-STORE hot path.

Group 0002 is always Explicit VR Little Endian with a fixed set of elements, so it is
encoded directly: ~20 us instead of ~0.5 ms through pydicom's generic writer, per
received instance. ``tests/test_filemeta.py`` checks the bytes against pydicom's
``write_file_meta_info``.
"""

from __future__ import annotations

import struct

from pydicom.uid import generate_uid

from dicom_node import __version__

# Identifies this software as the writer of the files (deterministic, pydicom's UID root).
IMPLEMENTATION_CLASS_UID = str(generate_uid(prefix="1.2.826.0.1.3680043.8.498.", entropy_srcs=["pinn-dicom-node"]))
IMPLEMENTATION_VERSION_NAME = f"PINN_NODE_{__version__}"[:16]

PREAMBLE = b"\x00" * 128 + b"DICM"


def _element(tag_element: int, vr: bytes, value: bytes) -> bytes:
    if vr == b"OB":
        return struct.pack("<HH2s2xI", 0x0002, tag_element, vr, len(value)) + value
    return struct.pack("<HH2sH", 0x0002, tag_element, vr, len(value)) + value


def _ui(value: str) -> bytes:
    raw = value.encode("ascii")
    return raw + b"\x00" if len(raw) % 2 else raw


def _text(value: str) -> bytes:
    raw = value.strip().encode("ascii")
    return raw + b" " if len(raw) % 2 else raw


def encode_file_meta(sop_class_uid: str, sop_instance_uid: str, transfer_syntax_uid: str,
                     source_ae_title: str | None = None) -> bytes:
    """Preamble, 'DICM' and the file meta group for one instance."""
    body = b"".join([
        _element(0x0001, b"OB", b"\x00\x01"),
        _element(0x0002, b"UI", _ui(sop_class_uid)),
        _element(0x0003, b"UI", _ui(sop_instance_uid)),
        _element(0x0010, b"UI", _ui(transfer_syntax_uid)),
        _element(0x0012, b"UI", _ui(IMPLEMENTATION_CLASS_UID)),
        _element(0x0013, b"SH", _text(IMPLEMENTATION_VERSION_NAME)),
        *([_element(0x0016, b"AE", _text(source_ae_title))] if source_ae_title and source_ae_title.strip() else []),
    ])
    return PREAMBLE + _element(0x0000, b"UL", struct.pack("<I", len(body))) + body


def file_meta_dataset(sop_class_uid: str, sop_instance_uid: str, transfer_syntax_uid: str = "1.2.840.10008.1.2.1"):
    """The same file meta as a pydicom ``FileMetaDataset``, for files the node writes with pydicom."""
    from pydicom.dataset import FileMetaDataset  # noqa: PLC0415

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class_uid
    meta.MediaStorageSOPInstanceUID = sop_instance_uid
    meta.TransferSyntaxUID = transfer_syntax_uid
    meta.ImplementationClassUID = IMPLEMENTATION_CLASS_UID
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
    return meta
