"""``dicom-node simulate``: the numerical phantom written as a realistic MR series + truth."""

from __future__ import annotations

import datetime as _dt
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage

from dicom_node import __version__
from dicom_node.filemeta import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from dicom_node.synthetic import synthetic_uid
from pinn_engine.phantom import Anatomy, T2Phantom, t2_phantom, with_oedema

# Short-axis geometry in patient coordinates (LPS): the LV long axis runs base -> apex
# towards patient left, anterior and inferior; image "up" is anterior.
LONG_AXIS = np.array([0.62, -0.47, -0.63])
LONG_AXIS /= np.linalg.norm(LONG_AXIS)
HEART_CENTRE_MM = np.array([20.0, 10.0, 60.0])


def sax_orientation(normal: np.ndarray = LONG_AXIS) -> tuple[np.ndarray, np.ndarray]:
    """(row, column) direction cosines: column = image down = posterior-ish, row x column = normal."""
    anterior = np.array([0.0, -1.0, 0.0])
    up = anterior - anterior.dot(normal) * normal
    col = -up / np.linalg.norm(up)
    row = np.cross(col, normal)
    return row / np.linalg.norm(row), col


def _format(v: float) -> str:
    return f"{v:.6f}".rstrip("0").rstrip(".")


def write_t2_series(phantom: T2Phantom, out: Path, seed: int, pixel_scale: float = 1.0,
                    patient_id: str = "PHANTOM01", series_number: int = 401) -> list[Path]:
    """One MR Image Storage instance per slice and preparation time."""
    out.mkdir(parents=True, exist_ok=True)
    study_uid = synthetic_uid("study", seed, patient_id)
    series_uid = synthetic_uid("t2prep-series", seed, patient_id, series_number)
    frame_uid = synthetic_uid("frame", seed, patient_id)
    row, col = sax_orientation()
    n_slices, n_echoes, rows, cols = phantom.images.shape
    dx = phantom.pixel_spacing_mm
    now = _dt.datetime(2026, 1, 15, 10, 30, 0)
    pixels = np.clip(np.rint(phantom.images * pixel_scale), 0, 65535).astype(np.uint16)
    paths = []
    for s in range(n_slices):
        centre = HEART_CENTRE_MM + (s - (n_slices - 1) / 2) * phantom.slice_spacing_mm * LONG_AXIS
        ipp = centre - (cols - 1) / 2 * dx * row - (rows - 1) / 2 * dx * col
        for e in range(n_echoes):
            n = s * n_echoes + e + 1
            sop = synthetic_uid("t2prep-instance", seed, patient_id, series_number, s, e)
            meta = FileMetaDataset()
            meta.MediaStorageSOPClassUID = MRImageStorage
            meta.MediaStorageSOPInstanceUID = sop
            meta.TransferSyntaxUID = ExplicitVRLittleEndian
            meta.ImplementationClassUID = IMPLEMENTATION_CLASS_UID
            meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
            ds = Dataset()
            ds.file_meta = meta
            ds.SpecificCharacterSet = "ISO_IR 192"
            ds.ImageType = ["ORIGINAL", "PRIMARY", "OTHER"]
            ds.SOPClassUID = MRImageStorage
            ds.SOPInstanceUID = sop
            ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = now.strftime("%Y%m%d")
            ds.StudyTime = ds.SeriesTime = now.strftime("%H%M%S")
            ds.AcquisitionTime = ds.ContentTime = (now + _dt.timedelta(seconds=12 * s + e)).strftime("%H%M%S")
            ds.AccessionNumber = f"SIM{seed:06d}"
            ds.Modality = "MR"
            ds.Manufacturer = "PINN node simulator"
            ds.ManufacturerModelName = "numerical phantom"
            ds.SoftwareVersions = f"dicom-node {__version__}"
            ds.InstitutionName = "Synthetic"
            ds.ReferringPhysicianName = ""
            ds.StudyDescription = "Cardiac MR (synthetic)"
            ds.SeriesDescription = "T2prep SSFP multi-echo SAX (synthetic)"
            ds.ProtocolName = "T2 map SAX"
            ds.PatientName = "Phantom^T2"
            ds.PatientID = patient_id
            ds.PatientBirthDate = "19800101"
            ds.PatientSex = "O"
            ds.PatientAge = "046Y"
            ds.PatientWeight = 75.0
            ds.BodyPartExamined = "HEART"
            ds.ScanningSequence = "GR"
            ds.SequenceVariant = ["SK", "SS"]
            ds.ScanOptions = ""
            ds.MRAcquisitionType = "2D"
            ds.SequenceName = f"T2prep{_format(phantom.te_ms[e])}"
            ds.SliceThickness = 8.0
            ds.RepetitionTime = 3.2
            ds.EchoTime = _format(phantom.te_ms[e])  # the T2-preparation duration
            ds.EchoTrainLength = 1
            ds.FlipAngle = 70.0
            ds.MagneticFieldStrength = 1.5
            ds.ImagingFrequency = 63.9
            ds.ImagedNucleus = "1H"
            ds.NumberOfAverages = 1
            ds.PatientPosition = "HFS"
            ds.StudyInstanceUID = study_uid
            ds.SeriesInstanceUID = series_uid
            ds.StudyID = "1"
            ds.SeriesNumber = series_number
            ds.AcquisitionNumber = e + 1
            ds.InstanceNumber = n
            ds.ImagePositionPatient = [_format(v) for v in ipp]
            ds.ImageOrientationPatient = [_format(v) for v in (*row, *col)]
            ds.FrameOfReferenceUID = frame_uid
            ds.PositionReferenceIndicator = ""
            ds.SliceLocation = _format(float(centre.dot(LONG_AXIS)))
            ds.ImageComments = f"T2 preparation {_format(phantom.te_ms[e])} ms"
            ds.SamplesPerPixel = 1
            ds.PhotometricInterpretation = "MONOCHROME2"
            ds.Rows, ds.Columns = rows, cols
            ds.PixelSpacing = [_format(dx), _format(dx)]
            ds.BitsAllocated = 16
            ds.BitsStored = 16
            ds.HighBit = 15
            ds.PixelRepresentation = 0
            ds.PixelData = pixels[s, e].tobytes()
            path = out / f"IM_s{s + 1:02d}_e{e + 1:02d}.dcm"
            ds.save_as(path, enforce_file_format=True)
            paths.append(path)
    return paths


def simulate_t2(out: Path, seed: int = 0, snr: float = 40.0, te_ms: tuple[float, ...] = (0.0, 35.0, 55.0),
                slices: int = 3, matrix: int = 192, blood: str = "bright", oedema: bool = True) -> T2Phantom:
    """Write the T2 phantom series and ``truth.npz`` (T2, M0 in stored units, labels) to ``out``."""
    anatomy = Anatomy(matrix=matrix, fov_mm=320.0 * matrix / 192)
    if oedema:
        anatomy = with_oedema(anatomy)
    phantom = t2_phantom(anatomy, te_ms=te_ms, snr=snr, n_slices=slices, seed=seed, blood=blood)
    out.mkdir(parents=True, exist_ok=True)
    write_t2_series(phantom, out, seed)
    np.savez_compressed(
        out / "truth.npz", t2_ms=phantom.t2_ms.astype(np.float32), m0=phantom.m0.astype(np.float32),
        labels=phantom.labels, tissues=phantom.tissues, sigma=phantom.sigma, te_ms=phantom.te_ms, snr=snr, seed=seed,
    )
    return phantom
