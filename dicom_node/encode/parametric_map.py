"""Parametric Map (float32, Real World Value Mapping) for any quantity: T2, its bound, MBF, ..."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.coding import Code
from pydicom.uid import ParametricMapStorage

from dicom_node.encode.common import (
    MANUFACTURER,
    MODEL_NAME,
    Algorithm,
    derived_uid,
    finish,
    frame_anatomy,
    position_order,
    reference,
)

DERIVATION = Code("121401", "DCM", "Derivation")
MODEL_FITTING = Code("113241", "DCM", "Model fitting method")
LEAST_SQUARES = Code("113261", "DCM", "Least squares fit of multiple samples")


@dataclass(frozen=True)
class MapSpec:
    """What one map holds; the same encoder serves every quantity."""

    kind: str  # object kind in the deterministic UID, e.g. "t2", "t2-bound", "mbf"
    quantity: Code  # e.g. (113065, DCM, "T2"), (126390, DCM, "Absolute Regional Blood Flow")
    unit: Code  # UCUM, e.g. (ms, UCUM, "millisecond")
    lut_label: str
    lut_explanation: str
    image_type: str  # Image Type value 4: T2_MAP, STD_DEVIATION, ...
    series_description: str
    content_label: str
    window: tuple[float, float]  # (centre, width)
    value_range: tuple[float, float]
    derivation: Code | None = None  # e.g. (386136009, SCT, "Standard Deviation") for an uncertainty map


T2_UNIT = Code("ms", "UCUM", "millisecond")
T2_CODE = Code("113065", "DCM", "T2")


def t2_map_spec() -> MapSpec:
    return MapSpec("t2", T2_CODE, T2_UNIT, "T2", "T2 from T2-prepared images (ms); 0 = no estimate",
                   "T2_MAP", "T2 map (PINN node)", "T2_MAP", (60.0, 80.0), (0.0, 1000.0))


def t2_bound_spec(confidence: float) -> MapSpec:
    pct = f"{confidence * 100:g}"
    return MapSpec(
        "t2-bound", T2_CODE, T2_UNIT, "T2_BOUND",
        f"{pct}% error bound of T2 (ms), consistency set; 0 = none",
        "STD_DEVIATION", f"T2 error bound {pct}% (PINN node)", "T2_BOUND", (5.0, 10.0), (0.0, 1000.0),
        derivation=Code("371884006", "SCT", "+/-, range of measurement uncertainty"),
    )


def _set_value4(pm: Dataset, value: str) -> None:
    pm.ImageType = [*list(pm.ImageType)[:3], value]
    groups = [pm.SharedFunctionalGroupsSequence[0], *getattr(pm, "PerFrameFunctionalGroupsSequence", [])]
    for group in groups:
        for item in getattr(group, "ParametricMapFrameTypeSequence", []):
            item.FrameType = [*list(item.FrameType)[:3], value]


def _frames_along_normal(pm: Dataset) -> None:
    """Order the frames by position along row x column (highdicom orders them by distance
    from the coordinate origin); readers that stack frames without looking at their
    positions, such as dcmqi's paramap2itkimage, then place every frame correctly."""
    iop = np.array(pm.SharedFunctionalGroupsSequence[0].PlaneOrientationSequence[0].ImageOrientationPatient, float)
    normal = np.cross(iop[:3], iop[3:])
    groups = list(pm.PerFrameFunctionalGroupsSequence)
    z = [float(np.array(g.PlanePositionSequence[0].ImagePositionPatient, float) @ normal) for g in groups]
    order = np.argsort(z, kind="stable")
    if (order == np.arange(len(order))).all():
        return
    frames = np.frombuffer(pm.FloatPixelData, dtype="<f4").reshape(len(groups), pm.Rows, pm.Columns)
    pm.FloatPixelData = np.ascontiguousarray(frames[order]).tobytes()
    pm.PerFrameFunctionalGroupsSequence = [groups[i] for i in order]
    for k, group in enumerate(pm.PerFrameFunctionalGroupsSequence, start=1):
        group.FrameContentSequence[0].DimensionIndexValues = [k]


MBF_CODE = Code("126390", "DCM", "Absolute Regional Blood Flow")
MBF_UNIT = Code("ml/min/g", "UCUM", "Milliliter/minute/gram")
PERFUSION_ANALYSIS = Code("129104", "DCM", "Perfusion image analysis")


def mbf_map_spec() -> MapSpec:
    """MBF map. Image Type value 4 BLOOD_FLOW is an extension: no defined term means absolute
    blood flow (the MR list has only RCBF, relative cerebral); the Quantity code says what it is."""
    return MapSpec("mbf", MBF_CODE, MBF_UNIT, "MBF", "myocardial blood flow (ml/min/g); 0 = no estimate",
                   "BLOOD_FLOW", "MBF map (PINN node)", "MBF_MAP", (2.0, 4.0), (0.0, 20.0),
                   derivation=PERFUSION_ANALYSIS)


