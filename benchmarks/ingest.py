#!/usr/bin/env python3
"""Ingest benchmark: DCMTK storescu -> (node | DCMTK storescp | Orthanc) on loopback.

    .venv/bin/python benchmarks/ingest.py [--instances 500] [--rounds 3]

Sends the same synthetic 256x256 16-bit MR series over one association with storescu
(TCP_NODELAY=1) to each receiver in alternating rounds; every run gets a fresh server
and an empty store, and the stored count is verified after each run. Prints instances/s
(median over rounds) and the ratios node/storescp and node/Orthanc.

Durability differs: the node fsyncs every file and its directory before answering;
storescp does not fsync; Orthanc fsyncs its storage area and SQLite index (its default).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dicom_node.synthetic import write_mr_series  # noqa: E402
from tests.helpers import free_port, stop_pid, wait_for_port  # noqa: E402

ENV = {**os.environ, "TCP_NODELAY": "1"}


def storescu(ae: str, port: int, files_dir: Path) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(["storescu", "+sd", "-aec", ae, "127.0.0.1", str(port), str(files_dir)],
                          capture_output=True, text=True, env=ENV)
    dt = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"storescu failed: {proc.stderr[-500:]}")
    return dt


def run_node(work: Path, files_dir: Path, n: int) -> float:
    port = free_port()
    cfg = work / "node.toml"
    cfg.write_text(f'[node]\nport = {port}\nstorage = "{work / "var"}"\n[series]\nstable_seconds = 3600\n')
    proc = subprocess.Popen([sys.executable, "-m", "dicom_node", "serve", "--config", str(cfg)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV, cwd=ROOT)
    try:
        wait_for_port(port, 30, proc, "node")
        # steady state: the node loads its engine in the background at start-up (preload);
        # measuring during that would charge a one-off start-up cost to every instance
        log = work / "var" / "log" / "node.jsonl"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not (log.exists() and '"engine.ready"' in log.read_text()):
            time.sleep(0.1)
        time.sleep(1.0)  # the render helper process finishes its imports
        dt = storescu("PINN_NODE", port, files_dir)
        conn = sqlite3.connect(work / "var" / "index.sqlite")
        count = conn.execute("SELECT COUNT(*) FROM instances").fetchone()[0]
        conn.close()
        if count != n:
            raise RuntimeError(f"node indexed {count} of {n}")
        return dt
    finally:
        stop_pid(proc, 15)


def run_storescp(work: Path, files_dir: Path, n: int) -> float:
    port = free_port()
    out = work / "out"
    out.mkdir()
    proc = subprocess.Popen(["storescp", "--output-directory", str(out), str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
    try:
        wait_for_port(port, 30, proc, "storescp")
        dt = storescu("ANY-SCP", port, files_dir)
        count = len(list(out.iterdir()))
        if count != n:
            raise RuntimeError(f"storescp stored {count} of {n}")
        return dt
    finally:
        stop_pid(proc, 15)


def run_orthanc(work: Path, files_dir: Path, n: int) -> float:
    port, http = free_port(), free_port()
    cfg = work / "orthanc.json"
    cfg.write_text(json.dumps({
        "Name": "bench", "StorageDirectory": str(work / "db"), "IndexDirectory": str(work / "db"),
        "DicomAet": "ORTHANC", "DicomPort": port, "HttpPort": http, "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False, "DicomCheckCalledAet": False, "Plugins": [], "StableAge": 3600,
    }))
    proc = subprocess.Popen(["Orthanc", str(cfg)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
    try:
        wait_for_port(port, 30, proc, "Orthanc")
        wait_for_port(http, 30, proc, "Orthanc")
        dt = storescu("ORTHANC", port, files_dir)
        with urllib.request.urlopen(f"http://127.0.0.1:{http}/statistics", timeout=10) as rsp:
            count = json.load(rsp)["CountInstances"]
        if count != n:
            raise RuntimeError(f"Orthanc stored {count} of {n}")
        return dt
    finally:
        stop_pid(proc, 15)


def ensure_orthanc() -> bool:
    if shutil.which("Orthanc"):
        return True
    print("Orthanc not found: installing the Debian package via scripts/bootstrap.sh orthanc ...", flush=True)
    subprocess.run(["bash", str(ROOT / "scripts" / "bootstrap.sh"), "orthanc"], check=False)
    return shutil.which("Orthanc") is not None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--instances", type=int, default=500)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    if not shutil.which("storescu"):
        print("DCMTK missing: run scripts/bootstrap.sh", file=sys.stderr)
        return 2
    receivers = {"node": run_node, "storescp": run_storescp}
    if ensure_orthanc():
        receivers["orthanc"] = run_orthanc
    else:
        print("Orthanc could not be installed: its column is left out")
    with tempfile.TemporaryDirectory(prefix="ingest-bench-") as tmp:
        tmp = Path(tmp)
        files_dir = tmp / "series"
        write_mr_series(files_dir, args.instances, rows=256, columns=256)
        size = sum(f.stat().st_size for f in files_dir.iterdir())
        print(f"{args.instances} MR instances, 256x256 uint16, {size / args.instances:,.0f} B each; "
              f"{args.rounds} alternating rounds; storescu with TCP_NODELAY=1")
        rates: dict[str, list[float]] = {k: [] for k in receivers}
        for r in range(args.rounds):
            for name, fn in receivers.items():
                work = tmp / f"{name}-{r}"
                work.mkdir()
                dt = fn(work, files_dir, args.instances)
                rates[name].append(args.instances / dt)
                print(f"  round {r + 1} {name:9s} {dt:6.2f} s  {args.instances / dt:7.1f} inst/s", flush=True)
                shutil.rmtree(work, ignore_errors=True)
    med = {k: statistics.median(v) for k, v in rates.items()}
    print("\nreceiver   median inst/s   runs")
    for k, v in med.items():
        print(f"{k:10s} {v:12.1f}   {', '.join(f'{x:.0f}' for x in rates[k])}")
    print(f"\nnode/storescp = {med['node'] / med['storescp']:.3f}   (bar >= 0.35)")
    if "orthanc" in med:
        print(f"node/Orthanc  = {med['node'] / med['orthanc']:.3f}   (bar >= 1.5)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
