"""Display copies any PACS shows: RGB Secondary Capture and Encapsulated PDF report.

The picture: the colour map of every slice over the anatomy, a colour bar in the
quantity's unit, the AHA bull's-eye with mean +/- bound per segment, and a research-use
banner, and the per-segment table. It is drawn once: the Secondary Capture holds the
raster and the PDF report is that raster on an A4-landscape-sized page (drawing a vector
PDF cost three times the rest of the display step). Both carry the source's patient/study data.
"""

from __future__ import annotations

import datetime as _dt
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import highdicom as hd
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import Wedge  # noqa: E402
from pydicom.dataset import Dataset, FileMetaDataset  # noqa: E402
from pydicom.uid import ExplicitVRLittleEndian, RLELossless  # noqa: E402

from dicom_node.encode.common import (  # noqa: E402
    MANUFACTURER,
    MODEL_NAME,
    Algorithm,
    copy_patient_study,
    derived_uid,
)
from dicom_node.encode.report import RegionResult  # noqa: E402

BANNER = "RESEARCH USE - NOT FOR PRIMARY DIAGNOSIS"
ENCAPSULATED_PDF = "1.2.840.10008.5.1.4.1.1.104.1"

# bull's-eye: (ring, first segment, number of sectors); sectors run counter-clockwise
# from the top (anterior) towards the septum (viewer's left), as in the AHA display
_RINGS = ((3, 1, 6), (2, 7, 6), (1, 13, 4))


@dataclass(frozen=True)
class Picture:
    anatomy: np.ndarray  # (slices, H, W) grey image (e.g. first echo)
    values: np.ndarray  # (slices, H, W) the map
    overlay: np.ndarray  # (slices, H, W) bool: where the colour map is shown
    quantity: str  # e.g. "T2"
    unit: str  # e.g. "ms"
    window: tuple[float, float]  # colour scale (low, high)
    regions: Sequence[RegionResult]
    method: str  # one line: algorithm, version, confidence
    confidence: float


def _bullseye(ax, regions: Sequence[RegionResult], window: tuple[float, float], cmap) -> None:
    by_segment = {r.aha: r for r in regions if r.aha is not None}
    norm = matplotlib.colors.Normalize(*window)
    digits = 0 if window[1] - window[0] >= 20 else 2  # T2 in ms: integers; MBF in ml/min/g: 2 decimals
    for ring, first, count in _RINGS:
        width = 360.0 / count
        offset = 90.0 - width / 2  # segment `first` centred on the top
        for k in range(count):
            seg = first + k
            start = offset + k * width
            r = by_segment.get(seg)
            colour = cmap(norm(r.mean)) if r else (0.85, 0.85, 0.85, 1.0)
            ax.add_patch(Wedge((0, 0), ring, start, start + width, width=1.0, facecolor=colour, edgecolor="black",
                               linewidth=0.8))
            angle = np.radians(start + width / 2)
            text = f"{seg}\n{r.mean:.{digits}f}±{r.bound:.{digits + 1}f}" if r else f"{seg}\n-"
            ax.text((ring - 0.5) * np.cos(angle), (ring - 0.5) * np.sin(angle), text, ha="center", va="center",
                    fontsize=6.5)
    r17 = by_segment.get(17)
    ax.add_patch(plt.Circle((0, 0), 0.0 if r17 is None else 0.45, facecolor=cmap(norm(r17.mean)) if r17 else "none",
                            edgecolor="black", linewidth=0.8))
    if r17:
        ax.text(0, 0, f"17\n{r17.mean:.{digits}f}±{r17.bound:.{digits + 1}f}", ha="center", va="center", fontsize=6)
    ax.set_xlim(-3.2, 3.2)
    ax.set_ylim(-3.2, 3.2)
    ax.set_aspect("equal")
    ax.axis("off")
    ax.set_title("AHA segments: mean ± bound", fontsize=9)


DPI = 110  # 1.5k x 0.9k pixels for 3 slices: legible, and a ~4 MB RGB Secondary Capture


TABLE_POINTS = 7.5


