"""A throw-away PostgreSQL server for the tests: its own cluster, a free loopback port, stopped by PID.

initdb refuses to run as root, so when the tests run as root the server runs as the ``postgres``
user (``runuser``), with its data in a directory that user owns. ``scripts/bootstrap.sh``
installs Debian's ``postgresql``.
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from tests.helpers import free_port, stop_pid


def _bin(name: str) -> str:
    found = shutil.which(name) or next(iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)), None)
    assert found, f"PostgreSQL's {name} is missing: scripts/bootstrap.sh installs Debian's postgresql"
    return found


class PostgresServer:
    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="pinn-node-pg-"))
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self.as_postgres = os.geteuid() == 0

    def _run_as(self, argv: list[str]) -> list[str]:
        return ["runuser", "-u", "postgres", "--", *argv] if self.as_postgres else argv

    def start(self) -> "PostgresServer":
        data = self.dir / "data"
        if self.as_postgres:
            shutil.chown(self.dir, "postgres", "postgres")
        subprocess.run(self._run_as([_bin("initdb"), "-D", str(data), "-U", "postgres", "--auth=trust",
                                     "--no-sync", "-E", "UTF8"]), check=True, capture_output=True)
        self.log = open(self.dir / "server.log", "wb")
        self.proc = subprocess.Popen(
            self._run_as([_bin("postgres"), "-D", str(data), "-p", str(self.port), "-h", "127.0.0.1",
                          "-k", str(self.dir), "-c", "fsync=off", "-c", "max_connections=200"]),
            stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            ready = subprocess.run([_bin("pg_isready"), "-h", "127.0.0.1", "-p", str(self.port)],
                                   capture_output=True)
            if ready.returncode == 0:
                return self
            if self.proc.poll() is not None:
                break
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"PostgreSQL did not start: {(self.dir / 'server.log').read_text()[-2000:]}")

    def create_database(self, name: str) -> str:
        """A new empty database; returns its URL."""
        import psycopg

        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def url(self, database: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def stop(self) -> None:
        """Fast shutdown (SIGINT: open sessions are ended) of the postmaster by the PID it wrote."""
        if self.proc is not None:
            pid_file = self.dir / "data" / "postmaster.pid"
            if pid_file.exists():
                pid = int(pid_file.read_text().split()[0])
                try:
                    os.kill(pid, signal.SIGINT)
                except ProcessLookupError:
                    pass
                deadline = time.monotonic() + 20
                while time.monotonic() < deadline and pid_file.exists():
                    time.sleep(0.1)
            stop_pid(self.proc)  # runuser, or the postmaster itself when not root
            self.proc = None
            self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)
