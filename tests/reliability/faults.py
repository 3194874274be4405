"""Fault-injection rig shared by the reliability tests and ``benchmarks/reliability.py``.

A rig is one node (a real ``dicom-node serve`` process, NLLS engine for speed) with a
DCMTK ``storescp`` destination that keeps every delivery as its own file (``+uf``), so
resends are counted, and a T2 series (plus a filler series for ingest trials). Each trial
kills the node with SIGKILL at a random moment of one phase, restarts it on the same
storage and checks the promises: no acknowledged instance lost, files and index agree,
no temporary files, the complete series processed, every result delivered (the PACS
keeps one copy per SOP Instance UID; deterministic UIDs make resends harmless).
"""

from __future__ import annotations

import random
import shutil
import sqlite3
import subprocess
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pydicom

from dicom_node.simulate import simulate_t2
from dicom_node.synthetic import write_mr_series
from tests.helpers import (
    DCMTK_ENV,
    NodeProcess,
    StoreSCPProcess,
    acknowledged_files,
    stop_pid,
    wait_for,
    wait_for_port,
)

DERIVED = 6 + 3  # T2 map, bound map, SEG, SR, SC, PDF and the background image of each of the 3 slices


@dataclass
class Outcome:
    fault: str
    trial: int
    kill_at: str = ""
    sent: int = 0
    acknowledged: int = 0
    present: int = 0  # acknowledged instances found intact after the restart
    expected_results: int = DERIVED
    delivered: int = 0  # distinct derived SOP Instance UIDs at the destination
    deliveries: int = 0  # C-STOREs of derived objects received (resends included)
    before_kill: int = 0  # derived objects the destination had received when the node was killed
    problems: list[str] = field(default_factory=list)

    @property
    def duplicated(self) -> int:
        """Deliveries beyond one per UID: resends the PACS absorbs (same UID, same content)."""
        return self.deliveries - self.delivered

    @property
    def ok(self) -> bool:
        return not self.problems and self.present == self.acknowledged and self.delivered == self.expected_results


