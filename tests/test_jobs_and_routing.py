"""Series completion -> durable job -> forward to routing destinations; retries and dead letter."""

from __future__ import annotations

import sys
import threading
import time

import pydicom
import pytest

from dicom_node.config import Config, JobsSection, SeriesSection
from dicom_node.index import Index
from dicom_node.jobs import JobRunner
from dicom_node.synthetic import write_mr_series
from tests.helpers import free_port, run, wait_for


def jobs_cli(node, *args):
    return run([sys.executable, "-m", "dicom_node", "jobs", "--config", node.config_path, *args])


def test_complete_series_is_forwarded(node_factory, storescp_factory, tmp_path):
    dest = storescp_factory(ae_title="PACS")
    node = node_factory(extra_toml="[series]\nstable_seconds = 1.0\ncheck_interval_s = 0.2\n"
                        + dest.destination_toml() + '[routing]\nforward_series_to = ["pacs"]\n').start()
    files = write_mr_series(tmp_path / "s", 6)
    run(["storescu", "-aec", node.ae_title, "127.0.0.1", node.port, *files], check=True)
    sent = {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files}
    assert wait_for(lambda: sent <= dest.received_sop_uids(), timeout=30)
    assert wait_for(lambda: node.index_count("SELECT COUNT(*) FROM jobs WHERE state = 'done'") == 1)
    out = jobs_cli(node)
    assert out.returncode == 0 and "done" in out.stdout and "sent 6 instances to pacs" in out.stdout
    assert node.index_count("SELECT COUNT(*) FROM series WHERE state = 'complete'") == 1


def test_own_results_are_not_forwarded_again(node_factory, storescp_factory, tmp_path):
    """A series the node made (description ends '(PINN node)') is already routed by its job."""
    dest = storescp_factory(ae_title="PACS")
    node = node_factory(extra_toml="[series]\nstable_seconds = 0.5\ncheck_interval_s = 0.1\n"
                        + dest.destination_toml() + '[routing]\nforward_series_to = ["pacs"]\n').start()
    files = write_mr_series(tmp_path / "s", 2, series_description="T2 map (PINN node)")
    run(["storescu", "-aec", node.ae_title, "127.0.0.1", node.port, *files], check=True)
    assert wait_for(lambda: node.index_count("SELECT COUNT(*) FROM series WHERE state = 'complete'") == 1)
    assert node.index_count("SELECT COUNT(*) FROM jobs") == 0
    assert any(e.get("kind") == "own-result" for e in node.events("series.classified"))
    assert not dest.received_sop_uids()


def test_series_is_not_complete_while_instances_arrive(node_factory, tmp_path):
    node = node_factory(extra_toml="[series]\nstable_seconds = 2.0\ncheck_interval_s = 0.2\n").start()
    files = write_mr_series(tmp_path / "s", 4)
    for f in files[:2]:
        run(["storescu", "-aec", node.ae_title, "127.0.0.1", node.port, f], check=True)
    complete = "SELECT COUNT(*) FROM series WHERE state = 'complete'"
    time.sleep(1.0)
    assert node.index_count(complete) == 0
    for f in files[2:]:
        run(["storescu", "-aec", node.ae_title, "127.0.0.1", node.port, f], check=True)
    time.sleep(1.2)
    assert node.index_count(complete) == 0  # the late instances re-armed the timer
    assert wait_for(lambda: node.index_count(complete) == 1, timeout=10)
    # a plain MR series (not T2-prep) is stored and served, not processed; nothing to forward
    assert node.index_count("SELECT COUNT(*) FROM jobs") == 0
    assert any(e.get("kind") == "other" for e in node.events("series.classified"))


