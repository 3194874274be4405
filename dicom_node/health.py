"""Health of the node: queue depth, failed jobs, disk space, last success.

``snapshot`` serves ``dicom-node status`` and, when ``[node] http_port`` is set, a small
HTTP endpoint on the node's host: ``/health`` (JSON) and ``/metrics`` (Prometheus text).
It reads its own connection to the index, so it never waits on the receiving path.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from dicom_node.config import Config
from dicom_node.index import index_path, open_index


def _time(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def snapshot(config: Config) -> dict:
    """Storage and job state (no network check)."""
    storage = config.storage_dir
    status: dict = {"ae_title": config.node.ae_title, "address": f"{config.node.host}:{config.node.port}",
                    "storage": str(storage.resolve())}
    if storage.exists():
        usage = shutil.disk_usage(storage)
        status["disk_free_gb"] = round(usage.free / 1e9, 2)
        status["disk_used_percent"] = round(100 * usage.used / usage.total, 1)
    if config.index.url or index_path(storage).exists():
        index = open_index(storage, config.node.index_synchronous, config.index.url)
        try:
            jobs = index.jobs()
            status["instances"] = index.count_instances()
            status["jobs"] = {s: sum(j.state == s for j in jobs) for s in ("pending", "running", "done", "failed")}
            status["queue_depth"] = status["jobs"]["pending"] + status["jobs"]["running"]
            done = [j for j in jobs if j.state == "done"]
            status["last_success"] = _time(max(j.updated_at for j in done)) if done else None
            status["failed_jobs"] = [{"id": j.id, "kind": j.kind, "error": (j.last_error or "")[:200]}
                                     for j in jobs if j.state == "failed"]
        finally:
            index.close()
    return status


def metrics_text(status: dict) -> str:
    lines = []
    for name, value, help_ in (
        ("pinn_node_instances", status.get("instances", 0), "instances stored"),
        ("pinn_node_queue_depth", status.get("queue_depth", 0), "jobs pending or running"),
        ("pinn_node_disk_free_bytes", int(status.get("disk_free_gb", 0) * 1e9), "free space on the storage volume"),
    ):
        lines += [f"# HELP {name} {help_}", f"# TYPE {name} gauge", f"{name} {value}"]
    lines += ["# HELP pinn_node_jobs jobs by state", "# TYPE pinn_node_jobs gauge"]
    lines += [f'pinn_node_jobs{{state="{s}"}} {n}' for s, n in status.get("jobs", {}).items()]
    return "\n".join(lines) + "\n"


class HealthServer:
    """``/health`` and ``/metrics`` over HTTP on ``(host, port)``; read-only, no patient data."""

    def __init__(self, config: Config, responding) -> None:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802  (http.server's name)
                if self.path not in ("/health", "/metrics"):
                    self.send_error(404)
                    return
                status = snapshot(outer.config)
                status["responding"] = bool(responding())
                if self.path == "/health":
                    body, kind = json.dumps(status).encode(), "application/json"
                    code = 200 if status["responding"] else 503
                else:
                    body, kind, code = metrics_text(status).encode(), "text/plain; version=0.0.4", 200
                self.send_response(code)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:  # the node logs JSON lines, not access logs
                pass

        self.config = config
        self.httpd = ThreadingHTTPServer((config.node.host, config.node.http_port), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="health-http", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
