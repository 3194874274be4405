"""Enhanced MR Image Storage, as Siemens XA and Philips write it, made from classic images (fixtures).

``to_enhanced_mr`` turns a series of classic single-frame MR images (e.g. those
``dicom-node simulate t2`` writes) into one multi-frame instance: the geometry, echo time,
frame comments and rescale of each image go into its per-frame functional groups, the
orientation and pixel spacing into the shared ones, with a dimension organization (stack
position, then echo). ``style="siemens-xa"`` keeps the preparation time in Frame Comments
(``T2 prep. duration = N ms``) with the constant bSSFP readout TE as Effective Echo Time;
``style="philips"`` stores each frame scaled as Philips does, with the echo time as Effective
Echo Time: each frame has its own Rescale Slope RS and its own private MR Scale Slope SS
(2005,100E) (``PHILIPS_MR_CREATOR``, in the frame's private item (2005,140F)), and the stored
values SV are the image's values times SS, so that Philips' floating-point value FP = DV / (RS * SS)
(DV = SV * RS the displayed value) is the image's value and the displayed value is not.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import EnhancedMRImageStorage, ExplicitVRLittleEndian, generate_uid

from dicom_node.filemeta import file_meta_dataset

STYLES = ("siemens-xa", "philips")
# what a classic image has that an Enhanced MR image keeps in its functional groups
_PER_FRAME = ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "SliceThickness", "EchoTime",
              "ImageComments", "AcquisitionTime", "AcquisitionDate", "ContentTime", "RescaleSlope",
              "RescaleIntercept", "RescaleType", "InstanceNumber", "SliceLocation", "TriggerTime",
              "InversionTime", "SOPInstanceUID", "PixelData", "ImageType", "SequenceName", "AcquisitionNumber",
              # classic MR Image attributes whose Enhanced MR counterparts live in functional groups
              "ScanningSequence", "SequenceVariant", "ScanOptions", "RepetitionTime", "NumberOfAverages",
              "ImagingFrequency", "ImagedNucleus", "EchoTrainLength", "FlipAngle")
# the constant readout echo time of a T2-prepared bSSFP sequence, ms
READOUT_TE_MS = 1.07
# Philips' private blocks in group 2005: the MR Scale Slope is (2005,xx0E) of DD 001; a frame's
# functional groups hold Philips' own frame items in (2005,xx0F) of DD 005, block (2005,14xx)
PHILIPS_MR_CREATOR = "Philips MR Imaging DD 001"
PHILIPS_FRAME_CREATOR = "Philips MR Imaging DD 005"


def philips_slopes(k: int) -> tuple[float, float]:
    """(Rescale Slope, MR Scale Slope) of frame ``k`` (0-based) of a ``philips`` instance: both
    vary between frames, and binary fractions (exact as DS text and FL) >= 0.75."""
    return 1.0 + 0.25 * (k % 4), 0.75 + 0.5 * (k % 5)


def _philips_frame_items(groups: Dataset, scale_slope: float) -> None:
    """Philips' private frame item (2005,140F) in a frame's ``groups``, with its MR Scale Slope."""
    groups.add_new(0x20050014, "LO", PHILIPS_FRAME_CREATOR)  # Philips reserves block 14 for DD 005
    item = Dataset()
    item.private_block(0x2005, PHILIPS_MR_CREATOR, create=True).add_new(0x0E, "FL", scale_slope)
    groups.private_block(0x2005, PHILIPS_FRAME_CREATOR).add_new(0x0F, "SQ", [item])


def _item(**values) -> Dataset:
    ds = Dataset()
    for key, value in values.items():
        setattr(ds, key, value)
    return ds


def _frame_type(image_type: Sequence[str]) -> list[str]:
    values = [str(v) for v in image_type][:2] or ["ORIGINAL", "PRIMARY"]
    return [*values, "CARDIAC", "NONE"]  # Image Flavor, Derived Pixel Contrast (Enhanced MR defined terms)


def to_enhanced_mr(images: Sequence[Dataset], sop_instance_uid: str, *, style: str,
                   prep_ms: Sequence[float] | None = None) -> Dataset:
    """One Enhanced MR instance holding ``images`` (classic MR images of one series) as frames.

    ``prep_ms``: the T2 preparation time of each image (siemens-xa writes it in Frame
    Comments); without it, each image's EchoTime is its echo (philips).
    """
    if style not in STYLES:
        raise ValueError(f"style must be one of {STYLES}, not {style!r}")
    first = images[0]
    ds = Dataset()
    for elem in first:
        if elem.keyword not in _PER_FRAME:
            ds.add(elem)
    ds.file_meta = file_meta_dataset(EnhancedMRImageStorage, sop_instance_uid, ExplicitVRLittleEndian)
    ds.SOPClassUID = EnhancedMRImageStorage
    ds.SOPInstanceUID = sop_instance_uid
    ds.InstanceNumber = 1
    ds.ImageType = _frame_type(first.get("ImageType", []))
    ds.Manufacturer = "Siemens Healthineers" if style == "siemens-xa" else "Philips"
    ds.ManufacturerModelName = "MAGNETOM Sola" if style == "siemens-xa" else "Ingenia"
    ds.SoftwareVersions = "syngo MR XA31" if style == "siemens-xa" else "5.7.1"
    ds.ContentDate = first.get("ContentDate", first.get("StudyDate", ""))
    ds.ContentTime = first.get("ContentTime", first.get("StudyTime", ""))
    ds.AcquisitionDateTime = f"{first.get('AcquisitionDate', first.get('StudyDate', ''))}" \
                             f"{first.get('AcquisitionTime', '')}"
    ds.PulseSequenceName = "*tfi2d1" if style == "siemens-xa" else "T2_GraSE"
    ds.PixelPresentation = "MONOCHROME"
    ds.VolumetricProperties = "VOLUME"
    ds.VolumeBasedCalculationTechnique = "NONE"
    ds.ComplexImageComponent = "MAGNITUDE"
    ds.AcquisitionContrast = "T2"
    ds.ContentQualification = "PRODUCT"
    ds.NumberOfFrames = len(images)
    ds.DeviceSerialNumber = "170501" if style == "siemens-xa" else "45123"
    ds.AcquisitionContextSequence = []
    ds.ResonantNucleus = "1H"
    ds.KSpaceFiltering = "NONE"
    ds.ApplicableSafetyStandardAgency = "IEC"
    ds.AcquisitionDuration = 12.0
    ds.LossyImageCompression = "00"
    ds.BurnedInAnnotation = "NO"
    ds.PresentationLUTShape = "IDENTITY"
    # MR Pulse Sequence: a T2-prepared bSSFP (Siemens) or a multi-echo gradient-and-spin-echo (Philips)
    bssfp = style == "siemens-xa"
    ds.EchoPulseSequence = "GRADIENT" if bssfp else "BOTH"
    if not bssfp:  # only for spin-echo sequences
        ds.MultipleSpinEcho = "YES"
    ds.MultiPlanarExcitation = "NO"
    ds.PhaseContrast = "NO"
    ds.TimeOfFlightContrast = "NO"
    ds.SteadyStatePulseSequence = "FREE_PRECESSION" if bssfp else "NONE"
    ds.EchoPlanarPulseSequence = "NO"
    ds.SaturationRecovery = "NO"
    ds.SpectrallySelectedSuppression = "NONE"
    ds.OversamplingPhase = "NONE"
    ds.GeometryOfKSpaceTraversal = "RECTILINEAR"
    ds.SegmentedKSpaceTraversal = "SINGLE" if bssfp else "PARTIAL"
    ds.NumberOfKSpaceTrajectories = 1
    ds.RectilinearPhaseEncodeReordering = "LINEAR"

    # dimensions: the slice position along the stack, then the echo / preparation time
    normal = np.cross(np.asarray(first.ImageOrientationPatient[:3], float),
                      np.asarray(first.ImageOrientationPatient[3:], float))
    along = [float(np.dot(np.asarray(d.ImagePositionPatient, float), normal)) for d in images]
    positions = sorted(set(round(a, 3) for a in along))
    echoes = [float(p) for p in prep_ms] if prep_ms is not None else [float(d.EchoTime) for d in images]
    echo_values = sorted(set(echoes))
    organization = generate_uid(entropy_srcs=[str(sop_instance_uid), "dimension-organization"])
    ds.DimensionOrganizationSequence = [_item(DimensionOrganizationUID=organization)]
    ds.DimensionIndexSequence = [
        _item(DimensionOrganizationUID=organization, DimensionIndexPointer=0x00209057,
              FunctionalGroupPointer=0x00209111, DimensionDescriptionLabel="In-Stack Position"),
        _item(DimensionOrganizationUID=organization, DimensionIndexPointer=0x00189082,
              FunctionalGroupPointer=0x00189114, DimensionDescriptionLabel="Effective Echo Time"),
    ]
    heart = _item(CodeValue="80891009", CodingSchemeDesignator="SCT", CodeMeaning="Heart")
    ds.SharedFunctionalGroupsSequence = [_item(
        PlaneOrientationSequence=[_item(ImageOrientationPatient=list(first.ImageOrientationPatient))],
        PixelMeasuresSequence=[_item(PixelSpacing=list(first.PixelSpacing),
                                     SliceThickness=first.get("SliceThickness", 8.0))],
        FrameAnatomySequence=[_item(AnatomicRegionSequence=[heart], FrameLaterality="U")],
        MRTimingAndRelatedParametersSequence=[_item(
            RepetitionTime=first.get("RepetitionTime", 3.2), FlipAngle=first.get("FlipAngle", 70.0),
            EchoTrainLength=1 if bssfp else 3, RFEchoTrainLength=0 if bssfp else 3,
            GradientEchoTrainLength=1, GradientOutputType="DB_DT", GradientOutput=20.0,
            OperatingModeSequence=[_item(OperatingModeType="STATIC FIELD", OperatingMode="IEC_NORMAL")],
            SpecificAbsorptionRateSequence=[_item(SpecificAbsorptionRateDefinition="IEC_WHOLE_BODY",
                                                  SpecificAbsorptionRateValue=0.5)])],
        MRModifierSequence=[_item(InversionRecovery="NO", FlowCompensation="NONE",
                                  T2Preparation="YES" if bssfp else "NO", SpectrallySelectedExcitation="NONE",
                                  SpatialPresaturation="NONE", PartialFourier="NO", ParallelAcquisition="NO")],
        MRImagingModifierSequence=[_item(MagnetizationTransfer="NONE", BloodSignalNulling="NO", Tagging="NONE",
                                         TransmitterFrequency=63.9, PixelBandwidth=930.0)],
        MRReceiveCoilSequence=[_item(ReceiveCoilName="Body18", ReceiveCoilType="MULTICOIL",
                                     ReceiveCoilManufacturerName=ds.Manufacturer,
                                     QuadratureReceiveCoil="NO",
                                     MultiCoilDefinitionSequence=[_item(MultiCoilElementName="BO1",
                                                                        MultiCoilElementUsed="YES")])],
        MRTransmitCoilSequence=[_item(TransmitCoilName="Body", TransmitCoilType="BODY",
                                      TransmitCoilManufacturerName=ds.Manufacturer)],
        MRFOVGeometrySequence=[_item(InPlanePhaseEncodingDirection="ROW", MRAcquisitionFrequencyEncodingSteps=int(
            first.Columns), MRAcquisitionPhaseEncodingStepsInPlane=int(first.Rows), PercentSampling=100.0,
            PercentPhaseFieldOfView=100.0)],
        MRAveragesSequence=[_item(NumberOfAverages=1)],
    )]

    frames, per_frame = [], []
    for k, image in enumerate(images):
        values = image.pixel_array.astype(np.float64) * float(image.get("RescaleSlope", 1) or 1) + float(
            image.get("RescaleIntercept", 0) or 0)
        # Philips scales each frame its own way: FP = SV * RS / (RS * SS) = SV / SS is the image's value
        slope, scale_slope = philips_slopes(k) if style == "philips" else (1.0, 1.0)
        frames.append(np.clip(np.round(values * scale_slope), 0, 65535).astype(np.uint16))
        when = f"{image.get('AcquisitionDate', first.get('StudyDate', ''))}{image.get('AcquisitionTime', '')}"
        content = _item(
            FrameAcquisitionDateTime=when, FrameReferenceDateTime=when, FrameAcquisitionDuration=180.0,
            StackID="1",
            InStackPositionNumber=positions.index(round(along[k], 3)) + 1,
            DimensionIndexValues=[positions.index(round(along[k], 3)) + 1, echo_values.index(echoes[k]) + 1],
        )
        if style == "siemens-xa" and image.get("ImageComments"):
            content.FrameComments = image.ImageComments  # where XA keeps "T2 prep. duration = N ms"
        groups = _item(
            FrameContentSequence=[content],
            PlanePositionSequence=[_item(ImagePositionPatient=list(image.ImagePositionPatient))],
            MREchoSequence=[_item(EffectiveEchoTime=READOUT_TE_MS if style == "siemens-xa" else echoes[k])],
            MRImageFrameTypeSequence=[_item(FrameType=_frame_type(image.get("ImageType", [])),
                                            PixelPresentation="MONOCHROME", VolumetricProperties="VOLUME",
                                            VolumeBasedCalculationTechnique="NONE",
                                            ComplexImageComponent="MAGNITUDE", AcquisitionContrast="T2")],
            PixelValueTransformationSequence=[_item(RescaleSlope=f"{slope:g}", RescaleIntercept="0",
                                                    RescaleType="US")],
        )
        if style == "philips":
            _philips_frame_items(groups, scale_slope)
        per_frame.append(groups)
    ds.PerFrameFunctionalGroupsSequence = per_frame
    ds.Rows, ds.Columns = frames[0].shape
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.PixelData = np.stack(frames).tobytes()
    return ds
