"""Non-linear least squares for the 2CXM, vectorised over curves (batched Levenberg-Marquardt).

Log-space parameters with physiological bounds, several starts per curve (the best fit
kept), and per-parameter SDs from the Jacobian at the solution (delta method).
"""

from __future__ import annotations

import numpy as np

from pinn_engine.perfusion.models import tissue_discrete, tissue_linear

BOUNDS = {"fp": (0.02, 10.0), "vp": (0.005, 0.6), "ve": (0.02, 0.9), "ps": (0.01, 10.0)}
NAMES = ("fp", "vp", "ve", "ps")
STARTS = ((1.0, 0.05, 0.2, 1.0), (1.5, 0.1, 0.3, 0.5), (0.7, 0.03, 0.15, 2.0), (2.0, 0.15, 0.4, 1.5))


def _model(model: str):
    if model == "discrete":
        return tissue_discrete
    if model == "continuous":
        return tissue_linear
    raise ValueError("model must be 'discrete' or 'continuous'")


def _forward(fn, t, aif, theta):
    p = np.exp(theta)
    return fn(t, aif, p[:, 0], p[:, 1], p[:, 2], p[:, 3])


def _jacobian(fn, t, aif, y, theta, r, h: float = 1e-5) -> np.ndarray:
    """Forward-difference Jacobian of the residuals w.r.t. the log parameters: (N, T, 4)."""
    jac = np.empty((*y.shape, 4))
    for j in range(4):
        step = theta.copy()
        step[:, j] += h
        jac[:, :, j] = (_forward(fn, t, aif, step) - y - r) / h
    return jac


def _lm(fn, t, aif, y, theta, iterations: int, lo, hi):
    n = y.shape[0]
    lam = np.full(n, 1e-2)
    r = _forward(fn, t, aif, theta) - y
    cost = (r * r).sum(1)
    for _ in range(iterations):
        jac = _jacobian(fn, t, aif, y, theta, r)
        jtj = np.einsum("ntj,ntk->njk", jac, jac)
        jtr = np.einsum("ntj,nt->nj", jac, r)
        damp = jtj + lam[:, None, None] * (np.eye(4)[None] * np.maximum(np.diagonal(jtj, axis1=1, axis2=2),
                                                                       1e-12)[:, :, None])
        delta = -np.linalg.solve(damp, jtr[..., None])[..., 0]
        trial = np.clip(theta + delta, lo, hi)
        r_trial = _forward(fn, t, aif, trial) - y
        cost_trial = (r_trial * r_trial).sum(1)
        better = cost_trial < cost
        theta = np.where(better[:, None], trial, theta)
        r = np.where(better[:, None], r_trial, r)
        cost = np.where(better, cost_trial, cost)
        lam = np.where(better, lam * 0.3, lam * 10.0)
    return theta, cost, r


def fit_nlls(t_min, aif, curves, model: str = "discrete", iterations: int = 60, starts=STARTS) -> dict:
    """Fit curves (T, N); returns fp, vp, ve, ps (N,) and their SDs (``*_sd``), plus the RSS."""
    fn = _model(model)
    t = np.asarray(t_min, dtype=np.float64)
    a = np.asarray(aif, dtype=np.float64)
    y = np.asarray(curves, dtype=np.float64).T
    n = y.shape[0]
    lo = np.log([BOUNDS[k][0] for k in NAMES])
    hi = np.log([BOUNDS[k][1] for k in NAMES])
    best_theta, best_cost, best_r = None, np.full(n, np.inf), None
    for start in starts:
        theta0 = np.tile(np.log(start), (n, 1))
        theta, cost, r = _lm(fn, t, a, y, theta0, iterations, lo, hi)
        take = cost < best_cost
        best_theta = theta if best_theta is None else np.where(take[:, None], theta, best_theta)
        best_r = r if best_r is None else np.where(take[:, None], r, best_r)
        best_cost = np.where(take, cost, best_cost)
    # uncertainty: sigma^2 (J'J)^-1 in log space, SD_p = p * SD_log
    jac = _jacobian(fn, t, a, y, best_theta, best_r)
    sigma2 = best_cost / max(y.shape[1] - 4, 1)
    cov = np.linalg.pinv(np.einsum("ntj,ntk->njk", jac, jac)) * sigma2[:, None, None]
    sd_log = np.sqrt(np.maximum(np.diagonal(cov, axis1=1, axis2=2), 0.0))
    p = np.exp(best_theta)
    out = {k: p[:, i] for i, k in enumerate(NAMES)}
    out.update({f"{k}_sd": p[:, i] * sd_log[:, i] for i, k in enumerate(NAMES)})
    out["rss"] = best_cost
    return out
