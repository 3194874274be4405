#!/usr/bin/env python3
"""Reliability report: kill -9 trials per pipeline phase, destination outage, dead letter.

    .venv/bin/python benchmarks/reliability.py [--trials 20] [--outage 60] [--seed 0]

Each trial is a fresh node + DCMTK storescp destination (every delivery kept as its own
file); the node is killed with SIGKILL at a random moment of ingest / processing /
sending, restarted on the same storage, and checked (see tests/reliability/faults.py).
Prints one line per trial and the table per fault: instances sent / acknowledged /
present after restart, results expected / delivered (distinct UIDs) / duplicated
(resent deliveries of the same UID, which the PACS stores once).
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.reliability.faults import Rig, outage  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--outage", type=float, default=60.0, help="seconds the destination is down")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--faults", default="ingest,processing,sending")
    args = ap.parse_args()
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory(prefix="reliability-") as tmp:
        rig = Rig(Path(tmp) / "rig", seed=args.seed)
        table = {}
        for fault in args.faults.split(","):
            outcomes = []
            for _ in range(args.trials):
                t0 = time.monotonic()
                o = getattr(rig, f"trial_{fault}")(rng)
                outcomes.append(o)
                print(f"  {fault:10s} #{o.trial:3d} kill {o.kill_at:28s} sent {o.sent:3d} acked {o.acknowledged:3d} "
                      f"present {o.present:3d} | results {o.delivered}/{o.expected_results} deliveries "
                      f"{o.deliveries} (before kill {o.before_kill}) "
                      f"{'ok' if o.ok else 'FAIL ' + '; '.join(o.problems)}"
                      f" [{time.monotonic() - t0:.1f} s]", flush=True)
            table[fault] = outcomes
        print()
        print(f"{'fault':10s} {'trials':>6s} {'ok':>4s} {'sent':>6s} {'acked':>6s} {'present':>7s} {'expected':>8s} "
              f"{'delivered':>9s} {'duplicated':>10s}")
        for fault, outcomes in table.items():
            print(f"{fault:10s} {len(outcomes):6d} {sum(o.ok for o in outcomes):4d} "
                  f"{sum(o.sent for o in outcomes):6d} {sum(o.acknowledged for o in outcomes):6d} "
                  f"{sum(o.present for o in outcomes):7d} {sum(o.expected_results for o in outcomes):8d} "
                  f"{sum(o.delivered for o in outcomes):9d} {sum(o.duplicated for o in outcomes):10d}")
        if args.outage > 0:
            res = outage(Path(tmp) / "outage", args.outage)
            print(f"\ndestination down {res['outage_s']:.0f} s while results were due: "
                  f"{res['delivered']}/{res['expected']} delivered {res['seconds_after_return']} s after it returned, "
                  f"{res['deliveries']} deliveries (duplicates {res['deliveries'] - res['delivered']}), "
                  f"job attempts {res['attempts']} -> {'ok' if res['ok'] else 'FAIL'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
