"""C-FIND / C-MOVE / C-GET against the node process with DCMTK findscu, movescu, getscu."""

from __future__ import annotations

import pydicom
import pytest
from pydicom.uid import generate_uid

from dicom_node.synthetic import write_mr_series
from tests.helpers import NodeProcess, StoreSCPProcess, run


@pytest.fixture(scope="module")
def env(tmp_path_factory, dcmtk):
    root = tmp_path_factory.mktemp("qr")
    dest = StoreSCPProcess(root / "dest", ae_title="DEST").start()
    node = NodeProcess(root / "node", extra_toml=dest.destination_toml()).start()
    study_a, study_b = generate_uid(), generate_uid()
    series = {
        "a1": write_mr_series(root / "a1", 4, study_uid=study_a, patient_id="P1", patient_name="Doe^Jane",
                              study_date="20240301", series_number=1, series_description="T2 prep"),
        "a2": write_mr_series(root / "a2", 2, study_uid=study_a, patient_id="P1", patient_name="Doe^Jane",
                              study_date="20240301", series_number=2, series_description="perfusion"),
        "b1": write_mr_series(root / "b1", 3, study_uid=study_b, patient_id="P2", patient_name="Roe^Rick",
                              study_date="20230815", series_number=1, series_description="T2 prep"),
    }
    for files in series.values():
        run(["storescu", "-aec", node.ae_title, "127.0.0.1", node.port, *files], check=True)
    yield {"node": node, "dest": dest, "root": root, "study_a": study_a, "study_b": study_b, "series": series}
    node.stop()
    dest.stop()


def findscu(env, tmp_path, model: str, keys: list[str]) -> list[pydicom.Dataset]:
    out = tmp_path / f"find{len(list(tmp_path.iterdir()))}"
    out.mkdir()
    args = ["findscu", "-P" if model == "patient" else "-S", "-X", "-od", out, "-aec", env["node"].ae_title]
    for k in keys:
        args += ["-k", k]
    proc = run([*args, "127.0.0.1", env["node"].port])
    assert proc.returncode == 0, proc.stderr
    return [pydicom.dcmread(p) for p in sorted(out.glob("rsp*.dcm"))]


def series_uid(env, key) -> str:
    return str(pydicom.dcmread(env["series"][key][0], stop_before_pixels=True).SeriesInstanceUID)


@pytest.mark.parametrize(
    "model, keys, expected",
    [
        ("patient", ["QueryRetrieveLevel=PATIENT", "PatientID", "PatientName", "NumberOfPatientRelatedInstances"], 2),
        ("patient", ["QueryRetrieveLevel=PATIENT", "PatientName=doe*"], 1),
        ("patient", ["QueryRetrieveLevel=STUDY", "PatientID=P1", "StudyInstanceUID"], 1),
        ("study", ["QueryRetrieveLevel=STUDY", "StudyInstanceUID", "StudyDate=20240101-20241231"], 1),
        ("study", ["QueryRetrieveLevel=STUDY", "StudyDate=-20231231", "ModalitiesInStudy"], 1),
        ("study", ["QueryRetrieveLevel=STUDY", "PatientID=P?", "NumberOfStudyRelatedInstances"], 2),
        ("study", ["QueryRetrieveLevel=SERIES", "SeriesDescription=T2*", "Modality=MR", "SeriesInstanceUID"], 2),
        ("study", ["QueryRetrieveLevel=SERIES", "SeriesNumber=2", "NumberOfSeriesRelatedInstances"], 1),
        ("study", ["QueryRetrieveLevel=IMAGE", "InstanceNumber=3", "SOPInstanceUID"], 2),
    ],
)
def test_findscu(env, tmp_path, model, keys, expected):
    assert len(findscu(env, tmp_path, model, keys)) == expected


def test_findscu_values(env, tmp_path):
    (study,) = findscu(env, tmp_path, "study", [
        "QueryRetrieveLevel=STUDY", f"StudyInstanceUID={env['study_a']}", "NumberOfStudyRelatedSeries",
        "NumberOfStudyRelatedInstances", "ModalitiesInStudy", "PatientName", "StudyDate"])
    assert study.NumberOfStudyRelatedSeries == 2
    assert study.NumberOfStudyRelatedInstances == 6
    assert study.ModalitiesInStudy == "MR" and study.StudyDate == "20240301"
    assert str(study.PatientName) == "Doe^Jane"
    uid_list = f"{series_uid(env, 'a1')}\\{series_uid(env, 'b1')}"
    rsp = findscu(env, tmp_path, "study", ["QueryRetrieveLevel=SERIES", f"SeriesInstanceUID={uid_list}",
                                           "NumberOfSeriesRelatedInstances"])
    assert sorted(r.NumberOfSeriesRelatedInstances for r in rsp) == [3, 4]


def test_findscu_invalid_level_is_refused(env, tmp_path):
    proc = run(["findscu", "-v", "-S", "-aec", env["node"].ae_title, "-k", "QueryRetrieveLevel=PATIENT",
                "-k", "PatientID", "127.0.0.1", env["node"].port])
    assert "Received Final Find Response (Error: DataSetDoesNotMatchSOPClass)" in proc.stderr  # 0xA900


