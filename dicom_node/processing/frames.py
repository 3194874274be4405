"""Enhanced (multi-frame) MR images as one header view per frame.

Siemens XA and Philips send Enhanced MR Image Storage objects: one instance may hold every
slice and preparation time, and a frame's geometry, echo time, comments, type and rescale
live in its functional groups (shared, or per frame). ``frame_views`` turns such an instance
into one dataset per frame that carries those values where a classic MR image has them
(ImagePositionPatient, EchoTime, ImageComments, ImageType, RescaleSlope, ...), so that
classification and loading treat both the same way. A view keeps the instance's SOP
Instance UID; ``frame_number`` says which frame it is, and ``frame_pixels`` decodes that
frame with its own Pixel Value Transformation (highdicom). Classic single-frame images are
their own view.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from pydicom.dataset import Dataset

# (functional group sequence, attribute in it, attribute of a classic MR image)
_FROM_GROUPS = (
    ("PlanePositionSequence", "ImagePositionPatient", "ImagePositionPatient"),
    ("PlaneOrientationSequence", "ImageOrientationPatient", "ImageOrientationPatient"),
    ("PixelMeasuresSequence", "PixelSpacing", "PixelSpacing"),
    ("PixelMeasuresSequence", "SliceThickness", "SliceThickness"),
    ("PixelMeasuresSequence", "SpacingBetweenSlices", "SpacingBetweenSlices"),
    ("MREchoSequence", "EffectiveEchoTime", "EchoTime"),
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
