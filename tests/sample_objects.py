"""Minimal instances of the storage SOP classes a cardiac MR study contains."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    generate_uid,
)

from dicom_node.synthetic import mr_image

SOP_CLASSES = {
    "mr": "1.2.840.10008.5.1.4.1.1.4",
    "enhanced_mr": "1.2.840.10008.5.1.4.1.1.4.1",
    "sc": "1.2.840.10008.5.1.4.1.1.7",
    "mf_true_colour_sc": "1.2.840.10008.5.1.4.1.1.7.4",
    "comprehensive_sr": "1.2.840.10008.5.1.4.1.1.88.33",
    "enhanced_sr": "1.2.840.10008.5.1.4.1.1.88.22",
    "seg": "1.2.840.10008.5.1.4.1.1.66.4",
    "parametric_map": "1.2.840.10008.5.1.4.1.1.30",
    "pdf": "1.2.840.10008.5.1.4.1.1.104.1",
    "raw_data": "1.2.840.10008.5.1.4.1.1.66",
}


def _retarget(ds: Dataset, sop_class: str) -> Dataset:
    ds.SOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    return ds


def make_object(kind: str, study_uid: str, series_uid: str, n: int = 1) -> Dataset:
    ds = mr_image(study_uid=study_uid, series_uid=series_uid, instance_number=n, rows=16, columns=16)
    sop = SOP_CLASSES[kind]
    if kind == "enhanced_mr":
        ds.NumberOfFrames = 2
        ds.PixelData = np.arange(2 * 16 * 16, dtype=np.uint16).tobytes()
    elif kind in ("sc", "mf_true_colour_sc"):
        ds.Modality = "OT"
        ds.SamplesPerPixel = 3
        ds.PhotometricInterpretation = "RGB"
        ds.PlanarConfiguration = 0
        ds.BitsAllocated = ds.BitsStored = 8
        ds.HighBit = 7
        ds.PixelData = np.zeros((16, 16, 3), np.uint8).tobytes()
    elif kind in ("comprehensive_sr", "enhanced_sr", "pdf", "raw_data"):
        for kw in ("Rows", "Columns", "SamplesPerPixel", "PhotometricInterpretation", "BitsAllocated", "BitsStored",
                   "HighBit", "PixelRepresentation", "PixelData"):
            delattr(ds, kw)
        if kind.endswith("sr"):
            ds.Modality = "SR"
            ds.ValueType = "CONTAINER"
            ds.ContinuityOfContent = "SEPARATE"
        elif kind == "pdf":
            ds.Modality = "DOC"
            ds.MIMETypeOfEncapsulatedDocument = "application/pdf"
            ds.EncapsulatedDocument = b"%PDF-1.4\n%%EOF\n"
        else:
            ds.CreatorVersionUID = generate_uid()
    elif kind == "seg":
        ds.Modality = "SEG"
        ds.BitsAllocated = ds.BitsStored = 1
        ds.HighBit = 0
        ds.PixelData = np.packbits(np.ones(16 * 16, np.uint8)).tobytes()
    elif kind == "parametric_map":
        for kw in ("BitsStored", "HighBit", "PixelRepresentation", "PixelData"):
            delattr(ds, kw)
        ds.BitsAllocated = 32
        ds.FloatPixelData = np.linspace(0, 100, 16 * 16, dtype=np.float32).tobytes()
    return _retarget(ds, sop)


TRANSFER_SYNTAXES = {
    "explicit_le": ExplicitVRLittleEndian,
    "implicit_le": ImplicitVRLittleEndian,
    "explicit_be": ExplicitVRBigEndian,
    "deflated": DeflatedExplicitVRLittleEndian,
}


def write_study(out: Path) -> tuple[str, dict[str, Path]]:
    """One study: every SOP class above (explicit LE) + MR in each transfer syntax."""
    out.mkdir(parents=True, exist_ok=True)
    study = generate_uid()
    files: dict[str, Path] = {}
    for kind in SOP_CLASSES:
        ds = make_object(kind, study, generate_uid())
        files[kind] = out / f"{kind}.dcm"
        ds.save_as(files[kind], enforce_file_format=True)
    ts_series = generate_uid()
    for n, (name, ts) in enumerate(TRANSFER_SYNTAXES.items(), start=1):
        ds = make_object("mr", study, ts_series, n)
        ds.file_meta.TransferSyntaxUID = ts
        files[f"mr_{name}"] = out / f"mr_{name}.dcm"
        ds.save_as(files[f"mr_{name}"], enforce_file_format=True, implicit_vr=ts == ImplicitVRLittleEndian,
                   little_endian=ts != ExplicitVRBigEndian)
    return study, files
