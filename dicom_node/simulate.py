"""``dicom-node simulate``: the numerical phantom written as a realistic MR series + truth."""

from __future__ import annotations

import datetime as _dt
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage

from dicom_node import __version__
from dicom_node.filemeta import file_meta_dataset
from dicom_node.synthetic import synthetic_uid
from pinn_engine.perfusion import PerfusionPhantom, perfusion_phantom
from pinn_engine.phantom import Anatomy, T2Phantom, t2_phantom, with_oedema
from pinn_engine.segmentation import display_axes

# Short-axis geometry in patient coordinates (LPS): the LV long axis runs base -> apex
# towards patient left, anterior and inferior; the phantom is drawn in the anatomical display
# frame (anterior up, RV on the image left, i.e. the patient's right-anterior).
LONG_AXIS = np.array([0.62, -0.47, -0.63])
LONG_AXIS /= np.linalg.norm(LONG_AXIS)
HEART_CENTRE_MM = np.array([20.0, 10.0, 60.0])


def sax_orientation(normal: np.ndarray = LONG_AXIS) -> tuple[np.ndarray, np.ndarray]:
    """(row, column) direction cosines of the phantom's images: the display frame of the plane
    (column = image down = posterior-ish; seen from the apex, so row x column points to the base).

    Until generator 3 the rows ran the other way, which put the phantom's RV on the patient's
    left: harmless for AHA (which reads the sense from the RV), wrong anatomy for the network.
    """
    return display_axes(normal)


def format_number(v: float) -> str:
    return f"{v:.6f}".rstrip("0").rstrip(".")


def mr_instance(*, seed: int, patient_id: str, series_number: int, sop_key: tuple, when: _dt.datetime,
                ipp: np.ndarray, row: np.ndarray, col: np.ndarray, centre: np.ndarray, dx: float,
                pixels: np.ndarray, instance_number: int, kind: dict) -> Dataset:
    """One synthetic MR Image Storage instance; ``kind`` holds the series-specific attributes
    (``series_key``, taken out, names the series with ``seed``, ``patient_id`` and ``series_number``;
    the rest are keywords set last, so they override the defaults: Manufacturer, ImageType ...)."""
    sop = synthetic_uid(*sop_key)
    meta = file_meta_dataset(MRImageStorage, sop, ExplicitVRLittleEndian)
    study_start = _dt.datetime(2026, 1, 15, 10, 30, 0)
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "OTHER"]
    ds.SOPClassUID = MRImageStorage
    ds.SOPInstanceUID = sop
    ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = study_start.strftime("%Y%m%d")
    ds.StudyTime = ds.SeriesTime = study_start.strftime("%H%M%S")
    ds.AcquisitionTime = ds.ContentTime = when.strftime("%H%M%S.%f")[:13]
    ds.AccessionNumber = f"SIM{seed:06d}"
    ds.Modality = "MR"
    ds.Manufacturer = "PINN node simulator"
    ds.ManufacturerModelName = "numerical phantom"
    ds.SoftwareVersions = f"dicom-node {__version__}"
    ds.InstitutionName = "Synthetic"
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = "Cardiac MR (synthetic)"
    ds.PatientName = "Phantom^Cardiac"
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
    ds.SliceThickness = 8.0
    ds.EchoTrainLength = 1
    ds.MagneticFieldStrength = 1.5
    ds.ImagingFrequency = 63.9
    ds.ImagedNucleus = "1H"
    ds.NumberOfAverages = 1
    ds.PatientPosition = "HFS"
    ds.StudyInstanceUID = synthetic_uid("study", seed, patient_id)
    ds.SeriesInstanceUID = synthetic_uid(kind.pop("series_key"), seed, patient_id, series_number)
    ds.StudyID = "1"
    ds.SeriesNumber = series_number
    ds.InstanceNumber = instance_number
    ds.ImagePositionPatient = [format_number(v) for v in ipp]
    ds.ImageOrientationPatient = [format_number(v) for v in (*row, *col)]
    ds.FrameOfReferenceUID = synthetic_uid("frame", seed, patient_id)
    ds.PositionReferenceIndicator = ""
    ds.SliceLocation = format_number(float(centre.dot(LONG_AXIS)))
    for key, value in kind.items():
        setattr(ds, key, value)
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = pixels.shape
    ds.PixelSpacing = [format_number(dx), format_number(dx)]
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.PixelData = pixels.tobytes()
    return ds


def _slice_position(s: int, n_slices: int, spacing: float, rows: int, cols: int, dx: float, row, col):
    centre = HEART_CENTRE_MM + (s - (n_slices - 1) / 2) * spacing * LONG_AXIS
    return centre, centre - (cols - 1) / 2 * dx * row - (rows - 1) / 2 * dx * col


