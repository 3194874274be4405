"""Load: concurrent associations while a T2 series is processed; every instance stored and
indexed, the job finishes, the node's memory stays bounded.

One node (T2 processing with the fast ``nlls`` fit). A simulated T2-prepared series is
pushed first and the load starts once its job runs: ``LOAD_ASSOCIATIONS`` (8) DCMTK
storescu processes at once, each sending ``LOAD_INSTANCES`` distinct 64x64 MR instances
of its own series on its own association. The node's peak memory (VmHWM of the node and
of its helper processes) is sampled from /proc throughout.

``benchmarks/load.py`` runs the same at full size (8 x 200) and prints the figures.
"""

from __future__ import annotations

import os
import re
import sqlite3
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
import pytest

from dicom_node.synthetic import write_mr_series
from tests.helpers import DCMTK_ENV, NodeProcess, run

ASSOCIATIONS = int(os.environ.get("LOAD_ASSOCIATIONS", "8"))
INSTANCES = int(os.environ.get("LOAD_INSTANCES", "200"))
RSS_LIMIT_MB = float(os.environ.get("LOAD_RSS_LIMIT_MB", "2500"))  # node + helpers, whole life
GROWTH_LIMIT_MB = float(os.environ.get("LOAD_GROWTH_LIMIT_MB", "1000"))  # load-phase peak over the RSS before it
T2_JOB_KIND = "t2"

NODE_TOML = (
    '[engine]\nt2_method = "nlls"\n'
    "[series]\nstable_seconds = 2.0\ncheck_interval_s = 0.2\nstack_seconds = 0\n"
    "[jobs]\npoll_interval_s = 0.2\n"
)


# -- memory ------------------------------------------------------------------------
def _status_kb(pid: int, key: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (by parent PID, read from /proc)."""
    parent_of: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                stat = fh.read()
        except OSError:
            continue
        parent_of[int(entry)] = int(stat[stat.rindex(")") + 2:].split()[1])
    found, frontier = [], [pid]
    while frontier:
        p = frontier.pop()
        kids = [c for c, pp in parent_of.items() if pp == p]
        found += kids
        frontier += kids
    return found


class MemorySampler:
    """Peak memory of a process and its descendants, sampled from /proc in a thread.

    After :meth:`mark_baseline` the peaks are those reached from then on. ``node_peak_mb``: the
    node's own VmHWM (the kernel's high-water mark, exact).
    ``children_peak_mb``: the sum of the descendants' VmHWM (each exact; summed, an upper
    bound for their joint peak). ``tree_peak_mb``: the largest sampled sum of VmRSS over
    the whole tree at one instant.
    """

    def __init__(self, pid: int, interval: float = 0.1) -> None:
        self.pid = pid
        self.interval = interval
        self.child_hwm_kb: dict[int, int] = {}
        self.node_hwm_kb = 0
        self.tree_peak_kb = 0
        self.baseline_kb = 0
        self.startup_peak_kb = 0
        self.reset = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def mark_baseline(self) -> None:
        """Remember the tree's current RSS and start-up peaks, then reset the high-water marks
        (``echo 5 > /proc/PID/clear_refs``) so that the peaks from here on are the load's."""
        self.sample()
        self.baseline_kb = _status_kb(self.pid, "VmRSS") + sum(_status_kb(c, "VmRSS") for c in descendants(self.pid))
        self.startup_peak_kb = self.node_hwm_kb + sum(self.child_hwm_kb.values())
        for p in (self.pid, *descendants(self.pid)):
            try:
                with open(f"/proc/{p}/clear_refs", "w") as fh:
                    fh.write("5")
            except OSError:
                return  # not permitted here: the peaks keep including the start-up
        self.node_hwm_kb, self.child_hwm_kb, self.tree_peak_kb = 0, {}, 0
        self.reset = True

    def sample(self) -> None:
        hwm = _status_kb(self.pid, "VmHWM")
        if hwm:
            self.node_hwm_kb = max(self.node_hwm_kb, hwm)
        total = _status_kb(self.pid, "VmRSS")
        for child in descendants(self.pid):
            c_hwm = _status_kb(child, "VmHWM")
            if c_hwm:
                self.child_hwm_kb[child] = max(self.child_hwm_kb.get(child, 0), c_hwm)
            total += _status_kb(child, "VmRSS")
        self.tree_peak_kb = max(self.tree_peak_kb, total)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def __enter__(self) -> "MemorySampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sample()

    @property
    def node_peak_mb(self) -> float:
        return self.node_hwm_kb / 1024

    @property
    def children_peak_mb(self) -> float:
        return sum(self.child_hwm_kb.values()) / 1024

    @property
    def total_peak_mb(self) -> float:
        """Node VmHWM + descendants' VmHWM: the bound the test checks."""
        return self.node_peak_mb + self.children_peak_mb

    @property
    def tree_peak_mb(self) -> float:
        return self.tree_peak_kb / 1024


