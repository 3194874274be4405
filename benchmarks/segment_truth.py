#!/usr/bin/env python3
"""Do the reported segment bounds hold for the myocardium's true T2? Real anatomy, known truth.

    .venv/bin/python benchmarks/segment_truth.py [--data ../shared/data/myops-dev] [--snr 20,40,60]
        [--contrast t2,c0] [--method nlls|pinn] [--cases N] [--seed S]
    .venv/bin/python benchmarks/segment_truth.py --perfusion N     # MBF segment values instead

Phantom series built from real anatomy: each MyoPS case (labels drawn by experts; Zhuang et al.,
MICCAI 2020 MyoPS challenge) becomes a T2-prepared series. M0 is the case's own image, black-blood
T2-weighted (``t2``) or bright-blood bSSFP (``c0``), normalised to the myocardium's median; T2 is
45 ms in normal myocardium, 62 ms in the expert-drawn oedema, 55 ms in scar, 200-250 ms in the blood
pools (drawn per case) and 50 ms elsewhere. The signal S = M0 exp(-TE/T2) at TE 0, 25, 55 ms is
made on the labels' 0.73 mm grid and averaged 2 x 2 onto a 1.46 mm grid (what a T2 map's pixels are):
border pixels mix tissues (partial volume) as they do in a scanner's images. Rician noise at SNR =
myocardial M0 / sigma. The node's own steps then run on it: segmentation, T2 fit, AHA segments, and
the segment statistics the report prints (``pinn_engine.t2.segment_statistics``).

Truth: the mean T2 over the expert myocardium of each AHA segment, the segments assigned on the
labels' own grid from the expert labels. A segment is covered when |reported - truth| <= bound.
Printed per contrast and SNR: segments compared, coverage, mean and 90th-percentile error, median
bound -- for the node's estimator and, beside it, the plain mean over the node's mask with the
noise-only bound (what the node reported before).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pinn_engine.aha import SliceGeometry, assign_aha  # noqa: E402
from pinn_engine.segmentation import Label, Segmenter  # noqa: E402
from pinn_engine.t2 import EXCLUDE, fit_t2, region_statistics, segment_statistics  # noqa: E402

TE_MS = np.array([0.0, 25.0, 55.0])
T2_MS = {"myocardium": 45.0, "oedema": 62.0, "scar": 55.0, "other": 50.0}
CONTRASTS = {"t2": ("T2", "black-blood T2w"), "c0": ("C0", "bright-blood bSSFP")}


def load_case(folder: Path, case: str, contrast: str):
    """(M0 on the labels' grid, MyoPS labels, geometry of that grid) of one case."""
    img = sitk.ReadImage(str(folder / f"{case}_{CONTRASTS[contrast][0]}.nii.gz"))
    gd = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / f"{case}_gd.nii.gz")))
    arr = sitk.GetArrayFromImage(img).astype(np.float64)
    d = np.array(img.GetDirection()).reshape(3, 3)  # SimpleITK: LPS, columns are the index axes
    sx, sy, sz = img.GetSpacing()
    origin = np.array(img.GetOrigin())
    geometry = [SliceGeometry(d[:, 0], d[:, 1], (sy, sx), origin + k * sz * d[:, 2]) for k in range(arr.shape[0])]
    return arr, gd, geometry


def node_labels(gd: np.ndarray) -> np.ndarray:
    out = np.zeros(gd.shape, np.uint8)
    out[gd == 500] = Label.LV_BLOOD_POOL
    out[np.isin(gd, (200, 1220, 2221))] = Label.MYOCARDIUM
    out[gd == 600] = Label.RV_BLOOD_POOL
    return out


def t2_truth(gd: np.ndarray, blood_ms: float) -> np.ndarray:
    t2 = np.full(gd.shape, T2_MS["other"])
    t2[gd == 200] = T2_MS["myocardium"]
    t2[gd == 1220] = T2_MS["oedema"]
    t2[gd == 2221] = T2_MS["scar"]
    t2[np.isin(gd, (500, 600))] = blood_ms
    return t2


