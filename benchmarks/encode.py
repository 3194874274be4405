#!/usr/bin/env python3
"""Derived-object encoding: size of each object and encode time for a 3-slice 192x192 T2 series.

    .venv/bin/python benchmarks/encode.py

Uses the phantom's truth as the maps and masks (no fitting), so only encoding is timed.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pydicom

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dicom_node.simulate import simulate_t2  # noqa: E402
from tests.derived_objects import all_objects  # noqa: E402


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        simulate_t2(tmp / "sim", seed=1, matrix=192, slices=3)
        ds = [pydicom.dcmread(p) for p in sorted((tmp / "sim").glob("*.dcm"))]
        first = sorted([d for d in ds if float(d.EchoTime) == 0], key=lambda d: d.InstanceNumber)
        truth = np.load(tmp / "sim" / "truth.npz")
        all_objects((first, truth), tmp)  # warm-up (imports, fonts)
        t0 = time.perf_counter()
        _, objs = all_objects((first, truth), tmp)
        total = time.perf_counter() - t0
        print("3-slice 192x192 T2 series: derived objects (PM x2, SEG, SR, SC, PDF)")
        for name, obj in objs.items():
            path = tmp / f"{name}.dcm"
            obj.save_as(path, enforce_file_format=True)
            print(f"  {name:6s} {obj.SOPClassUID.name if hasattr(obj.SOPClassUID, 'name') else obj.SOPClassUID:45s} "
                  f"{path.stat().st_size / 1024:8.1f} KiB")
        print(f"encode time, all objects (incl. rendering the picture twice): {total:.2f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
