"""T2 mapping of a T2-prepared multi-echo stack with per-pixel error bounds."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pinn_engine.t2 import bounds, noise
from pinn_engine.t2.flags import Flag
from pinn_engine.t2.nlls import fit_nlls

T2_METHODS = ("nlls", "pinn")  # what ``fit_t2`` accepts
T2_RANGE_MS = (5.0, 400.0)
LOW_SIGNAL_SIGMAS = 2.5  # last echo below this many sigma: Rician regime, Gaussian model not trusted


@dataclass
class T2Fit:
    """Maps have shape (slices, H, W); pixels without an estimate hold 0 and Flag.NO_ESTIMATE."""

    t2_ms: np.ndarray
    m0: np.ndarray
    bound_ms: np.ndarray  # |T2_hat - T2_true| <= bound with probability >= confidence (per pixel)
    lo_ms: np.ndarray  # data-consistency set C_alpha, lower end
    hi_ms: np.ndarray  # upper end (inf: open)
    flags: np.ndarray  # uint8 bit mask of Flag
    t2_reference_ms: np.ndarray  # exact least-squares estimate on the same data
    confidence: float
    noise: noise.NoiseEstimate
    te_ms: np.ndarray
    method: str
    timings_s: dict[str, float] = field(default_factory=dict)
    diagnostics: dict[str, Any] = field(default_factory=dict)

    @property
    def estimated(self) -> np.ndarray:
        return (self.flags & int(Flag.NO_ESTIMATE)) == 0


def _rician_correct(y: np.ndarray, te: np.ndarray, sigma: float, first_pass) -> np.ndarray:
    """First-order removal of the Rician bias E|y| ~ S + sigma^2 / (2 S).

    S is taken from a first least-squares fit rather than from y itself, so the
    correction removes the bias without amplifying the noise (d/dy of y - sigma^2/(2y)
    would be 1 + sigma^2/(2 y^2)).
    """
    s_hat = first_pass.m0[:, None] * np.exp(-te / first_pass.t2_ms[:, None])
    return np.where(s_hat > sigma, y - sigma * sigma / (2.0 * np.maximum(s_hat, 1e-30)), y)


def fit_t2(
    images: np.ndarray,
    te_ms: np.ndarray | list[float],
    mask: np.ndarray | None = None,
    method: str = "nlls",
    confidence: float = 0.95,
    sigma: float | None = None,
    rician_correction: bool = True,
    model_error: float = 0.0,
    seed: int = 0,
    pinn_options: dict[str, Any] | None = None,
    within: np.ndarray | None = None,
) -> T2Fit:
    """Fit T2 per pixel of ``images`` (slices, echoes, H, W) at preparation times ``te_ms``.

    ``method``: "nlls" (variable-projection Gauss-Newton) or "pinn" (scan-specific Bloch
    PINN). ``mask`` (slices, H, W) limits the fit; default: pixels with signal. ``sigma``:
    known noise SD; default: estimated from the background (or the fit residuals) with an
    upper confidence limit, which the bounds use.

    ``within`` (slices, H, W) bool, NLLS only: fit only those of the pixels the call would fit
    that lie within it (e.g. the myocardium, whose values a report needs before the maps);
    they get exactly the values of the fit of the whole (the NLLS and the bounds are per
    pixel, and the noise comes from the whole background), and ``merge_fits`` joins such
    fits. Ignored when the noise must come from the fit residuals (that needs every pixel).
    """
    timings: dict[str, float] = {}
    t_start = time.perf_counter()
    img = np.asarray(images, dtype=np.float64)
    te = np.asarray(te_ms, dtype=np.float64)
    if img.ndim != 4:
        raise ValueError(f"images must have shape (slices, echoes, H, W), got {img.shape}")
    if img.shape[1] != te.size:
        raise ValueError(f"{img.shape[1]} echoes but {te.size} preparation times")
    if te.size < 3 or np.unique(te).size != te.size:
        raise ValueError(f"need at least 3 distinct preparation times, got {list(te)}")
    if method not in T2_METHODS:
        raise ValueError(f"method must be {' or '.join(map(repr, T2_METHODS))}, not {method!r}")
    if not 0.5 < confidence < 1:
        raise ValueError("confidence must be in (0.5, 1)")
    order = np.argsort(te)
    te, img = te[order], img[:, order]
    shape = (img.shape[0], img.shape[2], img.shape[3])

    est = noise.NoiseEstimate(sigma, sigma, 1.0, "given", 0) if sigma is not None else noise.from_background(img)
    timings["noise"] = time.perf_counter() - t_start

    if mask is None:
        if est is not None:
            mask = img[:, 0] > 5.0 * est.sigma
        else:
            mask = img[:, 0] > 0.05 * np.percentile(img[:, 0], 99)
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != shape:
        raise ValueError(f"mask shape {mask.shape} does not match the maps {shape}")
    if within is not None and method != "nlls":
        raise ValueError("only the NLLS fit can be restricted to part of the image")
    if within is not None and est is not None:
        within = np.asarray(within, dtype=bool)
        if within.shape != shape:
            raise ValueError(f"within shape {within.shape} does not match the maps {shape}")
        mask = mask & within
    idx = np.flatnonzero(mask.ravel())
    y = img.transpose(0, 2, 3, 1).reshape(-1, te.size)[idx]

    t0 = time.perf_counter()
    ref = fit_nlls(y, te)
    if est is None:
        est = noise.from_residuals(ref.rss, te.size)
    if rician_correction:
        y = _rician_correct(y, te, est.sigma, ref)
        ref = fit_nlls(y, te)
    timings["nlls"] = time.perf_counter() - t0

    flags = np.zeros(idx.size, dtype=np.uint8)
    t2_hat, m0_hat = ref.t2_ms, ref.m0
    diagnostics: dict[str, Any] = {}
    if method == "pinn":
        from pinn_engine.t2.pinn import fit_pinn  # noqa: PLC0415 - torch only when asked for

        t0 = time.perf_counter()
        coords = np.unravel_index(idx, shape)
        pinn = fit_pinn(y, te, ref.t2_ms, ref.m0, coords, shape, est.sigma, seed=seed, **(pinn_options or {}))
        t2_hat, m0_hat = pinn.t2_ms, pinn.m0
        diagnostics.update(pinn.diagnostics)
        timings["pinn"] = time.perf_counter() - t0
    else:
        flags[~ref.converged] |= np.uint8(Flag.NOT_CONVERGED)

    t0 = time.perf_counter()
    cset = bounds.consistency_set(y, te, 1.0 / ref.t2_ms, est.sigma_upper, confidence, model_error)
    bound = bounds.bound_from_set(t2_hat, cset)
    if cset.empty.any():
        bound[cset.empty] = bounds.box_bound(y[cset.empty], te, t2_hat[cset.empty], est.sigma_upper, confidence)
    outside = cset.empty | (t2_hat < cset.lo_ms) | (t2_hat > cset.hi_ms)
    flags[outside] |= np.uint8(Flag.OUTSIDE_CONSISTENCY_SET)
    flags[~np.isfinite(bound)] |= np.uint8(Flag.UNBOUNDED)
    flags[y[:, -1] < LOW_SIGNAL_SIGMAS * est.sigma] |= np.uint8(Flag.LOW_SIGNAL)
    flags[(t2_hat < T2_RANGE_MS[0]) | (t2_hat > T2_RANGE_MS[1])] |= np.uint8(Flag.T2_OUT_OF_RANGE)
    timings["bounds"] = time.perf_counter() - t0

    def full(values: np.ndarray, fill: float = 0.0, dtype=np.float64) -> np.ndarray:
        out = np.full(int(np.prod(shape)), fill, dtype=dtype)
        out[idx] = values
        return out.reshape(shape)

    all_flags = np.full(int(np.prod(shape)), int(Flag.NO_ESTIMATE), dtype=np.uint8)
    all_flags[idx] = flags
    timings["total"] = time.perf_counter() - t_start
    return T2Fit(
        t2_ms=full(t2_hat),
        m0=full(m0_hat),
        bound_ms=full(bound),
        lo_ms=full(cset.lo_ms),
        hi_ms=full(cset.hi_ms),
        flags=all_flags.reshape(shape),
        t2_reference_ms=full(ref.t2_ms),
        confidence=confidence,
        noise=est,
        te_ms=te,
        method=method,
        timings_s=timings,
        diagnostics=diagnostics,
    )


def merge_fits(fits: list[T2Fit]) -> T2Fit:
    """The fits of parts of one image (``fit_t2(..., within=...)``) as one: later fits' pixels win."""
    whole = fits[0]
    for other in fits[1:]:
        here = other.estimated
        for name in ("t2_ms", "m0", "bound_ms", "lo_ms", "hi_ms", "flags", "t2_reference_ms"):
            getattr(whole, name)[here] = getattr(other, name)[here]
        # the parts ran side by side: the whole took as long as the slowest
        whole.timings_s = {k: max(v, other.timings_s.get(k, 0.0)) for k, v in whole.timings_s.items()}
    return whole
