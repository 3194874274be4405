"""Enhanced (multi-frame) MR images as one header view per frame.

Siemens XA and Philips send Enhanced MR Image Storage objects: one instance may hold every
slice and preparation time, and a frame's geometry, echo time, comments, type and rescale
live in its functional groups (shared, or per frame). ``frame_views`` turns such an instance
into one dataset per frame that carries those values where a classic MR image has them
(ImagePositionPatient, EchoTime, ImageComments, ImageType, RescaleSlope, ...), so that
classification and loading treat both the same way. A view keeps the instance's SOP
Instance UID; ``frame_number`` says which frame it is, and ``frame_pixels`` decodes that
frame with its own Pixel Value Transformation (highdicom). Classic single-frame images are
their own view. ``mr_scale_slope`` finds Philips' private MR Scale Slope (2005,100E) of an
image or frame, by which its displayed values are turned into Philips' floating-point ones.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence

# (functional group sequence, attribute in it, attribute of a classic MR image)
_FROM_GROUPS = (
    ("PlanePositionSequence", "ImagePositionPatient", "ImagePositionPatient"),
    ("PlaneOrientationSequence", "ImageOrientationPatient", "ImageOrientationPatient"),
    ("PixelMeasuresSequence", "PixelSpacing", "PixelSpacing"),
    ("PixelMeasuresSequence", "SliceThickness", "SliceThickness"),
    ("PixelMeasuresSequence", "SpacingBetweenSlices", "SpacingBetweenSlices"),
    ("MREchoSequence", "EffectiveEchoTime", "EchoTime"),
    ("MRTimingAndRelatedParametersSequence", "RepetitionTime", "RepetitionTime"),
    ("MRTimingAndRelatedParametersSequence", "EchoTrainLength", "EchoTrainLength"),
    ("MRTimingAndRelatedParametersSequence", "FlipAngle", "FlipAngle"),
    ("MRImageFrameTypeSequence", "FrameType", "ImageType"),
    ("FrameContentSequence", "FrameAcquisitionDateTime", "AcquisitionDateTime"),
    ("FrameContentSequence", "FrameComments", "ImageComments"),
    ("FrameContentSequence", "TemporalPositionIndex", "TemporalPositionIdentifier"),
    ("CardiacSynchronizationSequence", "NominalCardiacTriggerDelayTime", "TriggerTime"),
    ("MRModifierSequence", "InversionTimes", "InversionTime"),
    ("PixelValueTransformationSequence", "RescaleSlope", "RescaleSlope"),
    ("PixelValueTransformationSequence", "RescaleIntercept", "RescaleIntercept"),
    ("PixelValueTransformationSequence", "RescaleType", "RescaleType"),
)
# what a view does not carry: the bulk data and the groups it was made from
_LEFT_OUT = ("PixelData", "FloatPixelData", "DoubleFloatPixelData", "PerFrameFunctionalGroupsSequence",
             "SharedFunctionalGroupsSequence", "NumberOfFrames")


def is_multi_frame(ds: Dataset) -> bool:
    return "PerFrameFunctionalGroupsSequence" in ds or int(ds.get("NumberOfFrames", 1) or 1) > 1


def _apply_groups(view: Dataset, groups: Dataset | None) -> None:
    if groups is None:
        return
    for sequence, source, target in _FROM_GROUPS:
        items = groups.get(sequence)
        if not items or source not in items[0]:
            continue
        value = items[0][source].value
        if target == "InversionTime" and not isinstance(value, (int, float)):
            value = value[0] if len(value) else None  # InversionTimes (FD, 1-n): the frame's first
        if value is not None:
            setattr(view, target, value)
            if source != target:  # where it came from, for reasons that name the deciding field
                view.field_names = {**getattr(view, "field_names", {}), target: source}


def frame_views(ds: Dataset) -> list[Dataset]:
    """One header view per frame of ``ds`` (``[ds]`` for a classic single-frame image)."""
    if not is_multi_frame(ds):
        return [ds]
    shared = (ds.get("SharedFunctionalGroupsSequence") or [None])[0]
    per_frame = ds.get("PerFrameFunctionalGroupsSequence") or []
    n = int(ds.get("NumberOfFrames", len(per_frame)) or len(per_frame))
    top = Dataset()
    for elem in ds:
        if elem.keyword not in _LEFT_OUT:
            top.add(elem)
    views = []
    for k in range(n):
        view = Dataset()
        view.update(top)
        _apply_groups(view, shared)
        _apply_groups(view, per_frame[k] if k < len(per_frame) else None)
        view.frame_number = k + 1  # 1-based, as DICOM counts frames
        view.parent = ds  # the instance the frame's pixels are in
        views.append(view)
    return views


def frame_views_of(datasets: Sequence[Dataset]) -> list[Dataset]:
    """Every frame view of every instance, in instance order then frame order."""
    return [view for ds in datasets for view in frame_views(ds)]


def field_name(ds: Dataset, keyword: str) -> str:
    """The attribute a view's ``keyword`` was read from (FrameComments for a frame's ImageComments)."""
    return getattr(ds, "field_names", {}).get(keyword, keyword)


def frame_number(view: Dataset) -> int | None:
    """The frame of a multi-frame instance a view stands for; None for a classic image."""
    return getattr(view, "frame_number", None)


def frame_pixels(view: Dataset) -> np.ndarray:
    """The frame's values after its Pixel Value Transformation (real values, float64)."""
    import highdicom as hd  # noqa: PLC0415  (only for multi-frame input)

    parent = view.parent
    image = getattr(parent, "_hd_image", None)
    if image is None:
        image = hd.Image.from_dataset(parent, copy=False)
        parent._hd_image = image  # decoded once per instance, not once per frame
    return image.get_frame(view.frame_number, apply_modality_transform=True, dtype=np.float64)


