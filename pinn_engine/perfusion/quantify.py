"""Quantitative first-pass perfusion from registered dynamics and masks: AIF, concentrations, 2CXM.

Assumptions (documented in README.md, Perfusion, and recorded in the SR's algorithm parameters):
saturation-recovery signal S = M0 (1 - exp(-TS R1)) with the native T1 of blood and
myocardium taken from the settings (not measured), M0 from the pre-contrast frames,
linear relaxivity; the arterial input is the LV blood pool of the slice with the largest
cavity, eroded and restricted to its brightest half at peak (papillary muscles and
partial volume excluded), converted to plasma concentration with the haematocrit; when a
pre-bolus series is given, the input is its curve scaled by the dose ratio (``prebolus``);
otherwise a flat-topped (saturated) input has its first pass rebuilt from its unsaturated
frames. Each slice uses its own frame times (slices are acquired at different moments of
the heartbeat); the AIF is interpolated onto them. MBF = Fp / (1 - Hct) / density.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
from scipy import ndimage

from pinn_engine.aha import SliceGeometry
from pinn_engine.perfusion.fit import fit_2cxm
from pinn_engine.perfusion.models import PARAMETERS
from pinn_engine.perfusion.phantom import signal_to_concentration
from pinn_engine.perfusion.prebolus import PreBolus, scaled_input
from pinn_engine.segment_variants import myocardial_core, segmentation_variants
from pinn_engine.segmentation.labels import Label


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
    aif_source: str = "main bolus"


def aif_slice(labels: np.ndarray) -> int:
    """The slice the arterial input is taken from: the one with the largest LV blood pool."""
    return int(np.argmax([(labels[k] == Label.LV_BLOOD_POOL).sum() for k in range(labels.shape[0])]))


def arterial_input(images: np.ndarray, labels: np.ndarray) -> tuple[int, np.ndarray]:
    """(slice, mask) of the AIF region: eroded LV blood pool, brightest half at peak enhancement."""
    k = aif_slice(labels)
    lv = labels[k] == Label.LV_BLOOD_POOL
    eroded = ndimage.binary_erosion(lv, iterations=1)
    mask = eroded if eroded.sum() >= 5 else lv
    if not mask.any():
        raise ValueError("no LV blood pool found for the arterial input")
    peak = images[k].max(0)
    mask = mask & (peak >= np.median(peak[mask]))
    return k, mask


PLATEAU_S = 3.5  # a first-pass bolus stays within 5 % of its peak for ~2-3 s; longer = saturated signal


def _plateau(aif: np.ndarray) -> tuple[int, int]:
    """First and last frame of the contiguous run within 5 % of the peak (one dip allowed)."""
    peak = int(np.argmax(aif))
    high = aif >= 0.95 * aif[peak]
    lo = hi = peak
    while lo > 0 and high[lo - 1]:
        lo -= 1
    while hi < len(aif) - 1 and (high[hi + 1] or (hi + 2 < len(aif) and high[hi + 2])):
        hi += 1
    return lo, hi


def aif_plateau_s(t_s: np.ndarray, aif: np.ndarray) -> float:
    """How long the AIF stays within 5 % of its peak (contiguously, around the peak)."""
    lo, hi = _plateau(aif)
    return float(t_s[hi] - t_s[lo])


UNSATURATED = 0.8  # frames below this fraction of a flat top are taken as unsaturated


def rebuild_first_pass(t_s: np.ndarray, aif: np.ndarray) -> tuple[np.ndarray, float] | None:
    """A flat-topped AIF with its first pass rebuilt from the early frames.

    A gamma variate C(t) = A ((t - t0) / (a b))^a exp(a - (t - t0) / b) (peak A at t0 + a b)
    is fitted to the frames of the up-slope and of the first down-slope that lie below
    ``UNSATURATED`` times the plateau (the saturated signal tells nothing above it); the
    rebuilt curve is the larger of the measured and the fitted one around the plateau.
    Returns (curve, fitted peak), or None when too few frames constrain the fit or the
    fit does not rise above the plateau.
    """
    from scipy.optimize import least_squares  # noqa: PLC0415

    lo, hi = _plateau(aif)
    top = float(aif[lo:hi + 1].mean())
    level = UNSATURATED * top
    start = lo
    while start > 0 and aif[start - 1] > 0.05 * top:  # back to the bolus arrival
        start -= 1
    up = [k for k in range(max(start - 1, 0), lo) if aif[k] < level]  # from the last frame before arrival
    down = []
    for k in range(hi + 1, len(aif)):
        if aif[k] >= level:
            continue
        if down and aif[k] > aif[down[-1]]:  # the first pass is over (recirculation)
            break
        down.append(k)
        if aif[k] < 0.3 * top:
            break
    frames = np.array(up + down)
    if len(up) < 2 or len(down) < 2 or len(frames) < 5:  # four parameters
        return None
    t, y = t_s[frames], aif[frames]
    t_arrival = float(t_s[max(start - 1, 0)])

    def model(q: np.ndarray, tt: np.ndarray) -> np.ndarray:
        t0, amp, a, b = q
        x = np.maximum(tt - t0, 0.0)
        return amp * (x / (a * b)) ** a * np.exp(a - x / b)

    q0 = np.array([t_arrival, 1.5 * top, 2.0, max((t_s[hi] - t_arrival) / 4.0, 0.5)])
    lower = [t_arrival - 2 * (t_s[1] - t_s[0]), top, 1.0, 0.2]
    upper = [float(t_s[up[-1]]), 20.0 * top, 8.0, 30.0]
    q0 = np.clip(q0, np.add(lower, 1e-9), np.subtract(upper, 1e-9))
    fit = least_squares(lambda q: model(q, t) - y, q0, bounds=(lower, upper))
    if not fit.success or fit.x[1] <= top:
        return None
    rebuilt = aif.copy()
    span = slice(max(lo - 1, 0), min(hi + 2, len(aif)))
    rebuilt[span] = np.maximum(aif[span], model(fit.x, t_s[span]))
    return rebuilt, float(fit.x[1])


def baseline_length(curve: np.ndarray, minimum: int = 2) -> int:
    """Frames before the bolus: those before the signal first rises past 10 % of its enhancement."""
    early = curve[: max(minimum, 3)]
    rise = np.nonzero(curve > early.mean() + 0.1 * (curve.max() - early.mean()))[0]
    first = int(rise[0]) if rise.size else minimum
    return max(minimum, first - 1)


def _prebolus_input(pre: PreBolus, mask: np.ndarray, t_s: np.ndarray, main: np.ndarray, main_baseline: int,
                    settings: PerfusionSettings, ts: float) -> tuple[np.ndarray, str]:
    """The main bolus's input from the pre-bolus series, and a line for the flags."""
    signal = pre.frames[:, mask].mean(1)
    n_base = baseline_length(signal)
    pre_blood = signal_to_concentration(signal[None], n_base, settings.t1_blood_ms, pre.saturation_delay_ms or ts,
                                        settings.relaxivity)[0]
    curve, shift = scaled_input(t_s, main, main_baseline, np.asarray(pre.t_min) * 60.0, pre_blood, n_base,
                                pre.dose_ratio)
    return curve, (f"AIF from the pre-bolus series x {pre.dose_ratio:g} (dose ratio), shifted {shift:+.1f} s to "
                   f"the main bolus's arrival: peak {main.max():.2f} mM blood measured in the main bolus, "
                   f"{curve.max():.2f} mM from the pre-bolus")