def table_lines(picture: Picture) -> list[str]:
    """The per-segment table as monospaced lines (header, rule, one line per region)."""
    d = 1 if picture.window[1] - picture.window[0] >= 20 else 2
    rows = [["LV myocardium" if r.aha is None else f"{r.aha}", f"{r.mean:.{d}f}", f"{r.sd:.{d}f}",
             f"±{r.bound:.{d + 1}f}", f"{r.n_pixels}", "; ".join(r.flags)[:60]] for r in picture.regions]
    header = ["segment", f"mean ({picture.unit})", f"SD ({picture.unit})",
              f"bound {picture.confidence * 100:g}% ({picture.unit})", "pixels", "flags"]
    cells = [header, *rows]
    widths = [max(len(row[c]) for row in cells) for c in range(len(header))]
    lines = ["  ".join(v.rjust(w) if c and c < 5 else v.ljust(w)
                       for c, (v, w) in enumerate(zip(row, widths, strict=True)))
             for row in cells]
    lines.insert(1, "-" * len(lines[0]))
    return lines


def render(picture: Picture) -> plt.Figure:
    """The display figure; the per-segment table's place below it is left empty (``draw`` sets it)."""
    n = picture.values.shape[0]
    fig = plt.figure(figsize=(3.0 * n + 4.2, 8.6), dpi=DPI)
    grid = fig.add_gridspec(2, n + 1, height_ratios=[4.6, 4.0], width_ratios=[3.0] * n + [4.2])
    cmap = plt.get_cmap("turbo")
    lo, hi = picture.window
    for k in range(n):
        ax = fig.add_subplot(grid[0, k])
        grey = picture.anatomy[k]
        ax.imshow(grey, cmap="gray", vmin=0, vmax=np.percentile(grey, 99.5) or 1)
        shown = np.ma.masked_where(~picture.overlay[k], picture.values[k])
        im = ax.imshow(shown, cmap=cmap, vmin=lo, vmax=hi, interpolation="nearest")
        ax.set_title(f"slice {k + 1}", fontsize=9)
        ax.axis("off")
    bar = fig.colorbar(im, ax=fig.axes[:n], fraction=0.025, pad=0.01)
    bar.set_label(f"{picture.quantity} ({picture.unit})")
    _bullseye(fig.add_subplot(grid[0, n]), picture.regions, picture.window, cmap)
    fig.suptitle(BANNER, color="red", fontsize=12, fontweight="bold")
    fig.text(0.01, 0.005, picture.method, fontsize=7)
    fig.add_subplot(grid[1, :], label="table").axis("off")
    return fig


def figure_rgb(fig: plt.Figure) -> np.ndarray:
    fig.canvas.draw()
    rgb = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    plt.close(fig)
    return rgb


