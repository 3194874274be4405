"""Synthetic DICOM instances for tests, benchmarks and demos (no patient data).

Only plain, valid objects; the numerical cardiac phantom lives in ``pinn_engine.phantom``.
"""

from __future__ import annotations

import datetime as _dt
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian, MRImageStorage, generate_uid

from dicom_node import __version__


# Deterministic UIDs for synthetic objects use pydicom's own root with entropy sources.
def synthetic_uid(*parts: Any) -> UID:
    return generate_uid(prefix="1.2.826.0.1.3680043.8.498.", entropy_srcs=[str(p) for p in parts])


def mr_image(
    *,
    study_uid: str,
    series_uid: str,
    sop_instance_uid: str | None = None,
    instance_number: int = 1,
    rows: int = 64,
    columns: int = 64,
    pixels: np.ndarray | None = None,
    patient_id: str = "SYNTH001",
    patient_name: str = "Synthetic^Patient",
    study_date: str | None = None,
    study_time: str = "101500",
    series_number: int = 1,
    series_description: str = "synthetic MR",
    modality: str = "MR",
    transfer_syntax: UID = ExplicitVRLittleEndian,
    rng: np.random.Generator | None = None,
    **extra: Any,
) -> Dataset:
    """One valid MR Image Storage instance with random or given 16-bit pixels."""
    rng = rng or np.random.default_rng(instance_number)
    sop = sop_instance_uid or generate_uid()
    ds = Dataset()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = sop
    meta.TransferSyntaxUID = transfer_syntax
    meta.ImplementationVersionName = f"PINN_NODE_{__version__}"[:16]
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = MRImageStorage
    ds.SOPInstanceUID = sop
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.PatientID = patient_id
    ds.PatientName = patient_name
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.StudyDate = study_date or _dt.date.today().strftime("%Y%m%d")
    ds.StudyTime = study_time
    ds.AccessionNumber = "ACC0001"
    ds.StudyID = "1"
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = "synthetic cardiac MR"
    ds.Modality = modality
    ds.SeriesNumber = series_number
    ds.SeriesDescription = series_description
    ds.InstanceNumber = instance_number
    ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "NONE"]
    ds.Rows, ds.Columns = rows, columns
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    if pixels is None:
        pixels = rng.integers(0, 4000, (rows, columns), dtype=np.uint16)
    ds.PixelData = np.ascontiguousarray(pixels, dtype=np.uint16).tobytes()
    for key, value in extra.items():
        setattr(ds, key, value)
    return ds


def write_mr_series(
    out_dir: Path, count: int, *, rows: int = 64, columns: int = 64, seed: int = 0, **kwargs: Any
) -> list[Path]:
    """Write ``count`` instances of one new MR series into ``out_dir``; return the paths in order."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    study_uid = kwargs.pop("study_uid", None) or generate_uid()
    series_uid = kwargs.pop("series_uid", None) or generate_uid()
    rng = np.random.default_rng(seed)
    paths = []
    for n in range(1, count + 1):
        ds = mr_image(study_uid=study_uid, series_uid=series_uid, instance_number=n, rows=rows, columns=columns,
                      rng=rng, **kwargs)
        path = out_dir / f"IM{n:05d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths
