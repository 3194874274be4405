"""T2 studies of the numerical phantom written as scanners write them (``dicom-node simulate t2 --vendor``).

The phantom and its images are ``simulate``'s; what differs is how a vendor lays the study out
and where it puts the preparation time:

- ``siemens`` (MyoMaps, classic MR Image Storage): one measurement (breath-hold) per slice, so
  one series per slice; the preparation time only in Image Comments ("T2 prep. duration =
  25 ms", after other text in some), EchoTime the constant bSSFP readout TE (1.07 ms),
  SequenceName ``*tfi2d1_63``; per slice the source series (ORIGINAL\\PRIMARY\\M\\ND), its
  motion-corrected copy (DERIVED\\PRIMARY\\M\\ND\\MOCO, "T2Map_MOCO") and the scanner's T2 map
  (DERIVED\\PRIMARY\\T2 MAP\\ND, "T2Map_MOCO_T2"); plus a MOLLI 5(3)3 T1 series (8 images per
  slice, InversionTime and Image Comments "TIeff 100 ms"). Every image carries the CSA
  series header (0029,1020) with the protocol's ``sPrepPulses.adT2PrepDuration`` -- the MOLLI
  series too, with the same values, as T1 protocols carry them by default.
  ``image_comments=False`` writes what older software sends (no Image Comments).
- ``ge``: one series of every slice and preparation time, echo fastest (instance number
  ``slice * echoes + echo + 1``), EchoTime = the preparation time.
- ``siemens-xa`` (MyoMaps on XA software): the ``siemens`` study without MOCO copies, each
  slice's source series one Enhanced MR Image Storage instance (``enhanced_mr``: the
  preparation time in each frame's Frame Comments, the readout TE as Effective Echo Time);
  the scanner's T2 map and the MOLLI series stay classic images here.
- ``philips``: the multi-echo series (every slice and echo time) as one Enhanced MR instance
  with each frame scaled by its own Rescale Slope and private MR Scale Slope (2005,100E) (the
  images' values are Philips' floating-point values, not the displayed ones), and the scanner's
  T2 map, marked ORIGINAL as Philips does (ImageType ORIGINAL\\PRIMARY\\T2 MAP\\T2,
  description ending ``_T2``).

One sub-folder per series (``<series number>_<description>``), ``truth.npz`` beside them
(``simulate_t2``'s, plus ``vendor``). Instances are valid MR Image Storage objects with unique
UIDs; a study shares its Study Instance UID and Frame of Reference UID.
"""

from __future__ import annotations

import datetime as _dt
import re
import struct
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset

from dicom_node.enhanced_mr import to_enhanced_mr
from dicom_node.simulate import format_number, make_t2_phantom, mr_instance, stack_layout, write_t2_truth
from dicom_node.synthetic import synthetic_uid
from pinn_engine.phantom import T2Phantom, Tissue

VENDORS = ("siemens", "siemens-xa", "philips", "ge")

SIEMENS = {"Manufacturer": "SIEMENS", "ManufacturerModelName": "MAGNETOM Aera", "SoftwareVersions": "syngo MR E11",
           "StationName": "AWP45123", "DeviceSerialNumber": "45123", "InstitutionName": "Synthetic Heart Centre",
           "StudyDescription": "Cardiac^MyoMaps"}
GE = {"Manufacturer": "GE MEDICAL SYSTEMS", "ManufacturerModelName": "SIGNA Artist",
      "SoftwareVersions": ["27", "LX", "MR Software release:MR27.0_R04_2031.a"], "StationName": "GEMR1",
      "DeviceSerialNumber": "000000MR01", "InstitutionName": "Synthetic Heart Centre", "StudyDescription": "CARDIAC"}

SIEMENS_TE_MS = 1.07  # the bSSFP readout's echo time, the same for every image
MOLLI_TI_MS = (100.0, 180.0, 1100.0, 1180.0, 2100.0, 2180.0, 3100.0, 4100.0)  # 5(3)3 at 60 /min, sorted
# native T1 at 1.5 T (ms) of the phantom's tissues, for the MOLLI decoy
T1_MS = {Tissue.AIR: 1.0, Tissue.BODY: 900.0, Tissue.FAT: 260.0, Tissue.LUNG: 1100.0, Tissue.LIVER: 580.0,
         Tissue.SPINE: 800.0, Tissue.LV_BLOOD: 1550.0, Tissue.MYOCARDIUM: 1000.0, Tissue.OEDEMA: 1150.0,
         Tissue.RV_BLOOD: 1550.0, Tissue.RV_WALL: 1000.0, Tissue.PAPILLARY: 1000.0, Tissue.PERICARDIAL_FAT: 260.0}
STUDY_START = _dt.datetime(2026, 1, 15, 10, 30, 0)


