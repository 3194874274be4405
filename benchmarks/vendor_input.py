#!/usr/bin/env python3
"""Vendor-style T2 studies through a running node: what it makes of them, and how fast.

    .venv/bin/python benchmarks/vendor_input.py [--vendors siemens,siemens-xa,philips,ge]
        [--seed 21] [--matrix 128] [--method nlls|pinn] [--json PATH]

Per vendor fixture (``dicom_node.vendors.simulate_vendor_t2``; vendor i of ``VENDORS`` gets
seed ``--seed + i``, so a subset of vendors sees the same data) one node (``dicom-node serve``,
engine preloaded as in service) receives the study as scanners send it: one ``storescu``
association per series. Vendors are pushed one after another; the next is pushed only once the
previous study's T2 job has finished, so latencies do not overlap. Prints, per vendor:

1. every series: description, the node's classification (``series.classified``: kind and
   reason) and whether the study's stack used it;
2. the AHA segments of the report (count and list);
3. truth within bound: the segments whose true myocardial T2 (mean of the phantom's T2 over the
   truth's myocardium in the segment, with the truth's own AHA labels on the stack's geometry,
   ``tests.helpers.segment_truth``, as tests/test_vendor_node.py uses it) lies within t2_ms +/- t2_bound_ms;
4. push-to-results latency: the T2 job's finish (jobs.updated_at) minus the last instance of
   the stack's source series received (max series.last_received_at), minus the stability wait
   ([series] stable_seconds) and the stack wait (stack_seconds); and the job's own time: from
   due (jobs.not_before) to done, and the handler's seconds (``job.done``).
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pydicom

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dicom_node.vendors import VENDORS, simulate_vendor_t2  # noqa: E402
from tests.helpers import QUICK_T2_NODE_TOML, NodeProcess, run, segment_truth  # noqa: E402

STABLE_S = 0.5  # QUICK_T2_NODE_TOML's [series] stable_seconds
STACK_S = 2.0  # a small stack wait: the series of one study are pushed well within it
JOB_TIMEOUT_S = 600.0


def node_toml(method: str) -> str:
    toml = QUICK_T2_NODE_TOML
    for old, new in (("stack_seconds = 0", f"stack_seconds = {STACK_S:g}"),
                     ('t2_method = "nlls"', f't2_method = "{method}"'),
                     # a node in service has its engine loaded long before a study arrives
                     ("preload = false", "preload = true")):
        if old not in toml:
            raise SystemExit(f"QUICK_T2_NODE_TOML changed: no {old!r} in it")
        toml = toml.replace(old, new)
    if f"stable_seconds = {STABLE_S:g}\n" not in toml:
        raise SystemExit(f"QUICK_T2_NODE_TOML changed: its stable_seconds is not {STABLE_S:g}")
    return toml


def header(folder: Path) -> pydicom.Dataset:
    return pydicom.dcmread(sorted(folder.glob("*.dcm"))[0], stop_before_pixels=True)


def query(node: NodeProcess, sql: str, params=()) -> list[tuple]:
    conn = sqlite3.connect(node.storage / "index.sqlite")
    try:
        return conn.execute(sql, list(params)).fetchall()
    finally:
        conn.close()


def wait_study(node: NodeProcess, study_uid: str, series_uids: set[str], timeout: float) -> bool:
    """Until every series is classified and the study has a finished T2 job and none pending or running."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        classified = {e.get("series_uid") for e in node.events("series.classified")}
        states = [s for (s,) in query(node, "SELECT state FROM jobs WHERE study_uid = ?", (study_uid,))]
        if (series_uids <= classified and states and all(s in ("done", "failed") for s in states)):
            time.sleep(0.5)  # no further job may appear
            again = [s for (s,) in query(node, "SELECT state FROM jobs WHERE study_uid = ?", (study_uid,))]
            if again == states:
                return True
        if node.proc is not None and node.proc.poll() is not None:
            raise RuntimeError(f"node exited with {node.proc.returncode}:\n{node.output.read_text()[-4000:]}")
        time.sleep(0.2)
    return False


