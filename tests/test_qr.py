"""Q/R matching on the index (PS3.4 C.2.2.2), without the network."""

from __future__ import annotations

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from dicom_node import qr
from dicom_node.store import InstanceStore
from dicom_node.synthetic import mr_image
from tests.conftest import INDEX_BACKENDS, new_index
from tests.helpers import store_dataset

P_FIND = "1.2.840.10008.5.1.4.1.2.1.1"
S_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
S_MOVE = "1.2.840.10008.5.1.4.1.2.2.2"
P_GET = "1.2.840.10008.5.1.4.1.2.1.3"


@pytest.fixture(scope="module", params=INDEX_BACKENDS)
def db(request, tmp_path_factory):
    root = tmp_path_factory.mktemp("qr")
    index = new_index(request, request.param, root / "index.sqlite")
    store = InstanceStore(root, index)
    studies = {}
    # patient A: two studies; patient B: one study
    layout = [
        ("PA", "Doe^John", "20240105", "083000", [("MR", "T2 map", 3), ("SR", "report", 1)]),
        ("PA", "Doe^John", "20240620", "141500.25", [("MR", "perfusion", 2)]),
        ("PB", "Müller^Anna", "20231231", "235959", [("MR", "T2 map", 2)]),
    ]
    for pid, name, date, time, series in layout:
        study = generate_uid()
        studies[(pid, date)] = study
        for number, (modality, desc, count) in enumerate(series, start=1):
            se = generate_uid()
            for n in range(1, count + 1):
                ds = mr_image(study_uid=study, series_uid=se, instance_number=n, patient_id=pid, patient_name=name,
                              study_date=date, study_time=time, series_number=number, series_description=desc,
                              modality=modality, rows=8, columns=8)
                store_dataset(store, ds)
    yield index, studies
    index.close()


def ident(level, **kw):
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    for k, v in kw.items():
        setattr(ds, k, v)
    return ds


def find(index, sop=S_FIND, **kw):
    return list(qr.find(index, ident(**kw), sop, "NODE"))


def test_patient_level(db):
    index, _ = db
    rsp = find(index, P_FIND, level="PATIENT", PatientID="", PatientName="", NumberOfPatientRelatedStudies="",
               NumberOfPatientRelatedInstances="")
    by_id = {r.PatientID: r for r in rsp}
    assert set(by_id) == {"PA", "PB"}
    assert by_id["PA"].NumberOfPatientRelatedStudies == 2
    assert by_id["PA"].NumberOfPatientRelatedInstances == 6
    assert str(by_id["PB"].PatientName) == "Müller^Anna"
    assert by_id["PB"].SpecificCharacterSet == "ISO_IR 192"


def test_patient_level_not_in_study_root(db):
    with pytest.raises(qr.QueryError) as info:
        find(db[0], S_FIND, level="PATIENT")
    assert info.value.status == 0xA900


def test_missing_level(db):
    with pytest.raises(qr.QueryError):
        list(qr.find(db[0], Dataset(), S_FIND, "NODE"))


@pytest.mark.parametrize(
    "key, value, expected",
    [
        ("PatientID", "PA", 2),
        ("PatientID", "P?", 3),
        ("PatientID", "*", 3),
        ("PatientID", "pa", 0),  # LO matching is case-sensitive
        ("PatientName", "doe^john", 2),  # PN matching ignores case
        ("PatientName", "Mül*", 1),
        ("PatientName", "*^J*", 2),
        ("StudyDate", "20240101-20241231", 2),
        ("StudyDate", "-20231231", 1),
        ("StudyDate", "20240601-", 1),
        ("StudyDate", "20240105", 1),
        ("StudyTime", "0800-0900", 1),
        ("StudyTime", "1415", 1),
        ("StudyTime", "2359-", 1),
        ("ModalitiesInStudy", "SR", 1),
        ("ModalitiesInStudy", "SR\\MR", 3),
        ("StudyDescription", "synthetic*", 3),
    ],
)
def test_study_matching(db, key, value, expected):
    assert len(find(db[0], level="STUDY", **{key: value})) == expected


def test_study_level_return_keys(db):
    index, studies = db
    uid = studies[("PA", "20240105")]
    (rsp,) = find(index, level="STUDY", StudyInstanceUID=uid, ModalitiesInStudy="", NumberOfStudyRelatedSeries="",
                  NumberOfStudyRelatedInstances="", StudyDate="", PatientName="", RetrieveAETitle="",
                  ReferencedStudySequence=[])
    assert rsp.ModalitiesInStudy == ["MR", "SR"]
    assert rsp.NumberOfStudyRelatedSeries == 2 and rsp.NumberOfStudyRelatedInstances == 4
    assert rsp.StudyDate == "20240105" and rsp.RetrieveAETitle == "NODE"
    assert rsp.ReferencedStudySequence == []  # unsupported keys come back empty


def test_uid_list_matching(db):
    index, studies = db
    uids = "\\".join([studies[("PA", "20240105")], studies[("PB", "20231231")], "1.2.3.4"])
    assert len(find(index, level="STUDY", StudyInstanceUID=uids)) == 2


def test_series_and_image_levels(db):
    index, studies = db
    uid = studies[("PA", "20240105")]
    series = find(index, level="SERIES", StudyInstanceUID=uid, Modality="", SeriesDescription="",
                  NumberOfSeriesRelatedInstances="", SeriesInstanceUID="")
    assert sorted((s.Modality, s.NumberOfSeriesRelatedInstances) for s in series) == [("MR", 3), ("SR", 1)]
    mr = next(s for s in series if s.Modality == "MR")
    assert len(find(index, level="SERIES", SeriesDescription="T2*")) == 2
    assert len(find(index, level="SERIES", Modality="MR", SeriesDescription="T2 map", PatientID="PB")) == 1
    images = find(index, level="IMAGE", SeriesInstanceUID=mr.SeriesInstanceUID, SOPInstanceUID="", InstanceNumber="")
    assert [i.InstanceNumber for i in images] == [1, 2, 3]
    assert all(i.StudyInstanceUID == uid for i in images)
    assert len(find(index, level="IMAGE", InstanceNumber="2")) == 3


def test_select_instances(db):
    index, studies = db
    uid = studies[("PA", "20240105")]
    assert len(qr.select_instances(index, ident("STUDY", StudyInstanceUID=uid), S_MOVE)) == 4
    assert len(qr.select_instances(index, ident("PATIENT", PatientID="PA"), P_GET)) == 6
    with pytest.raises(qr.QueryError):
        qr.select_instances(index, ident("SERIES", SeriesInstanceUID=""), S_MOVE)
