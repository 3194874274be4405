"""The background series: one single-frame MR image per slice position, on the maps' grid.

Maps and SEG reference these images, not the scanner's: a source series may hold several
images per position (one per preparation time), several series may make one stack (one
per breath-hold), and an Enhanced MR source holds every frame in one instance -- none of
which a viewer can use as the volume under an overlay, and highdicom builds a map only over
the images of one series. The background is that series: Image Type DERIVED\\SECONDARY, the
sources' frame of reference, position, orientation and matrix, a Source Image Sequence to
the image (or frame) it was copied from, and UIDs derived from the stack's identity, so
processing the stack again writes the same instances.

There is no highdicom constructor for MR Image Storage; the data set is assembled here with
pydicom and checked by dciodvfy in the tests.
"""

from __future__ import annotations

import datetime as _dt
from typing import Sequence

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage

from dicom_node import __version__
from dicom_node.encode.common import MANUFACTURER, MODEL_NAME, Algorithm, copy_patient_study, derived_uid
from dicom_node.filemeta import file_meta_dataset

# the background does not depend on how the maps were fitted: its UIDs name only what it shows
BACKGROUND = Algorithm("pinn-node-background", __version__)
SOURCE_FOR_PROCESSING = ("121322", "DCM", "Source image for image processing operation")
# MR Image module attributes copied from the source image when it has them (Type 1 and 2)
_MR_COPIED = ("ScanningSequence", "SequenceVariant", "ScanOptions", "MRAcquisitionType", "RepetitionTime",
              "EchoTime", "EchoTrainLength", "SliceThickness", "MagneticFieldStrength", "ImagedNucleus",
              "ImagingFrequency", "PatientPosition", "SpecificCharacterSet", "PositionReferenceIndicator",
              "TriggerTime", "InversionTime")
_MR_DEFAULTS = {"ScanningSequence": "RM", "SequenceVariant": "NONE", "ScanOptions": "", "MRAcquisitionType": "2D",
                "RepetitionTime": "", "EchoTime": "", "EchoTrainLength": "", "PositionReferenceIndicator": ""}
_TYPE2_PATIENT_STUDY = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                        "ReferringPhysicianName", "StudyID", "AccessionNumber")


def background_series_uid(subject_uid: str) -> str:
    return str(derived_uid(subject_uid, "background-series", BACKGROUND))


def _position_along_normal(ds: Dataset) -> float:
    iop = np.array(ds.ImageOrientationPatient, dtype=float)
    return float(np.array(ds.ImagePositionPatient, dtype=float) @ np.cross(iop[:3], iop[3:]))


def _stored_values(image: np.ndarray) -> tuple[np.ndarray, str]:
    """uint16 pixels of a real-valued image and how they relate to it (for Derivation Description)."""
    finite = np.where(np.isfinite(image), image, 0.0)
    low, high = float(finite.min()), float(finite.max())
    if low >= 0 and high <= 65535:
        return np.round(finite).astype(np.uint16), "values as the source's (rounded)"
    scale = 4095.0 / max(high - low, 1e-12)
    return np.round((finite - low) * scale).astype(np.uint16), f"values rescaled by {scale:.6g} for display"


def _source_reference(source: Dataset) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = source.SOPClassUID
    item.ReferencedSOPInstanceUID = source.SOPInstanceUID
    frame = getattr(source, "frame_number", None)  # a frame view of an Enhanced MR instance
    if frame is not None:
        item.ReferencedFrameNumber = int(frame)
    purpose = Dataset()
    purpose.CodeValue, purpose.CodingSchemeDesignator, purpose.CodeMeaning = SOURCE_FOR_PROCESSING
    item.PurposeOfReferenceCodeSequence = [purpose]
    return item


def encode_background_series(sources: Sequence[Dataset], images: np.ndarray, subject_uid: str, series_number: int,
                             series_description: str, derivation: str) -> list[Dataset]:
    """One MR image per source slice: ``images[k]`` (real values) on the grid of ``sources[k]``.

    ``subject_uid`` names what was processed (a stack of a study); the same subject gives
    the same Series and SOP Instance UIDs. Instances are numbered along the slice normal.
    ``derivation`` says which source image each background image shows (e.g. the shortest
    preparation time).
    """
    images = np.asarray(images, dtype=float)
    if images.shape[0] != len(sources):
        raise ValueError(f"{images.shape[0]} images for {len(sources)} source slices")
    series_uid = background_series_uid(subject_uid)
    order = sorted(range(len(sources)), key=lambda k: _position_along_normal(sources[k]))
    now = _dt.datetime.now()
    out: dict[int, Dataset] = {}
    for number, k in enumerate(order, start=1):
        src = sources[k]
        if images[k].shape != (int(src.Rows), int(src.Columns)):
            raise ValueError(f"image {k} is {images[k].shape}, its source {src.Rows}x{src.Columns}")
        pixels, how = _stored_values(images[k])
        position = tuple(round(float(v), 3) for v in src.ImagePositionPatient)
        ds = Dataset()
        ds.SOPClassUID = MRImageStorage
        ds.SOPInstanceUID = derived_uid(subject_uid, "background", BACKGROUND, *position)
        ds.file_meta = file_meta_dataset(MRImageStorage, ds.SOPInstanceUID, ExplicitVRLittleEndian)
        for kw in _MR_COPIED:
            value = src[kw].value if kw in src else None
            if kw == "EchoTime" and value is not None and float(value) <= 0:
                value = None  # a preparation time written as the echo time (phantoms): not a readout TE
            if value not in (None, ""):
                setattr(ds, kw, value)
            elif kw in _MR_DEFAULTS:
                setattr(ds, kw, _MR_DEFAULTS[kw])
        ds.ImageType = ["DERIVED", "SECONDARY", "OTHER"]
        ds.Modality = "MR"
        ds.SeriesInstanceUID = series_uid
        ds.SeriesNumber = series_number
        ds.SeriesDescription = series_description
        ds.InstanceNumber = number
        ds.ContentDate, ds.ContentTime = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
        ds.Manufacturer = MANUFACTURER
        ds.ManufacturerModelName = MODEL_NAME
        ds.SoftwareVersions = __version__
        ds.BodyPartExamined = "HEART"
        ds.FrameOfReferenceUID = src.FrameOfReferenceUID
        ds.ImagePositionPatient = list(src.ImagePositionPatient)
        ds.ImageOrientationPatient = list(src.ImageOrientationPatient)
        ds.PixelSpacing = list(src.PixelSpacing)
        ds.DerivationDescription = f"{derivation}; {how}"[:1024]
        ds.SourceImageSequence = [_source_reference(src)]
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = pixels.shape
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.PixelData = pixels.tobytes()
        shown = pixels[pixels > 0]
        if shown.size:  # a window that shows the anatomy, not the brightest fat pixel
            lo, hi = np.percentile(shown, [1, 99.5])
            ds.WindowCenter, ds.WindowWidth = round(float(lo + hi) / 2, 1), max(round(float(hi - lo), 1), 1.0)
        for kw in _TYPE2_PATIENT_STUDY:  # empty when the source lacks them (Type 2)
            setattr(ds, kw, "")
        copy_patient_study(src, ds)
        out[k] = ds
    return [out[k] for k in range(len(sources))]