# Philips' MR Scale Slope SS: its floating-point (quantitative) value is FP = DV / (RS * SS), where
# DV = SV * RS + RI is the displayed value of the stored value SV (Rescale Slope RS, Intercept RI)
PHILIPS_MR_CREATOR = "Philips MR Imaging DD 001"  # block (2005,10xx): (2005,xx0E) MR Scale Slope, FL
PHILIPS_FRAME_CREATOR = "Philips MR Imaging DD 005"  # block (2005,14xx): (2005,xx0F) a frame's private items
_SCALE_SLOPE = 0x0E
_FRAME_ITEMS = 0x0F


def _private(ds: Dataset, creator: str, offset: int):
    """The value of the element at ``offset`` in ``creator``'s block of group 2005; None where absent."""
    try:
        return ds.private_block(0x2005, creator)[offset].value
    except (KeyError, ValueError):
        return None


def _own_scale_slope(ds: Dataset) -> float | None:
    """(2005,xx0E) of ``PHILIPS_MR_CREATOR`` in ``ds`` itself, when it is a number > 0."""
    value = _private(ds, PHILIPS_MR_CREATOR, _SCALE_SLOPE)
    if isinstance(value, bytes):  # VR UN (written without a private dictionary): FL, little endian
        value = np.frombuffer(value, "<f4")[0] if len(value) == 4 else None
    elif value is not None and not isinstance(value, (int, float, str)):
        value = value[0] if len(value) else None  # several values (FL is 1): the first
    try:
        scale = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return scale if np.isfinite(scale) and scale > 0 else None


def _groups_scale_slope(groups: Dataset | None) -> float | None:
    """The MR Scale Slope in a functional groups item: in the item itself, in its Pixel Value
    Transformation item, or in Philips' private frame items (2005,140F)."""
    if groups is None:
        return None
    places = [groups, *(groups.get("PixelValueTransformationSequence") or [])[:1]]
    private_items = _private(groups, PHILIPS_FRAME_CREATOR, _FRAME_ITEMS)
    if isinstance(private_items, DicomSequence):
        places += list(private_items)
    return next((s for s in map(_own_scale_slope, places) if s is not None), None)


def mr_scale_slope(view: Dataset) -> float | None:
    """Philips' MR Scale Slope of a classic image or a frame view; None where there is none, or
    it is not Philips' (private creator) or not > 0 (then the displayed values are the values).

    A frame's own functional groups come first, then the shared ones, then the instance."""
    k = frame_number(view)
    if k is not None:
        parent = view.parent
        per_frame = parent.get("PerFrameFunctionalGroupsSequence") or []
        shared = (parent.get("SharedFunctionalGroupsSequence") or [None])[0]
        for groups in (per_frame[k - 1] if k <= len(per_frame) else None, shared):
            scale = _groups_scale_slope(groups)
            if scale is not None:
                return scale
    return _own_scale_slope(view)  # a view carries its instance's top-level elements