def draw(picture: Picture) -> tuple[np.ndarray, float]:
    """RGB pixels of the display picture and the seconds it took (run in a helper process)."""
    import time  # noqa: PLC0415

    from PIL import Image, ImageDraw, ImageFont  # noqa: PLC0415

    t0 = time.perf_counter()
    fig = render(picture)
    box = next(ax for ax in fig.axes if ax.get_label() == "table").get_window_extent()
    rgb = figure_rgb(fig)
    # the table's ~1300 characters, set by PIL in one call: matplotlib lays out and renders
    # each glyph in Python, which was a third of the drawing time
    image = Image.fromarray(rgb)
    font = ImageFont.truetype(str(Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSansMono.ttf"),
                              round(TABLE_POINTS * DPI / 72))
    ImageDraw.Draw(image).multiline_text(((box.x0 + box.x1) / 2, rgb.shape[0] - box.y1), "\n".join(
        table_lines(picture)), fill=(0, 0, 0), font=font, anchor="ma", spacing=3)
    return np.asarray(image), time.perf_counter() - t0


def png(rgb: np.ndarray) -> bytes:
    """The picture as PNG (for the results folder; fast compression)."""
    from PIL import Image  # noqa: PLC0415

    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def raster_pdf(rgb: np.ndarray, dpi: int = DPI) -> bytes:
    """A one-page PDF holding the RGB picture at ``dpi``."""
    from PIL import Image  # noqa: PLC0415

    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PDF", resolution=float(dpi), title="PINN node report")
    return buf.getvalue()


def encode_secondary_capture(rgb: np.ndarray, source: Dataset, algorithm: Algorithm, kind: str,
                             series_number: int) -> Dataset:
    """RGB Secondary Capture of the display picture, in the source's study (RLE Lossless)."""
    series_uid = source.SeriesInstanceUID
    sc = hd.sc.SCImage(
        pixel_array=rgb.astype(np.uint8),
        photometric_interpretation="RGB",
        bits_allocated=8,
        coordinate_system="PATIENT",
        study_instance_uid=source.StudyInstanceUID,
        series_instance_uid=derived_uid(series_uid, f"sc-{kind}-series", algorithm),
        series_number=series_number,
        sop_instance_uid=derived_uid(series_uid, f"sc-{kind}", algorithm),
        instance_number=1,
        manufacturer=MANUFACTURER,
        patient_id=source.get("PatientID", ""),
        patient_name=source.get("PatientName", ""),
        patient_birth_date=source.get("PatientBirthDate", ""),
        patient_sex=source.get("PatientSex", ""),
        accession_number=source.get("AccessionNumber", ""),
        study_id=source.get("StudyID", ""),
        study_date=source.get("StudyDate", ""),
        study_time=source.get("StudyTime", ""),
        referring_physician_name=source.get("ReferringPhysicianName", ""),
        patient_orientation=("L", "P"),  # required by highdicom; blanked below
        # lossless RLE: the picture is mostly flat colour (4 MB -> ~0.6 MB); every PACS and
        # viewer decodes it, and the sender offers an uncompressed copy to a peer that does not
        transfer_syntax_uid=RLELossless,
    )
    sc.PatientOrientation = None  # type 2C: not meaningful for a composed picture
    sc.BurnedInAnnotation = "YES"
    sc.ConversionType = "WSD"
    sc.BodyPartExamined = "HEART"
    sc.SeriesDescription = f"{kind} display (research use) (PINN node)"
    sc.ImageType = ["DERIVED", "SECONDARY"]
    copy_patient_study(source, sc)
    return sc


def encode_pdf(pdf: bytes, source: Dataset, algorithm: Algorithm, kind: str, series_number: int,
               title: str) -> Dataset:
    """Encapsulated PDF report in the source's study."""
    series_uid = source.SeriesInstanceUID
    now = _dt.datetime.now()
    ds = Dataset()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ENCAPSULATED_PDF
    ds.SOPInstanceUID = derived_uid(series_uid, f"pdf-{kind}", algorithm)
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    ds.SpecificCharacterSet = source.get("SpecificCharacterSet", "ISO_IR 192")
    ds.SOPClassUID = ENCAPSULATED_PDF
    copy_patient_study(source, ds)
    for kw in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
               "AccessionNumber", "ReferringPhysicianName", "StudyID"):
        if kw not in ds:
            setattr(ds, kw, "")
    ds.Modality = "DOC"
    ds.SeriesInstanceUID = derived_uid(series_uid, f"pdf-{kind}-series", algorithm)
    ds.SeriesNumber = series_number
    ds.SeriesDescription = f"{kind} report (research use) (PINN node)"
    ds.Manufacturer = MANUFACTURER
    ds.ManufacturerModelName = MODEL_NAME
    ds.SoftwareVersions = algorithm.version
    ds.ConversionType = "WSD"
    ds.InstanceNumber = 1
    ds.ContentDate = now.strftime("%Y%m%d")
    ds.ContentTime = now.strftime("%H%M%S")
    ds.AcquisitionDateTime = now.strftime("%Y%m%d%H%M%S")
    ds.BurnedInAnnotation = "YES"
    ds.DocumentTitle = title[:64]
    concept = Dataset()
    concept.CodeValue, concept.CodingSchemeDesignator, concept.CodeMeaning = "18748-4", "LN", "Diagnostic imaging study"
    ds.ConceptNameCodeSequence = [concept]
    ds.MIMETypeOfEncapsulatedDocument = "application/pdf"
    ds.EncapsulatedDocument = pdf + (b"\x00" if len(pdf) % 2 else b"")
    ds.EncapsulatedDocumentLength = len(pdf)
    return ds
