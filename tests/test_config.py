from __future__ import annotations

import subprocess
import sys

import pytest

from dicom_node.config import Config, ConfigError, load_config, parse_config


def test_embedded_default():
    cfg = load_config(None)
    assert (cfg.node.ae_title, cfg.node.host, cfg.node.port, cfg.node.storage) == (
        "PINN_NODE", "127.0.0.1", 11112, "var")
    assert cfg == Config()


def test_full_config(tmp_path):
    path = tmp_path / "node.toml"
    path.write_text(
        """
[node]
ae_title = "MYNODE"
port = 4000
storage = "data"
[series]
stable_seconds = 2.5
[[destinations]]
name = "pacs"
ae_title = "ORTHANC"
host = "127.0.0.1"
port = 4242
[routing]
send_results_to = ["pacs"]
[security]
allowed_calling_aes = ["SCANNER"]
"""
    )
    cfg = load_config(path)
    assert cfg.node.ae_title == "MYNODE" and cfg.node.port == 4000
    assert cfg.series.stable_seconds == 2.5
    assert cfg.destination("pacs").port == 4242
    assert cfg.destination_by_ae("ORTHANC").name == "pacs"
    assert cfg.routing.send_results_to == ("pacs",)
    assert cfg.security.allowed_calling_aes == ("SCANNER",)


@pytest.mark.parametrize(
    "raw, message",
    [
        ({"node": {"colour": "blue"}}, "unknown key 'colour' in [node]"),
        ({"nodes": {}}, "unknown section [nodes]"),
        ({"node": {"port": 70000}}, "invalid port 70000"),
        ({"node": {"port": "11112"}}, "expected an integer"),
        ({"node": {"ae_title": "A" * 17}}, "invalid AE title"),
        ({"routing": {"send_results_to": ["pacs"]}}, "destination 'pacs', which is not configured"),
        ({"destinations": [{"name": "x", "ae_title": "X", "host": "h"}]}, "missing key(s): port"),
        ({"destinations": [{"name": "x", "ae_title": "X", "host": "h", "port": 1, "zip": True}]}, "unknown key 'zip'"),
        ({"destinations": [{"name": "x", "ae_title": "X", "host": "h", "port": 1, "tls": True}]},
         "tls_certificate is required"),
        ({"node": {"tls_port": 2762}, "security": {"tls_certificate": "/nonexistent.pem", "tls_private_key": "k",
                                                   "tls_ca_certificates": "c"}}, "no such file"),
        ({"engine": {"preload": "yes"}}, "expected true or false"),
        ({"series": {"stable_seconds": 0}}, "stable_seconds must be > 0"),
    ],
)
def test_invalid_configs(raw, message):
    with pytest.raises(ConfigError) as info:
        parse_config(raw)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "text",
    [
        '[node]\nport = 99999\n',
        '[node]\nunknown = 1\n',
        '[routing]\nsend_results_to = ["nowhere"]\n',
        'this is not toml = = =\n',
    ],
)
def test_serve_rejects_bad_config_with_one_line_and_exit_2(tmp_path, text):
    cfg = tmp_path / "bad.toml"
    cfg.write_text(text)
    proc = subprocess.run(
        [sys.executable, "-m", "dicom_node", "serve", "--config", str(cfg)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("dicom-node: config error:")
    assert "Traceback" not in proc.stderr


def test_missing_config_file(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "dicom_node", "serve", "--config", str(tmp_path / "nope.toml")],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 2 and "cannot read config file" in proc.stderr


def test_deploy_example_config_is_valid():
    from pathlib import Path

    cfg = load_config(Path(__file__).resolve().parents[1] / "deploy" / "node.toml")
    assert cfg.routing.send_results_to == ("pacs",)
    assert cfg.destination_by_ae("ORTHANC").port == 4242


def test_overrides_replace_the_files_values_and_are_checked_like_them(tmp_path):
    path = tmp_path / "node.toml"
    path.write_text('[engine]\nt2_method = "pinn"\nconfidence = 0.9\nhematocrit = 0.4\n')
    config = load_config(path, {"engine": {"t2_method": "nlls"}})
    assert (config.engine.t2_method, config.engine.confidence, config.engine.hematocrit) == ("nlls", 0.9, 0.4)
    assert load_config(None, {"engine": {"confidence": 0.8}}).engine.confidence == 0.8
    with pytest.raises(ConfigError, match="confidence must be in"):
        load_config(path, {"engine": {"confidence": 1.5}})
    with pytest.raises(ConfigError, match="t2_method must be nlls or pinn"):
        load_config(None, {"engine": {"t2_method": "scipy"}})
