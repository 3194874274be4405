"""Access control: calling-AE allow-list on every service, called AE check, TLS both ways, audit log.

The peers are DCMTK tools (echoscu, storescu, findscu, movescu, getscu, storescp) and the
certificates are made with openssl for the test (CA, node, client).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pydicom
import pytest

from dicom_node.synthetic import write_mr_series
from tests.helpers import DCMTK_ENV, free_port, run, stop_pid, wait_for, wait_for_port

SECRET_NAME = "Secretname^Auditcheck"


def audit_lines(node) -> list[dict]:
    path = node.storage / "log" / "audit.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@pytest.fixture(scope="module")
def certificates(tmp_path_factory) -> dict[str, Path]:
    if shutil.which("openssl") is None:
        pytest.fail("openssl is needed to make test certificates (Debian package openssl)")
    d = tmp_path_factory.mktemp("pki")

    def ossl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True)

    ossl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt", "-days", "2",
         "-subj", "/CN=Test hospital CA")
    (d / "ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for name in ("node", "client", "pacs"):
        ossl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
             "-subj", f"/CN={name}")
        ossl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
             "-out", f"{name}.crt", "-days", "2", "-extfile", "ext")
    # a second, untrusted CA and a client certificate it issued
    ossl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "rogue.key", "-out", "rogue.crt", "-days", "2",
         "-subj", "/CN=rogue")
    return {p.stem + p.suffix.replace(".", "_"): p for p in d.iterdir()}


def test_allow_list_applies_to_every_service(node_factory, storescp_factory, tmp_path):
    ws = storescp_factory(ae_title="WS")
    node = node_factory(extra_toml=(
        '[security]\nallowed_calling_aes = ["GOODSCU", "PINN_NODE"]\n' + ws.destination_toml("ws"))).start()
    files = write_mr_series(tmp_path / "s", 2, patient_name=SECRET_NAME, patient_id="AUDIT1")
    study = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
    addr = ["127.0.0.1", node.port]
    query = ["-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study}"]
    commands = {
        "C-ECHO": ["echoscu", "-aec", node.ae_title, *addr],
        "C-STORE": ["storescu", "-aec", node.ae_title, *addr, *files],
        "C-FIND": ["findscu", "-S", "-aec", node.ae_title, *query, *addr],
        "C-MOVE": ["movescu", "-S", "-aec", node.ae_title, "-aem", "WS", *query, *addr],
        "C-GET": ["getscu", "-S", "-od", tmp_path, "-aec", node.ae_title, *query, *addr],
    }
    for service, cmd in commands.items():
        bad = run([cmd[0], "-aet", "BADSCU", *cmd[1:]])
        assert bad.returncode != 0, service
        # getscu names only "Association Rejected"; the others also print the reason
        expected = "Association Rejected" if service == "C-GET" else "Calling AE Title Not Recognized"
        assert expected in bad.stdout + bad.stderr, (service, bad.stderr)
    for _service, cmd in commands.items():
        run([cmd[0], "-aet", "GOODSCU", *cmd[1:]], check=True)
    wrong_called = run(["echoscu", "-aet", "GOODSCU", "-aec", "NOT_THE_NODE", *addr])
    assert wrong_called.returncode != 0
    assert "Called AE Title Not Recognized" in wrong_called.stdout + wrong_called.stderr

    # each operation's line is written when its final response has been sent: the tool may exit first
    every = {"C-ECHO", "C-STORE", "C-FIND", "C-MOVE", "C-GET"}
    assert wait_for(lambda: every <= {e.get("service") for e in audit_lines(node) if e.get("calling_ae") == "GOODSCU"},
                    timeout=20)
    lines = audit_lines(node)
    rejected = [e for e in lines if e["kind"] == "association" and e["event"] == "rejected"]
    permanent = "Rejected Permanent, Service User: "
    assert [e["reason"] for e in rejected if e["calling_ae"] == "BADSCU"] == [
        permanent + "Calling AE title not recognised"] * 5
    assert [e["reason"] for e in rejected if e["calling_ae"] == "GOODSCU"] == [
        permanent + "Called AE title not recognised"]
    ops = [e for e in lines if e["kind"] == "operation" and e["calling_ae"] == "GOODSCU"]
    assert sorted({e["service"] for e in ops}) == ["C-ECHO", "C-FIND", "C-GET", "C-MOVE", "C-STORE"]
    assert all(e["status"] == "0x0000" and e["result"] == "success" for e in ops), ops
    stores = {e["sop_instance_uid"] for e in ops if e["service"] == "C-STORE"}
    assert stores == {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files}
    move = next(e for e in ops if e["service"] == "C-MOVE")
    assert move["move_destination"] == "WS" and move["completed"] == 2 and move["failed"] == 0
    assert all(e["peer"].startswith("127.0.0.1:") and e["ts"].endswith("Z") for e in lines)
    text = (node.storage / "log" / "audit.jsonl").read_text()
    assert "Secretname" not in text and "Auditcheck" not in text  # no patient names in the audit trail
    assert not any(e["calling_ae"] == "BADSCU" for e in lines if e["kind"] == "operation")


def _tls(certs: dict[str, Path], who: str) -> list[str]:
    return ["+tls", str(certs[f"{who}_key"]), str(certs[f"{who}_crt"]), "+cf", str(certs["ca_crt"])]


def test_tls_listener_and_tls_destination(node_factory, certificates, tmp_path):
    certs = certificates
    pacs_dir = tmp_path / "pacs"
    pacs_dir.mkdir()
    pacs_port = free_port()
    pacs = subprocess.Popen(["storescp", *_tls(certs, "pacs"), "--aetitle", "TLSPACS", "-od", str(pacs_dir),
                             str(pacs_port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=DCMTK_ENV)
    try:
        wait_for_port(pacs_port, 10, pacs, "storescp +tls")
        tls_port = free_port()
        node = node_factory(extra_toml=(
            f'tls_port = {tls_port}\n'
            f'[security]\ntls_certificate = "{certs["node_crt"]}"\ntls_private_key = "{certs["node_key"]}"\n'
            f'tls_ca_certificates = "{certs["ca_crt"]}"\n'
            f'[[destinations]]\nname = "pacs"\nae_title = "TLSPACS"\nhost = "127.0.0.1"\nport = {pacs_port}\n'
            'tls = true\n[routing]\nforward_series_to = ["pacs"]\n'
            '[series]\nstable_seconds = 0.5\ncheck_interval_s = 0.1\n')).start()
        wait_for_port(tls_port, 10, node.proc, "node TLS port")
        addr = ["127.0.0.1", tls_port]
        run(["echoscu", *_tls(certs, "client"), "-aec", node.ae_title, *addr], check=True)
        files = write_mr_series(tmp_path / "s", 3)
        run(["storescu", *_tls(certs, "client"), "-aec", node.ae_title, *addr, *files], check=True)
        # plain DICOM on the TLS port, a client without a certificate, one from an unknown CA: refused
        assert run(["echoscu", "-to", "5", "-aec", node.ae_title, *addr]).returncode != 0
        assert run(["echoscu", "+tla", "+cf", certs["ca_crt"], "-aec", node.ae_title, *addr]).returncode != 0
        rogue = ["+tls", certs["rogue_key"], certs["rogue_crt"], "+cf", certs["ca_crt"]]
        assert run(["echoscu", *rogue, "-aec", node.ae_title, *addr]).returncode != 0

        sent = {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files}

        def received() -> set[str]:
            return {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in pacs_dir.iterdir()
                    if p.is_file()}

        assert wait_for(lambda: received() == sent, timeout=30), "series not forwarded over TLS"
        assert wait_for(lambda: any(e["kind"] == "send" for e in audit_lines(node)), timeout=10)
        lines = audit_lines(node)
        tls_ops = [e for e in lines if e["kind"] == "operation"]
        assert {e["service"] for e in tls_ops} == {"C-ECHO", "C-STORE"}
        assert all(e["tls"] is True and e["peer_certificate"] == "client" for e in tls_ops)
        send = next(e for e in lines if e["kind"] == "send")
        assert send["tls"] is True and send["acknowledged"] == 3 and send["result"] == "success"
        assert node.index_count() == 3
    finally:
        stop_pid(pacs)