def _folder(out: Path, series_number: int, description: str) -> Path:
    return out / f"{series_number:03d}_{re.sub(r'[^A-Za-z0-9]+', '_', description).strip('_')}"


def _save(ds: Dataset, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"IM_{int(ds.InstanceNumber):04d}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def csa_series_header(ascconv: str) -> bytes:
    """A Siemens CSA2 ("SV10") header holding one element, MrPhoenixProtocol, with the protocol text."""
    data = ("<XProtocol>\n{\n  <Name> \"PhoenixMetaProtocol\"\n}\n" + ascconv).encode("latin-1") + b"\0"
    item = struct.pack("<4i", len(data), len(data), 77, len(data)) + data + b"\0" * (-len(data) % 4)
    tag = (b"MrPhoenixProtocol".ljust(64, b"\0") + struct.pack("<i", 1) + b"UN\0\0"
           + struct.pack("<3i", 19, 1, 77) + item)
    return b"SV10\x04\x03\x02\x01" + struct.pack("<2I", 1, 77) + tag


def siemens_protocol(protocol_name: str, t2prep_ms: tuple[float, ...], sequence: str = "%SiemensSeq%\\tfi",
                     inversion: bool = False) -> str:
    """The ASCII protocol (ASCCONV) of a MyoMaps measurement, with the values that matter here.

    As on the scanner, array entries equal to 0 are not listed (the first T2-prep duration, 0 ms).
    """
    lines = ["### ASCCONV BEGIN object=MrProtDataImpl@MrProtocolData version=51130001 "
             "converter=%MEASCONST%/ConverterList/Prot_Converter.txt ###",
             "ulVersion                                = 0x14b44b6",
             f'tSequenceFileName                        = ""{sequence}""',
             f'tProtocolName                            = ""{protocol_name}""',
             "alTR[0]                                  = 2480",
             f"alTE[0]                                  = {int(round(SIEMENS_TE_MS * 1000))}",
             f"sPrepPulses.ucInversion                  = {'0x2' if inversion else '0x4'}",
             f"sPrepPulses.ucT2Prep                     = {'0x1' if inversion else '0x2'}",
             f"sPrepPulses.adT2PrepDuration.__attribute__.size = {len(t2prep_ms)}"]
    lines += [f"sPrepPulses.adT2PrepDuration[{i}]          = {format_number(v)}"
              for i, v in enumerate(t2prep_ms) if v != 0.0]
    lines += ["sKSpace.lBaseResolution                  = 192", "### ASCCONV END ###", ""]
    return "\n".join(lines)


def _add_csa(ds: Dataset, protocol: str) -> None:
    block = ds.private_block(0x0029, "SIEMENS CSA HEADER", create=True)
    block.add_new(0x08, "CS", "IMAGE NUM 4")
    block.add_new(0x09, "LO", "20100114")
    block.add_new(0x18, "CS", "MR")
    block.add_new(0x19, "LO", "20100114")
    block.add_new(0x20, "OB", csa_series_header(protocol))


def _rician(clean: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    return np.hypot(clean + rng.normal(0.0, sigma, clean.shape), rng.normal(0.0, sigma, clean.shape))


def write_siemens_t2_study(phantom: T2Phantom, out: Path, seed: int, *, patient_id: str = "SIEMENS01",
                           moco: bool = True, t2_map: bool = True, molli: bool = True,
                           image_comments: bool = True) -> dict[str, list[Path]]:
    """The study a Siemens MyoMaps protocol sends (module docstring); folder name -> files."""
    row, col, dx, pixels, positions = stack_layout(phantom, out, 1.0)
    te = tuple(float(t) for t in phantom.te_ms)
    n_echoes = len(te)
    written: dict[str, list[Path]] = {}

    def series(number: int, description: str, images: list[tuple[int, np.ndarray, float, dict]],
               when: _dt.datetime, key: str, protocol: str) -> None:
        """One series: (slice index, stored pixels, seconds after ``when``, attributes) per image."""
        folder = _folder(out, number, description)
        paths = []
        for k, (slice_index, image, offset_s, extra) in enumerate(images):
            centre, ipp = positions[slice_index]
            kind = {"series_key": f"siemens-{key}", **SIEMENS, "SeriesDescription": description,
                    "SeriesTime": when.strftime("%H%M%S.%f")[:13], "ScanningSequence": "GR",
                    "SequenceVariant": ["SK", "SS"], "RepetitionTime": 2.48, "EchoTime": format_number(SIEMENS_TE_MS),
                    "FlipAngle": 70.0, "AcquisitionNumber": 1, "SliceThickness": 8.0, **extra}
            ds = mr_instance(seed=seed, patient_id=patient_id, series_number=number,
                             sop_key=("siemens-instance", key, seed, patient_id, number, k),
                             when=when + _dt.timedelta(seconds=offset_s), ipp=ipp, row=row, col=col, centre=centre,
                             dx=dx, pixels=image, instance_number=k + 1, kind=kind)
            _add_csa(ds, protocol)
            paths.append(_save(ds, folder))
        written[folder.name] = paths

    t2_protocol = siemens_protocol("T2Map", te)
    for s in range(len(positions)):
        number = 10 + 3 * s
        start = STUDY_START + _dt.timedelta(minutes=10, seconds=40 * s)
        common = {"ProtocolName": "T2Map", "SequenceName": "*tfi2d1_63"}

        def comments(e: int, prefix: str = "") -> dict:
            if not image_comments:
                return {}
            return {"ImageComments": f"{prefix}T2 prep. duration = {format_number(te[e])} ms"}

        # the mid slice's source images say more before the preparation time, as some software does
        prefix = "Breath-hold 2, " if s == 1 else ""
        raw = [(s, pixels[s, e], 4.0 * e, {**common, "ImageType": ["ORIGINAL", "PRIMARY", "M", "ND"],
                                           **comments(e, prefix)}) for e in range(n_echoes)]
        series(number, "T2Map", raw, start, "t2-source", t2_protocol)
        if moco:
            corrected = [(s, pixels[s, e], 4.0 * e, {**common, "ImageType": ["DERIVED", "PRIMARY", "M", "ND", "MOCO"],
                                                     **comments(e, "MOCO, ")}) for e in range(n_echoes)]
            series(number + 1, "T2Map_MOCO", corrected, start, "t2-moco", t2_protocol)
        if t2_map:
            t2 = np.clip(np.rint(phantom.t2_ms[s]), 0, 4095).astype(np.uint16)
            series(number + 2, "T2Map_MOCO_T2",
                   [(s, t2, 0.0, {**common, "ImageType": ["DERIVED", "PRIMARY", "T2 MAP", "ND"]})],
                   start, "t2-map", t2_protocol)
    if molli:
        rng = np.random.default_rng(seed + 7919)
        t1 = np.vectorize(lambda t: T1_MS.get(Tissue(int(t)), 1000.0))(phantom.tissues)
        images = []
        for s in range(len(positions)):
            for ti in MOLLI_TI_MS:
                clean = phantom.m0[s] * np.abs(1.0 - 2.0 * np.exp(-ti / t1[s]))
                image = np.clip(np.rint(_rician(clean, phantom.sigma, rng)), 0, 65535).astype(np.uint16)
                images.append((s, image, 20.0 * s + ti / 1000.0,
                               {"ProtocolName": "MOLLI_5(3)3_SAX", "SequenceName": "*tfi2d1_79",
                                "ImageType": ["ORIGINAL", "PRIMARY", "M", "ND"], "ScanningSequence": ["GR", "IR"],
                                "SequenceVariant": ["SK", "SP", "MP"], "FlipAngle": 35.0,
                                "InversionTime": format_number(ti), "ImageComments": f"TIeff {format_number(ti)} ms"}))
        # T1 protocols carry the T2-prep array with values too: the reason it is read so carefully
        series(5, "MOLLI_5(3)3_SAX", images, STUDY_START + _dt.timedelta(minutes=5), "molli",
               siemens_protocol("MOLLI_5(3)3_SAX", te, inversion=True))
    return dict(sorted(written.items()))  # by series number


def write_ge_t2_series(phantom: T2Phantom, out: Path, seed: int, *, patient_id: str = "GE01",
                       series_number: int = 700) -> dict[str, list[Path]]:
    """GE: one series of N preparation times x M slices, echo fastest; EchoTime = preparation time."""
    row, col, dx, pixels, positions = stack_layout(phantom, out, 1.0)
    n_echoes = phantom.images.shape[1]
    description = "T2 Map SAX"
    folder = _folder(out, series_number, description)
    start = STUDY_START + _dt.timedelta(minutes=12)
    paths = []
    for s, (centre, ipp) in enumerate(positions):
        for e in range(n_echoes):
            kind = {"series_key": "ge-t2", **GE, "SeriesDescription": description, "ProtocolName": "CARDIAC T2 MAP",
                    "SeriesTime": start.strftime("%H%M%S"), "ImageType": ["ORIGINAL", "PRIMARY", "OTHER"],
                    "ScanningSequence": "GR", "SequenceVariant": ["SS", "SK"], "ScanOptions": ["FAST_GEMS", "CG"],
                    "RepetitionTime": 3.6, "EchoTime": format_number(phantom.te_ms[e]), "EchoNumbers": e + 1,
                    "EchoTrainLength": 1, "FlipAngle": 55.0, "AcquisitionNumber": 1, "SliceThickness": 8.0,
                    "TriggerTime": 500.0}
            ds = mr_instance(seed=seed, patient_id=patient_id, series_number=series_number,
                             sop_key=("ge-instance", seed, patient_id, series_number, s, e),
                             when=start + _dt.timedelta(seconds=15 * s + 4 * e), ipp=ipp, row=row, col=col,
                             centre=centre, dx=dx, pixels=pixels[s, e], instance_number=s * n_echoes + e + 1,
                             kind=kind)
            paths.append(_save(ds, folder))
    return {folder.name: paths}


def _as_enhanced(folder: Path, style: str, prep_ms: list[float] | None, *key) -> Path:
    """Replace the classic images in ``folder`` (one series) by one Enhanced MR instance holding them."""
    import pydicom  # noqa: PLC0415

    paths = sorted(folder.glob("*.dcm"))
    ds = to_enhanced_mr([pydicom.dcmread(p) for p in paths], synthetic_uid("enhanced", style, *key), style=style,
                        prep_ms=prep_ms)
    for path in paths:
        path.unlink()
    return _save(ds, folder)


def write_siemens_xa_t2_study(phantom: T2Phantom, out: Path, seed: int, *, patient_id: str = "SIEMENSXA01",
                              t2_map: bool = True, molli: bool = True) -> dict[str, list[Path]]:
    """Siemens XA: the MyoMaps study with each slice's source series as one Enhanced MR instance."""
    written = write_siemens_t2_study(phantom, out, seed, patient_id=patient_id, moco=False, t2_map=t2_map,
                                     molli=molli)
    te = [float(t) for t in phantom.te_ms]
    for name in list(written):
        if name.endswith("_T2Map"):  # a slice's source series (images in preparation-time order)
            written[name] = [_as_enhanced(out / name, "siemens-xa", te, seed, patient_id, name)]
    return written


def write_philips_t2_study(phantom: T2Phantom, out: Path, seed: int, *, patient_id: str = "PHILIPS01",
                           t2_map: bool = True) -> dict[str, list[Path]]:
    """Philips: the multi-echo series as one Enhanced MR instance (each frame with its own Rescale Slope and
    MR Scale Slope), and the scanner's T2 map."""
    written = write_ge_t2_series(phantom, out, seed, patient_id=patient_id, series_number=801)
    (name, _), = written.items()
    written[name] = [_as_enhanced(out / name, "philips", None, seed, patient_id, name)]
    if t2_map:
        row, col, dx, _, positions = stack_layout(phantom, out, 1.0)
        folder = _folder(out, 802, "T2 Map SAX_T2")
        paths = []
        for s, (centre, ipp) in enumerate(positions):
            t2 = np.clip(np.rint(phantom.t2_ms[s]), 0, 4095).astype(np.uint16)
            kind = {"series_key": "philips-t2-map", "Manufacturer": "Philips", "ManufacturerModelName": "Ingenia",
                    "SeriesDescription": "T2 Map SAX_T2", "ProtocolName": "T2 Map SAX",
                    "ImageType": ["ORIGINAL", "PRIMARY", "T2 MAP", "T2"], "EchoTime": "0", "RepetitionTime": "0",
                    "SliceThickness": 8.0}
            ds = mr_instance(seed=seed, patient_id=patient_id, series_number=802,
                             sop_key=("philips-t2-map", seed, patient_id, s), when=STUDY_START +
                             _dt.timedelta(minutes=13, seconds=s), ipp=ipp, row=row, col=col, centre=centre, dx=dx,
                             pixels=t2, instance_number=s + 1, kind=kind)
            paths.append(_save(ds, folder))
        written[folder.name] = paths
    return dict(sorted(written.items()))


def simulate_vendor_t2(out: Path, vendor: str, seed: int = 0, snr: float = 40.0,
                       te_ms: tuple[float, ...] = (0.0, 35.0, 55.0), slices: int = 3, matrix: int = 192,
                       blood: str = "bright", oedema: bool = True,
                       **options) -> tuple[T2Phantom, dict[str, list[Path]]]:
    """Write ``simulate_t2``'s phantom as ``vendor`` writes a study, and ``truth.npz``; the
    phantom and the files of each series folder. ``options`` go to the vendor's writer."""
    writers = {"siemens": write_siemens_t2_study, "siemens-xa": write_siemens_xa_t2_study,
               "philips": write_philips_t2_study, "ge": write_ge_t2_series}
    if vendor not in writers:
        raise ValueError(f"unknown vendor {vendor!r} (one of {', '.join(VENDORS)})")
    phantom = make_t2_phantom(seed=seed, snr=snr, te_ms=te_ms, slices=slices, matrix=matrix, blood=blood,
                              oedema=oedema)
    out.mkdir(parents=True, exist_ok=True)
    written = writers[vendor](phantom, out, seed, **options)
    write_t2_truth(out, phantom, snr, seed, vendor=vendor)
    return phantom, written
