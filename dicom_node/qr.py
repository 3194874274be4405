"""Query/Retrieve matching (PS3.4 C.2.2.2): identifier -> SQL over the index.

Supports Patient Root and Study Root at PATIENT/STUDY/SERIES/IMAGE level with
single-value, wildcard (``*``, ``?``), list-of-UID and date/time range matching.
Keys of the query level and the levels above it take part in matching; others are
returned empty, as the standard allows for keys the SCP does not support.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator

from pydicom.dataset import Dataset

from dicom_node.index import Index, StoredInstance
from dicom_node.instance import normalise_time
from dicom_node.status import IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS

PATIENT_ROOT = {
    "1.2.840.10008.5.1.4.1.2.1.1",  # FIND
    "1.2.840.10008.5.1.4.1.2.1.2",  # MOVE
    "1.2.840.10008.5.1.4.1.2.1.3",  # GET
}
STUDY_ROOT = {
    "1.2.840.10008.5.1.4.1.2.2.1",
    "1.2.840.10008.5.1.4.1.2.2.2",
    "1.2.840.10008.5.1.4.1.2.2.3",
}

LEVELS = ("PATIENT", "STUDY", "SERIES", "IMAGE")


class QueryError(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass(frozen=True)
class Key:
    level: str
    sql: str  # SQL expression over the aliases st (studies), se (series), i (instances)
    match: str  # uid | string | pn | date | time | int | modalities | count


_COUNT_PATIENT = ("(SELECT COUNT(*) FROM {t} x WHERE x.study_uid IN "
                  "(SELECT study_uid FROM studies p WHERE p.patient_id IS NOT DISTINCT FROM st.patient_id))")
KEYS: dict[str, Key] = {
    "PatientID": Key("PATIENT", "st.patient_id", "string"),
    "PatientName": Key("PATIENT", "st.patient_name", "pn"),
    "PatientBirthDate": Key("PATIENT", "st.patient_birth_date", "date"),
    "PatientSex": Key("PATIENT", "st.patient_sex", "string"),
    "NumberOfPatientRelatedStudies": Key(
        "PATIENT", "(SELECT COUNT(*) FROM studies p WHERE p.patient_id IS NOT DISTINCT FROM st.patient_id)", "count"
    ),
    "NumberOfPatientRelatedSeries": Key("PATIENT", _COUNT_PATIENT.format(t="series"), "count"),
    "NumberOfPatientRelatedInstances": Key("PATIENT", _COUNT_PATIENT.format(t="instances"), "count"),
    "StudyInstanceUID": Key("STUDY", "st.study_uid", "uid"),
    "StudyDate": Key("STUDY", "st.study_date", "date"),
    "StudyTime": Key("STUDY", "st.study_time", "time"),
    "AccessionNumber": Key("STUDY", "st.accession_number", "string"),
    "StudyID": Key("STUDY", "st.study_id", "string"),
    "StudyDescription": Key("STUDY", "st.study_description", "string"),
    "ReferringPhysicianName": Key("STUDY", "st.referring_physician_name", "pn"),
    "ModalitiesInStudy": Key(
        "STUDY",
        "(SELECT group_concat(m, '\\') FROM (SELECT DISTINCT modality AS m FROM series x"
        " WHERE x.study_uid = st.study_uid AND modality IS NOT NULL ORDER BY modality) AS modalities)",
        "modalities",
    ),
    "NumberOfStudyRelatedSeries": Key(
        "STUDY", "(SELECT COUNT(*) FROM series x WHERE x.study_uid = st.study_uid)", "count"
    ),
    "NumberOfStudyRelatedInstances": Key(
        "STUDY", "(SELECT COUNT(*) FROM instances x WHERE x.study_uid = st.study_uid)", "count"
    ),
    "SeriesInstanceUID": Key("SERIES", "se.series_uid", "uid"),
    "Modality": Key("SERIES", "se.modality", "string"),
    "SeriesNumber": Key("SERIES", "se.series_number", "int"),
    "SeriesDescription": Key("SERIES", "se.series_description", "string"),
    "SeriesDate": Key("SERIES", "se.series_date", "date"),
    "SeriesTime": Key("SERIES", "se.series_time", "time"),
    "BodyPartExamined": Key("SERIES", "se.body_part_examined", "string"),
    "ProtocolName": Key("SERIES", "se.protocol_name", "string"),
    "NumberOfSeriesRelatedInstances": Key(
        "SERIES", "(SELECT COUNT(*) FROM instances x WHERE x.series_uid = se.series_uid)", "count"
    ),
    "SOPInstanceUID": Key("IMAGE", "i.sop_instance_uid", "uid"),
    "SOPClassUID": Key("IMAGE", "i.sop_class_uid", "uid"),
    "InstanceNumber": Key("IMAGE", "i.instance_number", "int"),
}

_UNIQUE = {"PATIENT": "PatientID", "STUDY": "StudyInstanceUID", "SERIES": "SeriesInstanceUID",
           "IMAGE": "SOPInstanceUID"}

_FROM = {
    "PATIENT": "FROM studies st",
    "STUDY": "FROM studies st",
    "SERIES": "FROM series se JOIN studies st ON st.study_uid = se.study_uid",
    "IMAGE": "FROM instances i JOIN series se ON se.series_uid = i.series_uid "
             "JOIN studies st ON st.study_uid = i.study_uid",
}


def model_of(sop_class_uid: str) -> str:
    if sop_class_uid in PATIENT_ROOT:
        return "PATIENT_ROOT"
    if sop_class_uid in STUDY_ROOT:
        return "STUDY_ROOT"
    raise QueryError(IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS, f"unsupported information model {sop_class_uid}")


def query_level(identifier: Dataset, model: str) -> str:
    level = str(identifier.get("QueryRetrieveLevel", "") or "").strip().upper()
    if level not in LEVELS:
        raise QueryError(IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS, f"missing or invalid QueryRetrieveLevel {level!r}")
    if model == "STUDY_ROOT" and level == "PATIENT":
        raise QueryError(IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS, "PATIENT level is not part of the Study Root model")
    return level


# -- value normalisation and matching ------------------------------------------
def _glob_escape(text: str) -> str:
    return text.replace("[", "[[]")


def _like_pattern(text: str) -> str:
    out = []
    for ch in text:
        if ch == "*":
            out.append("%")
        elif ch == "?":
            out.append("_")
        elif ch in "%_\\":
            out.append("\\" + ch)
        else:
            out.append(ch)
    return "".join(out)


def _condition(key: Key, raw: Any, dialect: str = "sqlite") -> tuple[str, list[Any]] | None:
    """SQL condition for one matching key, or None for universal matching (in the index's ``dialect``)."""
    if raw is None:
        return None
    if isinstance(raw, (list, tuple)) or type(raw).__name__ == "MultiValue":
        values = [str(v).strip() for v in raw if str(v).strip()]
    else:
        text = str(raw).strip()
        values = [v.strip() for v in text.split("\\")] if text else []
    values = [v for v in values if v]
    if not values or values == ["*"]:
        return None
    col = key.sql
    if key.match == "count":
        return None  # return keys only
    if key.match == "uid":
        return f"{col} IN ({', '.join('?' * len(values))})", values
    if key.match == "modalities":
        return (
            "EXISTS (SELECT 1 FROM series x WHERE x.study_uid = st.study_uid"
            f" AND x.modality IN ({', '.join('?' * len(values))}))",
            values,
        )
    value = values[0]
    if key.match == "int":
        try:
            return f"{col} = ?", [int(value)]
        except ValueError as exc:
            raise QueryError(IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS, f"not an integer: {value!r}") from exc
    if key.match in ("date", "time"):
        if "-" in value:
            low, _, high = value.partition("-")
            parts, params = [], []
            if key.match == "date":
                low, high = low.strip(), high.strip()
            else:
                low = normalise_time(low) if low.strip() else ""
                high = normalise_time(high, upper=True) if high.strip() else ""
            if low:
                parts.append(f"{col} >= ?")
                params.append(low)
            if high:
                parts.append(f"{col} <= ?")
                params.append(high)
            if not parts:
                return None
            return f"({col} IS NOT NULL AND {' AND '.join(parts)})", params
        if key.match == "time":
            return f"{col} BETWEEN ? AND ?", [normalise_time(value), normalise_time(value, upper=True)]
        return f"{col} = ?", [value]
    # SQLite's LIKE ignores ASCII case and its GLOB does not; PostgreSQL has ILIKE and LIKE for that
    postgres = dialect == "postgresql"
    if key.match == "pn":
        if "*" in value or "?" in value:
            return f"{col} {'ILIKE' if postgres else 'LIKE'} ? ESCAPE '\\'", [_like_pattern(value)]
        return f"lower({col}) = lower(?)", [value.rstrip("^")]
    # string: case-sensitive, as PS3.4 C.2.2.2.4 requires for these VRs
    if "*" in value or "?" in value:
        if postgres:
            return f"{col} LIKE ? ESCAPE '\\'", [_like_pattern(value)]
        return f"{col} GLOB ?", [_glob_escape(value)]
    return f"{col} = ?", [value]


def _level_keys(level: str) -> list[str]:
    allowed = LEVELS[: LEVELS.index(level) + 1]
    return [kw for kw, k in KEYS.items() if k.level in allowed]


def build_query(identifier: Dataset, level: str, model: str,
                dialect: str = "sqlite") -> tuple[str, list[Any], list[str]]:
    """SQL selecting one row per matching entity at ``level``; returns (sql, params, columns).

    Result columns are named by the attribute keywords (quoted: PostgreSQL folds names)."""
    where: list[str] = []
    params: list[Any] = []
    for kw in _level_keys(level):
        if kw in identifier:
            try:
                raw = identifier[kw].value
            except Exception as exc:
                raise QueryError(IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS, f"cannot decode key {kw}: {exc}") from exc
            cond = _condition(KEYS[kw], raw, dialect)
            if cond:
                where.append(cond[0])
                params.extend(cond[1])
    columns = _level_keys(level)
    if level == "PATIENT":
        select = ", ".join(
            f'{KEYS[c].sql} AS "{c}"' if c == "PatientID" or KEYS[c].match == "count"
            else f'MAX({KEYS[c].sql}) AS "{c}"'
            for c in columns
        )
        group = " GROUP BY st.patient_id"
    else:
        select = ", ".join(f'{KEYS[c].sql} AS "{c}"' for c in columns)
        group = ""
    order = {
        "PATIENT": " ORDER BY st.patient_id",
        "STUDY": " ORDER BY st.study_date, st.study_time, st.study_uid",
        "SERIES": " ORDER BY se.series_number, se.series_uid",
        "IMAGE": " ORDER BY i.instance_number, i.sop_instance_uid",
    }[level]
    sql = f"SELECT {select} {_FROM[level]}"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += group + order
    if dialect == "postgresql":
        sql = sql.replace("group_concat(", "string_agg(")
    return sql, params, columns


def find(index: Index, identifier: Dataset, sop_class_uid: str, retrieve_ae: str) -> Iterator[Dataset]:
    """Yield one response identifier per match (C-FIND pending responses)."""
    model = model_of(sop_class_uid)
    level = query_level(identifier, model)
    sql, params, _ = build_query(identifier, level, model, index.dialect)
    requested = [e.keyword for e in identifier
                 if e.keyword and e.keyword not in ("QueryRetrieveLevel", "SpecificCharacterSet")]
    always = [_UNIQUE[lv] for lv in LEVELS[: LEVELS.index(level) + 1]
              if not (model == "STUDY_ROOT" and lv == "PATIENT")]
    for row in index.query(sql, params):
        rsp = Dataset()
        rsp.QueryRetrieveLevel = level
        values = dict(row)
        non_ascii = False
        for kw in dict.fromkeys([*always, *requested]):
            if kw in values:
                v = values[kw]
                if isinstance(v, str):
                    non_ascii |= not v.isascii()
                setattr(rsp, kw, "" if v is None else v)
            elif kw == "RetrieveAETitle":
                rsp.RetrieveAETitle = retrieve_ae
            else:
                elem = identifier[kw]
                setattr(rsp, kw, [] if elem.VR == "SQ" else None)
        if non_ascii:
            rsp.SpecificCharacterSet = "ISO_IR 192"
        yield rsp


def select_instances(index: Index, identifier: Dataset, sop_class_uid: str) -> list[StoredInstance]:
    """Instances addressed by a C-MOVE/C-GET identifier."""
    model = model_of(sop_class_uid)
    level = query_level(identifier, model)
    unique = _UNIQUE[level]
    if not str(identifier.get(unique, "") or "").strip():
        raise QueryError(IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS, f"retrieve at {level} level needs {unique}")
    sql, params, _ = build_query(identifier, level, model, index.dialect)
    keys = [row[unique] for row in index.query(sql, params)]
    if level == "PATIENT":
        studies = [r[0] for r in index.query(
            f"SELECT study_uid FROM studies WHERE patient_id IN ({', '.join('?' * len(keys))})", keys
        )] if keys else []
        return index.instances_where("study_uid", studies)
    column = {"STUDY": "study_uid", "SERIES": "series_uid", "IMAGE": "sop_instance_uid"}[level]
    return index.instances_where(column, keys)