def stack_layout(phantom: T2Phantom | PerfusionPhantom, out: Path, pixel_scale: float):
    """What every instance of a phantom stack shares: orientation, pixel spacing and stored
    pixels, and per slice its centre and image position (``out`` is created)."""
    out.mkdir(parents=True, exist_ok=True)
    row, col = sax_orientation()
    n_slices, _, rows, cols = phantom.images.shape
    dx = phantom.pixel_spacing_mm
    pixels = np.clip(np.rint(phantom.images * pixel_scale), 0, 65535).astype(np.uint16)
    positions = [_slice_position(s, n_slices, phantom.slice_spacing_mm, rows, cols, dx, row, col)
                 for s in range(n_slices)]
    return row, col, dx, pixels, positions


def write_t2_series(phantom: T2Phantom, out: Path, seed: int, pixel_scale: float = 1.0,
                    patient_id: str = "PHANTOM01", series_number: int = 401) -> list[Path]:
    """One MR Image Storage instance per slice and preparation time."""
    row, col, dx, pixels, positions = stack_layout(phantom, out, pixel_scale)
    n_echoes = phantom.images.shape[1]
    now = _dt.datetime(2026, 1, 15, 10, 30, 0)
    paths = []
    for s, (centre, ipp) in enumerate(positions):
        for e in range(n_echoes):
            te = format_number(phantom.te_ms[e])
            ds = mr_instance(
                seed=seed, patient_id=patient_id, series_number=series_number,
                sop_key=("t2prep-instance", seed, patient_id, series_number, s, e),
                when=now + _dt.timedelta(seconds=12 * s + e), ipp=ipp, row=row, col=col, centre=centre, dx=dx,
                pixels=pixels[s, e], instance_number=s * n_echoes + e + 1,
                kind={"series_key": "t2prep-series", "SeriesDescription": "T2prep SSFP multi-echo SAX (synthetic)",
                      "ProtocolName": "T2 map SAX", "SequenceName": f"T2prep{te}", "RepetitionTime": 3.2,
                      "EchoTime": te,  # the T2-preparation duration
                      "FlipAngle": 70.0, "AcquisitionNumber": e + 1, "ImageComments": f"T2 preparation {te} ms"},
            )
            path = out / f"IM_s{s + 1:02d}_e{e + 1:02d}.dcm"
            ds.save_as(path, enforce_file_format=True)
            paths.append(path)
    return paths


def write_perfusion_series(phantom: PerfusionPhantom, out: Path, seed: int, pixel_scale: float = 1000.0,
                           patient_id: str = "PHANTOM01", series_number: int = 501,
                           description: str = "First-pass perfusion SR-GRE (synthetic)",
                           start: _dt.datetime = _dt.datetime(2026, 1, 15, 10, 45, 0),
                           dose_ml: float | None = None) -> list[Path]:
    """One instance per slice and dynamic; TriggerTime/AcquisitionTime/TemporalPositionIdentifier
    carry the frame time, ImageComments the saturation-recovery delay ("saturation delay 100 ms";
    InversionTime is reserved to IR sequences); ``dose_ml``: ContrastBolusVolume."""
    row, col, dx, pixels, positions = stack_layout(phantom, out, pixel_scale)
    frames = phantom.images.shape[1]
    extra = {} if dose_ml is None else {"ContrastBolusVolume": format_number(dose_ml)}
    paths = []
    for s, (centre, ipp) in enumerate(positions):
        for f in range(frames):
            t_s = float(phantom.t_min[s, f] * 60.0)
            ds = mr_instance(
                seed=seed, patient_id=patient_id, series_number=series_number,
                sop_key=("perfusion-instance", seed, patient_id, series_number, s, f),
                when=start + _dt.timedelta(seconds=t_s), ipp=ipp, row=row, col=col, centre=centre, dx=dx,
                pixels=pixels[s, f], instance_number=s * frames + f + 1,
                kind={"series_key": "perfusion-series", "SeriesDescription": description,
                      "ProtocolName": "Stress perfusion", "SequenceName": "SR_GRE", "RepetitionTime": 2.5,
                      "EchoTime": 1.2, "FlipAngle": 12.0, "ScanOptions": "CG",
                      "SequenceVariant": ["SK", "SS", "MP"],
                      "ImageComments": f"saturation delay {format_number(phantom.ts_ms)} ms",
                      "TriggerTime": format_number((t_s - float(phantom.t_min[0, f] * 60.0)) * 1000.0 + 300.0),
                      "TemporalPositionIdentifier": f + 1,
                      "NumberOfTemporalPositions": frames, "AcquisitionNumber": f + 1,
                      "ContrastBolusAgent": "gadobutrol (simulated)", **extra},
            )
            path = out / f"IM_s{s + 1:02d}_t{f + 1:03d}.dcm"
            ds.save_as(path, enforce_file_format=True)
            paths.append(path)
    return paths


