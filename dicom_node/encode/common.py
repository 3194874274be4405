"""Shared pieces of the derived objects: deterministic UIDs, algorithm identity, attributes."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Sequence

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import UID, generate_uid

from dicom_node import __version__

# Deterministic UIDs under pydicom's registered root. Passing the prefix explicitly matters:
# with prefix=None pydicom ignores entropy_srcs and returns a random 2.25 UID.
UID_ROOT = "1.2.826.0.1.3680043.8.498."
MANUFACTURER = "PINN DICOM node"
MODEL_NAME = "pinn-dicom-node"
# every derived series' description ends with this; the node and the Orthanc Lua rule
# recognise their own results by it (no processing, forwarding or loops)
DERIVED_SUFFIX = "(PINN node)"
HEART = hd.sr.CodedConcept("80891009", "SCT", "Heart")


@dataclass(frozen=True)
class Algorithm:
    name: str
    version: str = __version__
    parameters: dict[str, Any] = field(default_factory=dict)

    @property
    def parameter_hash(self) -> str:
        return hashlib.sha256(json.dumps(self.parameters, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def identification(self) -> hd.AlgorithmIdentificationSequence:
        return hd.AlgorithmIdentificationSequence(
            name=self.name,
            family=codes.DCM.ArtificialIntelligence,
            version=self.version,
            parameters={k: str(v) for k, v in self.parameters.items()},
        )


def derived_uid(source_series_uid: str, kind: str, algorithm: Algorithm, *extra: Any) -> UID:
    """Same source series + object kind + algorithm version/parameters -> same UID."""
    return generate_uid(
        prefix=UID_ROOT,
        entropy_srcs=[source_series_uid, kind, algorithm.name, algorithm.version, algorithm.parameter_hash,
                      *map(str, extra)],
    )


def reference(source: Dataset, sop_class_uid: str, series_uid: str, sop_uid: str) -> Dataset:
    """What another object needs to reference a derived object before it is encoded."""
    ref = Dataset()
    ref.StudyInstanceUID = source.StudyInstanceUID
    ref.SeriesInstanceUID = series_uid
    ref.SOPClassUID = sop_class_uid
    ref.SOPInstanceUID = sop_uid
    return ref


PATIENT_STUDY_KEYWORDS = (
    "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "PatientAge", "PatientWeight", "PatientSize",
    "StudyInstanceUID", "StudyDate", "StudyTime", "StudyID", "AccessionNumber", "ReferringPhysicianName",
    "StudyDescription",
)


def copy_patient_study(source: Dataset, target: Dataset) -> None:
    """Patient and study attributes of the source (some encoders drop a few of them)."""
    for kw in PATIENT_STUDY_KEYWORDS:
        if kw in source:
            setattr(target, kw, source[kw].value)


def finish(ds: Dataset, source: Dataset, image: bool = True) -> Dataset:
    """Attributes highdicom does not expose: body part, creator (images), patient/study copies."""
    if image:
        ds.BodyPartExamined = "HEART"
        ds.ContentCreatorName = MANUFACTURER.replace(" ", "^")
    _stable_dimension_organization(ds)
    copy_patient_study(source, ds)
    return ds


def _stable_dimension_organization(ds: Dataset) -> None:
    """Replace highdicom's random Dimension Organization UID by one derived from the SOP Instance UID.

    Re-processing a series then writes the same object again, byte for byte but for the
    time it was made (and the node and ``dicom-node process`` write identical objects).
    """
    organizations = ds.get("DimensionOrganizationSequence")
    if not organizations:
        return
    renamed = {str(item.DimensionOrganizationUID): generate_uid(
        prefix=UID_ROOT, entropy_srcs=[str(ds.SOPInstanceUID), "dimension-organization", str(k)])
        for k, item in enumerate(organizations)}
    for item in [*organizations, *ds.get("DimensionIndexSequence", [])]:
        if str(item.get("DimensionOrganizationUID", "")) in renamed:
            item.DimensionOrganizationUID = renamed[str(item.DimensionOrganizationUID)]


# bulk that a reference to an instance never needs
_BULK_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData", "PerFrameFunctionalGroupsSequence")


def header_only(ds: Dataset) -> Dataset:
    """A shallow copy of ``ds`` without pixels or per-frame groups (enough to reference it)."""
    out = Dataset()
    for elem in ds:
        if elem.keyword not in _BULK_KEYWORDS:
            out.add(elem)
    return out


def dataset_bytes(ds: Dataset) -> bytes:
    """The data set encoded in Explicit VR Little Endian, without preamble or file meta (compressed
    pixel data stays encapsulated: the syntax in ``ds.file_meta`` says which)."""
    from pydicom.filebase import DicomBytesIO  # noqa: PLC0415
    from pydicom.filewriter import write_dataset  # noqa: PLC0415

    meta = getattr(ds, "file_meta", None)
    if "PixelData" in ds and meta is not None and meta.get("TransferSyntaxUID") is not None \
            and meta.TransferSyntaxUID.is_compressed:
        ds["PixelData"].is_undefined_length = True  # encapsulated: items and a sequence delimiter
    buf = DicomBytesIO()
    buf.is_implicit_VR, buf.is_little_endian = False, True
    write_dataset(buf, ds)
    return buf.getvalue()


def dataset_from_bytes(body: bytes) -> Dataset:
    """Inverse of ``dataset_bytes``; elements stay encoded until used, so writing it again is a copy."""
    from io import BytesIO  # noqa: PLC0415

    from pydicom.dataset import FileMetaDataset  # noqa: PLC0415
    from pydicom.filereader import read_dataset  # noqa: PLC0415
    from pydicom.uid import ExplicitVRLittleEndian  # noqa: PLC0415

    ds = read_dataset(BytesIO(body), is_implicit_VR=False, is_little_endian=True)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return ds


def frame_anatomy() -> Dataset:
    """Frame Anatomy functional group: heart, laterality unpaired (dcmqi needs it)."""
    item = Dataset()
    region = Dataset()
    region.CodeValue, region.CodingSchemeDesignator, region.CodeMeaning = "80891009", "SCT", "Heart"
    item.AnatomicRegionSequence = [region]
    item.FrameLaterality = "U"
    return item


def position_order(images: Sequence[Dataset]) -> list[int]:
    """Indices that sort the images along their slice normal."""
    import numpy as np

    iop = np.array(images[0].ImageOrientationPatient, dtype=float)
    normal = np.cross(iop[:3], iop[3:])
    return sorted(range(len(images)),
                  key=lambda i: float(np.array(images[i].ImagePositionPatient, dtype=float) @ normal))