def test_movescu_series_to_configured_destination(env):
    uid = series_uid(env, "a1")
    proc = run(["movescu", "-S", "-aem", "DEST", "-aec", env["node"].ae_title, "-k", "QueryRetrieveLevel=SERIES",
                "-k", f"SeriesInstanceUID={uid}", "127.0.0.1", env["node"].port])
    assert proc.returncode == 0, proc.stderr
    sent = {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in env["series"]["a1"]}
    assert sent <= env["dest"].received_sop_uids()


def test_movescu_patient_root_study(env):
    proc = run(["movescu", "-P", "-aem", "DEST", "-aec", env["node"].ae_title, "-k", "QueryRetrieveLevel=STUDY",
                "-k", "PatientID=P2", "-k", f"StudyInstanceUID={env['study_b']}", "127.0.0.1", env["node"].port])
    assert proc.returncode == 0, proc.stderr
    sent = {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in env["series"]["b1"]}
    assert sent <= env["dest"].received_sop_uids()


def test_movescu_unknown_destination_gets_a801(env):
    proc = run(["movescu", "-v", "-S", "-aem", "NOBODY", "-aec", env["node"].ae_title, "-k", "QueryRetrieveLevel=STUDY",
                "-k", f"StudyInstanceUID={env['study_a']}", "127.0.0.1", env["node"].port])
    text = (proc.stdout + proc.stderr).lower()
    assert "received final move response (refused: movedestinationunknown)" in text, text  # 0xA801
    assert any(e.get("move_destination") == "NOBODY" for e in env["node"].events("move.unknown_destination"))


def test_getscu_study(env, tmp_path):
    out = tmp_path / "get"
    out.mkdir()
    proc = run(["getscu", "-S", "-od", out, "-aec", env["node"].ae_title, "-k", "QueryRetrieveLevel=STUDY",
                "-k", f"StudyInstanceUID={env['study_a']}", "127.0.0.1", env["node"].port])
    assert proc.returncode == 0, proc.stderr
    got = {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in out.iterdir()}
    sent = {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID)
            for key in ("a1", "a2") for p in env["series"][key]}
    assert got == sent
    # retrieved pixels are the stored pixels
    first = env["series"]["a1"][0]
    sop = str(pydicom.dcmread(first).SOPInstanceUID)
    match = next(p for p in out.iterdir() if sop in p.name or str(pydicom.dcmread(p).SOPInstanceUID) == sop)
    assert pydicom.dcmread(match).PixelData == pydicom.dcmread(first).PixelData


def test_getscu_image_level(env, tmp_path):
    out = tmp_path / "get1"
    out.mkdir()
    sop = str(pydicom.dcmread(env["series"]["b1"][1], stop_before_pixels=True).SOPInstanceUID)
    proc = run(["getscu", "-S", "-od", out, "-aec", env["node"].ae_title, "-k", "QueryRetrieveLevel=IMAGE",
                "-k", f"StudyInstanceUID={env['study_b']}", "-k", f"SeriesInstanceUID={series_uid(env, 'b1')}",
                "-k", f"SOPInstanceUID={sop}", "127.0.0.1", env["node"].port])
    assert proc.returncode == 0, proc.stderr
    assert [str(pydicom.dcmread(p).SOPInstanceUID) for p in out.iterdir()] == [sop]


def test_pynetdicom_find_and_get(env, tmp_path):
    """The same services through pynetdicom as SCU (study root C-FIND, patient root C-GET)."""
    from pydicom.dataset import Dataset
    from pynetdicom import AE, build_role, evt
    from pynetdicom.sop_class import (
        MRImageStorage,
        PatientRootQueryRetrieveInformationModelGet,
        StudyRootQueryRetrieveInformationModelFind,
    )

    ae = AE("PYNET")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    ae.add_requested_context(PatientRootQueryRetrieveInformationModelGet)
    ae.add_requested_context(MRImageStorage)
    received = []

    def on_store(event):
        received.append(str(event.dataset.SOPInstanceUID))
        return 0x0000

    assoc = ae.associate("127.0.0.1", env["node"].port, ae_title=env["node"].ae_title,
                         ext_neg=[build_role(MRImageStorage, scp_role=True)],
                         evt_handlers=[(evt.EVT_C_STORE, on_store)])
    assert assoc.is_established
    try:
        q = Dataset()
        q.QueryRetrieveLevel = "SERIES"
        q.StudyInstanceUID = env["study_a"]
        q.SeriesInstanceUID = ""
        q.SeriesDescription = ""
        found = [ds for status, ds in assoc.send_c_find(q, StudyRootQueryRetrieveInformationModelFind) if ds]
        assert sorted(str(ds.SeriesDescription) for ds in found) == ["T2 prep", "perfusion"]
        g = Dataset()
        g.QueryRetrieveLevel = "PATIENT"
        g.PatientID = "P2"
        statuses = [s.Status for s, _ in assoc.send_c_get(g, PatientRootQueryRetrieveInformationModelGet) if s]
        assert statuses[-1] == 0x0000
        assert len(received) == 3
    finally:
        assoc.release()
        ae.shutdown()
