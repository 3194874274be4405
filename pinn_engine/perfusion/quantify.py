"""Quantitative first-pass perfusion from registered dynamics and masks: AIF, concentrations, 2CXM.

Assumptions (documented in the node's README and recorded in the SR's algorithm parameters):
saturation-recovery signal S = M0 (1 - exp(-TS R1)) with the native T1 of blood and
myocardium taken from the settings (not measured), M0 from the pre-contrast frames,
linear relaxivity; the arterial input is the LV blood pool of the slice with the largest
cavity, eroded and restricted to its brightest half at peak (papillary muscles and
partial volume excluded), converted to plasma concentration with the haematocrit. Each
slice uses its own frame times (slices are acquired at different moments of the
heartbeat); the AIF is interpolated onto them. MBF = Fp / (1 - Hct) / density.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from pinn_engine.perfusion.fit import fit_2cxm
from pinn_engine.perfusion.phantom import signal_to_concentration

PARAMS = ("fp", "vp", "ve", "ps")


@dataclass(frozen=True)
class PerfusionSettings:
    hct: float = 0.45
    density_g_ml: float = 1.05
    t1_blood_ms: float = 1550.0  # native T1 at 1.5 T
    t1_myocardium_ms: float = 1000.0
    relaxivity: float = 4.5  # 1/s/mM
    saturation_delay_ms: float = 100.0  # used when the headers carry none
    method: str = "nlls"
    model: str = "continuous"


@dataclass
class PerfusionResult:
    maps: dict[str, np.ndarray]  # fp, vp, ve, ps, mbf and *_sd: (S, H, W), NaN outside the myocardium
    segments: dict[int, dict[str, float]]  # AHA segment -> mbf, mbf_sd, fp, vp, ve, ps (+ _sd), n_pixels
    aif_plasma_mM: np.ndarray  # (T,) on the AIF slice's times
    aif_slice: int
    baseline_frames: int
    flags: list[str] = field(default_factory=list)


def arterial_input(images: np.ndarray, labels: np.ndarray) -> tuple[int, np.ndarray]:
    """(slice, mask) of the AIF region: eroded LV blood pool, brightest half at peak enhancement."""
    areas = [(labels[k] == 1).sum() for k in range(labels.shape[0])]
    k = int(np.argmax(areas))
    lv = labels[k] == 1
    eroded = ndimage.binary_erosion(lv, iterations=1)
    mask = eroded if eroded.sum() >= 5 else lv
    if not mask.any():
        raise ValueError("no LV blood pool found for the arterial input")
    peak = images[k].max(0)
    mask = mask & (peak >= np.median(peak[mask]))
    return k, mask


PLATEAU_S = 3.5  # a first-pass bolus stays within 5 % of its peak for ~2-3 s; longer = saturated signal


def aif_plateau_s(t_s: np.ndarray, aif: np.ndarray) -> float:
    """How long the AIF stays within 5 % of its peak (contiguously, around the peak)."""
    peak = int(np.argmax(aif))
    high = aif >= 0.95 * aif[peak]
    lo = hi = peak
    while lo > 0 and high[lo - 1]:
        lo -= 1
    while hi < len(aif) - 1 and (high[hi + 1] or (hi + 2 < len(aif) and high[hi + 2])):  # one dip allowed
        hi += 1
    return float(t_s[hi] - t_s[lo])


def baseline_length(curve: np.ndarray, minimum: int = 2) -> int:
    """Frames before the bolus: those before the signal first rises past 10 % of its enhancement."""
    early = curve[: max(minimum, 3)]
    rise = np.nonzero(curve > early.mean() + 0.1 * (curve.max() - early.mean()))[0]
    first = int(rise[0]) if rise.size else minimum
    return max(minimum, first - 1)


def quantify(images: np.ndarray, t_min: np.ndarray, labels: np.ndarray, aha_labels: np.ndarray,
             settings: PerfusionSettings = PerfusionSettings(), saturation_delay_ms: float | None = None
             ) -> PerfusionResult:
    """Maps per myocardial pixel and values per AHA segment (segment-mean curves fitted)."""
    ts = saturation_delay_ms or settings.saturation_delay_ms
    s, t, h, w = images.shape
    k_aif, aif_mask = arterial_input(images, labels)
    aif_signal = images[k_aif][:, aif_mask].mean(1)
    n_base = baseline_length(aif_signal)
    aif_blood = signal_to_concentration(aif_signal[None], n_base, settings.t1_blood_ms, ts, settings.relaxivity)[0]
    aif_plasma = aif_blood / (1.0 - settings.hct)
    flags = []
    if aif_signal.max() / max(aif_signal[:n_base].mean(), 1e-9) > 0.98 / (1 - np.exp(-ts / settings.t1_blood_ms)):
        flags.append("AIF near saturation of the signal model: peak concentration underestimated")
    top = aif_plateau_s(t_min[k_aif] * 60.0, aif_blood)
    if top >= PLATEAU_S:
        flags.append(f"AIF flat-topped for {top:.1f} s (signal saturation of the arterial input likely): "
                     "flows are overestimated; a pre-bolus or dual-sequence AIF is needed")
    maps = {key: np.full((s, h, w), np.nan) for key in (*PARAMS, *(f"{p}_sd" for p in PARAMS), "mbf", "mbf_sd")}
    concentration = np.zeros((s, t, h, w))
    to_mbf = 1.0 / (1.0 - settings.hct) / settings.density_g_ml
    for k in range(s):
        myo = labels[k] == 2
        if myo.sum() < 5:
            continue
        aif_k = np.interp(t_min[k], t_min[k_aif], aif_plasma)
        curves = signal_to_concentration(images[k][:, myo].T, n_base, settings.t1_myocardium_ms, ts,
                                         settings.relaxivity).T  # (T, N)
        concentration[k][:, myo] = curves
        fit = fit_2cxm(t_min[k], aif_k, curves, method=settings.method, model=settings.model)
        for p in PARAMS:
            maps[p][k][myo] = fit[p]
            maps[f"{p}_sd"][k][myo] = fit[f"{p}_sd"]
        maps["mbf"][k][myo] = fit["fp"] * to_mbf
        maps["mbf_sd"][k][myo] = fit["fp_sd"] * to_mbf
    segments: dict[int, dict[str, float]] = {}
    numbers = [int(v) for v in np.unique(aha_labels) if v]
    if numbers:
        curves, times, aifs = [], [], []
        # segment curves from the myocardium minus its boundary pixels (partial volume with blood)
        core = np.stack([ndimage.binary_erosion(labels[k] == 2) for k in range(s)])
        for seg in numbers:
            where = aha_labels == seg
            if (where & core).sum() >= 5:
                where = where & core
            k = int(np.bincount(np.nonzero(where)[0]).argmax())  # the slice holding most of the segment
            sel = where[k]
            curves.append(concentration[k][:, sel].mean(1))
            times.append(t_min[k])
            aifs.append(np.interp(t_min[k], t_min[k_aif], aif_plasma))
        for seg, c, tt, a in zip(numbers, curves, times, aifs):
            fit = fit_2cxm(tt, a, c[:, None], method="nlls", model=settings.model, prior="none")
            entry = {p: float(fit[p][0]) for p in PARAMS}
            entry.update({f"{p}_sd": float(fit[f"{p}_sd"][0]) for p in PARAMS})
            entry["mbf"] = entry["fp"] * to_mbf
            entry["mbf_sd"] = entry["fp_sd"] * to_mbf
            entry["n_pixels"] = int((aha_labels == seg).sum())
            segments[seg] = entry
    return PerfusionResult(maps, segments, aif_plasma, k_aif, n_base, flags)
