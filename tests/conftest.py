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


# -- the index's backends: the contract tests (store, duplicates, Q/R, completion, jobs, recovery) run on both
INDEX_BACKENDS = ("sqlite", "postgresql")
_DATABASES = __import__("itertools").count()


@pytest.fixture(scope="session")
def postgres():
    """One PostgreSQL server for the session (tests.postgres), started when a test first needs it."""
    from tests.postgres import PostgresServer

    server = PostgresServer().start()
    yield server
    server.stop()


def new_index(request, backend: str, path):
    """A new, empty index on ``backend``: SQLite at ``path``, or a fresh PostgreSQL database."""
    from dicom_node.index import Index

    if backend == "postgresql":
        server = request.getfixturevalue("postgres")
        return Index(url=server.create_database(f"index_{next(_DATABASES)}"))
    return Index(path)


@pytest.fixture(params=INDEX_BACKENDS)
def make_index(request, tmp_path):
    """``make_index()`` -> a new empty index on each backend in turn."""
    return lambda: new_index(request, request.param, tmp_path / "index.sqlite")
