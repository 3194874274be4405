"""Study stacks: which T2 series of a study make one stack, and how the node queues its one job.

Planning (``processing.stacks``) on a Siemens-style study (one series per slice, MOCO copies, the
scanner's map and MOLLI as decoys); loading with a repeated breath-hold and a series on another
matrix; the index's study job (postponed by each further T2 series, one running per study).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pydicom
import pytest

from dicom_node.config import ConfigError, load_config
from dicom_node.index import Index
from dicom_node.processing import FolderSeries, SeriesKind, classify, load_t2_stack, plan_t2_stacks
from dicom_node.vendors import simulate_vendor_t2


def _is_t2(headers) -> bool:
    return classify(headers).kind == SeriesKind.T2


def _description(folder: FolderSeries, uid: str) -> str:
    return str(folder.series_headers(uid)[0].SeriesDescription)


@pytest.fixture(scope="module")
def siemens(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("siemens")
    simulate_vendor_t2(out, "siemens", seed=8, matrix=64)
    return out


def test_a_siemens_study_is_one_stack_of_its_motion_corrected_series(siemens):
    folder = FolderSeries.scan(siemens)
    any_uid = folder.series_uids[0]
    plans = plan_t2_stacks(folder, any_uid, _is_t2)
    assert len(plans) == 1 and not plans[0].notes
    members = [uid for uid, _ in plans[0].members]
    # the six T2 source series (three slices, each original and MOCO), MOCO first; no map, no MOLLI
    assert len(members) == 6
    assert [_description(folder, uid) for uid in members[:3]] == ["T2Map_MOCO"] * 3
    stack = load_t2_stack([paths for _, paths in plans[0].members])
    assert stack.images.shape[:2] == (3, 3)
    assert {_description(folder, uid) for uid in stack.series_uids} == {"T2Map_MOCO"}
    assert sum("not used" in n for n in stack.notes) == 3  # the originals, named
    # the same identity whichever series of the study the job started from
    assert {plan_t2_stacks(folder, uid, _is_t2)[0].members[0][0] for uid in members} == {members[0]}
    assert len({load_t2_stack([p for _, p in plan_t2_stacks(folder, uid, _is_t2)[0].members]).subject_uid
                for uid in members[:2]}) == 1


def _rewrite(src: Path, dst: Path, series_uid: str, **changes) -> list[Path]:
    dst.mkdir(parents=True)
    out = []
    for i, path in enumerate(sorted(src.glob("*.dcm"))):
        ds = pydicom.dcmread(path)
        ds.SeriesInstanceUID = series_uid
        ds.SOPInstanceUID = f"{series_uid}.{i + 1}"
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        for key, value in changes.items():
            setattr(ds, key, value)
        ds.save_as(dst / path.name)
        out.append(dst / path.name)
    return out


def test_a_repeated_breath_hold_replaces_the_earlier_and_another_matrix_is_left_out(siemens, tmp_path):
    originals = sorted(p for p in siemens.iterdir() if p.is_dir() and p.name.endswith("_T2Map"))
    base = tmp_path / "study"
    for folder in originals:
        (base / folder.name).mkdir(parents=True)
        for f in folder.glob("*.dcm"):
            (base / folder.name / f.name).write_bytes(f.read_bytes())
    # the first slice again, later (a repeated breath-hold), with brighter images to tell them apart
    repeat = _rewrite(originals[0], base / "repeat", "1.2.826.0.1.3680043.8.498.77", SeriesNumber=99,
                      AcquisitionTime="120000.000000", SeriesTime="120000")
    for path in repeat:
        ds = pydicom.dcmread(path)
        ds.PixelData = (ds.pixel_array // 2).astype(ds.pixel_array.dtype).tobytes()
        ds.save_as(path)
    # the second slice on a coarser matrix: not mixed in
    coarse = base / "coarse"
    coarse.mkdir()
    for i, path in enumerate(sorted(originals[1].glob("*.dcm"))):
        ds = pydicom.dcmread(path)
        ds.SeriesInstanceUID, ds.SOPInstanceUID = "1.2.826.0.1.3680043.8.498.78", f"1.2.826.0.1.3680043.8.498.78.{i}"
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.PixelData = np.ascontiguousarray(ds.pixel_array[::2, ::2]).tobytes()
        ds.Rows, ds.Columns = ds.Rows // 2, ds.Columns // 2
        ds.PixelSpacing = [float(v) * 2 for v in ds.PixelSpacing]
        ds.save_as(coarse / path.name)
    folder = FolderSeries.scan(base)
    plans = plan_t2_stacks(folder, "1.2.826.0.1.3680043.8.498.77", _is_t2)
    assert len(plans) == 1
    assert any("1.2.826.0.1.3680043.8.498.78" in n and "matrix and pixel spacing" in n for n in plans[0].notes)
    assert plans[0].members[0][0] == "1.2.826.0.1.3680043.8.498.77"  # the later acquisition first
    stack = load_t2_stack([paths for _, paths in plans[0].members])
    assert stack.images.shape[0] == 3
    assert "1.2.826.0.1.3680043.8.498.77" in stack.series_uids
    first_slice_original = load_t2_stack([sorted(originals[0].glob("*.dcm"))])
    k = [g.position_mm.tolist() for g in stack.geometry].index(first_slice_original.geometry[0].position_mm.tolist())
    assert np.allclose(stack.images[k], first_slice_original.images[0] // 2, atol=1)  # the repeat's pixels


def test_a_later_series_without_the_stacks_preparation_times_does_not_displace_the_earlier(siemens, tmp_path):
    """A repeated breath-hold acquired with only two preparation times: the earlier, complete series keeps the
    position, and the later one is named with the reason."""
    originals = sorted(p for p in siemens.iterdir() if p.is_dir() and p.name.endswith("_T2Map"))
    short = _rewrite(originals[0], tmp_path / "short", "1.2.826.0.1.3680043.8.498.79", SeriesNumber=98,
                     AcquisitionTime="120000.000000", SeriesTime="120000")
    short[-1].unlink()  # the longest preparation time is missing
    members = [short[:-1], *(sorted(f.glob("*.dcm")) for f in originals)]
    stack = load_t2_stack(members)
    assert stack.images.shape[:2] == (3, 3)
    assert "1.2.826.0.1.3680043.8.498.79" not in stack.series_uids
    assert any("1.2.826.0.1.3680043.8.498.79" in n and "differ from the stack's" in n for n in stack.notes)


def _complete(index: Index, series_uid: str, study_uid: str, delay: float | None) -> int | None:
    now = time.time()
    with index.transaction() as conn:
        conn.execute("INSERT INTO series(series_uid, study_uid, first_received_at, last_received_at)"
                     " VALUES (?, ?, ?, ?)", (series_uid, study_uid, now - 5, now - 5))
    return index.complete_series(series_uid, now - 1, "t2", 3, delay)


def test_a_study_job_waits_for_the_last_t2_series_and_runs_one_at_a_time(make_index):
    index = make_index()
    try:
        first = _complete(index, "1.1", "9.1", 30.0)
        second = _complete(index, "1.2", "9.1", 30.0)
        other_study = _complete(index, "2.1", "9.2", 0.0)
        assert first == second != other_study  # one job for the study: postponed, with the latest series
        job = index.get_job(first)
        assert job.series_uid == "1.2" and job.not_before > time.time() + 25
        assert index.claim_job(one_per_study=("t2",)).id == other_study  # the study job is not due yet
        with index.transaction() as conn:
            conn.execute("UPDATE jobs SET not_before = 0 WHERE id = ?", (first,))
        running = index.claim_job(one_per_study=("t2",))
        assert running.id == first
        # a series completing while the study's job runs gets a new job, which waits for the running one
        third = _complete(index, "1.3", "9.1", 0.0)
        assert third not in (first, None)
        assert index.claim_job(one_per_study=("t2",)) is None
        index.finish_job(first, "ok")
        assert index.claim_job(one_per_study=("t2",)).id == third
        # without a delay (forwarding, perfusion) every series keeps its own job
        assert _complete(index, "1.4", "9.1", None) != _complete(index, "1.5", "9.1", None)
    finally:
        index.close()


def test_stack_seconds_is_configurable_and_checked(tmp_path):
    cfg = tmp_path / "node.toml"
    cfg.write_text("[series]\nstack_seconds = 12.5\n")
    assert load_config(cfg).series.stack_seconds == 12.5
    assert load_config(None).series.stack_seconds == 30.0
    cfg.write_text("[series]\nstack_seconds = -1\n")
    with pytest.raises(ConfigError, match="stack_seconds must be >= 0"):
        load_config(cfg)
