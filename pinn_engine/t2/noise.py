"""Noise level sigma of magnitude images, with an upper confidence limit.

Background (air) magnitude is Rayleigh: sum of M^2 over n samples = sigma^2 chi2_{2n},
so sigma_hat^2 = sum M^2 / (2n) and the upper limit at level alpha' is
sigma_u^2 = sum M^2 / chi2_{2n, alpha'} (lower quantile). Without enough background (an
image cropped to the body), sigma comes from the pooled least-squares residuals in the
fit mask: RSS / sigma^2 ~ chi2_{K-2} per pixel, which any model error inflates (a
conservative estimate).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats

MIN_BACKGROUND = 500


@dataclass(frozen=True)
class NoiseEstimate:
    sigma: float
    sigma_upper: float
    confidence: float  # of the upper limit
    method: str  # "given" | "background-rayleigh" | "fit-residuals"
    n_samples: int


def background_mask(images: np.ndarray) -> np.ndarray:
    """Air pixels (S, H, W): all echoes low, by an iterated Rayleigh threshold."""
    first = images[:, 0]
    positive = first[first > 0]
    if positive.size == 0:
        return np.zeros(first.shape, dtype=bool)
    # start from the dim quarter of the image, then keep values below 4 sigma (Rayleigh
    # tail beyond 4 sigma: 3e-4) in every echo
    cand = (images.max(axis=1) <= np.percentile(positive, 25)) & (first > 0)
    for _ in range(3):
        if cand.sum() < MIN_BACKGROUND:
            return np.zeros(first.shape, dtype=bool)
        vals = images.transpose(1, 0, 2, 3)[:, cand]
        sigma = np.sqrt((vals.astype(np.float64) ** 2).mean() / 2.0)
        cand = (images.max(axis=1) < 4.0 * sigma) & (first > 0)
    # stay away from the body edge (partial volume, ghosting): erode by 3 pixels
    from scipy import ndimage

    return np.stack([ndimage.binary_erosion(c, iterations=3) for c in cand])


def from_background(images: np.ndarray, alpha_upper: float = 0.01) -> NoiseEstimate | None:
    mask = background_mask(images)
    n = int(mask.sum()) * images.shape[1]
    if mask.sum() < MIN_BACKGROUND:
        return None
    vals = images.transpose(1, 0, 2, 3)[:, mask].astype(np.float64)
    ssq = float((vals**2).sum())
    sigma = np.sqrt(ssq / (2 * n))
    sigma_u = np.sqrt(ssq / stats.chi2.ppf(alpha_upper, 2 * n))
    return NoiseEstimate(sigma, sigma_u, 1 - alpha_upper, "background-rayleigh", n)


def from_residuals(rss: np.ndarray, n_echoes: int, alpha_upper: float = 0.01) -> NoiseEstimate:
    dof = (n_echoes - 2) * rss.size
    total = float(rss.sum())
    sigma = np.sqrt(total / dof)
    sigma_u = np.sqrt(total / stats.chi2.ppf(alpha_upper, dof))
    return NoiseEstimate(sigma, sigma_u, 1 - alpha_upper, "fit-residuals", int(rss.size))
