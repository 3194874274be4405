"""TID 1500 Measurement Report (Comprehensive SR) with per-region values and their error bounds.

One TID 1411 group for the LV myocardium and one per AHA segment: mean (derivation Mean)
with its bound as TID 310 '+/-' (371884006, SCT) in the quantity's unit and the Parametric
Map frames it comes from, the spatial SD (derivation Standard Deviation), the area, the
referenced SEG segment, the source images, the algorithm identity and parameters
(confidence level, noise sigma, ...), and QC flags as text comments.

Nothing is stated twice (a pixel count beside the area, the SD's frames beside the
mean's): highdicom's SR constructor costs ~2 ms per content item, and the report is the
last object a job waits for.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import highdicom as hd
from highdicom.sr.value_types import ContentSequence
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from dicom_node.encode.common import HEART, MANUFACTURER, MODEL_NAME, Algorithm, derived_uid, finish
from dicom_node.encode.segmentation import aha_code

UNCERTAINTY = Code("371884006", "SCT", "+/-, range of measurement uncertainty")
AREA = Code("42798000", "SCT", "Area")
MM2 = Code("mm2", "UCUM", "square millimeter")
CARDIAC_MRI = Code("241620005", "SCT", "Cardiac MRI")
COMMENT = Code("121106", "DCM", "Comment")


@dataclass(frozen=True)
class RegionResult:
    aha: int | None  # None: the whole LV myocardium
    mean: float
    sd: float
    bound: float  # |mean - true mean| <= bound at the stated confidence
    n_pixels: int
    area_mm2: float
    frames: tuple[int, ...]  # 1-based frames of the value map holding the region
    flags: tuple[str, ...] = ()
    # further quantities of the same region: (quantity code, unit code, value, +/- bound)
    others: tuple[tuple[Code, Code, float, float], ...] = ()


@dataclass(frozen=True)
class ReportContext:
    quantity: Code  # e.g. (113065, DCM, "T2")
    unit: Code  # e.g. (ms, UCUM, "millisecond")
    confidence: float
    parameters: dict = field(default_factory=dict)  # shown as algorithm parameters


def _group(region: RegionResult, ctx: ReportContext, seg: Dataset, tracking: dict[str, int],
           value_map: Dataset, sources: Sequence[Dataset],
           algorithm: Algorithm) -> hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations:
    track_id = "LV myocardium" if region.aha is None else f"AHA segment {region.aha}"
    finding = codes.SCT.LeftVentricleMyocardium if region.aha is None else aha_code(region.aha)
    series_uid = sources[0].SeriesInstanceUID
    algo = hd.sr.AlgorithmIdentification(
        name=algorithm.name, version=algorithm.version,
        parameters=[f"{k}={v}" for k, v in sorted({**algorithm.parameters, **ctx.parameters}.items())],
    )
    source_pm = [hd.sr.SourceImageForMeasurement(value_map.SOPClassUID, value_map.SOPInstanceUID, list(region.frames))]
    properties = hd.sr.MeasurementProperties()
    mean = hd.sr.Measurement(
        name=ctx.quantity, value=region.mean, unit=ctx.unit, derivation=codes.SCT.Mean,
        properties=properties, referenced_images=source_pm,
    )
    # TID 310 '+/-' in the quantity's unit (highdicom's own uncertainty items say "no units")
    bound = hd.sr.NumContentItem(name=UNCERTAINTY, value=region.bound, unit=ctx.unit,
                                 relationship_type=hd.sr.RelationshipTypeValues.HAS_PROPERTIES)
    mean[0].ContentSequence.append(bound)
    spread = hd.sr.Measurement(name=ctx.quantity, value=region.sd, unit=ctx.unit,
                               derivation=codes.SCT.StandardDeviation)
    others = []
    for quantity, unit, value, plus_minus in region.others:
        item = hd.sr.Measurement(name=quantity, value=value, unit=unit)
        if "ContentSequence" not in item[0]:
            item[0].ContentSequence = ContentSequence()
        item[0].ContentSequence.append(hd.sr.NumContentItem(
            name=UNCERTAINTY, value=plus_minus, unit=unit,
            relationship_type=hd.sr.RelationshipTypeValues.HAS_PROPERTIES))
        others.append(item)
    area = hd.sr.Measurement(name=AREA, value=region.area_mm2, unit=MM2)
    group = hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=derived_uid(series_uid, "sr-tracking", algorithm, track_id), identifier=track_id),
        referenced_segment=hd.sr.ReferencedSegment(
            sop_class_uid=seg.SOPClassUID, sop_instance_uid=seg.SOPInstanceUID,
            segment_number=tracking[track_id],
            source_images=[hd.sr.SourceImageForSegmentation(d.SOPClassUID, d.SOPInstanceUID) for d in sources],
        ),
        finding_type=finding,
        finding_category=codes.SCT.AnatomicalStructure,
        finding_sites=[hd.sr.FindingSite(HEART)],
        algorithm_id=algo,
        measurements=[mean, spread, *others, area],
    )
    for flag in region.flags:
        group[0].ContentSequence.append(
            hd.sr.TextContentItem(name=COMMENT, value=flag[:1024],
                                  relationship_type=hd.sr.RelationshipTypeValues.CONTAINS))
    return group


def encode_report(
    sources: Sequence[Dataset],
    seg: Dataset,
    tracking: dict[str, int],
    value_map: Dataset,
    regions: Sequence[RegionResult],
    ctx: ReportContext,
    algorithm: Algorithm,
    series_number: int,
    evidence: Sequence[Dataset] = (),
) -> Dataset:
    """TID 1500 report over ``regions`` (global first, then AHA segments)."""
    series_uid = sources[0].SeriesInstanceUID
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=derived_uid(series_uid, "device", algorithm), name=algorithm.name,
            manufacturer_name=MANUFACTURER, model_name=MODEL_NAME),
    )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=CARDIAC_MRI,
        imaging_measurements=[_group(r, ctx, seg, tracking, value_map, sources, algorithm) for r in regions],
        referenced_images=list(sources),  # the Image Library
    )
    sr = hd.sr.ComprehensiveSR(
        evidence=[*sources, seg, value_map, *evidence],
        content=report,
        series_instance_uid=derived_uid(series_uid, "sr-series", algorithm),
        series_number=series_number,
        sop_instance_uid=derived_uid(series_uid, "sr", algorithm),
        instance_number=1,
        manufacturer=MANUFACTURER,
        is_complete=True,
        is_final=False,  # research output, never verified
    )
    sr.SeriesDescription = f"{ctx.quantity.meaning} measurement report (PINN node)"
    return finish(sr, sources[0], image=False)