FRACTION = Code("1", "UCUM", "no units")
FLOW_PER_ML = Code("ml/min/ml", "UCUM", "milliliter per minute per milliliter")
VP_CODE = Code("126331", "DCM", "vp")
VE_CODE = Code("126314", "DCM", "ve")
# no standard concept exists for the permeability-surface area product; a local code says it
PS_CODE = Code("PS", "99PINN", "Permeability-surface area product")


def kinetic_map_spec(name: str) -> MapSpec:
    """vp, ve (fractions) and PS (ml/min/ml) of the two-compartment exchange model."""
    specs = {
        # window width >= 1 (PS3.3 C.11.2.1.2 for a LINEAR VOI function): the whole 0-1 range
        "vp": (VP_CODE, FRACTION, "plasma volume fraction vp; 0 = no estimate", (0.5, 1.0), (0.0, 1.0)),
        "ve": (VE_CODE, FRACTION, "interstitial volume fraction ve; 0 = no estimate", (0.5, 1.0), (0.0, 1.0)),
        "ps": (PS_CODE, FLOW_PER_ML, "PS permeability-surface area (ml/min/ml); 0 = no estimate",
               (1.0, 2.0), (0.0, 20.0)),
    }
    quantity, unit, explanation, window, value_range = specs[name]
    upper = name.upper()
    return MapSpec(name, quantity, unit, upper, explanation, f"{upper}_MAP", f"{name} map, 2CXM (PINN node)",
                   f"{upper}_MAP", window, value_range, derivation=PERFUSION_ANALYSIS)


def _uids(source_series_uid: str, spec: MapSpec, algorithm: Algorithm) -> tuple[str, str]:
    return (derived_uid(source_series_uid, f"pm-{spec.kind}-series", algorithm),
            derived_uid(source_series_uid, f"pm-{spec.kind}", algorithm))


def parametric_map_reference(source_images: Sequence[Dataset], spec: MapSpec, algorithm: Algorithm) -> Dataset:
    """The identity of the map ``encode_parametric_map`` will make (for the SR, built meanwhile)."""
    return reference(source_images[0], ParametricMapStorage, *_uids(source_images[0].SeriesInstanceUID, spec,
                                                                     algorithm))


def encode_parametric_map(
    source_images: Sequence[Dataset],
    values: np.ndarray,
    spec: MapSpec,
    algorithm: Algorithm,
    series_number: int,
) -> Dataset:
    """One frame per source slice; ``values[k]`` belongs to ``source_images[k]``.

    ``source_images``: one image per slice (e.g. the first echo). Frames are written in
    slice-position order. Non-finite values (no estimate / unbounded) become the sentinel 0.
    """
    order = position_order(source_images)
    sources = [source_images[i] for i in order]
    if values.shape != (len(sources), sources[0].Rows, sources[0].Columns):
        raise ValueError(f"values {values.shape} do not match {len(sources)} source slices "
                         f"of {sources[0].Rows}x{sources[0].Columns}")
    values = np.asarray(values)[order]
    pixels = np.where(np.isfinite(values), values, 0.0).astype(np.float32)
    rwvm = hd.pm.RealWorldValueMapping(
        lut_label=spec.lut_label,
        lut_explanation=spec.lut_explanation,
        unit=spec.unit,
        value_range=spec.value_range,
        slope=1.0,
        intercept=0.0,
        quantity_definition=spec.quantity,
    )
    # second Quantity Definition item: how the values were derived (CID 9000 names)
    extra = (hd.sr.CodeContentItem(DERIVATION, spec.derivation) if spec.derivation is not None
             else hd.sr.CodeContentItem(MODEL_FITTING, LEAST_SQUARES))
    rwvm.QuantityDefinitionSequence.append(extra)
    pm_series_uid, pm_uid = _uids(sources[0].SeriesInstanceUID, spec, algorithm)
    pm = hd.pm.ParametricMap(
        source_images=sources,
        pixel_array=pixels,
        series_instance_uid=pm_series_uid,
        series_number=series_number,
        sop_instance_uid=pm_uid,
        instance_number=1,
        manufacturer=MANUFACTURER,
        manufacturer_model_name=MODEL_NAME,
        software_versions=algorithm.version,
        device_serial_number="0",
        contains_recognizable_visual_features=False,
        real_world_value_mappings=[rwvm],
        voi_lut_transformations=[hd.VOILUTTransformation(window_center=spec.window[0],
                                                         window_width=spec.window[1])],
        content_label=spec.content_label,
        content_description=spec.series_description[:64],
        content_creator_name="PINN^node",
        image_flavor="VOLUME",
    )
    # highdicom writes the generic QUANTITY; the MR/PM defined terms say what the map is
    _set_value4(pm, spec.image_type)
    _frames_along_normal(pm)
    pm.SeriesDescription = spec.series_description
    pm.SharedFunctionalGroupsSequence[0].FrameAnatomySequence = [frame_anatomy()]
    return finish(pm, sources[0])