def _segment_curves(concentration: np.ndarray, myocardium: np.ndarray, aha: np.ndarray,
                    use_core: bool) -> dict[int, tuple[int, np.ndarray]]:
    """Segment -> (the slice holding most of it, its mean concentration curve there).

    The curve comes from the segment's core (its pixels not bordering anything else: partial
    volume with blood) when the core has >= 5 pixels there, else from the whole segment.
    """
    core = myocardial_core(myocardium) if use_core else np.zeros_like(myocardium)
    out = {}
    for seg in (int(v) for v in np.unique(aha[myocardium]) if v):
        where = (aha == seg) & myocardium
        if (where & core).sum() >= 5:
            where = where & core
        k = int(np.bincount(np.nonzero(where)[0]).argmax())
        out[seg] = (k, concentration[k][:, where[k]].mean(1))
    return out


def quantify(images: np.ndarray, t_min: np.ndarray, labels: np.ndarray, aha_labels: np.ndarray,
             settings: PerfusionSettings = PerfusionSettings(), saturation_delay_ms: float | None = None,
             prebolus: PreBolus | None = None, geometry: Sequence[SliceGeometry] | None = None) -> PerfusionResult:
    """Maps per myocardial pixel and values per AHA segment (segment-mean curves fitted).

    ``prebolus``: the AIF slice of a pre-bolus series, aligned with ``images``
    (``aif_slice(labels)`` says which slice); the arterial input is then taken from it.
    ``geometry`` (the slices'): each segment entry also gets ``<parameter>_segmentation``, the
    largest change of the value on the segmentation's variants (``pinn_engine.segment_variants``).
    """
    ts = saturation_delay_ms or settings.saturation_delay_ms
    s, t, h, w = images.shape
    k_aif, aif_mask = arterial_input(images, labels)
    aif_signal = images[k_aif][:, aif_mask].mean(1)
    n_base = baseline_length(aif_signal)
    aif_blood = signal_to_concentration(aif_signal[None], n_base, settings.t1_blood_ms, ts, settings.relaxivity)[0]
    flags = []
    source = "main bolus"
    if prebolus is not None:
        if prebolus.frames.shape[1:] != images.shape[2:]:
            raise ValueError(f"pre-bolus frames {prebolus.frames.shape[1:]} differ from the series' {images.shape[2:]}")
        aif_blood, line = _prebolus_input(prebolus, aif_mask, t_min[k_aif] * 60.0, aif_blood, n_base, settings, ts)
        flags.append(line)
        source = f"pre-bolus x {prebolus.dose_ratio:g}"
    elif aif_signal.max() / max(aif_signal[:n_base].mean(), 1e-9) > 0.98 / (1 - np.exp(-ts / settings.t1_blood_ms)):
        flags.append("AIF near saturation of the signal model: peak concentration underestimated")
    top = aif_plateau_s(t_min[k_aif] * 60.0, aif_blood)
    if prebolus is None and top >= PLATEAU_S:
        rebuilt = rebuild_first_pass(t_min[k_aif] * 60.0, aif_blood)
        if rebuilt is None:
            flags.append(f"AIF flat-topped for {top:.1f} s (signal saturation of the arterial input likely): "
                         "flows are overestimated; a pre-bolus or dual-sequence AIF is needed")
        else:
            flags.append(f"AIF flat-topped for {top:.1f} s (signal saturation of the arterial input likely): first "
                         f"pass rebuilt from its unsaturated frames (peak {aif_blood.max():.2f} -> "
                         f"{rebuilt[1]:.2f} mM blood); flows remain uncertain, a pre-bolus or dual-sequence AIF "
                         "is better")
            aif_blood = rebuilt[0]
            source = "main bolus, first pass rebuilt"
    aif_plasma = aif_blood / (1.0 - settings.hct)
    names = (*PARAMETERS, *(f"{p}_sd" for p in PARAMETERS), "mbf", "mbf_sd")
    maps = {key: np.full((s, h, w), np.nan) for key in names}
    concentration = np.zeros((s, t, h, w))
    to_mbf = 1.0 / (1.0 - settings.hct) / settings.density_g_ml
    for k in range(s):
        myo = labels[k] == Label.MYOCARDIUM
        if myo.sum() < 5:
            continue
        aif_k = np.interp(t_min[k], t_min[k_aif], aif_plasma)
        curves = signal_to_concentration(images[k][:, myo].T, n_base, settings.t1_myocardium_ms, ts,
                                         settings.relaxivity).T  # (T, N)
        concentration[k][:, myo] = curves
        fit = fit_2cxm(t_min[k], aif_k, curves, method=settings.method, model=settings.model)
        for p in PARAMETERS:
            maps[p][k][myo] = fit[p]
            maps[f"{p}_sd"][k][myo] = fit[f"{p}_sd"]
        maps["mbf"][k][myo] = fit["fp"] * to_mbf
        maps["mbf_sd"][k][myo] = fit["fp_sd"] * to_mbf
    segments: dict[int, dict[str, float]] = {}
    myocardium = labels == Label.MYOCARDIUM

    def fitted(found: dict[tuple, tuple[int, np.ndarray]]) -> dict[tuple, dict[str, np.ndarray]]:
        """Key -> the 2CXM fit of its curve; the curves of one slice are fitted in one call."""
        out = {}
        for k in sorted({k for k, _ in found.values()}):
            keys = [key for key, (kk, _) in found.items() if kk == k]
            fit = fit_2cxm(t_min[k], np.interp(t_min[k], t_min[k_aif], aif_plasma),
                           np.stack([found[key][1] for key in keys], axis=1), method="nlls", model=settings.model,
                           prior="none")
            for i, key in enumerate(keys):
                out[key] = {name: fit[name][i] for name in (*PARAMETERS, *(f"{p}_sd" for p in PARAMETERS))}
        return out

    # the segments' curves, and (with the geometry) those of every variant of the segmentation
    # (pinn_engine.segment_variants): key (variant index, or -1 for the segmentation itself; segment)
    curves = {(-1, seg): found for seg, found in _segment_curves(concentration, myocardium, aha_labels, True).items()}
    variants = list(segmentation_variants(labels, geometry, aha_labels)) if geometry is not None else []
    for i, variant in enumerate(variants):
        curves.update({(i, seg): found for seg, found in
                       _segment_curves(concentration, variant.myocardium, variant.aha, variant.use_core).items()})
    # the segments' own fits apart from the variants': fit_2cxm pools the residual variance of the
    # curves it is given, and a segment's reported SD must not depend on other curves
    # (each segment alone, as its SD comes from its own residuals; the variants' values only are
    # used, and least squares without a prior fits every curve of a call independently)
    base = {}
    for key in (k for k in curves if k[0] == -1):
        base.update({seg: fit for (_, seg), fit in fitted({key: curves[key]}).items()})
    fits = fitted({k: v for k, v in curves.items() if k[0] >= 0})
    changes: dict[int, dict[str, float]] = {seg: dict.fromkeys(PARAMETERS, 0.0) for seg in base}
    for (i, seg), fit in fits.items():
        if i >= 0 and seg in base:
            for p in PARAMETERS:
                if np.isfinite(fit[p]):
                    changes[seg][p] = max(changes[seg][p], abs(float(fit[p] - base[seg][p])))
    for seg, fit in base.items():
        entry = {p: float(fit[p]) for p in PARAMETERS}
        entry.update({f"{p}_sd": float(fit[f"{p}_sd"]) for p in PARAMETERS})
        entry.update({f"{p}_segmentation": changes[seg][p] for p in PARAMETERS})
        entry["mbf"] = entry["fp"] * to_mbf
        entry["mbf_sd"] = entry["fp_sd"] * to_mbf
        entry["mbf_segmentation"] = entry["fp_segmentation"] * to_mbf
        entry["n_pixels"] = int((aha_labels == seg).sum())
        segments[seg] = entry
    return PerfusionResult(maps, segments, aif_plasma, k_aif, n_base, flags, source)