def test_unreachable_destination_retries_then_parks_and_retry_requeues(node_factory, tmp_path, dcmtk):
    from tests.helpers import StoreSCPProcess

    port = free_port()
    node = node_factory(extra_toml=(
        "[series]\nstable_seconds = 2.0\ncheck_interval_s = 0.1\n"  # robust to a loaded machine
        "[jobs]\nmax_attempts = 3\nretry_backoff_s = 0.2\npoll_interval_s = 0.1\n"
        "[send]\nreassociations = 0\nacse_timeout_s = 2\n"
        f'[[destinations]]\nname = "pacs"\nae_title = "LATER"\nhost = "127.0.0.1"\nport = {port}\n'
        '[routing]\nforward_series_to = ["pacs"]\n'
    )).start()
    files = write_mr_series(tmp_path / "s", 3)
    run(["storescu", "-aec", node.ae_title, "127.0.0.1", node.port, *files], check=True)
    assert wait_for(lambda: node.index_count("SELECT COUNT(*) FROM jobs WHERE state = 'failed'") == 1, timeout=30)
    assert node.index_count("SELECT attempts FROM jobs") == 3
    listing = jobs_cli(node)
    assert "failed" in listing.stdout and "0/3 acknowledged" in listing.stdout
    assert len(node.events("job.retry")) == 2 and len(node.events("job.failed")) == 1
    # the destination comes back; the operator re-queues the parked job
    dest = StoreSCPProcess(tmp_path / "dest", ae_title="LATER", port=port).start()
    try:
        job_id = node.index_count("SELECT id FROM jobs")
        assert jobs_cli(node, "--retry", str(job_id)).returncode == 0
        sent = {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files}
        assert wait_for(lambda: sent <= dest.received_sop_uids(), timeout=30)
        assert wait_for(lambda: node.index_count("SELECT COUNT(*) FROM jobs WHERE state = 'done'") == 1)
    finally:
        dest.stop()


@pytest.fixture
def index_with_job(make_index):
    """An index (on each backend) holding one completed series and its pending 'forward' job."""

    def make(max_attempts: int):
        index = make_index()
        with index.transaction() as conn:
            conn.execute("INSERT INTO series(series_uid, study_uid, first_received_at, last_received_at)"
                         " VALUES ('1.2.3', '1.2', 0, 0)")
        return index, index.complete_series("1.2.3", before=1.0, job_kind="forward", max_attempts=max_attempts)

    return make


def test_interrupted_job_is_recovered(index_with_job):
    index, job_id = index_with_job(max_attempts=3)
    claimed = index.claim_job()
    assert claimed.id == job_id and claimed.state == "running" and claimed.attempts == 1
    # ... the node dies here; on restart the job is pending again and runs to completion
    ran = []
    runner = JobRunner(index, Config(jobs=JobsSection(workers=1)), {"forward": lambda job: ran.append(job.id) or "ok"},
                       wakeup=__import__("threading").Event())
    assert index.recover_interrupted_jobs() == 1
    job = runner.run_one()
    assert job.id == job_id and ran == [job_id]
    final = index.get_job(job_id)
    assert final.state == "done" and final.attempts == 2
    index.close()


def test_failing_job_backoff_and_dead_letter(index_with_job):
    import threading

    index, job_id = index_with_job(max_attempts=2)

    def boom(job):
        raise RuntimeError("destination refused")

    cfg = Config(jobs=JobsSection(retry_backoff_s=60.0), series=SeriesSection())
    runner = JobRunner(index, cfg, {"forward": boom}, threading.Event())
    runner.run_one()
    job = index.get_job(job_id)
    assert job.state == "pending" and job.not_before > time.time() + 50  # backs off
    assert runner.run_one() is None  # not yet due
    with index.transaction() as conn:
        conn.execute("UPDATE jobs SET not_before = 0")
    runner.run_one()
    job = index.get_job(job_id)
    assert job.state == "failed" and "destination refused" in job.last_error
    assert index.requeue_job(job_id) and index.get_job(job_id).state == "pending"
    index.close()


def test_status_reports_health(node_factory, tmp_path):
    import json as _json
    import urllib.request

    http_port = free_port()
    node = node_factory(extra_toml=f"http_port = {http_port}\n").start()
    files = write_mr_series(tmp_path / "s", 2)
    run(["storescu", "-aec", node.ae_title, "127.0.0.1", node.port, *files], check=True)
    proc = run([sys.executable, "-m", "dicom_node", "status", "--config", node.config_path])
    assert proc.returncode == 0, proc.stderr
    status = _json.loads(proc.stdout)
    assert status["responding"] and status["instances"] == 2 and status["disk_free_gb"] > 0
    assert set(status["jobs"]) == {"pending", "running", "done", "failed"} and status["queue_depth"] == 0
    with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/health", timeout=10) as rsp:
        health = _json.loads(rsp.read())
    assert rsp.status == 200 and health["responding"] and health["instances"] == 2
    with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/metrics", timeout=10) as rsp:
        metrics = rsp.read().decode()
    assert "pinn_node_instances 2" in metrics and 'pinn_node_jobs{state="failed"} 0' in metrics
    node.stop()
    down = run([sys.executable, "-m", "dicom_node", "status", "--config", node.config_path])
    assert down.returncode == 1 and _json.loads(down.stdout)["responding"] is False


