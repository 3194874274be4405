"""Binary Segmentation: LV myocardium, LV and RV blood pools, and the AHA segments present."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.uid import SegmentationStorage

from dicom_node.encode.common import (
    HEART,
    MANUFACTURER,
    MODEL_NAME,
    Algorithm,
    derived_uid,
    finish,
    position_order,
    reference,
)
from pinn_engine.segmentation import Label

# CID 3717 "Left Ventricle Myocardial Wall 17 Segment Model" (SCT)
AHA_CODES = {
    1: ("264850008", "basal anterior"), 2: ("396482007", "basal anteroseptal"),
    3: ("396646008", "basal inferoseptal"), 4: ("264846001", "basal inferior"),
    5: ("396652009", "basal inferolateral"), 6: ("396654005", "basal anterolateral"),
    7: ("264848000", "mid anterior"), 8: ("396647004", "mid anteroseptal"), 9: ("396649001", "mid inferoseptal"),
    10: ("264847005", "mid inferior"), 11: ("396655006", "mid inferolateral"), 12: ("396656007", "mid anterolateral"),
    13: ("264844003", "apical anterior"), 14: ("264845002", "apical septal"), 15: ("264849008", "apical inferior"),
    16: ("264853005", "apical lateral"), 17: ("128564006", "apex"),
}


def aha_code(segment: int) -> Code:
    value, meaning = AHA_CODES[segment]
    return Code(value, "SCT", f"left ventricle {meaning} segment" if segment < 17 else "Apex of left ventricle")


@dataclass(frozen=True)
class Structure:
    number: int  # segment number in the SEG
    label: str
    code: Code
    tracking_id: str
    lab: tuple[float, float, float]  # recommended display colour, CIELab


def structures(aha_present: Sequence[int]) -> list[Structure]:
    """Segment numbers: 1 LV myocardium, 2 LV blood pool, 3 RV blood pool, then AHA 1..17 present."""
    out = [
        Structure(1, "LV myocardium", codes.SCT.LeftVentricleMyocardium, "LV myocardium", (55.0, 60.0, 40.0)),
        Structure(2, "LV blood pool", Code("87878005", "SCT", "Left ventricle"), "LV blood pool", (60.0, -40.0, 40.0)),
        Structure(3, "RV blood pool", Code("53085002", "SCT", "Right ventricle"), "RV blood pool", (55.0, 10.0, -50.0)),
    ]
    for k, seg in enumerate(sorted(aha_present)):
        hue = 2 * np.pi * k / max(len(aha_present), 1)
        out.append(Structure(4 + k, f"AHA {seg} {AHA_CODES[seg][1]}", aha_code(seg), f"AHA segment {seg}",
                             (65.0, float(60 * np.cos(hue)), float(60 * np.sin(hue)))))
    return out


def _uids(source_series_uid: str, algorithm: Algorithm) -> tuple[str, str]:
    return derived_uid(source_series_uid, "seg-series", algorithm), derived_uid(source_series_uid, "seg", algorithm)


def segmentation_reference(source_images: Sequence[Dataset], aha: np.ndarray,
                           algorithm: Algorithm) -> tuple[Dataset, dict[str, int]]:
    """The identity and the tracking id -> segment number map of the SEG ``encode_segmentation``
    will make from the same AHA labels (for the SR, built meanwhile)."""
    parts = structures(sorted(int(s) for s in np.unique(aha) if s))
    ref = reference(source_images[0], SegmentationStorage, *_uids(source_images[0].SeriesInstanceUID, algorithm))
    return ref, {p.tracking_id: p.number for p in parts}


def encode_segmentation(
    source_images: Sequence[Dataset],
    labels: np.ndarray,
    aha: np.ndarray,
    algorithm: Algorithm,
    series_number: int,
) -> tuple[Dataset, dict[str, int]]:
    """SEG over the source slices; returns it and a map tracking id -> segment number.

    ``labels`` (slices, rows, cols): 1 LV blood, 2 LV myocardium, 3 RV blood; ``aha``: 0 or 1..17;
    slice k belongs to ``source_images[k]``.
    """
    if labels.shape != aha.shape or labels.shape[0] != len(source_images):
        raise ValueError("labels, aha and source images must have the same slices")
    order = position_order(source_images)
    sources = [source_images[i] for i in order]
    labels, aha = np.asarray(labels)[order], np.asarray(aha)[order]
    present = sorted(int(s) for s in np.unique(aha) if s)
    parts = structures(present)
    masks = np.zeros((*labels.shape, len(parts)), dtype=bool)
    masks[..., 0] = labels == Label.MYOCARDIUM
    masks[..., 1] = labels == Label.LV_BLOOD_POOL
    masks[..., 2] = labels == Label.RV_BLOOD_POOL
    for i, seg in enumerate(present):
        masks[..., 3 + i] = aha == seg
    series_uid = sources[0].SeriesInstanceUID
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=p.number,
            segment_label=p.label,
            segmented_property_category=codes.SCT.AnatomicalStructure,
            segmented_property_type=p.code,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm.identification(),
            tracking_uid=derived_uid(series_uid, "seg-tracking", algorithm, p.tracking_id),
            tracking_id=p.tracking_id,
            anatomic_regions=[HEART],
            display_color=hd.color.CIELabColor(*p.lab),
        )
        for p in parts
    ]
    seg = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=masks,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=_uids(series_uid, algorithm)[0],
        series_number=series_number,
        sop_instance_uid=_uids(series_uid, algorithm)[1],
        instance_number=1,
        manufacturer=MANUFACTURER,
        manufacturer_model_name=MODEL_NAME,
        software_versions=algorithm.version,
        device_serial_number="0",
        content_label="LV_RV_AHA",
        content_description="LV, RV and AHA segments (PINN node)",
        content_creator_name="PINN^node",
    )
    seg.SeriesDescription = "Segmentation LV/RV/AHA (PINN node)"
    return finish(seg, sources[0]), {p.tracking_id: p.number for p in parts}
