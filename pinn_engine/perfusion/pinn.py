"""Physics-informed networks for the two-compartment exchange model (after van Herten et al. 2022).

One small network of time, shared by all curves of a slice, outputs the arterial input
c_a(t) and, per curve, the plasma and interstitial concentrations c_p(t), c_e(t)
("one-to-many" heads); the tissue curve is C = vp c_p + ve c_e. Per-curve kinetic
parameters live in log space. The loss fits the data (AIF and tissue curves) and makes
the ODE residuals vanish at random collocation times:

- ``2cxm``:     vp dc_p/dt = F (c_a - c_p) + PS (c_e - c_p),   ve dc_e/dt = PS (c_p - c_e)
- ``reduced``:  dC/dt = F (c_a - c_p)                         (mass balance of the tissue)
- ``combined``: all three residuals

plus zero concentrations at the first frame and non-negativity. Time derivatives are
forward-mode (value and d/dt propagated together through the tanh layers), so one pass
gives every curve's derivative. Unlike the published DRO study, no derivative of the
noise-free curve is used (real data have none). The networks model the continuous ODE:
on the legacy rectangle-rule DRO they carry that model mismatch (docs/perfusion.md).
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch
from torch import nn

from pinn_engine.device import default_device
from pinn_engine.perfusion.fit import PINN_VARIANTS
from pinn_engine.perfusion.models import PARAMETERS

INIT = (1.0, 0.05, 0.2, 1.0)  # population-typical start (ml/min/ml, fractions)
LOG_BOUNDS = ((0.02, 10.0), (0.005, 0.6), (0.02, 0.9), (0.01, 10.0))


class TimeNet(nn.Module):
    """t' -> (c_a, c_p[N], c_e[N]) and their derivatives d/dt' (forward mode)."""

    def __init__(self, n_curves: int, width: int = 32, depth: int = 3) -> None:
        super().__init__()
        dims = [1, *([width] * depth)]
        self.hidden = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:], strict=True))
        self.head = nn.Linear(width, 1 + 2 * n_curves)
        self.n = n_curves

    def forward(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = t[:, None]
        dh = torch.ones_like(h)
        for layer in self.hidden:
            z = layer(h)
            dz = dh @ layer.weight.T
            h = torch.tanh(z)
            dh = (1 - h * h) * dz
        return self.head(h), dh @ self.head.weight.T


def fit_pinn(t_min, aif, curves, variant: str = "2cxm", epochs: int = 2000, collocation: int = 100,
             seed: int = 0, device: str | None = None, log=None) -> dict:
    """Fit curves (T, N) with the PINN ``variant``; returns fp, vp, ve, ps (N,) and timings."""
    if variant not in PINN_VARIANTS:
        raise ValueError(f"variant must be one of {PINN_VARIANTS}")
    t0 = time.perf_counter()
    dev = torch.device(device) if device else default_device()
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    t = np.asarray(t_min, dtype=np.float64)
    scale = float(np.max(aif)) or 1.0
    a = torch.tensor(np.asarray(aif) / scale, dtype=torch.float32, device=dev)
    y = torch.tensor(np.asarray(curves).T / scale, dtype=torch.float32, device=dev)  # (N, T)
    n = y.shape[0]
    y_scale2 = float((y ** 2).mean()) or 1.0
    mean_t, std_t = float(t.mean()), float(t.std()) or 1.0
    ts = torch.tensor((t - mean_t) / std_t, dtype=torch.float32, device=dev)
    net = TimeNet(n).to(dev)
    theta = torch.tensor(np.log(INIT), dtype=torch.float32, device=dev).repeat(n, 1).requires_grad_(True)
    lo = torch.tensor([math.log(b[0]) for b in LOG_BOUNDS], device=dev)
    hi = torch.tensor([math.log(b[1]) for b in LOG_BOUNDS], device=dev)
    opt = torch.optim.Adam([{"params": net.parameters(), "lr": 3e-3}, {"params": [theta], "lr": 2e-2}])
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs)
    t_lo, t_hi = float(ts[0]), float(ts[-1])
    for epoch in range(epochs):
        tc = t_lo + (t_hi - t_lo) * torch.rand(collocation, generator=gen).to(dev)
        out, _ = net(ts)
        ca, cp, ce = out[:, 0], out[:, 1:n + 1].T, out[:, n + 1:].T  # (T,), (N, T), (N, T)
        p = torch.exp(torch.clamp(theta, lo, hi))
        f, vp, ve, ps = (p[:, k:k + 1] for k in range(4))
        # tissue curves are ~10x smaller than the AIF: each data term is scaled to its own size
        loss_data = ((ca - a) ** 2).mean() + ((vp * cp + ve * ce - y) ** 2).mean() / y_scale2
        oc, doc = net(tc)
        doc = doc / std_t  # d/dt in 1/min
        ca_c, cp_c, ce_c = oc[:, 0][None], oc[:, 1:n + 1].T, oc[:, n + 1:].T
        dcp, dce = doc[:, 1:n + 1].T, doc[:, n + 1:].T
        residuals = []
        if variant in ("2cxm", "combined"):
            residuals.append(vp * dcp - f * (ca_c - cp_c) - ps * (ce_c - cp_c))
            residuals.append(ve * dce - ps * (cp_c - ce_c))
        if variant in ("reduced", "combined"):
            residuals.append(vp * dcp + ve * dce - f * (ca_c - cp_c))
        loss_res = sum((r ** 2).mean() for r in residuals) / y_scale2
        loss_b = (out[0] ** 2).mean()
        loss_neg = (torch.relu(-oc[:, 1:]) ** 2).mean()
        loss = loss_data + loss_res + loss_b + loss_neg
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if log and (epoch + 1) % 500 == 0:
            log(f"  pinn-{variant} epoch {epoch + 1}/{epochs} loss {loss.item():.2e} (data {loss_data.item():.2e}, "
                f"residual {loss_res.item():.2e})")
    p = torch.exp(torch.clamp(theta, lo, hi)).detach().cpu().numpy().astype(np.float64)
    out = {k: p[:, i] for i, k in enumerate(PARAMETERS)}
    out["seconds"] = time.perf_counter() - t0
    return out
