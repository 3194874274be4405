#!/usr/bin/env python3
"""2CXM fitting on the digital reference object (van Herten et al. 2022 layout).

    .venv/bin/python benchmarks/perfusion_dro.py [--methods nlls,nlls-plain,pinn-2cxm,...]
                                                 [--variants discrete,continuous] [--seeds 1]

For each DRO variant (legacy rectangle-rule 'discrete', accurate 'continuous'), noise
seed and method: NMSE per parameter and PS slice with the reference's definition
(mean squared error / mean truth, averaged over the 4 parameters, then the 3 slices),
median absolute relative error per parameter, F bias per F level, seconds per slice
(4800 curves). NLLS fits with the forward model of the variant it is given. 'nlls-plain'
is NLLS without the empirical-Bayes population prior. dcmri (if installed) runs side by
side on a subsample. Reference values: NLLS 0.210, 2CXM PINN 0.126, combined PINN 0.113.

With ``--real DIR`` (default: ../shared/data/perfusion-real when present) the real first-pass
slice goes through the node's perfusion pipeline (its own segmentation), and once more
through the quantification with the data set's hand-drawn masks (LV blood pool, LV
myocardium, RV): segment MBF, flags and time for both.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pinn_engine.perfusion import fit_2cxm  # noqa: E402
from pinn_engine.perfusion.dro import F_VALUES, make_dro  # noqa: E402

NAMES = ("fp", "vp", "ve", "ps")


def evaluate(d, method: str, log) -> dict:
    nmse_slices, rel, bias, seconds = [], {k: [] for k in NAMES}, {f: [] for f in F_VALUES}, []
    for k in range(3):
        y = d.curves[:, :, :, k].reshape(d.t_min.size, -1)
        truth = {n: getattr(d, "f" if n == "fp" else n)[:, :, k].reshape(-1) for n in NAMES}
        name, options = method, {}
        if method == "nlls-plain":
            name, options = "nlls", {"prior": "none"}
        t0 = time.perf_counter()
        fit = fit_2cxm(d.t_min, d.aif, y, method=name, model=d.variant, **options)
        seconds.append(time.perf_counter() - t0)
        nmse = {n: float(np.mean((fit[n] - truth[n]) ** 2) / np.mean(truth[n])) for n in NAMES}
        nmse_slices.append(nmse)
        for n in NAMES:
            rel[n].append(float(np.median(np.abs(fit[n] / truth[n] - 1))))
        for f in F_VALUES:
            sel = truth["fp"] == f
            bias[f].append(float(np.median(fit["fp"][sel] / f - 1)))
        log(f"    PS slice {k} ({d.ps[0, 0, k]}): NMSE " + " ".join(f"{n} {v:.3f}" for n, v in nmse.items())
            + f" -> {np.mean(list(nmse.values())):.3f}; {seconds[-1]:.1f} s")
    overall = float(np.mean([np.mean(list(s.values())) for s in nmse_slices]))
    return {"overall": overall, "per_slice": [float(np.mean(list(s.values()))) for s in nmse_slices],
            "rel": {n: float(np.mean(v)) for n, v in rel.items()},
            "bias": {f: float(np.mean(v)) for f, v in bias.items()}, "seconds": float(np.mean(seconds))}


def dcmri_side_by_side(d, n: int, log) -> None:
    """dcmri's 2CX tissue model (exact convolution) fitted per curve with scipy, on n curves per slice."""
    try:
        import dcmri  # noqa: PLC0415
    except ImportError:
        log("  dcmri: not installed (pip install dcmri) - skipped")
        return
    from scipy.optimize import least_squares  # noqa: PLC0415

    t_s = d.t_min * 60.0
    rng = np.random.default_rng(0)
    nmse, rel_f, seconds = [], [], []
    for k in range(3):
        y = d.curves[:, :, :, k].reshape(d.t_min.size, -1)
        idx = rng.choice(y.shape[1], n, replace=False)
        truth = {p: getattr(d, "f" if p == "fp" else p)[:, :, k].reshape(-1)[idx] for p in NAMES}
        est = {p: np.empty(n) for p in NAMES}
        t0 = time.perf_counter()
        for j, i in enumerate(idx):
            def residual(q, curve=y[:, i]):
                f, vp, ve, ps = np.exp(q)
                # plasma AIF and plasma flow: haematocrit 0 makes dcmri's blood quantities plasma ones
                return dcmri.conc_tissue(d.aif, t=t_s, kinetics="2CX", H=0.0, vb=vp, vi=ve, Fb=f / 60.0,
                                         PS=ps / 60.0) - curve
            fit = least_squares(residual, np.log([1.0, 0.05, 0.2, 1.0]),
                                bounds=(np.log([0.02, 0.005, 0.02, 0.01]), np.log([10.0, 0.6, 0.9, 10.0])))
            for p, v in zip(NAMES, np.exp(fit.x), strict=True):
                est[p][j] = v
        seconds.append((time.perf_counter() - t0) / n * 4800)
        nmse.append(np.mean([np.mean((est[p] - truth[p]) ** 2) / np.mean(truth[p]) for p in NAMES]))
        rel_f.append(np.median(np.abs(est["fp"] / truth["fp"] - 1)))
    log(f"  dcmri 2CX + scipy least_squares ({n} random curves per slice): overall NMSE {np.mean(nmse):.3f} "
        f"(slices {', '.join(f'{v:.3f}' for v in nmse)}); F median |rel. error| {np.mean(rel_f):.3f}; "
        f"~{np.mean(seconds):.0f} s per 4800-curve slice")


