"""Disk full / unwritable storage: C-STORE answers 0xA700 (out of resources), nothing
partial is kept, and the running node stores again once space returns.

The node runs in its own user + mount namespace (``unshare -r -m``) with its whole storage
(instances, tmp, index, logs) on a small tmpfs. A ballast file, written inside the
namespace before the shell ``exec``s the node, takes most of it, so the store meets real
ENOSPC (and, remounted read-only, EROFS) from the kernel. From outside, the namespace's
mounts are reachable through ``/proc/<node pid>/root/...``: the test lists the store
there and deletes the ballast there to give space back, without restarting the node.
The node's log lines are read from its stderr, which goes to a file outside the tmpfs.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE
from pynetdicom.dsutils import split_dataset
from pynetdicom.sop_class import MRImageStorage

from dicom_node.synthetic import mr_image
from tests.helpers import DCMTK_ENV, free_port, run, stop_pid

TMPFS_SIZE = 8 * 1024 * 1024
ROOM = 1536 * 1024  # left free by the ballast: the index, logs and a few dozen instances
PAGE = 4096
ROWS = COLS = 128  # ~33 KB per instance
STATUS_OUT_OF_RESOURCES = 0xA700


def _userns_mount_problem(tmp_path: Path) -> str | None:
    """None if ``unshare -r -m`` plus a tmpfs mount work here, else why not."""
    if shutil.which("unshare") is None:
        return "unshare (util-linux) is not installed"
    probe = tmp_path / "probe"
    probe.mkdir()
    try:
        proc = subprocess.run(["unshare", "-r", "-m", "sh", "-c", f'mount -t tmpfs -o size=1m none "{probe}"'],
                              capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unshare not usable: {exc}"
    if proc.returncode != 0:
        return ("unprivileged user + mount namespaces are unavailable (unshare -r -m + tmpfs mount failed: "
                f"{proc.stderr.strip()}); a real full file system cannot be made here")
    return None


class NamespacedNode:
    """``dicom-node serve`` in its own user + mount namespace, storage on a small tmpfs.

    ``unshare -r -m sh -c 'mount ... && head -c N /dev/zero > ballast && exec python -m
    dicom_node serve ...'``: the shell becomes the node, so the Popen PID is the node's.
    """

    def __init__(self, workdir: Path, ballast_bytes: int) -> None:
        self.workdir = workdir
        self.mountpoint = workdir / "mnt"  # an empty folder outside; the tmpfs inside the namespace
        self.mountpoint.mkdir(parents=True)
        self.storage = self.mountpoint / "var"
        self.port = free_port()
        self.ae_title = "PINN_NODE"
        self.config_path = workdir / "node.toml"  # outside the tmpfs
        self.config_path.write_text(
            f'[node]\nae_title = "{self.ae_title}"\nhost = "127.0.0.1"\nport = {self.port}\n'
            f'storage = "{self.storage}"\n[engine]\npreload = false\n[series]\nstable_seconds = 3600\n'
        )
        self.output = workdir / "node.out"
        self.ballast_bytes = ballast_bytes
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 30) -> "NamespacedNode":
        script = (
            f'mount -t tmpfs -o size={TMPFS_SIZE} none "$1" && '
            f'head -c {self.ballast_bytes} /dev/zero > "$1/ballast" && '
            'exec "$2" -m dicom_node serve --config "$3"'
        )
        with open(self.output, "ab") as out:
            self.proc = subprocess.Popen(
                ["unshare", "-r", "-m", "sh", "-c", script, "sh", str(self.mountpoint), sys.executable,
                 str(self.config_path)],
                stdout=out, stderr=subprocess.STDOUT, env=DCMTK_ENV,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"node exited with {self.proc.returncode}:\n{self.output.read_text()}")
            if self.events("node.started"):
                return self
            time.sleep(0.1)
        raise AssertionError(f"node did not start within {timeout} s:\n{self.output.read_text()}")

    def stop(self) -> None:
        if self.proc is not None:
            stop_pid(self.proc)

    def inside(self, path: Path) -> Path:
        """``path`` in the node's mount namespace, as seen from here."""
        assert self.proc is not None and self.proc.poll() is None, "the node is not running"
        return Path(f"/proc/{self.proc.pid}/root") / Path(path).relative_to("/")

    @property
    def store(self) -> Path:
        return self.inside(self.storage)

    def spare(self, name: str) -> Path:
        """A file on the tmpfs next to (not inside) the node's storage."""
        return self.inside(self.mountpoint / name)

    def free_bytes(self) -> int:
        st = os.statvfs(self.inside(self.mountpoint))
        return st.f_bavail * st.f_frsize

    def fill(self, name: str = "filler") -> int:
        """Write zeros to ``name`` until the file system is full; return the bytes written."""
        written = 0
        fd = os.open(self.spare(name), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            for chunk in (b"\0" * (256 * 1024), b"\0" * PAGE, b"\0" * 512):
                while True:
                    try:
                        written += os.write(fd, chunk)
                    except OSError as exc:
                        if exc.errno != errno.ENOSPC:
                            raise
                        break
        finally:
            os.close(fd)
        assert self.free_bytes() == 0
        return written

    def in_namespace(self, *cmd: str) -> None:
        """Run ``cmd`` (mount, umount) inside the node's user + mount namespaces."""
        assert self.proc is not None
        proc = subprocess.run(["nsenter", "-t", str(self.proc.pid), "-U", "-m", "--preserve-credentials", *cmd],
                              capture_output=True, text=True, timeout=20)
        assert proc.returncode == 0, f"{' '.join(cmd)} failed: {proc.stderr}"

    def events(self, name: str | None = None) -> list[dict]:
        """JSON log lines from the node's stderr (outside the tmpfs: none are lost when it is full)."""
        out = []
        if not self.output.exists():
            return out
        for line in self.output.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(entry, dict) and (name is None or entry.get("event") == name):
                out.append(entry)
        return out

    def index_rows(self) -> dict[str, tuple[str, int]]:
        """SOP Instance UID -> (path, size) from a snapshot of the node's index.

        SQLite resolves symbolic links in database paths, which would turn
        ``/proc/<pid>/root/...`` back into a path of this namespace; so the database and its
        write-ahead log are copied out (while no association is open) and read here.
        """
        snap = Path(tempfile.mkdtemp(dir=self.workdir, prefix="index-"))
        for name in ("index.sqlite", "index.sqlite-wal"):
            if (self.store / name).exists():
                shutil.copyfile(self.store / name, snap / name)
        conn = sqlite3.connect(snap / "index.sqlite")
        try:
            return {r[0]: (r[1], r[2]) for r in conn.execute("SELECT sop_instance_uid, path, size FROM instances")}
        finally:
            conn.close()
            shutil.rmtree(snap, ignore_errors=True)


@pytest.fixture
def ns_node(tmp_path, dcmtk):
    problem = _userns_mount_problem(tmp_path)
    if problem:
        pytest.skip(problem)
    started: list[NamespacedNode] = []

    def make(ballast_bytes: int = TMPFS_SIZE - ROOM) -> NamespacedNode:
        node = NamespacedNode(tmp_path / f"ns{len(started)}", ballast_bytes)
        started.append(node)
        node.start()
        assert node.spare("ballast").stat().st_size == ballast_bytes
        assert node.free_bytes() < ROOM
        return node

    yield make
    for node in started:
        node.stop()  # by PID: the exec'd shell is the node; the namespace and its tmpfs go with it


def _series(n: int, seed: int) -> list[pydicom.Dataset]:
    study, series = generate_uid(), generate_uid()
    rng = np.random.default_rng(seed)
    return [mr_image(study_uid=study, series_uid=series, instance_number=i + 1, rows=ROWS, columns=COLS, rng=rng)
            for i in range(n)]


def _send(node: NamespacedNode, datasets: list[pydicom.Dataset], when_associated=None) -> dict[str, int]:
    """C-STORE each data set on one association; SOP Instance UID -> response status."""
    ae = AE("RELIABILITY")
    ae.add_requested_context(MRImageStorage, [ExplicitVRLittleEndian])
    assoc = ae.associate("127.0.0.1", node.port, ae_title=node.ae_title)
    assert assoc.is_established, "association refused"
    statuses: dict[str, int] = {}
    try:
        if when_associated is not None:
            when_associated()
        for ds in datasets:
            rsp = assoc.send_c_store(ds)
            assert "Status" in rsp, f"no C-STORE response to instance {len(statuses) + 1} (association lost?)"
            statuses[str(ds.SOPInstanceUID)] = int(rsp.Status)
    finally:
        if assoc.is_established:
            assoc.release()
        ae.shutdown()
    return statuses


def _store_problems(node: NamespacedNode, sent: dict[str, pydicom.Dataset], acked: set[str]) -> list[str]:
    """What is wrong with the store: every acknowledged instance indexed and complete,
    nothing that was not acknowledged kept, no temporary file left."""
    problems = []
    store = node.store
    leftovers = sorted(p.name for p in (store / "tmp").iterdir())
    if leftovers:
        problems.append(f"temporary files left in tmp/: {leftovers}")
    rows = node.index_rows()
    on_disk = {p.stem: p for p in (store / "instances").rglob("*") if p.is_file()}
    if acked - set(rows):
        problems.append(f"{len(acked - set(rows))} acknowledged instances not indexed")
    if set(rows) - acked:
        problems.append(f"{len(set(rows) - acked)} indexed instances were never acknowledged")
    if acked - set(on_disk):
        problems.append(f"{len(acked - set(on_disk))} acknowledged instances have no file")
    if set(on_disk) - acked:
        kept = sorted(set(on_disk) - acked)
        problems.append(f"{len(kept)} instance files kept that were refused (not acknowledged) and are not indexed: "
                        f"{[str(on_disk[s].relative_to(store)) for s in kept[:3]]}")
    for sop in sorted(acked & set(rows) & set(on_disk)):
        rel, size = rows[sop]
        path = store / rel
        if path != on_disk[sop] or path.stat().st_size != size:
            problems.append(f"{sop}: index row ({rel}, {size} B) does not match the file")
            continue
        stored = pydicom.dcmread(path)
        _, offset = split_dataset(path)
        if str(stored.SOPInstanceUID) != sop or stored.PixelData != sent[sop].PixelData or offset >= size:
            problems.append(f"{sop}: stored file is incomplete or differs from what was sent")
    return problems


def _failed(statuses: dict[str, int]) -> dict[str, int]:
    return {sop: s for sop, s in statuses.items() if s != 0x0000}


def _hex(statuses) -> str:
    return ", ".join(f"0x{s:04X}" for s in sorted(set(statuses)))


def _recover(node: NamespacedNode, sent: dict[str, pydicom.Dataset], acked: set[str], refused: list[str],
             seed: int) -> None:
    """The refused instances, sent again, and new ones are stored by the same node process."""
    pid = node.proc.pid
    more = _series(10, seed)
    sent.update({str(ds.SOPInstanceUID): ds for ds in more})
    statuses = _send(node, [sent[s] for s in refused] + more)
    assert node.proc.poll() is None and node.proc.pid == pid, "the node did not survive"
    assert not _failed(statuses), f"space is back but the node still refuses: {_hex(_failed(statuses).values())}"
    acked |= set(statuses)
    assert not _store_problems(node, sent, acked)
    assert len(node.index_rows()) == len(acked)


def test_disk_full_answers_out_of_resources_keeps_nothing_partial_and_recovers(ns_node):
    node = ns_node()
    first = _series(10, seed=1)
    sent = {str(ds.SOPInstanceUID): ds for ds in first}
    statuses = _send(node, first)
    assert not _failed(statuses), f"the room left by the ballast should take 10 instances: {statuses}"
    acked = set(statuses)

    node.fill()  # the store is now full: not one more page
    refused = _series(10, seed=2)
    sent.update({str(ds.SOPInstanceUID): ds for ds in refused})
    statuses = _send(node, refused)  # one association: it survives the refusals
    assert set(statuses.values()) == {STATUS_OUT_OF_RESOURCES}, (
        f"a full disk must be answered 0xA700 (out of resources), got {_hex(statuses.values())}")
    events = node.events("store.out_of_resources")
    assert len(events) == len(refused), f"{len(events)} store.out_of_resources events for {len(refused)} refusals"
    assert all(e["level"] == "error" and "No space left" in e["reason"] for e in events), events
    assert not _store_problems(node, sent, acked)

    # DCMTK's storescu reads the same refusal
    path = node.workdir / "one.dcm"
    one = _series(1, seed=3)[0]
    one.save_as(path, enforce_file_format=True)
    proc = run(["storescu", "-v", "-aec", node.ae_title, "127.0.0.1", node.port, path], timeout=60)
    out = proc.stdout + proc.stderr
    assert "Received Store Response (Refused: OutOfResources)" in out, out
    assert len(node.events("store.out_of_resources")) == len(refused) + 1
    assert not _store_problems(node, sent, acked)

    # space returns: the running node stores again
    node.spare("ballast").unlink()
    node.spare("filler").unlink()
    assert node.free_bytes() > TMPFS_SIZE // 2
    sent[str(one.SOPInstanceUID)] = one
    _recover(node, sent, acked, list(statuses) + [str(one.SOPInstanceUID)], seed=4)

    node.stop()
    assert node.proc.returncode == 0, node.output.read_text()[-3000:]
    assert node.events("node.stopped")


def test_index_that_cannot_grow_is_out_of_resources_too(ns_node):
    """The last pages go to the instance file; its index row then finds no room: 0xA700, and
    the file already renamed into place is removed (regression: was 0x0110 + an unindexed file)."""
    node = ns_node()
    first = _series(5, seed=11)
    sent = {str(ds.SOPInstanceUID): ds for ds in first}
    statuses = _send(node, first)
    assert not _failed(statuses)
    acked = set(statuses)
    size = max(p.stat().st_size for p in (node.store / "instances").rglob("*.dcm"))
    # room for the file (+ a page of log lines), not for the index transaction's
    # write-ahead-log frames (several 4 KiB pages per commit)
    gap = -(-size // PAGE) * PAGE + 2 * PAGE
    with open(node.spare("gap"), "wb") as fh:
        fh.write(b"\0" * gap)
    node.fill()

    victim = _series(1, seed=12)[0]
    sop = str(victim.SOPInstanceUID)
    sent[sop] = victim
    # the space appears once the association is up (its log lines are written by then)
    statuses = _send(node, [victim], when_associated=lambda: node.spare("gap").unlink())
    problems = []
    if statuses[sop] != STATUS_OUT_OF_RESOURCES:
        errors = [e.get("exc") for e in node.events() if e.get("msg") == "unexpected error while storing"]
        problems.append(f"C-STORE answered 0x{statuses[sop]:04X}, not 0xA700 (node logged: {errors[-1:]})")
    if not node.events("store.out_of_resources"):
        problems.append("no store.out_of_resources event")
    problems += _store_problems(node, sent, acked if statuses[sop] != 0x0000 else acked | {sop})

    # whatever the answer, the node stores again once space returns
    node.spare("ballast").unlink()
    node.spare("filler").unlink()
    _recover(node, sent, acked, [sop], seed=13)
    assert not problems, "; ".join(problems)


def test_unwritable_storage_answers_out_of_resources_and_recovers(ns_node):
    """A read-only file system where the node writes (its tmp/ staging area): EROFS -> 0xA700
    (regression: the clean-up unlink raised EROFS itself and the handler answered 0xC211)."""
    if shutil.which("nsenter") is None:
        pytest.skip("nsenter (util-linux) is not installed: cannot mount inside the node's namespace")
    node = ns_node()
    first = _series(3, seed=21)
    sent = {str(ds.SOPInstanceUID): ds for ds in first}
    acked = set(_send(node, first))
    assert len(node.index_rows()) == 3

    # the whole tmpfs cannot be remounted read-only while the node holds files open for
    # writing (index, logs): an empty read-only tmpfs goes over its staging folder instead
    staging = node.storage / "tmp"
    node.in_namespace("mount", "-t", "tmpfs", "-o", "ro,size=64k", "none", str(staging))
    refused = _series(5, seed=22)
    sent.update({str(ds.SOPInstanceUID): ds for ds in refused})
    statuses = _send(node, refused)
    assert not set(statuses.values()) & {0x0000}, "stored on a read-only file system?"
    problems = []
    if set(statuses.values()) != {STATUS_OUT_OF_RESOURCES}:
        errors = [e.get("exc") for e in node.events() if e.get("msg") == "unexpected error while storing"]
        problems.append(f"read-only storage answered {_hex(statuses.values())}, not 0xA700 "
                        f"(node logged: {errors[-1:]})")
    events = node.events("store.out_of_resources")
    if len(events) != len(refused) or not all("Read-only" in e["reason"] for e in events):
        problems.append(f"{len(events)} store.out_of_resources events for {len(refused)} refusals")

    node.in_namespace("umount", str(staging))
    assert not _store_problems(node, sent, acked)
    _recover(node, sent, acked, list(statuses), seed=23)
    assert not problems, "; ".join(problems)
