"""The digital reference object of the myocardial-perfusion PINN study (van Herten et al. 2022),
re-implemented from its published definition (docs/perfusion.md), with a continuous-time
variant of the same layout.

Layout: 40 x 120 voxels per PS "slice", 3 slices (PS 0.5, 1.5, 2.5); rows in blocks of 10
for F (0.5, 1, 1.5, 2), columns in blocks of 10 for vp (0.02, 0.05, 0.1, 0.2) repeated 3x,
and blocks of 40 for ve (0.1, 0.2, 0.5): 48 (F, vp, ve) combinations x 100 noise
realisations. t = 0 ... 1.98 min (0.02 min steps). AIF: gamma variate K t^2 exp(-t/0.1),
K = 1e5/3. Noise: sigma^2 = mean(C) 10^(-17.5/10) over all clean curves, Gaussian, added to
every frame of the tissue curves; frame 0 set to 0 after noise. The reference drew new noise
on every run; here the noise is seeded.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pinn_engine.perfusion.models import tissue_continuous, tissue_discrete

F_VALUES = (0.5, 1.0, 1.5, 2.0)
VP_VALUES = (0.02, 0.05, 0.10, 0.20)
VE_VALUES = (0.1, 0.2, 0.5)
PS_VALUES = (0.5, 1.5, 2.5)
K_AIF, ALPHA, BETA = 1e5 / 3, 2.0, 0.1
SNR_DB = 17.5


def time_grid() -> np.ndarray:
    return np.round(np.arange(100) * 0.02, 10)


def aif(t_min: np.ndarray) -> np.ndarray:
    t = np.asarray(t_min, dtype=np.float64)
    return K_AIF * np.power(np.maximum(t, 0.0), ALPHA) * np.exp(-t / BETA)


@dataclass
class DRO:
    t_min: np.ndarray  # (T,)
    aif: np.ndarray  # (T,)
    curves: np.ndarray  # (T, 40, 120, 3) noisy tissue curves
    clean: np.ndarray  # (T, 40, 120, 3)
    f: np.ndarray  # (40, 120, 3) truth
    vp: np.ndarray
    ve: np.ndarray
    ps: np.ndarray
    sigma: float
    variant: str


def parameter_maps() -> tuple[np.ndarray, ...]:
    rows, cols = np.arange(40), np.arange(120)
    f = np.array(F_VALUES)[rows // 10][:, None] * np.ones((1, 120))
    vp = np.array(VP_VALUES)[(cols // 10) % 4][None, :] * np.ones((40, 1))
    ve = np.array(VE_VALUES)[cols // 40][None, :] * np.ones((40, 1))
    stack = lambda m: np.repeat(m[:, :, None], 3, axis=2)  # noqa: E731
    ps = np.broadcast_to(np.array(PS_VALUES)[None, None, :], (40, 120, 3)).copy()
    return stack(f), stack(vp), stack(ve), ps


def make_dro(variant: str = "discrete", seed: int = 0) -> DRO:
    """The DRO: ``variant`` 'discrete' (legacy rectangle rule) or 'continuous'."""
    if variant not in ("discrete", "continuous"):
        raise ValueError("variant must be 'discrete' or 'continuous'")
    t = time_grid()
    a = aif(t)
    f, vp, ve, ps = parameter_maps()
    params = np.stack([x.reshape(-1) for x in (f, vp, ve, ps)], axis=1)
    unique, inverse = np.unique(params, axis=0, return_inverse=True)  # 144 distinct curves
    if variant == "discrete":
        curves = tissue_discrete(t, a, *unique.T)
    else:
        curves = tissue_continuous(t, aif, *unique.T)
    clean = curves[inverse.reshape(-1)].T.reshape(t.size, 40, 120, 3)
    sigma = float(np.sqrt(clean.mean() * 10 ** (-SNR_DB / 10)))
    rng = np.random.default_rng(seed)
    noisy = clean + rng.normal(0.0, sigma, clean.shape)
    noisy[0] = 0.0
    return DRO(t, a, noisy, clean, f, vp, ve, ps, sigma, variant)
