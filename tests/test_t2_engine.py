"""T2 engine: NLLS exactness, bound coverage by simulation, flags, noise, PINN."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import least_squares

from pinn_engine.phantom import Anatomy, t2_phantom, with_oedema
from pinn_engine.t2 import Flag, fit_t2, noise, region_statistics
from pinn_engine.t2.bounds import box_bound
from pinn_engine.t2.model import crlb_sd_t2
from pinn_engine.t2.nlls import fit_nlls

TE = np.array([0.0, 35.0, 55.0])


def rician_stack(t2, snr, shape=(2, 120, 120), background=40, seed=0):
    """Uniform-T2 magnitude images (M0 = 1) with an air margin on the right for sigma."""
    rng = np.random.default_rng(seed)
    sigma = 1.0 / snr
    s, h, w = shape
    clean = np.zeros((s, 3, h, w + background))
    clean[..., :w] = np.exp(-TE / t2)[None, :, None, None]
    img = np.hypot(clean + rng.normal(0, sigma, clean.shape), rng.normal(0, sigma, clean.shape))
    mask = np.zeros((s, h, w + background), bool)
    mask[..., :w] = True
    return img, mask, sigma


def test_nlls_equals_scipy_least_squares():
    rng = np.random.default_rng(3)
    t2 = rng.uniform(20, 150, 400)
    m0 = rng.uniform(50, 200, 400)
    y = m0[:, None] * np.exp(-TE / t2[:, None]) + rng.normal(0, 3, (400, 3))
    fit = fit_nlls(y, TE)
    assert fit.converged.all()
    for i in range(0, 400, 8):
        ref = least_squares(lambda p, i=i: p[0] * np.exp(-TE / p[1]) - y[i], [y[i, 0], 50.0],
                            xtol=1e-15, ftol=1e-15, gtol=1e-15)
        assert abs(ref.x[1] - fit.t2_ms[i]) < 0.01
        assert abs(ref.x[0] - fit.m0[i]) < 0.01


@pytest.mark.parametrize("t2, snr", [(45.0, 20.0), (60.0, 40.0)])
def test_per_pixel_bound_coverage_and_width(t2, snr):
    img, mask, sigma = rician_stack(t2, snr)
    fit = fit_t2(img, TE, mask=mask)
    err = fit.t2_ms[mask] - t2
    coverage = np.mean(np.abs(err) <= fit.bound_ms[mask])
    crlb = crlb_sd_t2(t2, snr, TE)
    assert 0.95 <= coverage <= 0.995  # nominal 0.95, conservative by construction
    assert np.median(fit.bound_ms[mask]) <= 1.5 * 1.96 * crlb
    assert err.std() <= 1.06 * crlb
    assert fit.noise.method == "background-rayleigh"
    assert abs(fit.noise.sigma / sigma - 1) < 0.02 and fit.noise.sigma_upper >= fit.noise.sigma


def test_region_bound_coverage():
    img, mask, _ = rician_stack(50.0, 20.0, shape=(4, 120, 120), seed=5)
    fit = fit_t2(img, TE, mask=mask)
    hits = []
    for s in range(4):
        for r in range(0, 120, 8):
            for c in range(0, 120, 8):
                region = np.zeros(mask.shape, bool)
                region[s, r:r + 8, c:c + 8] = True
                st = region_statistics(fit, region)
                hits.append(abs(st.mean_ms - 50.0) <= st.bound_ms)
    assert np.mean(hits) >= 0.94, np.mean(hits)


def test_flags_and_no_estimate():
    img, mask, sigma = rician_stack(45.0, 40.0, shape=(1, 40, 40))
    img[0, :, :5, :5] = np.exp(-TE / 2.0)[:, None, None]  # T2 2 ms: out of range
    img[0, :, 5:10, :5] = np.array([1.0, 0.999, 0.998])[:, None, None]  # flat: open above
    fit = fit_t2(img, TE, mask=mask, sigma=sigma)
    assert (fit.flags[~mask] & Flag.NO_ESTIMATE).all() and (fit.t2_ms[~mask] == 0).all()
    assert (fit.flags[0, :5, :5] & Flag.T2_OUT_OF_RANGE).all()
    assert (fit.flags[0, 5:10, :5] & Flag.UNBOUNDED).all() and np.isinf(fit.bound_ms[0, 5:10, :5]).all()
    assert (fit.flags[0, 10:, 10:40] == 0).mean() > 0.9
    assert fit.noise.method == "given"


def test_low_signal_flag():
    img, mask, sigma = rician_stack(45.0, 3.0, shape=(1, 30, 30))
    fit = fit_t2(img, TE, mask=mask)
    assert (fit.flags[mask] & Flag.LOW_SIGNAL).mean() > 0.5
    stats = region_statistics(fit, mask)
    assert stats.n_excluded > 0 and stats.n_pixels + stats.n_excluded == mask.sum()


def test_noise_from_residuals_without_background():
    img, mask, sigma = rician_stack(45.0, 40.0, shape=(2, 100, 100), background=0)
    fit = fit_t2(img, TE, mask=mask)
    assert fit.noise.method == "fit-residuals"
    assert abs(fit.noise.sigma / sigma - 1) < 0.05


def test_box_bound_contains_truth():
    rng = np.random.default_rng(1)
    y = np.exp(-TE / 50.0)[None] + rng.normal(0, 0.01, (5000, 3))
    t2_hat = fit_nlls(y, TE).t2_ms
    b = box_bound(y, TE, t2_hat, 0.01)
    assert np.mean(np.abs(t2_hat - 50.0) <= b) >= 0.95


def test_input_validation():
    img = np.ones((1, 3, 8, 8))
    with pytest.raises(ValueError, match="3 distinct"):
        fit_t2(img[:, :2], TE[:2])
    with pytest.raises(ValueError, match="echoes"):
        fit_t2(img, TE[:2])
    with pytest.raises(ValueError, match="method"):
        fit_t2(img, TE, method="magic")
    with pytest.raises(ValueError, match="shape"):
        fit_t2(img[0], TE)


def test_unsorted_preparation_times_are_sorted():
    img, mask, sigma = rician_stack(45.0, 40.0, shape=(1, 30, 30))
    a = fit_t2(img, TE, mask=mask, sigma=sigma)
    b = fit_t2(img[:, ::-1], TE[::-1], mask=mask, sigma=sigma)
    np.testing.assert_allclose(a.t2_ms, b.t2_ms)


def test_phantom_definitions():
    ph = t2_phantom(with_oedema(Anatomy(matrix=96, fov_mm=160)), snr=25, n_slices=2, seed=1, blood="black")
    assert ph.images.shape == (2, 3, 96, 96)
    assert ph.sigma == pytest.approx(1000 / 25)
    assert set(np.unique(ph.labels)) == {0, 1, 2, 3}
    myo = ph.labels == 2
    assert set(np.unique(ph.t2_ms[myo])) == {45.0, 60.0}  # oedema sector
    assert np.all(ph.m0[ph.labels == 3] <= 30)  # black blood
    a = t2_phantom(Anatomy(matrix=64, fov_mm=120), seed=7).images
    b = t2_phantom(Anatomy(matrix=64, fov_mm=120), seed=7).images
    np.testing.assert_array_equal(a, b)


def test_pinn_is_deterministic_and_close_to_least_squares():
    ph = t2_phantom(Anatomy(matrix=64, fov_mm=110), snr=40, n_slices=1, seed=2)
    mask = ph.labels > 0
    opts = {"iterations": 40, "pretrain_iterations": 200}
    a = fit_t2(ph.images, TE, mask=mask, method="pinn", seed=1, pinn_options=opts)
    b = fit_t2(ph.images, TE, mask=mask, method="pinn", seed=1, pinn_options=opts)
    np.testing.assert_array_equal(a.t2_ms, b.t2_ms)
    myo = (ph.labels == 2) & a.estimated
    assert np.median(np.abs(a.t2_ms[myo] - a.t2_reference_ms[myo])) < 0.5
    assert a.diagnostics["pinn_residual_sup"] < 0.05
    assert np.mean(np.abs(a.t2_ms[myo] - ph.t2_ms[myo]) <= a.bound_ms[myo]) >= 0.9
    # its region bound contains its distance from the least-squares mean
    st = region_statistics(a, myo)
    assert st.bound_ms >= abs(st.mean_ms - a.t2_reference_ms[myo].mean())


def test_pinn_spatial_coupling_option_runs():
    ph = t2_phantom(Anatomy(matrix=48, fov_mm=90), snr=20, n_slices=1, seed=4)
    fit = fit_t2(ph.images, TE, mask=ph.labels > 0, method="pinn",
                 pinn_options={"iterations": 20, "pretrain_iterations": 100, "spatial_weight": 1.0})
    assert fit.diagnostics["pinn_spatial_weight"] == 1.0 and np.isfinite(fit.t2_ms).all()


def test_noise_background_excludes_lungs():
    ph = t2_phantom(Anatomy(), snr=20, n_slices=2, seed=9)
    est = noise.from_background(ph.images.astype(float))
    assert abs(est.sigma / ph.sigma - 1) < 0.02


@pytest.mark.parametrize("background", [40, 0])
def test_fit_in_parts_equals_the_whole(background):
    """Two fits of alternate rows; merged, that is the fit of the whole image."""
    from pinn_engine.t2 import merge_fits

    img, _, _ = rician_stack(45.0, 30.0, shape=(2, 60, 60), background=background, seed=3)
    img[:, :, :, :10] *= np.exp(-TE / 80.0)[None, :, None, None] / np.exp(-TE / 45.0)[None, :, None, None]
    whole = fit_t2(img, TE)
    rows = np.zeros(img[:, 0].shape, dtype=bool)
    rows[:, ::2] = True
    parts = [fit_t2(img, TE, within=rows), fit_t2(img, TE, within=~rows)]
    if background == 0:  # noise from the residuals of every pixel: each part fits them all
        np.testing.assert_array_equal(parts[1].estimated, whole.estimated)
    merged = merge_fits(parts)
    assert merged.noise == whole.noise
    np.testing.assert_array_equal(merged.flags, whole.flags)
    for name in ("t2_ms", "bound_ms", "lo_ms", "hi_ms", "t2_reference_ms"):
        np.testing.assert_allclose(getattr(merged, name), getattr(whole, name), rtol=1e-7, err_msg=name)


@pytest.mark.parametrize("background", [40, 0])
def test_fit_within_a_region_gives_the_whole_fits_values_there(background):
    """The job fits the myocardium first (for the report) and the whole image beside it (for the maps)."""
    from pinn_engine.t2 import merge_fits

    img, _, _ = rician_stack(45.0, 30.0, shape=(2, 60, 60), background=background, seed=5)
    img[:, :, :, :10] *= np.exp(-TE / 80.0)[None, :, None, None] / np.exp(-TE / 45.0)[None, :, None, None]
    region = np.zeros(img[:, 0].shape, dtype=bool)
    region[:, 20:35, 5:40] = True
    whole = fit_t2(img, TE)
    part = fit_t2(img, TE, within=region)
    assert part.noise == whole.noise
    if background:  # noise from the background: only the region is fitted
        np.testing.assert_array_equal(part.estimated, whole.estimated & region)
    else:  # noise from every pixel's residuals: the restriction cannot apply
        np.testing.assert_array_equal(part.estimated, whole.estimated)
    here = part.estimated
    np.testing.assert_array_equal(part.flags[here], whole.flags[here])
    for name in ("t2_ms", "bound_ms", "lo_ms", "hi_ms", "t2_reference_ms"):
        np.testing.assert_allclose(getattr(part, name)[here], getattr(whole, name)[here], rtol=1e-7, err_msg=name)
    merged = merge_fits([fit_t2(img, TE), part])  # what the job's maps show
    np.testing.assert_array_equal(merged.flags, whole.flags)
    np.testing.assert_allclose(merged.t2_ms, whole.t2_ms, rtol=1e-7)
    with pytest.raises(ValueError):
        fit_t2(img, TE, method="pinn", within=region)
