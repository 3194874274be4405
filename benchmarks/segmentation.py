#!/usr/bin/env python3
"""Segmentation benchmark: synthetic held-out slices, real MyoPS T2w and bSSFP cases, AHA landmarks, speed.

    .venv/bin/python benchmarks/segmentation.py [--weights PATH] [--myops DIR] [--contrast t2|c0|both]

(a) Dice for LV blood pool, LV myocardium, RV on 200 held-out synthetic slices (a seed
    never used in training, from the generator the weights were trained on unless
    --generator names another), through the full inference path (localisation + crop);
(b) Dice per case (3-D, all slices) on every case of ../shared/data/myops-dev at full
    field of view (MyoPS labels: 500 -> LV, 200+1220+2221 -> myocardium, 600 -> RV), for
    each contrast --contrast names: the black-blood T2-weighted stacks (CaseNNNN_T2) and the
    bright-blood bSSFP stacks (CaseNNNN_C0, on the same grid as the labels; the contrast of
    T2-prepared bSSFP source images), both against CaseNNNN_gd; validation only — cite the
    MyoPS challenge (Zhuang et al., MICCAI 2020);
(c) AHA: angular error of the anterior RV insertion point from predicted vs true masks
    on synthetic 3-slice stacks with DICOM-like geometry;
(d) inference time per 192x192 slice.
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

from pinn_engine.aha import SliceGeometry, insertion_points  # noqa: E402
from pinn_engine.segmentation.infer import Segmenter  # noqa: E402
from pinn_engine.segmentation.synth import make_slice  # noqa: E402

HELD_OUT_SEED = 987_654_321


def dice(pred: np.ndarray, truth: np.ndarray, c: int) -> float:
    p, t = pred == c, truth == c
    total = p.sum() + t.sum()
    return float(2 * (p & t).sum() / total) if total else float("nan")


def summary(rows: list[list[float]], label: str) -> None:
    a = np.array(rows, dtype=float)
    print(f"{label}: n={len(a)}")
    for i, name in enumerate(("LV", "myocardium", "RV")):
        print(f"  {name:10s} mean {np.nanmean(a[:, i]):.3f}  median {np.nanmedian(a[:, i]):.3f}")


def synthetic(seg: Segmenter, n: int, generator: int) -> None:
    rng = np.random.default_rng(HELD_OUT_SEED)
    rows = []
    for _ in range(n):
        stack, labels, px = make_slice(rng, version=generator)
        pred = seg(stack[None], (px, px)).labels[0]
        rows.append([dice(pred, labels, c) for c in (1, 2, 3)])
    summary(rows, f"(a) held-out synthetic slices (generator {generator}, seed {HELD_OUT_SEED})")


# MyoPS image suffix -> how part (b) names the contrast
MYOPS_CONTRASTS = {
    "t2": ("T2", "T2-weighted (black blood)"),
    "c0": ("C0", "bSSFP (bright blood)"),
}


def myops_truth(path: Path) -> np.ndarray:
    """A MyoPS label volume (CaseNNNN_gd) as Label values: LV blood pool, LV myocardium, RV blood pool."""
    gd = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
    truth = np.zeros(gd.shape, np.uint8)
    truth[gd == 500] = 1
    truth[np.isin(gd, (200, 1220, 2221))] = 2
    truth[gd == 600] = 3
    return truth


def myops(seg: Segmenter, folder: Path, contrast: str) -> None:
    """Per-case 3-D Dice on the MyoPS stacks of one contrast (``MYOPS_CONTRASTS`` key), full field of view."""
    suffix, name = MYOPS_CONTRASTS[contrast]
    cases = sorted(folder.glob(f"Case*_{suffix}.nii.gz"))
    if not cases:
        print(f"(b) no MyoPS {name} cases in {folder}")
        return
    rows = []
    print(f"(b) MyoPS {name}, full field of view ({len(cases)} cases; MyoPS challenge, Zhuang et al. 2020)")
    for path in cases:
        case = path.name.split("_")[0]
        img = sitk.ReadImage(str(path))
        arr = sitk.GetArrayFromImage(img).astype(np.float64)
        truth = myops_truth(path.with_name(f"{case}_gd.nii.gz"))
        sx, sy = img.GetSpacing()[:2]
        d = np.array(img.GetDirection()).reshape(3, 3)
        pred = seg(arr[:, None], (sy, sx), orientation=(d[:, 0], d[:, 1])).labels
        row = [dice(pred, truth, c) for c in (1, 2, 3)]
        rows.append(row)
        print(f"  {case}: {arr.shape[0]} slices  LV {row[0]:.3f}  myo {row[1]:.3f}  RV {row[2]:.3f}")
    summary(rows, f"    per-case Dice, {name}")


def aha_landmarks(seg: Segmenter, n: int, generator: int) -> None:
    from dicom_node.simulate import sax_orientation

    row, col = sax_orientation()
    rng = np.random.default_rng(HELD_OUT_SEED + 1)
    errors, missing = [], 0
    for _ in range(n):
        stack, labels, px = make_slice(rng, version=generator)
        geom = SliceGeometry(row, col, (px, px), np.zeros(3))
        pred = seg(stack[None], (px, px)).labels[0]
        t, p = insertion_points(labels, geom), insertion_points(pred, geom)
        if t is None:
            continue
        if p is None:
            missing += 1
            continue
        errors.append(abs(np.degrees((p[4] - t[4] + np.pi) % (2 * np.pi) - np.pi)))
    e = np.array(errors)
    print(f"(c) anterior insertion point, predicted vs true masks: {len(e)} slices, not found on {missing}; "
          f"angular error median {np.median(e):.1f} deg, p90 {np.percentile(e, 90):.1f} deg")


def speed(seg: Segmenter) -> None:
    rng = np.random.default_rng(1)
    stack = np.stack([make_slice(rng)[0] for _ in range(3)])
    seg(stack, (1.7, 1.7))
    t0 = time.perf_counter()
    reps = 5
    for _ in range(reps):
        seg(stack, (1.7, 1.7))
    per = (time.perf_counter() - t0) / reps / 3
    print(f"(d) inference {per * 1e3:.0f} ms per 192x192 slice (3-slice stack, localisation + crop, "
          f"{seg.device}; bar <= 100 ms)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights")
    ap.add_argument("--myops", default=str(ROOT.parent / "shared" / "data" / "myops-dev"))
    ap.add_argument("--contrast", choices=["t2", "c0", "both"], default="both",
                    help="MyoPS stacks for (b): T2-weighted (t2), bSSFP (c0) or both (default)")
    ap.add_argument("--synthetic", type=int, default=200)
    ap.add_argument("--generator", type=int,
                    help="synthetic-data generator for (a) and (c) (default: the one the weights were trained on)")
    args = ap.parse_args()
    seg = Segmenter(args.weights)
    print(f"model: {seg.meta}")
    generator = args.generator or seg.meta.get("generator", 1)
    synthetic(seg, args.synthetic, generator)
    for contrast in MYOPS_CONTRASTS if args.contrast == "both" else (args.contrast,):
        myops(seg, Path(args.myops), contrast)
    aha_landmarks(seg, 100, generator)
    speed(seg)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
