"""Orthanc (Debian) as the PACS of the tests, configured from deploy/orthanc.json."""

from __future__ import annotations

import json
import subprocess
import urllib.request
from pathlib import Path

from tests.helpers import DCMTK_ENV, free_port, spawn_server, stop_pid, wait_or_stop

ROOT = Path(__file__).resolve().parents[1]


class OrthancProcess:
    def __init__(self, workdir: Path, node_port: int, node_ae: str = "PINN_NODE", stable_age: int = 2,
                 dicomweb: bool = False):
        self.dir = Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.dicom_port, self.http_port = free_port(), free_port()
        cfg = json.loads((ROOT / "deploy" / "orthanc.json").read_text())
        cfg.update({
            "StorageDirectory": str(self.dir / "db"), "IndexDirectory": str(self.dir / "db"),
            "DicomPort": self.dicom_port, "HttpPort": self.http_port, "StableAge": stable_age,
            "DicomModalities": {"pinn_node": [node_ae, "127.0.0.1", node_port]},
            "LuaScripts": [str(ROOT / "deploy" / "forward-to-pinn-node.lua")],
            "DicomAlwaysAllowFind": True,  # the test workstation (findscu) is not a declared modality
        })
        if dicomweb:
            cfg["Plugins"] = ["/usr/share/orthanc/plugins/libOrthancDicomWeb.so"]
        self.config = self.dir / "orthanc.json"
        self.config.write_text(json.dumps(cfg, indent=2))
        self.proc: subprocess.Popen | None = None
        self.ae_title = cfg["DicomAet"]

    def start(self) -> "OrthancProcess":
        self.log = open(self.dir / "orthanc.log", "wb")
        self.proc = spawn_server(["Orthanc", str(self.config)], stdout=self.log, stderr=subprocess.STDOUT,
                                 env=DCMTK_ENV)
        wait_or_stop(self.proc, self.dicom_port, 30, "Orthanc")
        return self

    def stop(self) -> None:
        if self.proc is not None:
            stop_pid(self.proc)
            self.log.close()

    def rest(self, path: str):
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}{path}", timeout=30) as rsp:
            return json.loads(rsp.read())

    def destination_toml(self, name: str = "pacs") -> str:
        return (f'[[destinations]]\nname = "{name}"\nae_title = "{self.ae_title}"\nhost = "127.0.0.1"\n'
                f'port = {self.dicom_port}\n')