def real_slice(folder: Path, log) -> None:
    """The real slice through the node's pipeline, then with the hand-drawn masks."""
    from scipy.io import loadmat

    from dicom_node.processing import load_perfusion_series, process_perfusion
    from pinn_engine.aha import assign_aha
    from pinn_engine.perfusion.quantify import quantify

    files = sorted(p for p in (folder / "perfusione").iterdir() if p.is_file())
    series = load_perfusion_series(files)
    log(f"real slice {folder}: {series.images.shape[1]} dynamics, frame times from {series.time_source}, "
        f"saturation delay {series.saturation_delay_ms} ms")
    t0 = time.perf_counter()
    outcome = process_perfusion(series)
    g = outcome.summary["global"]
    log(f"  node pipeline ({time.perf_counter() - t0:.1f} s): LV myocardium MBF {g['mbf_ml_min_g']:.2f} "
        f"± {g['mbf_sd_ml_min_g']:.2f} ml/min/g ({g['n_pixels']} px); per segment "
        + ", ".join(f"{e['aha']}: {e['mbf_ml_min_g']:.2f}" for e in outcome.summary["segments"]))
    for flag in outcome.summary["flags"]:
        log(f"    flag: {flag}")
    masks = loadmat(folder / "GoldStandard.mat")
    labels = np.zeros(series.images.shape[2:], dtype=np.uint8)
    labels[masks["DXmask"] > 0] = 3
    labels[masks["SXmask"] > 0] = 1
    labels[masks["MyoMask"] > 0] = 2
    labels = labels[None]
    t0 = time.perf_counter()
    aha = assign_aha(labels, series.geometry)
    result = quantify(series.images, series.t_min, labels, aha.labels,
                      saturation_delay_ms=series.saturation_delay_ms)
    mbf = result.maps["mbf"][labels == 2]
    log(f"  hand-drawn masks, no motion correction ({time.perf_counter() - t0:.1f} s): LV myocardium median MBF "
        f"{np.nanmedian(mbf):.2f} ml/min/g ({np.isfinite(mbf).sum()} px); per segment "
        + ", ".join(f"{k}: {v['mbf']:.2f}" for k, v in sorted(result.segments.items())))
    for flag in result.flags:
        log(f"    flag: {flag}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--methods", default="nlls,nlls-plain,pinn-2cxm,pinn-reduced,pinn-combined")
    ap.add_argument("--variants", default="discrete,continuous")
    ap.add_argument("--seeds", default="1", help="noise draws, comma-separated")
    ap.add_argument("--dcmri-curves", type=int, default=100, help="curves per slice fitted with dcmri (0: skip)")
    ap.add_argument("--real", type=Path, default=ROOT.parent / "shared" / "data" / "perfusion-real",
                    help="folder of the real slice (skipped when absent)")
    args = ap.parse_args()
    log = lambda s: print(s, flush=True)  # noqa: E731
    for variant in args.variants.split(","):
        for seed in (int(s) for s in args.seeds.split(",")):
            d = make_dro(variant, seed=seed)
            log(f"DRO {variant}, noise seed {seed} (sigma {d.sigma:.4f}), 3 slices x 4800 curves")
            for method in args.methods.split(","):
                log(f"  {method}:")
                r = evaluate(d, method, log)
                log(f"  {method}: overall NMSE {r['overall']:.3f} (bar <= 0.10 on the discrete DRO); "
                    "median |rel. error| " + " ".join(f"{n} {v:.3f}" for n, v in r["rel"].items())
                    + " (F bar <= 0.06); F bias by level " + " ".join(f"{f:g}: {v:+.3f}" for f, v in r["bias"].items())
                    + f"; {r['seconds']:.1f} s per slice (bar <= 60 s)")
            if args.dcmri_curves:
                dcmri_side_by_side(d, args.dcmri_curves, log)
    if args.real and (args.real / "perfusione").is_dir():
        real_slice(args.real, log)
    else:
        log(f"real slice: {args.real} not found, skipped")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
