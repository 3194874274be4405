"""``pinn-engine`` command line."""

from __future__ import annotations

import argparse
from typing import Sequence

from pinn_engine import __version__


def _cmd_info(_: argparse.Namespace) -> int:
    import torch  # noqa: PLC0415

    from pinn_engine.device import default_device  # noqa: PLC0415

    print(f"pinn-engine {__version__}")
    print(f"torch {torch.__version__} (CUDA build: {torch.version.cuda or 'no'}), threads {torch.get_num_threads()}")
    print(f"device: {default_device()}")
    return 0


def _cmd_segment(args: argparse.Namespace) -> int:
    import time  # noqa: PLC0415

    from pinn_engine.segmentation.infer import Segmenter  # noqa: PLC0415
    from pinn_engine.segmentation.io import read_stack, write_labels  # noqa: PLC0415
    from pinn_engine.segmentation.labels import Label  # noqa: PLC0415

    stack = read_stack(args.image)
    t0 = time.perf_counter()
    seg = Segmenter(args.weights)(stack.images, stack.pixel_spacing_mm, orientation=stack.orientation)
    dt = time.perf_counter() - t0
    write_labels(seg.labels, stack.reference, args.out)
    n = stack.images.shape[0]
    print(f"segmented {n} slices ({stack.images.shape[1]} echoes) in {dt:.2f} s -> {args.out}")
    for k in range(n):
        counts = [int((seg.labels[k] == c).sum())
                  for c in (Label.LV_BLOOD_POOL, Label.MYOCARDIUM, Label.RV_BLOOD_POOL)]
        note = "; ".join(seg.flags[k]) if seg.flags[k] else "ok"
        print(f"  slice {k + 1}: LV {counts[0]} px, myocardium {counts[1]} px, RV {counts[2]} px, "
              f"confidence {seg.confidence[k]:.2f} ({note})")
    return 0


def _cmd_train_seg(args: argparse.Namespace) -> int:
    from pathlib import Path  # noqa: PLC0415

    from pinn_engine.segmentation.train import train  # noqa: PLC0415

    train(Path(args.out), seed=args.seed, samples=args.samples, minutes=args.minutes, batch=args.batch,
          steps=args.steps, workers=args.workers, device=args.device, generator=args.generator)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pinn-engine", description="Quantification engine of the DICOM node")
    p.add_argument("--version", action="version", version=f"pinn-engine {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    i = sub.add_parser("info", help="versions and the compute device in use")
    i.set_defaults(func=_cmd_info)
    g = sub.add_parser("segment", help="segment a short-axis stack (NIfTI or DICOM folder) -> NIfTI labels")
    g.add_argument("image", help="NIfTI file or DICOM folder")
    g.add_argument("--out", required=True, help="NIfTI label map: 0 background, 1 LV, 2 myocardium, 3 RV")
    g.add_argument("--weights", help="network weights (default: the shipped model)")
    g.set_defaults(func=_cmd_segment)
    t = sub.add_parser("train-seg", help="train the segmentation network on synthetic data (CPU, time-budgeted)")
    t.add_argument("--out", default="pinn_engine/segmentation/weights/seg.pt")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--samples", type=int, default=6000)
    t.add_argument("--minutes", type=float, default=100.0, help="wall-clock budget including data generation")
    t.add_argument("--batch", type=int, default=16)
    t.add_argument("--steps", type=int, help="fixed number of steps (reproducible); default: until --minutes")
    t.add_argument("--workers", type=int, default=2, help="processes generating the synthetic data")
    t.add_argument("--generator", type=int, default=6, choices=(1, 2, 3, 4, 5, 6, 7, 8),
                   help="synthetic-data generator version (1: seg_v1; "
                        "2: seg_v2, crescent RV, trabeculae, dark distractors; "
                        "3: seg_v3, + anatomical display frame; "
                        "4: seg_v4, + black-blood RV texture, wider RV; "
                        "5: experimental, + slow flow filling cavities, suppressed fat pad over the RV; "
                        "6: seg_v6, generator 5 with a thinner, rarer, less blood-like fat pad; "
                        "7: experimental, generator 6 with more and fuller LV slow flow; "
                        "8: experimental, generator 7 with the descending aorta, atria and pulmonary trunk beside "
                        "the heart)")
    t.add_argument("--device", help="torch device (default: a GPU when present, else the CPU)")
    t.set_defaults(func=_cmd_train_seg)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))
