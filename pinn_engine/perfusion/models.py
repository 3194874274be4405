"""Two-compartment exchange model (2CXM): impulse response and forward models.

Parameters per voxel: F (plasma flow, ml/min/ml), vp, ve (fractions), PS (ml/min/ml);
time in minutes. IRF(t) = F [E exp(-k- t) + (1 - E) exp(-k+ t)] with Tb = vp/F,
Tp = vp/(PS + F), Te = ve/PS, k+- = ((1/Tp + 1/Te) +- sqrt((1/Tp + 1/Te)^2 - 4/(Tb Te)))/2,
E = (k+ - 1/Tb)/(k+ - k-).

Two forward models: the legacy *discrete* one of the reference object (rectangle rule
including the lag-0 term, C[n] = dt sum_{m<=n} IRF(t_m) Ca(t_{n-m})) and the *continuous*
convolution (fine grid, trapezoidal rule, sampled at the frame times).
"""

from __future__ import annotations

import numpy as np

PARAMETERS = ("fp", "vp", "ve", "ps")  # F, vp, ve, PS: the names (and order) every fit returns them under


def irf(t_min: np.ndarray, f: np.ndarray, vp: np.ndarray, ve: np.ndarray, ps: np.ndarray) -> np.ndarray:
    """IRF (N, T) for parameter vectors (N,) at times (T,)."""
    f, vp, ve, ps = (np.asarray(x, dtype=np.float64)[:, None] for x in (f, vp, ve, ps))
    tb, tp, te = vp / f, vp / (ps + f), ve / ps
    s = 1.0 / tp + 1.0 / te
    root = np.sqrt(np.maximum(s * s - 4.0 / (tb * te), 0.0))
    k_plus, k_minus = 0.5 * (s + root), 0.5 * (s - root)
    e = (k_plus - 1.0 / tb) / np.maximum(k_plus - k_minus, 1e-12)
    t = np.asarray(t_min, dtype=np.float64)[None, :]
    return f * (e * np.exp(-k_minus * t) + (1.0 - e) * np.exp(-k_plus * t))


def convolve_discrete(h: np.ndarray, aif: np.ndarray, dt: float) -> np.ndarray:
    """dt * (h * aif)[n] for n < T, lag-0 term included (the legacy DRO), via FFT: (N, T)."""
    n_t = h.shape[-1]
    size = 1 << int(np.ceil(np.log2(2 * n_t)))
    out = np.fft.irfft(np.fft.rfft(h, size) * np.fft.rfft(aif, size), size)[..., :n_t]
    return dt * out


def tissue_discrete(t_min, aif, f, vp, ve, ps) -> np.ndarray:
    t = np.asarray(t_min, dtype=np.float64)
    return convolve_discrete(irf(t - t[0], f, vp, ve, ps), np.asarray(aif, dtype=np.float64), float(t[1] - t[0]))


def tissue_continuous(t_min, aif_fn, f, vp, ve, ps, substeps: int = 100) -> np.ndarray:
    """Accurate convolution: a fine grid (dt/substeps) with the trapezoidal rule, sampled at t_min.

    ``aif_fn``: the AIF as a function of time (minutes), evaluated on the fine grid.
    """
    t = np.asarray(t_min, dtype=np.float64)
    dt = (t[1] - t[0]) / substeps
    fine = t[0] + np.arange((t.size - 1) * substeps + 1) * dt
    h = irf(fine - fine[0], f, vp, ve, ps)
    a = aif_fn(fine)
    full = convolve_discrete(h, a, dt)
    # trapezoidal correction: subtract half of the two end-point products of each integral
    full -= 0.5 * dt * (h[:, :1] * a[None, :] + h * a[:1][None, :])
    return full[:, ::substeps]


def _irf_terms(f, vp, ve, ps):
    """IRF = a1 exp(-k1 t) + a2 exp(-k2 t): amplitudes and rates, each (N,)."""
    tb, tp, te = vp / f, vp / (ps + f), ve / ps
    s = 1.0 / tp + 1.0 / te
    root = np.sqrt(np.maximum(s * s - 4.0 / (tb * te), 0.0))
    k_plus, k_minus = 0.5 * (s + root), 0.5 * (s - root)
    e = (k_plus - 1.0 / tb) / np.maximum(k_plus - k_minus, 1e-12)
    return f * e, k_minus, f * (1.0 - e), k_plus


def _exp_conv_linear(aif: np.ndarray, k: np.ndarray, dt: float) -> np.ndarray:
    """Exact int_0^t exp(-k (t-s)) a(s) ds for a piecewise-linear a sampled every dt: (N, T)."""
    n_t = aif.size
    k = np.maximum(k, 1e-9)[:, None]
    decay = np.exp(-k * dt)
    w0 = (1.0 - decay) / k  # weight of a_n
    w1 = dt / k - (1.0 - decay) / (k * k)  # weight of the slope m_n
    out = np.zeros((k.shape[0], n_t))
    slope = np.diff(aif) / dt
    for n in range(n_t - 1):
        out[:, n + 1] = decay[:, 0] * out[:, n] + aif[n] * w0[:, 0] + slope[n] * w1[:, 0]
    return out


def tissue_linear(t_min, aif, f, vp, ve, ps) -> np.ndarray:
    """Continuous 2CXM with the AIF interpolated linearly between its samples (exact in time)."""
    t = np.asarray(t_min, dtype=np.float64)
    dt = float(t[1] - t[0])
    a1, k1, a2, k2 = _irf_terms(*(np.asarray(x, dtype=np.float64) for x in (f, vp, ve, ps)))
    a = np.asarray(aif, dtype=np.float64)
    return a1[:, None] * _exp_conv_linear(a, k1, dt) + a2[:, None] * _exp_conv_linear(a, k2, dt)
