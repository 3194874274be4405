#!/usr/bin/env python3
"""Load benchmark: concurrent associations while a T2 series is processed.

    .venv/bin/python benchmarks/load.py [--associations 8] [--instances 200]

One node (T2 processing, ``t2_method = "nlls"``, engine preloaded). A simulated T2
series (``dicom-node simulate t2``, 192x192, 3 slices x 3 preparation times) is pushed
first; once its job runs, ``--associations`` DCMTK storescu processes start at once, each
sending ``--instances`` distinct 64x64 16-bit MR instances of its own series on its own
association. Checks every instance is acknowledged, stored and indexed and that the job
finishes; prints the throughput over the whole load (all acknowledged instances / time
from the first storescu start to the last one's end), the time of each association, how
long the job ran alongside the load, and the peak RSS of the node and its helper processes
(VmHWM from /proc, high-water marks reset once the engine is loaded).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.reliability.test_load import run_load  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--associations", type=int, default=8)
    ap.add_argument("--instances", type=int, default=200, help="instances per association")
    args = ap.parse_args()
    if not shutil.which("storescu"):
        print("DCMTK missing: run scripts/bootstrap.sh", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="load-bench-") as tmp:
        result = run_load(Path(tmp), args.associations, args.instances)
    print(result.report())
    per = ", ".join(f"{n / t:.1f}" for n, t in zip(result.acknowledged, result.assoc_seconds, strict=True) if t)
    print(f"  per association (instances/s): {per}")
    ok = (sum(result.acknowledged) == result.total and sum(result.stored_per_series) == result.total
          and result.job_state == "done")
    print(f"\nall {result.total} acknowledged, stored and indexed: "
          f"{'yes' if sum(result.stored_per_series) == result.total else 'NO'}; "
          f"T2 job finished: {'yes' if result.job_state == 'done' else 'NO (' + str(result.job_state) + ')'}; "
          f"peak RSS node + helpers: {result.total_peak_mb:.0f} MB")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
