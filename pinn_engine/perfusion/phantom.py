"""First-pass perfusion phantom: short-axis anatomy, an arterial input, 2CXM myocardium, SR signal.

The anatomy is ``pinn_engine.phantom``'s. The bolus reaches the RV blood first, then the
LV blood (the arterial input); myocardial tissue curves follow the two-compartment
exchange model (exact convolution with the piecewise-linear AIF), with an optional
ischaemic sector of reduced flow. Signal is saturation recovery,
S = M0 (1 - exp(-TS R1)), R1 = 1/T1_0 + r1 C, with Rician noise: the same assumptions the
node's signal-to-concentration conversion makes (``signal_to_concentration``).

``r2star`` > 0 adds what that conversion leaves out and what flattens real arterial
inputs at full dose: the T2* loss of the readout in the blood pools, S x exp(-TE r2* C).
A pre-bolus (a tenth of the dose, ``dose`` = 0.1) keeps it small.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pinn_engine.perfusion.models import PARAMETERS, tissue_linear
from pinn_engine.phantom import Anatomy, Tissue, labels_of, slice_levels, tissue_map
from pinn_engine.segmentation.labels import Label

HCT = 0.45
R1_RELAXIVITY = 4.5  # 1/s/mM, gadolinium-based agent at 1.5 T
T1_NATIVE_MS = {"blood": 1550.0, "myocardium": 1000.0, "other": 800.0}
M0 = {"blood": 1.0, "myocardium": 0.9, "other": 0.7}


@dataclass
class PerfusionPhantom:
    images: np.ndarray  # (slices, frames, H, W) signal
    t_min: np.ndarray  # (slices, frames) acquisition times, minutes from the first frame of the first slice
    aif_blood_mM: np.ndarray  # (frames,) LV blood concentration at the first slice's times
    concentration: np.ndarray  # (slices, frames, H, W) mM
    fp: np.ndarray  # (slices, H, W) plasma flow ml/min/ml in the myocardium, 0 elsewhere
    vp: np.ndarray
    ve: np.ndarray
    ps: np.ndarray
    labels: np.ndarray  # (slices, H, W) Label values
    sigma: float
    ts_ms: float
    pixel_spacing_mm: float
    slice_spacing_mm: float
    anatomy: Anatomy


def gamma_variate(t_s: np.ndarray, arrival_s: float, peak_mM: float, rise_s: float = 5.0,
                  recirculation: float = 0.12) -> np.ndarray:
    """First pass (gamma variate, alpha 2) plus a small delayed recirculation."""
    def first(t0: float, amp: float, beta: float) -> np.ndarray:
        x = np.maximum(t_s - t0, 0.0) / beta
        return amp * x ** 2 * np.exp(2.0 - x) / 4.0  # maximum (amp) at x = 2

    c = first(arrival_s, peak_mM, rise_s / 2)
    c += first(arrival_s + 6 * rise_s, peak_mM * recirculation, rise_s)
    return c


def perfusion_phantom(anatomy: Anatomy | None = None, n_slices: int = 3, frames: int = 60, dt_s: float = 1.0,
                      snr: float = 40.0, seed: int = 0, fp: float = 1.2, vp: float = 0.05, ve: float = 0.15,
                      ps: float = 1.0, ischaemia: tuple[float, float, float] | None = (200.0, 90.0, 0.4),
                      ts_ms: float = 100.0, slice_spacing_mm: float = 10.0,
                      slice_interval_s: float = 0.15, dose: float = 1.0, arrival_s: float = 8.0,
                      r2star: float = 0.0, te_ms: float = 1.2) -> PerfusionPhantom:
    """``ischaemia``: (start angle deg, extent deg, flow fraction) of a low-flow sector, or None.

    Slices are acquired one after the other within each heartbeat (``slice_interval_s``
    apart): every slice's curves are computed at its own acquisition times. ``dose`` scales
    every concentration (the full dose peaks at 5 mM in the LV blood), ``arrival_s`` is when
    the bolus reaches the LV, ``r2star`` (1/s/mM) the T2* relaxivity seen at echo time
    ``te_ms`` in the blood pools.
    """
    anatomy = anatomy or Anatomy()
    rng = np.random.default_rng(seed)
    t_s = np.arange(frames) * dt_s
    levels = slice_levels(n_slices)
    tissues = np.stack([tissue_map(anatomy, lv) for lv in levels])
    labels = labels_of(tissues)
    s, h, w = labels.shape
    myo = labels == Label.MYOCARDIUM
    maps = {k: np.zeros((s, h, w)) for k in PARAMETERS}
    for k, v in zip(PARAMETERS, (fp, vp, ve, ps), strict=True):
        maps[k][myo] = v
    if ischaemia is not None:
        start, extent, fraction = ischaemia
        x, y = np.meshgrid(np.arange(w), np.arange(h))
        for k in range(s):
            if not myo[k].any():
                continue
            lv = labels[k] == Label.LV_BLOOD_POOL
            cy, cx = np.argwhere(lv).mean(axis=0) if lv.any() else (h / 2, w / 2)
            ang = np.degrees(np.arctan2(-(y - cy), x - cx)) % 360.0
            sector = myo[k] & (((ang - start) % 360.0) <= extent)
            maps["fp"][k][sector] *= fraction
    conc = np.zeros((s, frames, h, w))
    t_min = np.stack([(t_s + k * slice_interval_s) / 60.0 for k in range(s)])
    for k in range(s):
        aif_blood = gamma_variate(t_min[k] * 60.0, arrival_s=arrival_s, peak_mM=5.0 * dose)
        rv_blood = gamma_variate(t_min[k] * 60.0, arrival_s=arrival_s - 4.0, peak_mM=7.0 * dose)
        aif_plasma = aif_blood / (1 - HCT)
        conc[k][:, labels[k] == Label.LV_BLOOD_POOL] = aif_blood[:, None]
        conc[k][:, labels[k] == Label.RV_BLOOD_POOL] = rv_blood[:, None]
        idx = np.nonzero(myo[k])
        if idx[0].size:
            p = [maps[n][k][idx] for n in PARAMETERS]
            # unique parameter sets only (the sector and the rest): the convolution is exact per set
            params = np.stack(p, axis=1)
            uniq, inv = np.unique(params, axis=0, return_inverse=True)
            curves = tissue_linear(t_min[k], aif_plasma, *uniq.T)  # (U, T)
            conc[k][:, idx[0], idx[1]] = curves[inv.reshape(-1)].T
    t1 = np.full((s, h, w), T1_NATIVE_MS["other"])
    m0 = np.full((s, h, w), M0["other"])
    blood = (labels == Label.LV_BLOOD_POOL) | (labels == Label.RV_BLOOD_POOL)
    t1[blood], m0[blood] = T1_NATIVE_MS["blood"], M0["blood"]
    t1[myo], m0[myo] = T1_NATIVE_MS["myocardium"], M0["myocardium"]
    m0[tissues == Tissue.AIR] = 0.0
    m0[tissues == Tissue.LUNG] *= 0.1
    r1 = 1000.0 / t1[:, None] + R1_RELAXIVITY * conc  # 1/s
    t2star_loss = np.exp(-te_ms / 1000.0 * r2star * conc * blood[:, None])
    clean = m0[:, None] * (1.0 - np.exp(-ts_ms / 1000.0 * r1)) * t2star_loss
    sigma = float(M0["myocardium"] * (1 - np.exp(-ts_ms / T1_NATIVE_MS["myocardium"])) / snr)
    noisy = np.hypot(clean + rng.normal(0, sigma, clean.shape), rng.normal(0, sigma, clean.shape))
    aif_blood = gamma_variate(t_min[0] * 60.0, arrival_s=arrival_s, peak_mM=5.0 * dose)
    return PerfusionPhantom(noisy.astype(np.float32), t_min, aif_blood, conc, maps["fp"], maps["vp"], maps["ve"],
                            maps["ps"], labels, sigma, ts_ms, anatomy.pixel_mm, slice_spacing_mm, anatomy)


def signal_to_concentration(signal: np.ndarray, baseline_frames: int, t1_native_ms: float | np.ndarray,
                            ts_ms: float, relaxivity: float = R1_RELAXIVITY) -> np.ndarray:
    """Concentration (mM) from saturation-recovery signal (..., frames).

    M0 from the pre-contrast frames and the assumed native T1; then
    R1 = -ln(1 - S / M0) / TS and C = (R1 - 1/T1_0) / r1. Signal at or above M0 (noise,
    saturation of the model) is clipped just below it.
    """
    s = np.asarray(signal, dtype=np.float64)
    t1 = np.asarray(t1_native_ms, dtype=np.float64)
    e0 = 1.0 - np.exp(-ts_ms / t1)
    m0 = s[..., :baseline_frames].mean(-1) / e0  # e0 broadcasts over the pixel axes
    ratio = np.clip(s / np.maximum(m0[..., None], 1e-12), 0.0, 0.999)
    r1 = -np.log1p(-ratio) / (ts_ms / 1000.0)
    r1_native = 1000.0 / t1
    return (r1 - (r1_native[..., None] if r1_native.ndim else r1_native)) / relaxivity
