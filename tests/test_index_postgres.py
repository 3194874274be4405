"""The index in PostgreSQL (``[index] url``): a node on it end to end, and what sharing it needs.

The repository contract (store, duplicates, Q/R matching, completion, jobs, recovery) runs on both
backends in test_store/test_qr/test_jobs_and_routing/test_stacks (``make_index``); here: the schema's
versioning on both, completion and job claims racing between two index clients (two nodes), and a
node configured with a PostgreSQL index receiving, completing, forwarding and answering C-FIND.
"""

from __future__ import annotations

import json
import sys
import threading
import time

import pydicom
import pytest

from dicom_node.index import Index
from dicom_node.index_backends import SCHEMA_VERSION, SchemaError
from dicom_node.synthetic import write_mr_series
from tests.helpers import run, wait_for


def test_the_schema_is_versioned_and_a_newer_one_is_refused(make_index):
    index = make_index()
    row = index.reader.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    assert int(row[0]) == SCHEMA_VERSION
    with index.transaction() as conn:
        conn.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION + 1),))
    backend = index.backend
    index.close()
    with pytest.raises(SchemaError, match="schema version"):
        if backend.dialect == "postgresql":
            Index(url=backend.url)
        else:
            Index(backend.path)


def _clients(postgres, n: int) -> list[Index]:
    url = postgres.create_database(f"race_{time.monotonic_ns()}")
    return [Index(url=url) for _ in range(n)]


def test_two_nodes_never_both_complete_a_series_or_claim_a_job(postgres):
    """Each node has its own connections; the database decides who completes and who claims."""
    nodes = _clients(postgres, 4)
    now = time.time()
    with nodes[0].transaction() as conn:
        for k in range(40):
            conn.execute("INSERT INTO series(series_uid, study_uid, first_received_at, last_received_at)"
                         " VALUES (?, '9', ?, ?)", (f"1.{k}", now - 10, now - 10))
    completed: list[int] = []
    claimed: list[int] = []
    lock = threading.Lock()

    def complete_all(index: Index) -> None:
        for k in range(40):
            job = index.complete_series(f"1.{k}", now, "forward", 3)
            if job:
                with lock:
                    completed.append(job)

    def claim_all(index: Index) -> None:
        while (job := index.claim_job()) is not None:
            with lock:
                claimed.append(job.id)

    for work in (complete_all, claim_all):
        threads = [threading.Thread(target=work, args=(node,)) for node in nodes]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    for node in nodes:
        node.close()
    assert len(completed) == 40 and len(set(completed)) == 40  # one job per series, whoever completed it
    assert sorted(claimed) == sorted(completed)  # every job claimed exactly once


@pytest.mark.slow
def test_a_node_on_postgresql_receives_completes_forwards_and_answers_queries(node_factory, storescp_factory,
                                                                              postgres, tmp_path):
    url = postgres.create_database("node_e2e")
    dest = storescp_factory(ae_title="PACS")
    node = node_factory(extra_toml=f'[index]\nurl = "{url}"\n[series]\nstable_seconds = 0.5\ncheck_interval_s = 0.1\n'
                        + dest.destination_toml() + '[routing]\nforward_series_to = ["pacs"]\n'
                        '[jobs]\npoll_interval_s = 0.1\n').start()
    files = write_mr_series(tmp_path / "s", 5)
    run(["storescu", "-aec", node.ae_title, "127.0.0.1", node.port, *files], check=True)
    index = Index(url=url)
    try:
        assert wait_for(lambda: [j.state for j in index.jobs()] == ["done"], timeout=60), index.jobs()
        assert index.count_instances() == 5
        assert not (node.storage / "index.sqlite").exists()  # nothing of the index on local disk
        assert wait_for(lambda: len(dest.received_sop_uids()) == 5, timeout=30)
        out = tmp_path / "found"
        out.mkdir()
        study = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
        run(["findscu", "-S", "-X", "-od", out, "-aec", node.ae_title, "-k", "QueryRetrieveLevel=SERIES",
             "-k", f"StudyInstanceUID={study}", "-k", "SeriesInstanceUID", "-k", "NumberOfSeriesRelatedInstances",
             "127.0.0.1", node.port], check=True)
        found = [pydicom.dcmread(p) for p in out.glob("rsp*.dcm")]
        assert [int(d.NumberOfSeriesRelatedInstances) for d in found] == [5]
        jobs = run([sys.executable, "-m", "dicom_node", "jobs", "--config", node.config_path], check=True).stdout
        assert "done" in jobs
        status = json.loads(run([sys.executable, "-m", "dicom_node", "status", "--config", node.config_path]).stdout)
        assert status["instances"] == 5 and status["jobs"]["done"] == 1
    finally:
        index.close()
        node.stop()