def downsample(x: np.ndarray, f: int = 2) -> np.ndarray:
    """Mean over f x f pixel blocks of the last two axes (the trailing rows/columns dropped)."""
    h, w = (x.shape[-2] // f) * f, (x.shape[-1] // f) * f
    x = x[..., :h, :w]
    return x.reshape(*x.shape[:-2], h // f, f, w // f, f).mean(axis=(-3, -1))


def coarse_geometry(geometry: list[SliceGeometry], f: int = 2) -> list[SliceGeometry]:
    out = []
    for g in geometry:
        sy, sx = g.pixel_spacing_mm
        # pixel (0, 0) of the coarse grid is the centre of the fine grid's first f x f block
        shift = (f - 1) / 2 * (sx * g.row_cosine + sy * g.column_cosine)
        out.append(SliceGeometry(g.row_cosine, g.column_cosine, (sy * f, sx * f), g.position_mm + shift))
    return out


def truth_segments(gd: np.ndarray, t2: np.ndarray, geometry: list[SliceGeometry]) -> dict:
    """AHA segment (and None: the whole LV myocardium) -> mean true T2 over the expert myocardium."""
    labels = node_labels(gd)
    aha = assign_aha(labels, geometry).labels
    myo = labels == Label.MYOCARDIUM
    out = {None: float(t2[myo & (aha > 0)].mean())} if (myo & (aha > 0)).any() else {}
    for s in np.unique(aha[myo]):
        if s:
            out[int(s)] = float(t2[myo & (aha == s)].mean())
    return out


def before(fit, labels: np.ndarray, aha: np.ndarray) -> dict:
    """What the node reported before: the mean over its mask with the noise-only bound."""
    measured = np.where((fit.flags & int(EXCLUDE)) == 0, aha, 0)
    out = {}
    for s in [None, *sorted(int(v) for v in np.unique(measured) if v)]:
        st = region_statistics(fit, measured > 0 if s is None else measured == s)
        out[s] = (st.mean_ms, st.bound_ms)
    return out


def after(fit, labels: np.ndarray, aha: np.ndarray, geometry) -> dict:
    return {r.aha: (r.mean_ms, r.bound_ms) for r in segment_statistics(fit, labels, geometry, aha)}


def run_case(seg: Segmenter, folder: Path, case: str, contrast: str, snr: float, method: str,
             rng: np.random.Generator) -> dict:
    m0, gd, fine = load_case(folder, case, contrast)
    labels = node_labels(gd)
    myo = labels == Label.MYOCARDIUM
    m0 = np.clip(m0, 0, None) / float(np.median(m0[myo]))
    t2 = t2_truth(gd, float(rng.uniform(200.0, 250.0)))
    truth = truth_segments(gd, t2, fine)
    clean = downsample(m0[:, None] * np.exp(-TE_MS[None, :, None, None] / t2[:, None]))
    sigma = 1.0 / snr
    images = np.hypot(clean + rng.normal(0, sigma, clean.shape), rng.normal(0, sigma, clean.shape))
    geometry = coarse_geometry(fine)
    t0 = time.perf_counter()
    pred = seg(images, geometry[0].pixel_spacing_mm, orientation=geometry[0].orientation).labels
    fit = fit_t2(images, TE_MS, method=method)
    aha = assign_aha(pred, geometry).labels
    found = {"before": before(fit, pred, aha), "after": after(fit, pred, aha, geometry)}
    seconds = time.perf_counter() - t0
    rows = {}
    for name, values in found.items():
        rows[name] = [(s, v[0] - truth[s], v[1]) for s, v in values.items()
                      if s in truth and np.isfinite(v[0]) and np.isfinite(v[1])]
    return {"rows": rows, "seconds": seconds}


def figures(rows: list[tuple]) -> str:
    seg = [(e, b) for s, e, b in rows if s is not None]
    if not seg:
        return "no segments"
    err = np.array([e for e, _ in seg])
    bound = np.array([b for _, b in seg])
    glob = [(e, b) for s, e, b in rows if s is None]
    g_cov = np.mean([abs(e) <= b for e, b in glob]) if glob else float("nan")
    return (f"{len(seg):4d} segs  coverage {np.mean(np.abs(err) <= bound):5.2f}  mean err {err.mean():+6.2f} ms  "
            f"p90 |err| {np.percentile(np.abs(err), 90):5.2f} ms  median bound {np.median(bound):5.2f} ms  "
            f"| global coverage {g_cov:4.2f} ({len(glob)})")


def perfusion(n: int, seg: Segmenter) -> None:
    """The perfusion phantom (``simulate_perfusion``: 2CXM myocardium with an ischaemic sector) through
    the node's perfusion job: each segment's MBF against the mean true MBF of its sector's myocardium,
    covered by the fit's interval alone (before) and with the segmentation terms (now)."""
    import tempfile  # noqa: PLC0415

    from dicom_node.processing import load_perfusion_series, process_perfusion  # noqa: PLC0415
    from dicom_node.simulate import simulate_perfusion  # noqa: PLC0415
    from pinn_engine.perfusion import PerfusionSettings  # noqa: PLC0415

    settings = PerfusionSettings()
    to_mbf = 1.0 / (1.0 - settings.hct) / settings.density_g_ml
    rows = []
    for seed in range(n):
        with tempfile.TemporaryDirectory() as tmp:
            simulate_perfusion(Path(tmp), seed=100 + seed, matrix=96, frames=40)
            series = load_perfusion_series(sorted(Path(tmp).glob("*.dcm")))
            truth = np.load(Path(tmp) / "truth.npz")
        labels = truth["labels"]
        aha = assign_aha(labels, series.geometry).labels
        myo = labels == Label.MYOCARDIUM
        true = {s: float(truth["fp"][myo & (aha == s)].mean() * to_mbf) for s in np.unique(aha[myo]) if s}
        summary = process_perfusion(series, settings, seg).summary
        for entry in summary["segments"]:
            if entry["aha"] in true:
                parts = entry["mbf_bound_parts_ml_min_g"]
                rows.append((entry["mbf_ml_min_g"] - true[entry["aha"]], parts["fit"], entry["mbf_bound_ml_min_g"]))
    err, fit_only, bound = (np.array(c) for c in zip(*rows, strict=True))
    print(f"perfusion phantom, {n} series, {len(err)} segments: MBF error mean {err.mean():+.3f}, p90 "
          f"{np.percentile(np.abs(err), 90):.3f} ml/min/g; coverage {np.mean(np.abs(err) <= bound):.2f} "
          f"(median bound {np.median(bound):.3f}); with the fit's interval alone "
          f"{np.mean(np.abs(err) <= fit_only):.2f} (median {np.median(fit_only):.3f})")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "myops-dev")
    ap.add_argument("--snr", default="20,40,60")
    ap.add_argument("--contrast", default="t2,c0")
    ap.add_argument("--method", default="nlls", choices=("nlls", "pinn"))
    ap.add_argument("--cases", type=int, default=0, help="only the first N cases (0: all)")
    ap.add_argument("--seed", type=int, default=2026)
    ap.add_argument("--perfusion", type=int, default=0, metavar="N",
                    help="instead: N perfusion phantoms through the perfusion job (MBF segment values)")
    args = ap.parse_args()
    if args.perfusion:
        perfusion(args.perfusion, Segmenter())
        return 0
    cases = sorted(p.name.split("_")[0] for p in args.data.glob("Case*_gd.nii.gz"))
    if args.cases:
        cases = cases[:args.cases]
    if not cases:
        print(f"no MyoPS cases in {args.data}")
        return 1
    seg = Segmenter()
    print(f"{len(cases)} MyoPS cases (MyoPS challenge, Zhuang et al. 2020) as T2-prep phantoms; method "
          f"{args.method}; TE {', '.join(f'{t:g}' for t in TE_MS)} ms; 1.46 mm pixels with partial volume")
    all_rows: dict[str, list] = {"before": [], "after": []}
    seconds = []
    for contrast in args.contrast.split(","):
        for snr in (float(v) for v in args.snr.split(",")):
            rng = np.random.default_rng([args.seed, int(snr), list(CONTRASTS).index(contrast)])
            rows: dict[str, list] = {"before": [], "after": []}
            for case in cases:
                out = run_case(seg, args.data, case, contrast, snr, args.method, rng)
                seconds.append(out["seconds"])
                for name in rows:
                    rows[name] += out["rows"][name]
            print(f"{CONTRASTS[contrast][1]:>18} SNR {snr:4.0f}  node:       {figures(rows['after'])}")
            print(f"{'':>18} {'':8}  mask mean:  {figures(rows['before'])}")
            for name in rows:
                all_rows[name] += rows[name]
    print(f"{'all':>27}  node:       {figures(all_rows['after'])}")
    print(f"{'':>27}  mask mean:  {figures(all_rows['before'])}")
    print(f"segmentation + fit + AHA + statistics: median {np.median(seconds):.2f} s per series")
    return 0


if __name__ == "__main__":
    sys.exit(main())
