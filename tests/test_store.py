from __future__ import annotations

import logging

import pytest
from pydicom.uid import generate_uid

from dicom_node.store import InstanceStore
from dicom_node.synthetic import mr_image
from tests.helpers import store_dataset as put


@pytest.fixture
def store(tmp_path, make_index):
    index = make_index()
    yield InstanceStore(tmp_path, index)
    index.close()


def test_put_writes_file_and_index(store):
    ds = mr_image(study_uid=generate_uid(), series_uid=generate_uid())
    info, result, raw = put(store, ds)
    assert result.outcome == "stored"
    assert result.path.read_bytes() == raw
    row = store.index.get_instance(info.sop_instance_uid)
    assert row.series_uid == info.series_uid and row.size == len(raw)
    assert list(store.tmp_dir.iterdir()) == []


def test_identical_duplicate_is_stored_once(store):
    ds = mr_image(study_uid=generate_uid(), series_uid=generate_uid())
    put(store, ds)
    info, result, _ = put(store, ds)
    assert result.outcome == "duplicate"
    assert store.index.count_instances() == 1
    assert len(list(store.instances_dir.rglob("*.dcm"))) == 1


def test_different_content_newer_wins_and_is_logged(store, caplog):
    study, series, sop = generate_uid(), generate_uid(), generate_uid()
    first = mr_image(study_uid=study, series_uid=series, sop_instance_uid=sop, series_description="first")
    second = mr_image(study_uid=study, series_uid=series, sop_instance_uid=sop, series_description="second")
    put(store, first)
    with caplog.at_level(logging.WARNING, logger="dicom_node.store"):
        info, result, raw = put(store, second)
    assert result.outcome == "replaced"
    assert result.path.read_bytes() == raw
    assert store.index.count_instances() == 1
    assert store.index.get_instance(sop).sha256 == info.content_sha256
    events = [r for r in caplog.records if getattr(r, "event", None) == "instance.replaced"]
    assert len(events) == 1 and events[0].fields["sop_instance_uid"] == sop


def test_consistency_check_repairs(store):
    ds1 = mr_image(study_uid=generate_uid(), series_uid=generate_uid())
    ds2 = mr_image(study_uid=generate_uid(), series_uid=generate_uid())
    info1, _, _ = put(store, ds1)
    info2, res2, _ = put(store, ds2)
    # 1. a temp file left by a crash mid-write
    (store.tmp_dir / "dead.part").write_bytes(b"half")
    # 2. a complete file renamed into place whose index commit never happened
    store.index.delete_instance(info1.sop_instance_uid)
    # 3. an index row whose file is gone
    res2.path.unlink()
    # 4. garbage in the store
    bad = store.instances_dir / "1.2" / "3.4" / "5.6.dcm"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"not dicom")
    report = store.check_consistency()
    assert report.temp_files_removed == 1
    assert report.files_indexed == 1 and store.index.get_instance(info1.sop_instance_uid) is not None
    assert report.rows_without_file == [info2.sop_instance_uid]
    assert store.index.get_instance(info2.sop_instance_uid) is None
    assert len(report.files_quarantined) == 1 and not bad.exists()
    assert store.check_consistency().clean


def test_quick_check_after_clean_shutdown(store):
    ds = mr_image(study_uid=generate_uid(), series_uid=generate_uid())
    put(store, ds)
    first = store.begin_session()  # no marker yet: full check
    store.end_session()
    (store.tmp_dir / "x.part").write_bytes(b"x")
    second = store.begin_session()
    assert first.clean and second.temp_files_removed == 1


def test_series_reopens_on_late_instance(store):
    study, series = generate_uid(), generate_uid()
    put(store, mr_image(study_uid=study, series_uid=series, instance_number=1))
    job = store.index.complete_series(series, before=1e12, job_kind="forward", max_attempts=3)
    assert job is not None and store.index.series_state(series) == "complete"
    _, result, _ = put(store, mr_image(study_uid=study, series_uid=series, instance_number=2))
    assert result.reopened_series and store.index.series_state(series) == "open"