class UniqueStoreSCP(StoreSCPProcess):
    """storescp writing each received object to its own file, so resends are visible."""

    def start(self) -> "UniqueStoreSCP":
        self.proc = subprocess.Popen(
            ["storescp", "--aetitle", self.ae_title, "--output-directory", str(self.dir), "--accept-all",
             "+uf", str(self.port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=DCMTK_ENV,
        )
        wait_for_port(self.port, 10, self.proc, "storescp")
        return self

    def deliveries(self) -> Counter:
        """SOP Instance UID -> number of times received (files still being written are skipped)."""
        found = Counter()
        for p in self.dir.iterdir():
            if p.is_file():
                try:
                    found[str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID)] += 1
                except Exception:  # noqa: BLE001  (storescp is still writing it)
                    continue
        return found


class Rig:
    def __init__(self, root: Path, seed: int = 0) -> None:
        self.root = Path(root)
        self.series = sorted(p for p in (self.root / "t2").glob("*.dcm")) if (self.root / "t2").exists() else []
        if not self.series:
            simulate_t2(self.root / "t2", seed=seed, matrix=128, slices=3)
            self.series = sorted((self.root / "t2").glob("*.dcm"))
        self.filler = write_mr_series(self.root / "filler", 60, rows=128, columns=128, seed=seed)
        self.t2_uids = {self.sop(f) for f in self.series}
        self.trial_no = 0

    @staticmethod
    def sop(path: Path | str) -> str:
        return str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)

    # -- per trial ---------------------------------------------------------------
    def fresh(self, name: str) -> tuple[NodeProcess, UniqueStoreSCP]:
        self.trial_no += 1
        work = self.root / f"{name}-{self.trial_no}"
        shutil.rmtree(work, ignore_errors=True)
        dest = UniqueStoreSCP(work / "pacs", ae_title="PACS").start()
        node = NodeProcess(work / "node", extra_toml=(
            "[series]\nstable_seconds = 0.5\ncheck_interval_s = 0.1\nstack_seconds = 0\n" + dest.destination_toml()
            + '[routing]\nsend_results_to = ["pacs"]\n[engine]\nt2_method = "nlls"\npreload = false\n'
            + "[jobs]\npoll_interval_s = 0.1\nretry_backoff_s = 0.5\n"))
        return node, dest

    def push(self, node: NodeProcess, files: list[Path], log: Path) -> subprocess.Popen:
        out = open(log, "a")  # a file, not a pipe: a full pipe would stall storescu
        proc = subprocess.Popen(["storescu", "-v", "-aec", node.ae_title, "127.0.0.1", str(node.port),
                                 *map(str, files)], stdout=out, stderr=subprocess.STDOUT, env=DCMTK_ENV)
        out.close()
        return proc

    # -- checks --------------------------------------------------------------------
    def check(self, node: NodeProcess, dest: UniqueStoreSCP, outcome: Outcome, acked: list[str]) -> Outcome:
        """After the restart: the promises, recorded in ``outcome``."""
        db = node.storage / "index.sqlite"
        conn = sqlite3.connect(db)
        try:
            rows = dict(conn.execute("SELECT sop_instance_uid, path FROM instances").fetchall())
            t2_jobs = conn.execute("SELECT state, COUNT(*) FROM jobs WHERE kind = 't2' GROUP BY state").fetchall()
        finally:
            conn.close()
        outcome.acknowledged = len(acked)
        outcome.present = 0
        for path in acked:
            sop = self.sop(path)
            stored = node.storage / rows[sop] if sop in rows else None
            if stored is None or not stored.exists():
                outcome.problems.append(f"acknowledged {sop} lost")
                continue
            if pydicom.dcmread(stored).PixelData != pydicom.dcmread(path).PixelData:
                outcome.problems.append(f"{sop} differs from what was sent")
                continue
            outcome.present += 1
        on_disk = {str(p.relative_to(node.storage)) for p in (node.storage / "instances").rglob("*.dcm")}
        if on_disk != set(rows.values()):
            outcome.problems.append(f"index/files disagree: {len(on_disk ^ set(rows.values()))} paths")
        leftovers = list((node.storage / "tmp").glob("*")) if (node.storage / "tmp").exists() else []
        if leftovers:
            outcome.problems.append(f"{len(leftovers)} temporary files left")
        if dict(t2_jobs) != {"done": 1}:
            outcome.problems.append(f"T2 jobs {dict(t2_jobs)} (expected one, done)")
        deliveries = dest.deliveries()
        derived = {uid: n for uid, n in deliveries.items() if uid not in self.t2_uids}
        outcome.delivered, outcome.deliveries = len(derived), sum(derived.values())
        return outcome

    def wait_done(self, node: NodeProcess, dest: UniqueStoreSCP, timeout: float = 120) -> bool:
        def done() -> bool:
            return (node.index_count("SELECT COUNT(*) FROM jobs WHERE kind = 't2' AND state = 'done'") == 1
                    and len(dest.deliveries()) >= DERIVED)
        return bool(wait_for(done, timeout=timeout, interval=0.2))

    # -- the three faults ------------------------------------------------------------
    def trial_ingest(self, rng: random.Random) -> Outcome:
        """kill -9 while a scanner pushes the T2 series and a filler series; resend what was not acknowledged."""
        node, dest = self.fresh("ingest")
        files = [*self.series, *self.filler]
        kill_after = rng.randint(1, len(files) - 2)
        outcome = Outcome("ingest", self.trial_no, kill_at=f"after {kill_after} stored", sent=len(files))
        node.start()
        log = node.workdir / "storescu.log"
        try:
            sender = self.push(node, files, log)
            wait_for(lambda: node.index_count() >= kill_after, timeout=60, interval=0.005)
            node.kill9()
            sender.wait(60)
            acked = acknowledged_files(log.read_text())
            node.start()
            missing = [f for f in files if str(f) not in set(acked)]
            if missing:  # the scanner resends what it saw fail
                retry = self.push(node, missing, node.workdir / "resend.log")
                retry.wait(60)
                acked += acknowledged_files((node.workdir / "resend.log").read_text())
            if not self.wait_done(node, dest):
                outcome.problems.append("series not processed/delivered within 120 s after restart")
            return self.check(node, dest, outcome, acked)
        finally:
            node.stop()
            dest.stop()

    def _kill_during(self, fault: str, event: str, delay_s: tuple[float, float], rng: random.Random) -> Outcome:
        node, dest = self.fresh(fault)
        delay = rng.uniform(*delay_s)
        outcome = Outcome(fault, self.trial_no, kill_at=f"{delay:.2f} s after {event}", sent=len(self.series))
        node.start()
        log = node.workdir / "storescu.log"
        try:
            self.push(node, self.series, log).wait(60)
            acked = acknowledged_files(log.read_text())
            if event == "first delivery":
                def arrived() -> bool:
                    return any(uid not in self.t2_uids for uid in dest.deliveries())
                happened = wait_for(arrived, timeout=120, interval=0.005)
            else:
                happened = wait_for(lambda: node.events(event), timeout=120, interval=0.02)
            if not happened:
                outcome.problems.append(f"no {event} before the kill")
            time.sleep(delay)
            node.kill9()
            outcome.before_kill = sum(n for uid, n in dest.deliveries().items() if uid not in self.t2_uids)
            node.start()
            if not self.wait_done(node, dest):
                outcome.problems.append("results not delivered within 120 s after restart")
            return self.check(node, dest, outcome, acked)
        finally:
            node.stop()
            dest.stop()

    def trial_processing(self, rng: random.Random) -> Outcome:
        """kill -9 at a random moment of the T2 job (segmentation, fit, encoding)."""
        return self._kill_during("processing", "job.start", (0.0, 3.0), rng)

    def trial_sending(self, rng: random.Random) -> Outcome:
        """kill -9 while the derived objects are sent: half the trials just before the first
        delivery, half just after it (the send of 6 objects lasts ~0.1 s)."""
        if rng.random() < 0.5:
            return self._kill_during("sending", "t2.processed", (0.0, 0.05), rng)
        return self._kill_during("sending", "first delivery", (0.0, 0.05), rng)