def one_vendor(node: NodeProcess, vendor: str, folder: Path) -> dict:
    folders = sorted(p for p in folder.iterdir() if p.is_dir())
    series = {}  # folder -> (series UID, description)
    for f in folders:
        h = header(f)
        series[f] = (str(h.SeriesInstanceUID), str(h.get("SeriesDescription", "")))
    study_uid = str(header(folders[0]).StudyInstanceUID)
    push_s = []
    for f in folders:  # one association per series, as scanners send
        t0 = time.time()
        run(["storescu", "-aec", node.ae_title, "127.0.0.1", node.port, *sorted(f.glob("*.dcm"))], check=True)
        push_s.append(time.time() - t0)
    finished = wait_study(node, study_uid, {uid for uid, _ in series.values()}, JOB_TIMEOUT_S)

    classified = {e["series_uid"]: e for e in node.events("series.classified")}
    jobs = query(node, "SELECT id, kind, series_uid, state, attempts, last_error, result, created_at, updated_at,"
                       " not_before FROM jobs WHERE study_uid = ? ORDER BY id", (study_uid,))
    received = {uid: (first, last) for uid, first, last in query(
        node, "SELECT series_uid, first_received_at, last_received_at FROM series WHERE study_uid = ?",
        (study_uid,))}
    out: dict = {"vendor": vendor, "study_uid": study_uid, "finished": finished,
                 "push_seconds": round(sum(push_s), 3),
                 "jobs": [{"id": j[0], "kind": j[1], "state": j[3], "attempts": j[4], "last_error": j[5]}
                          for j in jobs]}

    done = [j for j in jobs if j[1] == "t2" and j[3] == "done"]
    summary, used = None, []
    if done:
        job = done[-1]
        result_dirs = []
        for path in sorted((node.storage / "results").glob("*/summary.json")):
            s = json.loads(path.read_text())
            if set(s.get("stack", {}).get("source_series", [])) & {uid for uid, _ in series.values()}:
                result_dirs.append((path.stat().st_mtime, s))
        if result_dirs:
            summary = max(result_dirs, key=lambda x: x[0])[1]
            used = list(summary["stack"]["source_series"])
        handler_s = [e.get("seconds") for e in node.events("job.done") if e.get("job_id") == job[0]]
        last_source = max((received[uid][1] for uid in used if uid in received), default=None)
        t2_uids = [uid for uid, _ in series.values() if classified.get(uid, {}).get("kind") == "t2"]
        last_t2 = max((received[uid][1] for uid in t2_uids if uid in received), default=None)
        out["latency"] = {
            "push_to_results_s": None if last_source is None else round(job[8] - last_source - STABLE_S - STACK_S, 3),
            # the stack wait starts from the last T2 series of the study, used or not
            "from_last_t2_series_s": None if last_t2 is None else round(job[8] - last_t2 - STABLE_S - STACK_S, 3),
            "due_to_done_s": round(job[8] - job[9], 3),
            "handler_s": handler_s[-1] if handler_s else None,
            "timings_s": (summary or {}).get("timings_s"),
        }

    out["series"] = [{"folder": f.name, "series_uid": uid, "description": desc,
                      "kind": classified.get(uid, {}).get("kind"), "reason": classified.get(uid, {}).get("reason"),
                      "used": uid in used} for f, (uid, desc) in series.items()]
    if summary is not None:
        out["segments"] = sorted(int(s["aha"]) for s in summary["segments"])
        by_uid = {uid: f for f, (uid, _) in series.items()}
        used_folders = [by_uid[uid] for uid in used if uid in by_uid]
        if len(used_folders) != len(used):
            out["truth_error"] = "a source series of the stack is not among the pushed folders"
        else:
            rows = segment_truth(summary, np.load(folder / "truth.npz"), used_folders)
            out["truth"] = rows
            out["within"] = sum(r["inside"] for r in rows)
        out["global"] = summary.get("global")
    return out


def _fmt(v, spec: str = ".2f") -> str:
    return "-" if v is None else format(v, spec)


