"""Non-linear least squares for the 2CXM, vectorised over curves (batched Levenberg-Marquardt).

Log-space parameters with physiological bounds, several starts per curve (the best fit
kept), and per-parameter SDs from the Jacobian at the solution (delta method).
"""

from __future__ import annotations

import numpy as np

from pinn_engine.perfusion.models import PARAMETERS, tissue_discrete, tissue_linear

BOUNDS = {"fp": (0.02, 10.0), "vp": (0.005, 0.6), "ve": (0.02, 0.9), "ps": (0.01, 10.0)}
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


def _lm(fn, t, aif, y, theta, iterations: int, lo, hi, prior=None):
    """Batched Levenberg-Marquardt on sum(r^2) (+ sum(((theta - mu) / tau)^2) * sigma2 with a prior)."""
    n = y.shape[0]
    lam = np.full(n, 1e-2)
    if prior is not None:
        mu, inv_tau2, sigma2 = prior  # (4,), (4,), (N,)
        weight = sigma2[:, None] * inv_tau2[None, :]  # the prior in units of squared residuals

    def penalty(th):
        return 0.0 if prior is None else (weight * (th - mu) ** 2).sum(1)

    r = _forward(fn, t, aif, theta) - y
    cost = (r * r).sum(1) + penalty(theta)
    for _ in range(iterations):
        jac = _jacobian(fn, t, aif, y, theta, r)
        jtj = np.einsum("ntj,ntk->njk", jac, jac)
        jtr = np.einsum("ntj,nt->nj", jac, r)
        if prior is not None:
            jtj = jtj + weight[:, :, None] * np.eye(4)[None]
            jtr = jtr + weight * (theta - mu)
        damp = jtj + lam[:, None, None] * (np.eye(4)[None] * np.maximum(np.diagonal(jtj, axis1=1, axis2=2),
                                                                       1e-12)[:, :, None])
        delta = -np.linalg.solve(damp, jtr[..., None])[..., 0]
        trial = np.clip(theta + delta, lo, hi)
        r_trial = _forward(fn, t, aif, trial) - y
        cost_trial = (r_trial * r_trial).sum(1) + penalty(trial)
        better = cost_trial < cost
        theta = np.where(better[:, None], trial, theta)
        r = np.where(better[:, None], r_trial, r)
        cost = np.where(better, cost_trial, cost)
        lam = np.where(better, lam * 0.3, lam * 10.0)
    return theta, cost, r


def population_prior(theta: np.ndarray, sd_log: np.ndarray, lo, hi) -> tuple[np.ndarray, np.ndarray]:
    """Empirical-Bayes prior in log space from first-pass fits: centre and spread per parameter.

    Curves whose estimate sits on a bound or whose SD is not finite do not inform it. The
    spread is the robust spread of the estimates minus their typical estimation variance
    (the part of the scatter that is real variation between curves), floored so that the
    prior never pins a parameter.
    """
    mu, tau = np.empty(4), np.empty(4)
    for j in range(4):
        ok = (theta[:, j] > lo[j] + 1e-3) & (theta[:, j] < hi[j] - 1e-3) & np.isfinite(sd_log[:, j])
        v = theta[ok, j] if ok.sum() >= 10 else theta[:, j]
        s = sd_log[ok, j] if ok.sum() >= 10 else np.nan_to_num(sd_log[:, j], nan=1.0, posinf=1.0)
        # precision-weighted centre: well-determined curves count more
        w = 1.0 / np.maximum(s, 0.02) ** 2
        mu[j] = np.sum(w * v) / np.sum(w)
        spread = 1.4826 * np.median(np.abs(v - np.median(v)))
        tau[j] = np.sqrt(max(spread ** 2 - np.median(s) ** 2 * 0.25, 0.0) + TAU_FLOOR ** 2)
    return mu, tau


TAU_FLOOR = 0.15  # log units: the prior never claims a parameter is known better than ~15 %


