"""kill -9 during ingest, processing and sending; destination outage; dead letter and retry.

The suite runs a few seeded trials per fault (``RELIABILITY_TRIALS``, default 2);
``benchmarks/reliability.py`` runs >= 20 per fault and prints the table of outcomes.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys

import pytest

from tests.helpers import wait_for
from tests.reliability.faults import DERIVED, Rig, UniqueStoreSCP, outage

TRIALS = int(os.environ.get("RELIABILITY_TRIALS", "2"))


@pytest.fixture(scope="module")
def rig(tmp_path_factory, dcmtk_module) -> Rig:
    return Rig(tmp_path_factory.mktemp("rig"), seed=11)


@pytest.fixture(scope="module")
def dcmtk_module():
    import shutil

    if shutil.which("storescu") is None:
        pytest.fail("DCMTK is needed (scripts/bootstrap.sh installs it)")


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["ingest", "processing", "sending"])
def test_kill_9_keeps_every_promise(rig, fault):
    rng = random.Random(f"{fault}-suite")
    for _ in range(TRIALS):
        outcome = getattr(rig, f"trial_{fault}")(rng)
        assert outcome.ok, (outcome.kill_at, outcome.problems, outcome.present, outcome.acknowledged,
                            outcome.delivered)
        assert outcome.acknowledged > 0


@pytest.mark.slow
def test_destination_outage_results_arrive_after_it_returns(tmp_path):
    seconds = float(os.environ.get("OUTAGE_S", "8"))
    result = outage(tmp_path, seconds)
    assert result["ok"], result
    assert result["attempts"] >= 2  # it did fail while the PACS was down, and retried with back-off


def _jobs_cli(node, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dicom_node", "jobs", "--config", str(node.config_path), *args],
                          capture_output=True, text=True, timeout=60)


@pytest.mark.slow
def test_destination_down_too_long_parks_the_job_until_retry(tmp_path, node_factory):
    from dicom_node.simulate import simulate_t2

    simulate_t2(tmp_path / "t2", seed=5, matrix=96, slices=3)
    dest = UniqueStoreSCP(tmp_path / "pacs", ae_title="PACS")  # down
    node = node_factory(extra_toml=(
        "[series]\nstable_seconds = 0.5\ncheck_interval_s = 0.1\nstack_seconds = 0\n" + dest.destination_toml()
        + '[routing]\nsend_results_to = ["pacs"]\n[engine]\nt2_method = "nlls"\npreload = false\n'
        + "[jobs]\npoll_interval_s = 0.1\nmax_attempts = 2\nretry_backoff_s = 0.2\n[send]\nreassociations = 0\n"
    )).start()
    files = sorted((tmp_path / "t2").glob("*.dcm"))
    subprocess.run(["storescu", "-aec", node.ae_title, "127.0.0.1", str(node.port), *map(str, files)], check=True,
                   capture_output=True, timeout=60)
    assert wait_for(lambda: node.index_count("SELECT COUNT(*) FROM jobs WHERE state = 'failed'") == 1, timeout=120)
    listing = _jobs_cli(node)
    assert listing.returncode == 0 and "failed" in listing.stdout and "2/2" in listing.stdout, listing.stdout
    job_id = node.index_count("SELECT id FROM jobs WHERE state = 'failed'")
    dest.start()
    try:
        retry = _jobs_cli(node, "--retry", str(job_id))
        assert retry.returncode == 0 and "re-queued" in retry.stdout
        assert wait_for(lambda: len(dest.deliveries()) == DERIVED, timeout=120)
        assert wait_for(lambda: node.index_count("SELECT COUNT(*) FROM jobs WHERE state = 'done'") == 1)
        assert sum(dest.deliveries().values()) == DERIVED  # nothing delivered twice
    finally:
        dest.stop()
