"""Signal model of T2 preparation and its Cramer-Rao limit.

S(t) = M0 exp(-t / T2), the solution of the Bloch equation dM/dt = -M / T2 with M(0) = M0
(ideal preparation, full recovery, no offset term).
"""

from __future__ import annotations

import numpy as np


def signal(m0: np.ndarray | float, t2_ms: np.ndarray | float, te_ms: np.ndarray) -> np.ndarray:
    """Signal at the preparation times ``te_ms`` (last axis)."""
    te = np.asarray(te_ms, dtype=np.float64)
    return np.asarray(m0)[..., None] * np.exp(-te / np.asarray(t2_ms)[..., None])


def fisher_t2_factor(t2_ms: np.ndarray | float, te_ms: np.ndarray) -> np.ndarray:
    """sqrt(sum_k w_k (t_k - tbar_w)^2) with w_k = exp(-2 t_k / T2): the design term of the CRLB."""
    te = np.asarray(te_ms, dtype=np.float64)
    t2 = np.asarray(t2_ms, dtype=np.float64)[..., None]
    w = np.exp(-2.0 * te / t2)
    tbar = (w * te).sum(-1, keepdims=True) / w.sum(-1, keepdims=True)
    return np.sqrt((w * (te - tbar) ** 2).sum(-1))


def crlb_sd_t2(t2_ms: np.ndarray | float, m0_over_sigma: np.ndarray | float, te_ms: np.ndarray) -> np.ndarray:
    """Cramer-Rao lower bound on the SD of an unbiased T2 estimate (ms).

    SD = T2^2 / (SNR * sqrt(sum_k w_k (t_k - tbar_w)^2)), SNR = M0 / sigma.
    """
    t2 = np.asarray(t2_ms, dtype=np.float64)
    return t2**2 / (np.asarray(m0_over_sigma, dtype=np.float64) * fisher_t2_factor(t2, te_ms))