def make_t2_phantom(seed: int = 0, snr: float = 40.0, te_ms: tuple[float, ...] = (0.0, 35.0, 55.0),
                    slices: int = 3, matrix: int = 192, blood: str = "bright", oedema: bool = True) -> T2Phantom:
    """The T2 phantom that ``simulate_t2`` (and ``vendors``) write: 320 mm field of view at 192."""
    anatomy = Anatomy(matrix=matrix, fov_mm=320.0 * matrix / 192)
    if oedema:
        anatomy = with_oedema(anatomy)
    return t2_phantom(anatomy, te_ms=te_ms, snr=snr, n_slices=slices, seed=seed, blood=blood)


def write_t2_truth(out: Path, phantom: T2Phantom, snr: float, seed: int, **extra) -> None:
    """``truth.npz``: T2, M0 in stored units, labels, tissues, noise, preparation times."""
    np.savez_compressed(
        out / "truth.npz", t2_ms=phantom.t2_ms.astype(np.float32), m0=phantom.m0.astype(np.float32),
        labels=phantom.labels, tissues=phantom.tissues, sigma=phantom.sigma, te_ms=phantom.te_ms, snr=snr, seed=seed,
        **extra,
    )


def simulate_t2(out: Path, seed: int = 0, snr: float = 40.0, te_ms: tuple[float, ...] = (0.0, 35.0, 55.0),
                slices: int = 3, matrix: int = 192, blood: str = "bright", oedema: bool = True) -> T2Phantom:
    """Write the T2 phantom series and ``truth.npz`` (T2, M0 in stored units, labels) to ``out``.

    ``vendors.simulate_vendor_t2`` writes the same phantom as a scanner's study would hold it.
    """
    phantom = make_t2_phantom(seed=seed, snr=snr, te_ms=te_ms, slices=slices, matrix=matrix, blood=blood,
                              oedema=oedema)
    out.mkdir(parents=True, exist_ok=True)
    write_t2_series(phantom, out, seed)
    write_t2_truth(out, phantom, snr, seed)
    return phantom


PREBOLUS_DOSE = 0.1  # of the main dose


def simulate_perfusion(out: Path, seed: int = 0, snr: float = 40.0, slices: int = 3, frames: int = 60,
                       matrix: int = 128, ischaemia: bool = True, r2star: float = 0.0,
                       prebolus: bool = False) -> PerfusionPhantom:
    """Write the perfusion phantom series and ``truth.npz`` (parameter maps, AIF, labels) to ``out``.

    ``r2star`` (1/s/mM): T2* loss of the blood signal at high concentration (what flattens a
    full-dose arterial input; 0: none). ``prebolus``: also write, to ``out/prebolus``, a
    pre-bolus series of the same study (a tenth of the dose, 40 frames, two minutes earlier,
    its own clock; both series state their ContrastBolusVolume).
    """
    anatomy = Anatomy(matrix=matrix, fov_mm=320.0 * matrix / 192)
    phantom = perfusion_phantom(anatomy, n_slices=slices, frames=frames, snr=snr, seed=seed,
                                ischaemia=(200.0, 90.0, 0.4) if ischaemia else None, r2star=r2star)
    out.mkdir(parents=True, exist_ok=True)
    write_perfusion_series(phantom, out, seed, dose_ml=7.5 if prebolus else None)
    if prebolus:
        pre = perfusion_phantom(anatomy, n_slices=slices, frames=40, snr=snr, seed=seed + 1000,
                                ischaemia=(200.0, 90.0, 0.4) if ischaemia else None, r2star=r2star,
                                dose=PREBOLUS_DOSE, arrival_s=5.0)
        write_perfusion_series(pre, out / "prebolus", seed, series_number=500, dose_ml=7.5 * PREBOLUS_DOSE,
                               description="Perfusion pre-bolus SR-GRE (synthetic)",
                               start=_dt.datetime(2026, 1, 15, 10, 43, 0))
    np.savez_compressed(
        out / "truth.npz", fp=phantom.fp.astype(np.float32), vp=phantom.vp.astype(np.float32),
        ve=phantom.ve.astype(np.float32), ps=phantom.ps.astype(np.float32), labels=phantom.labels,
        aif_blood_mM=phantom.aif_blood_mM, t_min=phantom.t_min, ts_ms=phantom.ts_ms, sigma=phantom.sigma, seed=seed,
    )
    return phantom