def parameter_sd(t_min, aif, curves, params: dict, model: str = "discrete") -> dict:
    """SDs of given estimates (e.g. a PINN's) by the delta method with the forward ``model``:
    sigma^2 (J'J)^-1 in log space, sigma pooled from the residuals of all curves."""
    fn = _model(model)
    t = np.asarray(t_min, dtype=np.float64)
    a = np.asarray(aif, dtype=np.float64)
    y = np.asarray(curves, dtype=np.float64).T
    theta = np.log(np.stack([np.asarray(params[k], dtype=np.float64) for k in PARAMETERS], axis=1))
    r = _forward(fn, t, a, theta) - y
    sigma2 = np.median((r * r).sum(1)) / max(y.shape[1] - 4, 1)
    jac = _jacobian(fn, t, a, y, theta, r)
    cov = np.linalg.pinv(np.einsum("ntj,ntk->njk", jac, jac)) * sigma2
    sd_log = np.sqrt(np.maximum(np.diagonal(cov, axis1=1, axis2=2), 0.0))
    return {f"{k}_sd": np.exp(theta[:, i]) * sd_log[:, i] for i, k in enumerate(PARAMETERS)}


def fit_nlls(t_min, aif, curves, model: str = "discrete", iterations: int = 60, starts=STARTS,
             prior: str = "empirical") -> dict:
    """Fit curves (T, N); returns fp, vp, ve, ps (N,) and their SDs (``*_sd``), plus the RSS.

    ``prior="empirical"``: after the multi-start least-squares pass, a log-normal population
    prior per parameter is estimated from the curves themselves (``population_prior``) and
    every curve is refitted to its posterior mode (MAP). Parameters the data determine well
    (F) barely move; poorly determined ones (PS, vp at high PS) are pulled towards the
    population instead of wandering to a bound. ``prior="none"``: plain least squares.
    The SDs are posterior SDs (delta method in log space) in both cases.
    """
    if prior not in ("empirical", "none"):
        raise ValueError("prior must be 'empirical' or 'none'")
    fn = _model(model)
    t = np.asarray(t_min, dtype=np.float64)
    a = np.asarray(aif, dtype=np.float64)
    y = np.asarray(curves, dtype=np.float64).T
    n, m = y.shape
    lo = np.log([BOUNDS[k][0] for k in PARAMETERS])
    hi = np.log([BOUNDS[k][1] for k in PARAMETERS])
    best_theta, best_cost, best_r = None, np.full(n, np.inf), None
    for start in starts:
        theta0 = np.tile(np.log(start), (n, 1))
        theta, cost, r = _lm(fn, t, a, y, theta0, iterations, lo, hi)
        take = cost < best_cost
        best_theta = theta if best_theta is None else np.where(take[:, None], theta, best_theta)
        best_r = r if best_r is None else np.where(take[:, None], r, best_r)
        best_cost = np.where(take, cost, best_cost)
    # noise variance: pooled over the curves (the noise is the scanner's, common to all of them)
    sigma2 = np.full(n, np.median(best_cost) / max(m - 4, 1))
    jac = _jacobian(fn, t, a, y, best_theta, best_r)
    jtj = np.einsum("ntj,ntk->njk", jac, jac)
    inv_tau2 = np.zeros(4)
    if prior == "empirical" and n >= 20:
        cov = np.linalg.pinv(jtj) * sigma2[:, None, None]
        sd_log = np.sqrt(np.maximum(np.diagonal(cov, axis1=1, axis2=2), 0.0))
        mu, tau = population_prior(best_theta, sd_log, lo, hi)
        inv_tau2 = 1.0 / tau ** 2
        best_theta, _, best_r = _lm(fn, t, a, y, best_theta, iterations // 2, lo, hi, (mu, inv_tau2, sigma2))
        best_cost = (best_r * best_r).sum(1)
        jac = _jacobian(fn, t, a, y, best_theta, best_r)
        jtj = np.einsum("ntj,ntk->njk", jac, jac)
    # posterior covariance in log space: (J'J / sigma^2 + diag(1/tau^2))^-1; SD_p = p * SD_log
    precision = jtj / sigma2[:, None, None] + np.diag(inv_tau2)[None]
    cov = np.linalg.pinv(precision)
    sd_log = np.sqrt(np.maximum(np.diagonal(cov, axis1=1, axis2=2), 0.0))
    p = np.exp(best_theta)
    out = {k: p[:, i] for i, k in enumerate(PARAMETERS)}
    out.update({f"{k}_sd": p[:, i] * sd_log[:, i] for i, k in enumerate(PARAMETERS)})
    out["rss"] = best_cost
    return out
