"""Inference: heart localisation on the full field of view, then segmentation of a crop.

Pass 1 segments the whole field of view on the network grid and locates the heart (LV
blood + myocardium + RV); pass 2 segments a window of 150-220 mm around the heart
(common to all slices of the stack) at three sizes (``SCALES``), maps each one's class
probabilities back to the original pixels and averages them. Both passes use the same
network, trained on whole and cropped samples. Given the slices' orientation, all windows
are sampled in the anatomical display frame (``orientation``), whatever rotation or
mirroring the images are stored with.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from pinn_engine.device import default_device
from pinn_engine.segmentation.labels import Label
from pinn_engine.segmentation.network import UNet
from pinn_engine.segmentation.orientation import display_matrix
from pinn_engine.segmentation.synth import GRID, normalise, window_coords

DEFAULT_WEIGHTS = Path(__file__).with_name("weights") / "seg_v6.pt"
LOW_CONFIDENCE = 0.7
# Pass-2 window sizes, relative to the heart window. Averaging the three (multi-scale test-time
# augmentation) evens out how the network's 128^2 grid falls on the anatomy: seg_v6 on MyoPS
# per-case means LV 0.879 -> 0.882, myocardium 0.816 -> 0.819, RV 0.752 -> 0.775, synthetic
# myocardium 0.903 -> 0.906; inference 35 -> 54 ms per 192^2 slice on 2 cores.
SCALES = (0.85, 1.0, 1.15)


@dataclass
class Segmentation:
    labels: np.ndarray  # (slices, H, W) uint8 Label values
    confidence: np.ndarray  # (slices,) mean max-probability over predicted heart pixels
    flags: list[list[str]] = field(default_factory=list)
    window: tuple[float, float, float] | None = None  # crop centre (row, col) and half-size mm


def to_three_channels(images: np.ndarray) -> np.ndarray:
    """(S, C, H, W) -> (S, 3, H, W): all echoes used (first, middle, last); one image repeated."""
    c = images.shape[1]
    idx = [0, 0, 0] if c == 1 else [0, 1, 1] if c == 2 else [0, c // 2, c - 1]
    return images[:, idx].astype(np.float64)


def _window_coords(cy: float, cx: float, half_mm: float, spacing: tuple[float, float],
                   frame: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Image (row, column) coordinates of the network grid: a window of half-width ``half_mm``
    around pixel (cy, cx), its axes turned/mirrored by ``frame`` (display -> image, in mm)."""
    dr, dc = spacing
    return window_coords(cy, cx, half_mm, GRID, frame / np.array([[dr], [dc]]))


