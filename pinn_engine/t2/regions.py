"""Region statistics (myocardium, AHA segments): mean T2, spatial SD and a bound on the mean.

Noise is independent between pixels, so the least-squares (reference) estimates are
independent with variances ~ the per-pixel Fisher bound at the estimate (with the upper
noise limit sigma_u) and a second-order bias ~ var_i / T2_i. The bound on the mean of the
reference estimate is z_{(1+c)/2} * sqrt(sum var_i) / n + sum(var_i / T2_i) / n. For
another estimator (the PINN), whose pixels may be coupled, the distance between its mean
and the reference mean on the same data is added (triangle inequality), so its bias is
inside the reported bound by construction. Coverage is verified by simulation
(benchmarks/t2_accuracy.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from scipy import stats

from pinn_engine.t2.flags import EXCLUDE
from pinn_engine.t2.model import crlb_sd_t2

if TYPE_CHECKING:
    from pinn_engine.t2.fit import T2Fit


@dataclass(frozen=True)
class RegionStats:
    mean_ms: float
    sd_ms: float  # spatial spread within the region
    bound_ms: float  # |mean - true mean| <= bound with probability >= confidence
    n_pixels: int  # pixels used
    n_excluded: int  # pixels of the region left out because of their flags
    confidence: float


def noise_bound(fit: "T2Fit", used: np.ndarray) -> float:
    """The bound on the mean of ``fit`` over the pixels ``used`` that noise and the fit account for:
    z sqrt(sum var_i) / n + the second-order bias + the distance to the reference fit's mean."""
    t2 = fit.t2_ms[used]
    ref = fit.t2_reference_ms[used]
    n = t2.size
    snr = fit.m0[used] / fit.noise.sigma_upper
    sd_i = crlb_sd_t2(ref, snr, fit.te_ms)
    z = stats.norm.ppf(0.5 + fit.confidence / 2)
    # E[1/R_hat] ~ 1/R + var(R_hat)/R^3: the least-squares T2 is biased upwards by ~sd^2/T2
    # at low SNR (the mean, not the median); budgeted rather than subtracted so that the
    # reported mean stays the mean of the map.
    bias = float(np.sum(sd_i**2 / ref)) / n
    return float(z * np.sqrt(np.sum(sd_i**2)) / n + bias + abs(float(t2.mean() - ref.mean())))


def region_statistics(fit: "T2Fit", mask: np.ndarray) -> RegionStats:
    """Statistics of ``fit`` over the boolean ``mask`` (same shape as the maps)."""
    mask = np.asarray(mask, dtype=bool)
    usable = mask & ((fit.flags & int(EXCLUDE)) == 0)
    n = int(usable.sum())
    excluded = int(mask.sum()) - n
    if n == 0:
        return RegionStats(float("nan"), float("nan"), float("inf"), 0, excluded, fit.confidence)
    t2 = fit.t2_ms[usable]
    return RegionStats(
        mean_ms=float(t2.mean()),
        sd_ms=float(t2.std(ddof=1)) if n > 1 else 0.0,
        bound_ms=noise_bound(fit, usable),
        n_pixels=n,
        n_excluded=excluded,
        confidence=fit.confidence,
    )