def test_tracker_wakes_when_the_oldest_open_series_is_due(tmp_path):
    """The tracker sleeps until a series is due (not a whole check interval past it)."""
    from dicom_node.series import SeriesTracker

    index = Index(tmp_path / "index.sqlite")
    tracker = SeriesTracker(index, Config(series=SeriesSection(stable_seconds=10.0, check_interval_s=5.0)))
    assert tracker._next_wait() == 5.0  # no open series: the interval
    now = time.time()
    with index.transaction() as conn:
        conn.execute("INSERT INTO series(series_uid, study_uid, first_received_at, last_received_at)"
                     " VALUES ('1.2.3', '1.2', ?, ?), ('1.2.4', '1.2', ?, ?)", (now - 8.0, now - 8.0, now, now))
    assert 1.9 < tracker._next_wait() < 2.1  # 1.2.3 is due in 2 s
    with index.transaction() as conn:
        conn.execute("UPDATE series SET last_received_at = ? WHERE series_uid = '1.2.3'", (now - 30.0,))
    assert 0 < tracker._next_wait() <= 0.05  # overdue: at once


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread nice values are Linux's")
def test_jobs_run_nicer_than_the_threads_receiving(index_with_job):
    """Processing never slows an arriving C-STORE, and leaves the report builder its core."""
    import os

    from dicom_node.jobs import JOB_NICE

    index, _ = index_with_job(max_attempts=3)
    seen, done = [], threading.Event()

    def handler(job):
        seen.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
        done.set()
        return "ok"

    runner = JobRunner(index, Config(jobs=JobsSection(workers=1, poll_interval_s=0.05)), {"forward": handler},
                       threading.Event())
    runner.start()
    try:
        assert done.wait(30)
    finally:
        runner.stop()
        index.close()
    assert seen == [os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) + JOB_NICE]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="nice values are POSIX; the lanes' use is Linux's")
def test_the_report_lane_outranks_the_drawing_lane():
    import os

    from dicom_node.processing.step_processes import FIT_AND_DRAW, LANE_NICE, REPORT, StepProcesses

    if (os.cpu_count() or 1) < 2:
        pytest.skip("one core: no helper processes, the work runs in the job")
    helpers = StepProcesses()
    helpers.start()
    try:
        assert helpers.running
        nice = [helpers.submit(os.getpriority, os.PRIO_PROCESS, 0, lane=k)() for k in (FIT_AND_DRAW, REPORT)]
        pids = {helpers.submit(os.getpid, lane=k)() for k in (FIT_AND_DRAW, REPORT)}
    finally:
        helpers.stop()
    assert not helpers.running
    base = os.getpriority(os.PRIO_PROCESS, 0)
    assert len(pids) == 2 and os.getpid() not in pids  # two helper processes, not the caller
    assert nice == [base + LANE_NICE[FIT_AND_DRAW], base + LANE_NICE[REPORT]]
    assert LANE_NICE[FIT_AND_DRAW] > LANE_NICE[REPORT]


def test_a_series_the_engine_cannot_process_is_parked_at_once_with_its_reason(index_with_job):
    import threading

    from dicom_node.processing import SeriesError

    index, job_id = index_with_job(max_attempts=3)

    def cannot(job):
        raise SeriesError("no myocardium found in any slice: nothing to quantify")

    runner = JobRunner(index, Config(jobs=JobsSection(retry_backoff_s=0.0), series=SeriesSection()),
                       {"forward": cannot}, threading.Event())
    runner.run_one()
    job = index.get_job(job_id)
    assert (job.state, job.attempts) == ("failed", 1)  # trying again would fail the same way
    assert "no myocardium found" in job.last_error
    assert runner.run_one() is None
    index.close()
