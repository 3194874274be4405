"""Image input/output for ``pinn-engine segment`` (SimpleITK; no pydicom in pinn_engine).

A short-axis stack is read either from NIfTI (3-D: one image per slice; 4-D: echoes as
the 4th dimension) or from a DICOM folder (one image per slice, or several echoes per
slice position, ordered by EchoTime). The label map is written as NIfTI with the
geometry of the input stack.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk


@dataclass
class Stack:
    images: np.ndarray  # (slices, echoes, H, W)
    reference: sitk.Image  # 3-D image carrying the stack's geometry
    pixel_spacing_mm: tuple[float, float]  # (between rows, between columns)

    @property
    def orientation(self) -> tuple[np.ndarray, np.ndarray]:
        """(row cosine, column cosine) in LPS, as DICOM's Image Orientation (Patient) gives them."""
        d = np.array(self.reference.GetDirection(), dtype=float).reshape(3, 3)
        return d[:, 0], d[:, 1]


def _from_volume(img: sitk.Image) -> Stack:
    arr = sitk.GetArrayFromImage(img).astype(np.float64)
    if img.GetDimension() == 4:  # (echo, z, y, x)
        images = np.transpose(arr, (1, 0, 2, 3))
        ref = sitk.Extract(img, [*img.GetSize()[:3], 0], [0, 0, 0, 0])
    else:  # (z, y, x)
        images = arr[:, None]
        ref = img
    sx, sy = ref.GetSpacing()[:2]
    return Stack(images, ref, (float(sy), float(sx)))


def _read_dicom_folder(folder: Path) -> Stack:
    reader = sitk.ImageFileReader()
    entries = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        reader.SetFileName(str(path))
        try:
            reader.ReadImageInformation()
        except RuntimeError:
            continue
        keys = set(reader.GetMetaDataKeys())
        if "0020|0032" not in keys or "0020|0037" not in keys:
            continue
        ipp = np.array([float(v) for v in reader.GetMetaData("0020|0032").split("\\")])
        iop = np.array([float(v) for v in reader.GetMetaData("0020|0037").split("\\")])
        te = (float(reader.GetMetaData("0018|0081"))
              if "0018|0081" in keys and reader.GetMetaData("0018|0081").strip() else 0.0)
        entries.append((path, ipp, iop, te))
    if not entries:
        raise ValueError(f"no DICOM images with geometry in {folder}")
    iop = entries[0][2]
    normal = np.cross(iop[:3], iop[3:])
    positions = sorted({round(float(e[1] @ normal), 2) for e in entries})
    by_pos: dict[float, list] = {p: [] for p in positions}
    for e in entries:
        by_pos[round(float(e[1] @ normal), 2)].append(e)
    n_echo = {len(v) for v in by_pos.values()}
    if len(n_echo) != 1:
        raise ValueError(f"inconsistent number of images per slice position: {sorted(n_echo)}")
    slices, ref_files = [], []
    for p in positions:
        group = sorted(by_pos[p], key=lambda e: e[3])
        slices.append(np.stack([sitk.GetArrayFromImage(sitk.ReadImage(str(e[0])))[0]
                                for e in group]).astype(np.float64))
        ref_files.append(str(group[0][0]))
    ref = sitk.ReadImage(ref_files)  # the first echo of every slice: a 3-D volume with the stack geometry
    sx, sy = ref.GetSpacing()[:2]
    return Stack(np.stack(slices), ref, (float(sy), float(sx)))


def read_stack(path: str | Path) -> Stack:
    p = Path(path)
    if p.is_dir():
        return _read_dicom_folder(p)
    return _from_volume(sitk.ReadImage(str(p)))


def write_labels(labels: np.ndarray, reference: sitk.Image, out: str | Path) -> None:
    img = sitk.GetImageFromArray(labels.astype(np.uint8))
    img.CopyInformation(reference)
    sitk.WriteImage(img, str(out))