# -- the load ------------------------------------------------------------------------
@dataclass
class LoadResult:
    associations: int
    per_association: int
    assoc_seconds: list[float] = field(default_factory=list)
    acknowledged: list[int] = field(default_factory=list)
    storescu_rc: list[int] = field(default_factory=list)
    load_seconds: float = 0.0
    stored_per_series: list[int] = field(default_factory=list)
    indexed_total: int = 0
    job_state: str | None = None
    job_error: str | None = None
    job_seconds: float | None = None
    job_overlap_seconds: float = 0.0
    baseline_mb: float = 0.0
    startup_peak_mb: float = 0.0
    node_peak_mb: float = 0.0
    children_peak_mb: float = 0.0
    tree_peak_mb: float = 0.0
    children: int = 0

    @property
    def total(self) -> int:
        return self.associations * self.per_association

    @property
    def throughput(self) -> float:
        return sum(self.acknowledged) / self.load_seconds if self.load_seconds else 0.0

    @property
    def total_peak_mb(self) -> float:
        return self.node_peak_mb + self.children_peak_mb

    @property
    def growth_mb(self) -> float:
        return self.total_peak_mb - self.baseline_mb

    def report(self) -> str:
        lines = [
            f"load: {self.associations} associations x {self.per_association} instances (64x64 MR) = {self.total}, "
            f"concurrent with a T2 job (nlls)",
            f"  acknowledged {sum(self.acknowledged)}/{self.total}, stored+indexed "
            f"{sum(self.stored_per_series)}/{self.total} in {self.load_seconds:.2f} s "
            f"-> {self.throughput:.1f} instances/s over the whole load",
            "  per association (s): " + ", ".join(f"{t:.2f}" for t in self.assoc_seconds),
            f"  T2 job: {self.job_state}" + (f" after {self.job_seconds:.1f} s" if self.job_seconds else "")
            + f"; running during {self.job_overlap_seconds:.1f} s of the {self.load_seconds:.1f} s load"
            + (f"; error: {self.job_error}" if self.job_error else ""),
            f"  peak RSS during load + processing: node {self.node_peak_mb:.0f} MB (VmHWM) + {self.children} helper "
            f"process(es) {self.children_peak_mb:.0f} MB (sum of VmHWM) = {self.total_peak_mb:.0f} MB; "
            f"largest sampled tree RSS {self.tree_peak_mb:.0f} MB",
            f"  before the load: RSS {self.baseline_mb:.0f} MB (engine loaded), start-up peak "
            f"{self.startup_peak_mb:.0f} MB; growth of the peak over that RSS {self.growth_mb:+.0f} MB",
        ]
        return "\n".join(lines)


def _acknowledged(output: str) -> int:
    return len(re.findall(r"Received Store Response \(Success\)", output))


