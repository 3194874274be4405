"""Shared test helpers: free ports, the node as a real process, DCMTK peers."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Sequence

DCMTK_ENV = {**os.environ, "TCP_NODELAY": "1"}

# a node that completes series within a second and processes T2 with the fast reference fit; it
# ends inside the [engine] table, so more [engine] keys may follow
QUICK_T2_NODE_TOML = """[series]
stable_seconds = 0.5
check_interval_s = 0.1
stack_seconds = 0
[jobs]
poll_interval_s = 0.1
[engine]
preload = false
t2_method = "nlls"
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, timeout: float = 30, proc: subprocess.Popen | None = None, what: str = "server") -> None:
    """Until something accepts TCP connections on 127.0.0.1:port (fails if ``proc`` exits)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"{what} exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"{what} did not start within {timeout} s")


def wait_for(predicate, timeout: float = 30.0, interval: float = 0.1):
    """Poll ``predicate`` until it returns something true (returned) or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    return predicate()


def run(cmd: Sequence[str], timeout: float = 120, check: bool = False, **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run(list(map(str, cmd)), capture_output=True, text=True, timeout=timeout, env=DCMTK_ENV, **kw)
    if check and proc.returncode != 0:
        raise AssertionError(f"{cmd[0]} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


SERVERS: list[subprocess.Popen] = []  # every server a helper started; conftest stops stragglers per module


def spawn_server(cmd: Sequence[str], **kw) -> subprocess.Popen:
    """Start a server process and register it, so a fixture that fails half-way leaves no orphan."""
    proc = subprocess.Popen(list(map(str, cmd)), **kw)
    SERVERS.append(proc)
    return proc


def stop_servers() -> None:
    for proc in SERVERS:
        stop_pid(proc)
    SERVERS.clear()


def wait_or_stop(proc: subprocess.Popen, port: int, timeout: float, what: str) -> None:
    """``wait_for_port``; a server that never comes up is stopped before the failure is raised."""
    try:
        wait_for_port(port, timeout, proc, what)
    except AssertionError:
        stop_pid(proc)
        raise


def stop_pid(proc: subprocess.Popen, timeout: float = 10) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


class NodeProcess:
    """``dicom-node serve`` as a subprocess on a free loopback port."""

    def __init__(self, workdir: Path, ae_title: str = "PINN_NODE", extra_toml: str = "", port: int | None = None,
                 preload: bool = False):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.ae_title = ae_title
        self.port = port or free_port()
        self.storage = self.workdir / "var"
        self.config_path = self.workdir / "node.toml"
        self.config_path.write_text(
            f'[node]\nae_title = "{ae_title}"\nhost = "127.0.0.1"\nport = {self.port}\nstorage = "{self.storage}"\n'
            + extra_toml
            # most tests never process a series: spare them the network load at start-up
            + ("" if preload or "[engine]" in extra_toml else "[engine]\npreload = false\n")
        )
        self.proc: subprocess.Popen | None = None
        self.output = self.workdir / "node.out"

    @property
    def address(self) -> str:
        return f"{self.ae_title}@127.0.0.1:{self.port}"

    def start(self, timeout: float = 60) -> "NodeProcess":
        # generous: a node importing torch on a loaded two-core CI machine can take tens of seconds
        out = open(self.output, "ab")
        self.proc = spawn_server(
            [sys.executable, "-m", "dicom_node", "serve", "--config", str(self.config_path)],
            stdout=out, stderr=subprocess.STDOUT, env=DCMTK_ENV,
        )
        out.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"node exited with {self.proc.returncode}:\n{self.output.read_text()}")
            if self.accepting():
                return self
            time.sleep(0.1)
        stop_pid(self.proc)
        raise AssertionError(f"node did not start within {timeout} s:\n{self.output.read_text()}")

    def accepting(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                return True
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc is not None:
            stop_pid(self.proc)

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)

    def events(self, name: str | None = None) -> list[dict]:
        log = self.storage / "log" / "node.jsonl"
        if not log.exists():
            return []
        out = []
        for line in log.read_text(encoding="utf-8").splitlines():
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue
            if name is None or entry.get("event") == name:
                out.append(entry)
        return out

    def index_count(self, sql: str = "SELECT COUNT(*) FROM instances", params: Sequence = ()) -> int:
        import sqlite3

        conn = sqlite3.connect(self.storage / "index.sqlite")
        try:
            return conn.execute(sql, list(params)).fetchone()[0]
        finally:
            conn.close()


class StoreSCPProcess:
    """DCMTK ``storescp`` as a destination (PACS stand-in) on a free port."""

    def __init__(self, workdir: Path, ae_title: str = "DEST", port: int | None = None, accept_all: bool = True):
        self.dir = Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.ae_title = ae_title
        self.port = port or free_port()
        self.accept_all = accept_all  # False: uncompressed transfer syntaxes only (storescp's default)
        self.proc: subprocess.Popen | None = None

    def start(self) -> "StoreSCPProcess":
        self.proc = spawn_server(
            ["storescp", "--aetitle", self.ae_title, "--output-directory", str(self.dir),
             *(["--accept-all"] if self.accept_all else []), str(self.port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=DCMTK_ENV,
        )
        wait_or_stop(self.proc, self.port, 30, "storescp")
        return self

    def stop(self) -> None:
        if self.proc is not None:
            stop_pid(self.proc)

    def received_sop_uids(self) -> set[str]:
        import pydicom

        return {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID)
                for p in self.dir.iterdir() if p.is_file()}

    def destination_toml(self, name: str = "pacs") -> str:
        return (f'[[destinations]]\nname = "{name}"\nae_title = "{self.ae_title}"\n'
                f'host = "127.0.0.1"\nport = {self.port}\n')


def acknowledged_files(storescu_output: str) -> list[str]:
    """Files that ``storescu -v`` saw acknowledged with success, in sending order."""
    acked, current = [], None
    for line in storescu_output.splitlines():
        m = re.match(r"I: Sending file: (.+)$", line)
        if m:
            current = m.group(1).strip()
        elif "Received Store Response (Success)" in line and current:
            acked.append(current)
            current = None
    return acked


@contextlib.contextmanager
def chunked_sending():
    """pynetdicom sends files byte for byte (its global switch, restored afterwards)."""
    from pynetdicom import _config

    previous = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True
    try:
        yield
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = previous


def encode_parts(ds) -> tuple[bytes, bytes]:
    """(preamble + file meta, data set) as a C-STORE SCP would receive them."""
    import io

    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset, write_file_meta_info
    from pydicom.uid import ExplicitVRBigEndian, ImplicitVRLittleEndian

    ts = ds.file_meta.TransferSyntaxUID
    meta = io.BytesIO()
    meta.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(meta, ds.file_meta)
    body = DicomBytesIO()
    body.is_implicit_VR = ts == ImplicitVRLittleEndian
    body.is_little_endian = ts != ExplicitVRBigEndian
    write_dataset(body, ds)
    return meta.getvalue(), body.getvalue()


def store_dataset(store, ds):
    """Store ``ds`` through the node's own check + durable write; return (info, result, bytes)."""
    from dicom_node.instance import parse_instance

    meta, body = encode_parts(ds)
    info = parse_instance(body, str(ds.file_meta.TransferSyntaxUID))
    return info, store.put(info, meta, body, "TEST"), meta + body


def results_folder(storage: Path, series_uid: str) -> Path:
    """The node's results folder of a job that used ``series_uid``: ``results/<series UID>`` for a
    series processed alone (perfusion), ``results/<stack UID>`` for a T2 stack listing it."""
    import json  # noqa: PLC0415

    direct = Path(storage) / "results" / series_uid
    if direct.is_dir():
        return direct
    for summary in sorted((Path(storage) / "results").glob("*/summary.json")):
        if series_uid in json.loads(summary.read_text()).get("stack", {}).get("source_series", []):
            return summary.parent
    raise FileNotFoundError(f"no results folder lists series {series_uid}")


def segment_truth(summary: dict, truth, folders: Sequence[Path]) -> list[dict]:
    """Per segment of a T2 ``summary``: the true myocardial T2 of the phantom (``truth.npz``) over the
    truth's own AHA segment, on the geometry of the source series in ``folders``, and whether it lies
    within the reported mean +/- bound."""
    from dicom_node.processing import load_t2_stack  # noqa: PLC0415
    from pinn_engine.aha import assign_aha  # noqa: PLC0415
    from pinn_engine.segmentation import Label  # noqa: PLC0415

    stack = load_t2_stack([sorted(Path(f).glob("*.dcm")) for f in folders])
    aha = assign_aha(truth["labels"], stack.geometry).labels
    myocardium = truth["labels"] == Label.MYOCARDIUM
    rows = []
    for entry in summary["segments"]:
        mask = myocardium & (aha == entry["aha"])
        true_t2 = float(truth["t2_ms"][mask].mean()) if mask.any() else float("nan")
        rows.append({"aha": int(entry["aha"]), "t2_ms": float(entry["t2_ms"]),
                     "t2_bound_ms": float(entry["t2_bound_ms"]), "true_t2_ms": true_t2,
                     "inside": bool(abs(entry["t2_ms"] - true_t2) <= entry["t2_bound_ms"])})
    return rows