def outage(root: Path, outage_s: float, max_attempts: int = 8, backoff_s: float = 1.0) -> dict:
    """The destination is down while results are due, then returns: delivered once it is back."""
    rig_root = Path(root)
    simulate_t2(rig_root / "t2", seed=3, matrix=128, slices=3)
    series = sorted((rig_root / "t2").glob("*.dcm"))
    dest = UniqueStoreSCP(rig_root / "pacs", ae_title="PACS")  # not started: the PACS is down
    node = NodeProcess(rig_root / "node", extra_toml=(
        "[series]\nstable_seconds = 0.5\ncheck_interval_s = 0.1\nstack_seconds = 0\n" + dest.destination_toml()
        + '[routing]\nsend_results_to = ["pacs"]\n[engine]\nt2_method = "nlls"\npreload = false\n'
        + f"[jobs]\npoll_interval_s = 0.1\nmax_attempts = {max_attempts}\nretry_backoff_s = {backoff_s}\n"
        + "retry_backoff_max_s = 30\n[send]\nreassociations = 0\n")).start()
    try:
        proc = subprocess.run(["storescu", "-aec", node.ae_title, "127.0.0.1", str(node.port), *map(str, series)],
                              capture_output=True, env=DCMTK_ENV, timeout=60)
        assert proc.returncode == 0, proc.stderr
        down_since = time.monotonic()
        wait_for(lambda: node.events("t2.processed"), timeout=120)
        remaining = outage_s - (time.monotonic() - down_since)
        if remaining > 0:
            time.sleep(remaining)
        dest.start()
        up = time.monotonic()
        delivered = wait_for(lambda: node.index_count("SELECT COUNT(*) FROM jobs WHERE state = 'done'") == 1
                             and len(dest.deliveries()) >= DERIVED, timeout=outage_s + 120, interval=0.2)
        after_s = time.monotonic() - up
        deliveries = dest.deliveries()
        attempts = node.index_count("SELECT attempts FROM jobs WHERE kind = 't2'")
        return {"outage_s": outage_s, "delivered": len(deliveries), "deliveries": sum(deliveries.values()),
                "expected": DERIVED, "attempts": attempts, "seconds_after_return": round(after_s, 1),
                "ok": bool(delivered) and len(deliveries) == DERIVED}
    finally:
        node.stop()
        if dest.proc is not None:
            stop_pid(dest.proc)
