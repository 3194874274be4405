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
from scipy import ndimage, stats

MIN_BACKGROUND = 500


@dataclass(frozen=True)
class NoiseEstimate:
    sigma: float
    sigma_upper: float
    confidence: float  # of the upper limit
    method: str  # "given" | "background-rayleigh" | "fit-residuals"
    n_samples: int


def background_mask(images: np.ndarray) -> np.ndarray:
    """Air outside the body (S, H, W): dim, connected to the image border, Rayleigh-like.

    Starts from the image's 5th percentile read as a Rayleigh quantile, then thresholds the
    first echo smoothed over 5x5 pixels (air: mean 1.25 sigma, nearly uniform) at 2 sigma,
    keeping what is connected to the border (dim tissue inside the body, e.g. lungs, is
    not). The region is accepted only if its magnitude statistics
    are Rayleigh (E[M]^2 / E[M^2] = pi/4); an image cropped to the body has no background.
    The result is eroded away from the body edge (partial volume, ghosting).
    """
    first = images[:, 0].astype(np.float64)
    none = np.zeros(first.shape, dtype=bool)
    positive = first[first > 0]
    if positive.size < MIN_BACKGROUND:
        return none
    # the image's 5th percentile lies in air whenever air is >= ~15 % of it; as a Rayleigh
    # 5th percentile (0.3203 sigma) it gives a start between ~1 and ~3 sigma
    sigma = float(np.percentile(positive, 5)) / 0.3203
    smooth = np.stack([ndimage.uniform_filter(f, 5) for f in first])
    cand = none
    for _ in range(3):
        cand = np.stack([_border_connected(sm <= 2.0 * sigma) for sm in smooth]) & (first > 0)
        if cand.sum() < MIN_BACKGROUND:
            return none
        sigma = float(np.sqrt((first[cand] ** 2).mean() / 2.0))
    vals = first[cand]
    ratio = vals.mean() ** 2 / (vals**2).mean()
    if not 0.74 <= ratio <= 0.83:  # pi/4 = 0.785 for Rayleigh; -> 1 for tissue signal
        return none
    return np.stack([ndimage.binary_erosion(c, iterations=3) for c in cand])


def _border_connected(mask: np.ndarray) -> np.ndarray:
    labels, n = ndimage.label(mask)
    if n == 0:
        return mask
    edge = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    return np.isin(labels, edge[edge > 0])


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
