"""``fit_2cxm``: one entry point for every 2CXM fitting method (docs/perfusion.md)."""

from __future__ import annotations

import time

import numpy as np

from pinn_engine.perfusion.nlls import fit_nlls, parameter_sd

PINN_VARIANTS = ("2cxm", "reduced", "combined")  # the residuals a PINN is trained on (``pinn.fit_pinn``)
PERFUSION_METHODS = ("nlls", *(f"pinn-{variant}" for variant in PINN_VARIANTS))  # what ``fit_2cxm`` accepts


def fit_2cxm(t_min, aif, curves, method: str = "nlls", model: str = "discrete", **options) -> dict:
    """Fit the two-compartment exchange model to tissue curves.

    ``t_min`` (T,) minutes, ``aif`` (T,) and ``curves`` (T, N) in the same concentration
    units. ``method``: ``nlls`` (batched Levenberg-Marquardt, multi-start, empirical-Bayes
    population prior; ``prior="none"`` for plain least squares) or a PINN variant
    (``pinn-2cxm``, ``pinn-reduced``, ``pinn-combined``). ``model``: the forward model NLLS
    fits and the SDs use, ``discrete`` (rectangle rule as the legacy DRO) or ``continuous``
    (exact convolution with a piecewise-linear AIF).

    Returns ``fp, vp, ve, ps`` (N,) in ml/min/ml and fractions, their SDs ``*_sd``, and
    ``method``, ``model``, ``seconds``.
    """
    if method not in PERFUSION_METHODS:
        raise ValueError(f"method must be one of {PERFUSION_METHODS}, got {method!r}")
    curves = np.asarray(curves, dtype=np.float64)
    if curves.ndim != 2 or curves.shape[0] != np.asarray(t_min).shape[0] or np.asarray(aif).shape != np.asarray(
            t_min).shape:
        raise ValueError("t_min and aif must be (T,), curves (T, N)")
    t0 = time.perf_counter()
    if method == "nlls":
        out = fit_nlls(t_min, aif, curves, model=model, **options)
    else:
        from pinn_engine.perfusion.pinn import fit_pinn  # noqa: PLC0415  (torch only when needed)

        out = fit_pinn(t_min, aif, curves, variant=method.removeprefix("pinn-"), **options)
        out.update(parameter_sd(t_min, aif, curves, out, model=model))
    out.update(method=method, model=model, seconds=time.perf_counter() - t0)
    return out