def report(r: dict) -> None:
    print(f"\n=== {r['vendor']} (study {r['study_uid']}) ===")
    w = max(len(s["description"]) for s in r["series"])
    print(f"  {'series':<{w}}  {'kind':<10} used  reason")
    for s in r["series"]:
        print(f"  {s['description']:<{w}}  {str(s['kind']):<10} {'yes ' if s['used'] else '    '}  {s['reason']}")
    print("  jobs: " + (", ".join(f"#{j['id']} {j['kind']} {j['state']} (attempts {j['attempts']})"
                                  + (f" error: {j['last_error']}" if j["last_error"] else "") for j in r["jobs"])
                        or "none") + ("" if r["finished"] else "  [TIMED OUT waiting for the study]"))
    if "segments" not in r:
        print("  no results")
        return
    print(f"  AHA segments: {len(r['segments'])} {r['segments']}")
    if "truth" in r:
        missed = [t for t in r["truth"] if not t["inside"]]
        print(f"  truth within bound: {r['within']}/{len(r['truth'])}"
              f" ({100.0 * r['within'] / max(len(r['truth']), 1):.0f}%)"
              + ("; outside: " + ", ".join(f"{t['aha']} ({t['t2_ms']:.1f}+/-{t['t2_bound_ms']:.1f} vs true "
                                           f"{t['true_t2_ms']:.1f})" for t in missed) if missed else ""))
    else:
        print(f"  truth within bound: - ({r.get('truth_error')})")
    lat = r.get("latency", {})
    print(f"  latency (stable {STABLE_S:g} s + stack {STACK_S:g} s excluded): push-to-results "
          f"{_fmt(lat.get('push_to_results_s'))} s"
          + (f" (from the last T2 series of any kind {_fmt(lat.get('from_last_t2_series_s'))} s)"
             if lat.get("from_last_t2_series_s") != lat.get("push_to_results_s") else "")
          + f"; job due->done {_fmt(lat.get('due_to_done_s'))} s, handler {_fmt(lat.get('handler_s'))} s;"
          f" study push took {r['push_seconds']:.2f} s")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vendors", default=",".join(VENDORS))
    ap.add_argument("--seed", type=int, default=21)
    ap.add_argument("--matrix", type=int, default=128)
    ap.add_argument("--method", choices=("nlls", "pinn"), default="nlls")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args()
    vendors = [v.strip() for v in args.vendors.split(",") if v.strip()]
    unknown = [v for v in vendors if v not in VENDORS]
    if unknown:
        ap.error(f"unknown vendor(s) {', '.join(unknown)} (one of {', '.join(VENDORS)})")

    results = []
    with tempfile.TemporaryDirectory(prefix="vendor-input-") as tmp:
        tmp = Path(tmp)
        for vendor in vendors:
            simulate_vendor_t2(tmp / vendor, vendor, seed=args.seed + VENDORS.index(vendor), matrix=args.matrix)
        node = NodeProcess(tmp / "node", extra_toml=node_toml(args.method))
        node.start(timeout=120)
        try:
            deadline = time.monotonic() + 300
            while not node.events("engine.ready") and time.monotonic() < deadline:
                if node.proc.poll() is not None:
                    raise RuntimeError(f"node exited:\n{node.output.read_text()[-4000:]}")
                time.sleep(0.1)
            print(f"node {node.address}: method {args.method}, matrix {args.matrix}, seed {args.seed}, "
                  f"stable_seconds {STABLE_S:g}, stack_seconds {STACK_S:g}, engine ready "
                  f"{bool(node.events('engine.ready'))}", flush=True)
            for vendor in vendors:
                r = one_vendor(node, vendor, tmp / vendor)
                results.append(r)
                report(r)
                sys.stdout.flush()
        finally:
            node.stop()

    print(f"\n=== summary (method {args.method}, matrix {args.matrix}) ===")
    print(f"  {'vendor':<11} {'series':>6} {'t2':>3} {'used':>4} {'jobs':>4} {'segs':>4} {'within':>7} "
          f"{'latency s':>9} {'due->done s':>11} {'handler s':>9}")
    for r in results:
        lat = r.get("latency", {})
        within = f"{r['within']}/{len(r['truth'])}" if "truth" in r else "-"
        print(f"  {r['vendor']:<11} {len(r['series']):>6} {sum(s['kind'] == 't2' for s in r['series']):>3} "
              f"{sum(s['used'] for s in r['series']):>4} {len(r['jobs']):>4} {len(r.get('segments', [])):>4} "
              f"{within:>7} {_fmt(lat.get('push_to_results_s')):>9} {_fmt(lat.get('due_to_done_s')):>11} "
              f"{_fmt(lat.get('handler_s')):>9}")
    inside = sum(r.get("within", 0) for r in results)
    total = sum(len(r.get("truth", [])) for r in results)
    lats = [r["latency"]["push_to_results_s"] for r in results if r.get("latency", {}).get("push_to_results_s")
            is not None]
    print(f"  all: truth within bound {inside}/{total}"
          + (f" ({100.0 * inside / total:.0f}%)" if total else "")
          + (f"; latency median {statistics.median(lats):.2f} s, max {max(lats):.2f} s" if lats else ""))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"method": args.method, "matrix": args.matrix, "seed": args.seed,
                                         "stable_seconds": STABLE_S, "stack_seconds": STACK_S,
                                         "vendors": results}, indent=2, default=str))
        print(f"  figures written to {args.json}")
    ok = all(r["finished"] and "truth" in r for r in results)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