def _wait_event(node: NodeProcess, name: str, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = node.events(name)
        if found:
            return found[-1]
        if node.proc is not None and node.proc.poll() is not None:
            raise AssertionError(f"node exited with {node.proc.returncode}")
        time.sleep(0.1)
    raise AssertionError(f"no {name} event within {timeout} s:\n{node.output.read_text()[-3000:]}")


def _event_time(entry: dict) -> float:
    import calendar

    ts = entry["ts"]  # 2026-01-15T10:30:00.123Z, UTC
    return calendar.timegm(time.strptime(ts[:19], "%Y-%m-%dT%H:%M:%S")) + int(ts[20:23]) / 1000


def run_load(work: Path, associations: int = ASSOCIATIONS, per_association: int = INSTANCES,
             job_timeout: float = 600) -> LoadResult:
    """Node + T2 job + ``associations`` concurrent storescu x ``per_association`` instances."""
    work.mkdir(parents=True, exist_ok=True)
    result = LoadResult(associations, per_association)
    t2_dir = work / "t2"
    run([sys.executable, "-m", "dicom_node", "simulate", "t2", "--out", t2_dir, "--matrix", 192, "--slices", 3],
        check=True, timeout=300)
    t2_files = sorted(t2_dir.glob("*.dcm"))
    t2_series = str(pydicom.dcmread(t2_files[0], stop_before_pixels=True).SeriesInstanceUID)
    series_dirs = []
    for a in range(associations):
        d = work / f"load{a}"
        write_mr_series(d, per_association, rows=64, columns=64, seed=100 + a, patient_id=f"LOAD{a:02d}",
                        series_number=a + 1, series_description=f"load {a}")
        series_dirs.append(d)
    series_uids = [str(pydicom.dcmread(d / "IM00001.dcm", stop_before_pixels=True).SeriesInstanceUID)
                   for d in series_dirs]

    node = NodeProcess(work / "node", extra_toml=NODE_TOML)
    node.start(timeout=60)
    try:
        with MemorySampler(node.proc.pid) as memory:
            _wait_event(node, "engine.ready", 180)  # a node in service has its engine loaded
            time.sleep(1.0)  # the render helper process finishes its imports
            memory.mark_baseline()
            run(["storescu", "-aec", node.ae_title, "127.0.0.1", node.port, *t2_files], check=True)
            job_start = _wait_event(node, "job.start", 60)  # the T2 series is complete: its job runs

            logs = [open(work / f"storescu{a}.log", "w") for a in range(associations)]
            t0 = time.monotonic()
            wall0 = time.time()
            procs = [subprocess.Popen(["storescu", "-v", "+sd", "-aec", node.ae_title, "127.0.0.1", str(node.port),
                                       str(d)], stdout=log, stderr=subprocess.STDOUT, env=DCMTK_ENV)
                     for d, log in zip(series_dirs, logs, strict=True)]
            ends = [0.0] * associations
            pending = set(range(associations))
            try:
                deadline = t0 + 600
                while pending and time.monotonic() < deadline:
                    for a in list(pending):
                        if procs[a].poll() is not None:
                            ends[a] = time.monotonic()
                            pending.discard(a)
                    time.sleep(0.02)
            finally:
                for a in pending:  # by PID, only those still running (stuck past the deadline)
                    procs[a].kill()
                    procs[a].wait(10)
                    ends[a] = time.monotonic()
                for log in logs:
                    log.close()
            wall1 = time.time()
            result.load_seconds = max(ends) - t0
            result.assoc_seconds = [e - t0 for e in ends]
            result.storescu_rc = [p.returncode for p in procs]
            result.acknowledged = [_acknowledged((work / f"storescu{a}.log").read_text()) for a in range(associations)]

            deadline = time.monotonic() + job_timeout
            conn = sqlite3.connect(node.storage / "index.sqlite", timeout=30)
            try:
                while time.monotonic() < deadline:
                    row = conn.execute("SELECT state, last_error FROM jobs WHERE kind = ? AND series_uid = ?",
                                       (T2_JOB_KIND, t2_series)).fetchone()
                    result.job_state, result.job_error = row if row else (None, None)
                    if result.job_state in ("done", "failed"):
                        break
                    time.sleep(0.2)
                result.stored_per_series = [
                    conn.execute("SELECT COUNT(*) FROM instances WHERE series_uid = ?", (uid,)).fetchone()[0]
                    for uid in series_uids]
            finally:
                conn.close()
            result.indexed_total = node.index_count()
        finished = [e for e in node.events("job.done") + node.events("job.failed")
                    if e.get("job_id") == job_start["job_id"]]
        job_t0 = _event_time(job_start)
        job_t1 = _event_time(finished[-1]) if finished else time.time()
        result.job_seconds = job_t1 - job_t0 if finished else None
        result.job_overlap_seconds = max(0.0, min(job_t1, wall1) - max(job_t0, wall0))
        result.baseline_mb = memory.baseline_kb / 1024
        result.startup_peak_mb = memory.startup_peak_kb / 1024
        result.node_peak_mb = memory.node_peak_mb
        result.children_peak_mb = memory.children_peak_mb
        result.tree_peak_mb = memory.tree_peak_mb
        result.children = len(memory.child_hwm_kb)
        # every indexed instance of the load has its file, of the indexed size
        conn = sqlite3.connect(node.storage / "index.sqlite", timeout=30)
        try:
            for uid, d in zip(series_uids, series_dirs, strict=True):
                rows = conn.execute("SELECT path, size FROM instances WHERE series_uid = ?", (uid,)).fetchall()
                missing = [p for p, s in rows
                           if not (node.storage / p).is_file() or (node.storage / p).stat().st_size != s]
                assert not missing, f"{len(missing)} indexed instances of {d.name} have no complete file"
        finally:
            conn.close()
    finally:
        node.stop()
    return result


@pytest.mark.slow
def test_concurrent_associations_with_processing(tmp_path, dcmtk):
    result = run_load(tmp_path)
    print("\n" + result.report())
    assert result.storescu_rc == [0] * result.associations, f"storescu exit codes {result.storescu_rc}"
    assert result.acknowledged == [result.per_association] * result.associations, (
        f"acknowledged per association {result.acknowledged}")
    assert result.stored_per_series == [result.per_association] * result.associations, (
        f"indexed per series {result.stored_per_series}")
    assert result.indexed_total >= result.total + 9  # + the T2 series (+ the job's derived objects)
    assert result.job_state == "done", f"T2 job {result.job_state}: {result.job_error}"
    assert result.job_overlap_seconds > 0, "the T2 job did not run while the load was on"
    assert result.children >= 1, "the render helper process was not seen"
    assert result.growth_mb < GROWTH_LIMIT_MB, (
        f"the peak grew {result.growth_mb:.0f} MB over the {result.baseline_mb:.0f} MB before the load")
    assert max(result.total_peak_mb, result.startup_peak_mb) < RSS_LIMIT_MB, (
        f"peak memory {result.total_peak_mb:.0f} MB (node {result.node_peak_mb:.0f} + helpers "
        f"{result.children_peak_mb:.0f}) exceeds {RSS_LIMIT_MB:.0f} MB")
