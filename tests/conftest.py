from __future__ import annotations

import shutil

import pytest

from tests.helpers import NodeProcess, StoreSCPProcess, stop_servers

DCMTK_TOOLS = ("echoscu", "storescu", "findscu", "movescu", "getscu", "storescp")


@pytest.fixture(scope="module", autouse=True)
def no_orphan_servers():
    """A module fixture that fails after starting a server never reaches its teardown: whatever a
    module's tests started and did not stop is stopped when the module ends."""
    yield
    stop_servers()


@pytest.fixture(scope="session")
def dcmtk() -> None:
    missing = [t for t in DCMTK_TOOLS if shutil.which(t) is None]
    if missing:
        pytest.fail(f"DCMTK tools missing: {missing}; scripts/bootstrap.sh installs the Debian package dcmtk")


@pytest.fixture
def node_factory(tmp_path, dcmtk):
    started: list[NodeProcess] = []

    def make(name: str = "node", **kwargs) -> NodeProcess:
        node = NodeProcess(tmp_path / name, **kwargs)
        started.append(node)
        return node

    yield make
    for node in started:
        node.stop()


@pytest.fixture
def storescp_factory(tmp_path, dcmtk):
    started: list[StoreSCPProcess] = []

    def make(name: str = "dest", **kwargs) -> StoreSCPProcess:
        scp = StoreSCPProcess(tmp_path / name, **kwargs).start()
        started.append(scp)
        return scp

    yield make
    for scp in started:
        scp.stop()