def _sample(stack: np.ndarray, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """The stack (slices, channels, H, W) resampled at image coordinates (yy, xx); zero outside."""
    return np.stack([[ndimage.map_coordinates(ch, [yy, xx], order=1, mode="constant") for ch in sl] for sl in stack])


def _grid_index(rows: np.ndarray, cols: np.ndarray, cy: float, cx: float, half_mm: float,
                spacing: tuple[float, float], frame: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The inverse of ``_window_coords``: fractional grid (row, column) of image pixels."""
    dr, dc = spacing
    r_mm, c_mm = (rows - cy) * dr, (cols - cx) * dc
    u = frame[0, 0] * r_mm + frame[1, 0] * c_mm  # frame is orthogonal: its transpose inverts it
    v = frame[0, 1] * r_mm + frame[1, 1] * c_mm
    scale = (GRID - 1) / (2 * half_mm)
    return (u + half_mm) * scale, (v + half_mm) * scale


def _largest(mask: np.ndarray, within: np.ndarray | None = None) -> np.ndarray:
    """The largest connected component of ``mask``; with ``within``, the largest whose centre lies
    in ``within`` (the largest of all if none does)."""
    lab, n = ndimage.label(mask)
    if n <= 1:  # none or one: the same answer with or without ``within``
        return mask
    index = np.arange(1, n + 1)
    sizes = ndimage.sum(mask, lab, index=index)
    if within is not None:
        centres = np.rint(ndimage.center_of_mass(mask, lab, index)).astype(int).reshape(-1, 2)
        inside = within[centres[:, 0], centres[:, 1]]
        if inside.any():
            sizes = np.where(inside, sizes, -1)
    return lab == int(np.argmax(sizes)) + 1


def _component(mask: np.ndarray, anchor: np.ndarray) -> np.ndarray:
    """The connected component of ``mask`` that overlaps ``anchor`` most; the largest if none does.

    A blood pool belongs inside or against the myocardium: a bigger look-alike elsewhere (a
    bright stomach, a dark bowel loop) must not win over the one the myocardium holds."""
    lab, n = ndimage.label(mask)
    if n <= 1:
        return mask
    index = np.arange(1, n + 1)
    touch = ndimage.sum(anchor, lab, index=index)
    score = touch if touch.max() > 0 else ndimage.sum(mask, lab, index=index)
    return lab == int(np.argmax(score)) + 1


def clean_labels(lab: np.ndarray, near: np.ndarray | None = None) -> np.ndarray:
    """One connected region per class: the largest myocardium (the largest centred in ``near``
    where one is), the LV blood pool that myocardium encloses, the RV blood pool that touches it."""
    out = np.zeros_like(lab)
    myo = _largest(lab == Label.MYOCARDIUM, near)
    inside = ndimage.binary_fill_holes(myo) & ~myo
    out[myo] = Label.MYOCARDIUM
    lv = _component(lab == Label.LV_BLOOD_POOL, inside | ndimage.binary_dilation(myo, iterations=2))
    out[lv] = Label.LV_BLOOD_POOL
    out[_component(lab == Label.RV_BLOOD_POOL, ndimage.binary_dilation(myo, iterations=3))] = Label.RV_BLOOD_POOL
    return out


STRAY_MM = 30.0  # an LV centre this far from the stack's median is another structure, not the LV


def _lv_centre(lab: np.ndarray, spacing: tuple[float, float]) -> np.ndarray:
    """Centre of a slice's LV blood pool, mm from the image corner."""
    return np.array(ndimage.center_of_mass(lab == Label.LV_BLOOD_POOL)) * spacing


def _distances_from_axis(labels: np.ndarray, spacing: tuple[float, float]
                         ) -> tuple[np.ndarray | None, dict[int, float]]:
    """The stack's LV axis (the median of its slices' LV centres; None below 3 slices) and, per
    slice with an LV, the LV centre's distance from it in mm."""
    centres = {k: _lv_centre(lab, spacing) for k, lab in enumerate(labels)
               if (lab == Label.LV_BLOOD_POOL).any()}
    if len(centres) < 3:
        return None, {}
    axis = np.median(np.array(list(centres.values())), axis=0)
    return axis, {k: float(np.hypot(*(c - axis))) for k, c in centres.items()}


def _rechoose_stray_slices(raw: np.ndarray, labels: np.ndarray, spacing: tuple[float, float]) -> None:
    """A slice whose largest myocardium lies far from the stack's LV axis (an end slice that caught
    the stomach or aorta) keeps instead the ring next to the axis, where the network found one."""
    axis, distances = _distances_from_axis(labels, spacing)
    if axis is None:
        return
    rows, cols = np.indices(labels.shape[1:])
    near = np.hypot(rows * spacing[0] - axis[0], cols * spacing[1] - axis[1]) <= STRAY_MM
    for k, distance in distances.items():
        if distance <= STRAY_MM:
            continue
        again = clean_labels(raw[k], near)
        if (again == Label.LV_BLOOD_POOL).any() and np.hypot(*(_lv_centre(again, spacing) - axis)) <= STRAY_MM:
            labels[k] = again


def _flag_stray_slices(labels: np.ndarray, spacing: tuple[float, float], flags: list[list[str]]) -> None:
    """Short-axis slices share the LV long axis: a slice whose LV lies far from the others' has
    most likely labelled something else (stomach, aorta) and is flagged, not trusted."""
    for k, distance in _distances_from_axis(labels, spacing)[1].items():
        if distance > STRAY_MM:
            flags[k].append(f"LV {distance:.0f} mm from the rest of the stack: probably not the LV")


class Segmenter:
    def __init__(self, weights: Path | str | None = None, device: str | None = None) -> None:
        path = Path(weights) if weights else DEFAULT_WEIGHTS
        if not path.exists():
            raise FileNotFoundError(f"segmentation weights not found: {path} (pinn-engine train-seg makes them)")
        # weights_only: no arbitrary code from the file (the torch version object is allowed)
        with torch.serialization.safe_globals([torch.torch_version.TorchVersion]):
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
        self.meta = ckpt.get("meta", {})
        self.device = torch.device(device) if device else default_device()
        self.model = UNet()
        self.model.load_state_dict({k: v.float() if v.is_floating_point() else v
                                    for k, v in ckpt["state_dict"].items()})
        # channels-last lets oneDNN run the convolutions without reordering each layer's input:
        # 0.22 -> 0.16 s for a 3-slice 192^2 stack on one thread, probabilities within 1e-5
        self.model.to(self.device, memory_format=torch.channels_last).eval()

    def _probabilities(self, windows: np.ndarray) -> np.ndarray:
        x = np.stack([normalise(w) for w in windows]).astype(np.float32)
        with torch.no_grad():
            p = self.model(torch.as_tensor(x, device=self.device)).softmax(1)
        return p.cpu().numpy()

    def _window_probabilities(self, stack: np.ndarray, cy: float, cx: float, half: float,
                              spacing: tuple[float, float], frame: np.ndarray) -> np.ndarray:
        """Pass 2: class probabilities (slices, classes, H, W) on the image grid, the mean over windows of
        half-width ``half`` x ``SCALES`` around (cy, cx); a pixel outside a window is background there."""
        s, _, h, w = stack.shape
        rows, cols = np.indices((h, w))
        full = np.zeros((s, len(Label), h, w))
        for scale in SCALES:
            yy, xx = _window_coords(cy, cx, half * scale, spacing, frame)
            prob = self._probabilities(_sample(stack, yy, xx))
            gr, gc = _grid_index(rows, cols, cy, cx, half * scale, spacing, frame)
            inside = (gr >= 0) & (gr <= GRID - 1) & (gc >= 0) & (gc <= GRID - 1)
            full[:, Label.BACKGROUND][:, ~inside] += 1.0
            for k in range(s):
                for c in Label:
                    full[k, c][inside] += ndimage.map_coordinates(prob[k, c], [gr[inside], gc[inside]], order=1)
        return full / len(SCALES)

    def __call__(self, images: np.ndarray, pixel_spacing_mm: tuple[float, float],
                 threads: int | None = None,
                 orientation: tuple[np.ndarray, np.ndarray] | None = None) -> Segmentation:
        """Segment a stack (slices, echoes, H, W) with pixel spacing (between rows, between columns).

        ``orientation``: the stack's Image Orientation (Patient) as (row cosine, column
        cosine) in LPS; the network then sees every slice in the anatomical display frame,
        where it knows on which side of the LV the RV lies. Without it the images are taken
        as stored (the network also learned other orientations, with less certainty).
        ``threads`` caps torch's threads for this call (e.g. 1 while other work uses the
        other cores: spinning OpenMP threads on an oversubscribed CPU cost more than they give).
        """
        frame = np.eye(2) if orientation is None else display_matrix(*orientation)
        if threads is None:
            return self._segment(images, pixel_spacing_mm, frame)
        previous = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            return self._segment(images, pixel_spacing_mm, frame)
        finally:
            torch.set_num_threads(previous)

    def _segment(self, images: np.ndarray, pixel_spacing_mm: tuple[float, float], frame: np.ndarray) -> Segmentation:
        stack = to_three_channels(np.asarray(images))
        s, _, h, w = stack.shape
        dr, dc = pixel_spacing_mm
        flags: list[list[str]] = [[] for _ in range(s)]
        # pass 1: whole field of view (a turned frame needs a larger window to hold its corners)
        corners = np.array([[h * dr, w * dc], [h * dr, -w * dc]]) / 2
        half_full = float(np.abs(corners @ frame).max())
        yy, xx = _window_coords((h - 1) / 2, (w - 1) / 2, half_full, (dr, dc), frame)
        coarse = self._probabilities(_sample(stack, yy, xx)).argmax(1)
        centres, extents = [], []
        for k in range(s):
            heart = _largest(np.isin(coarse[k], (Label.LV_BLOOD_POOL, Label.MYOCARDIUM)))
            if heart.sum() < 10:
                continue
            r, c = np.nonzero(heart | (coarse[k] == Label.RV_BLOOD_POOL))
            centres.append((yy[r, c].mean(), xx[r, c].mean()))
            extents.append(max(np.ptp(r), np.ptp(c)) * 2 * half_full / (GRID - 1))
        if centres:
            cy, cx = np.median(np.array(centres), axis=0)
            half = float(np.clip(np.median(extents) * 1.7, 150.0, 220.0)) / 2
        else:
            cy, cx, half = (h - 1) / 2, (w - 1) / 2, half_full
            for f in flags:
                f.append("heart not found in the full field of view: segmented without a crop")
        full = self._window_probabilities(stack, cy, cx, half, (dr, dc), frame)
        labels = np.zeros((s, h, w), np.uint8)
        raw = np.zeros((s, h, w), np.uint8)
        top = np.zeros((s, h, w), np.float32)  # the winning class's probability
        blank = [np.ptp(stack[k]) == 0 for k in range(s)]
        for k in range(s):
            if blank[k]:  # a constant image holds no anatomy, whatever the network says
                flags[k].append("slice has no signal (constant image): nothing segmented")
                continue
            raw[k], top[k] = full[k].argmax(0), full[k].max(0)
            labels[k] = clean_labels(raw[k])
        _rechoose_stray_slices(raw, labels, (dr, dc))
        confidence = np.zeros(s)
        for k in range(s):
            if blank[k]:
                continue
            heart = labels[k] != Label.BACKGROUND
            confidence[k] = float(top[k][heart].mean()) if heart.any() else 0.0
            for c, name in ((Label.LV_BLOOD_POOL, "LV blood pool"), (Label.MYOCARDIUM, "myocardium"),
                            (Label.RV_BLOOD_POOL, "RV")):
                if not (labels[k] == c).any():
                    flags[k].append(f"no {name} found")
            if heart.any() and confidence[k] < LOW_CONFIDENCE:
                flags[k].append(f"low segmentation confidence ({confidence[k]:.2f})")
        _flag_stray_slices(labels, (dr, dc), flags)
        return Segmentation(labels, confidence, flags, (float(cy), float(cx), half))
