"""The node's index: studies, series, instances and jobs, in SQLite or PostgreSQL.

All SQL lives here, in the subset both databases speak (``?`` parameters, ``ON CONFLICT``,
``RETURNING``); ``dicom_node.index_backends`` gives the connections and transactions and
creates or upgrades the schema. The embedded default is SQLite under the storage directory:
with ``synchronous=NORMAL`` a committed transaction survives a crash of the process
(``kill -9``); after a crash of the machine the last commits may be missing, which is why the
instance files are the durable record (each fsync'd with its directory before the commit) and
the store's start-up check re-indexes files that lack a row after any unclean shutdown.
``synchronous="full"`` makes each commit itself durable at about one fsync per commit.
``[index] url = "postgresql://..."`` puts the same tables in PostgreSQL, shared by several nodes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

from dicom_node.index_backends import PostgresBackend, SQLiteBackend
from dicom_node.instance import InstanceInfo

INDEX_FILE = "index.sqlite"  # under the storage directory
NO_JOB = 0  # complete_series: completed, no work queued

_STUDY_COLUMNS = {
    "PatientID": "patient_id",
    "PatientName": "patient_name",
    "PatientBirthDate": "patient_birth_date",
    "PatientSex": "patient_sex",
    "StudyDate": "study_date",
    "StudyTime": "study_time",
    "AccessionNumber": "accession_number",
    "StudyID": "study_id",
    "StudyDescription": "study_description",
    "ReferringPhysicianName": "referring_physician_name",
}
_SERIES_COLUMNS = {
    "Modality": "modality",
    "SeriesNumber": "series_number",
    "SeriesDescription": "series_description",
    "SeriesDate": "series_date",
    "SeriesTime": "series_time",
    "BodyPartExamined": "body_part_examined",
    "ProtocolName": "protocol_name",
}


@dataclass(frozen=True)
class StoredInstance:
    sop_instance_uid: str
    sop_class_uid: str
    series_uid: str
    study_uid: str
    transfer_syntax_uid: str
    path: str
    size: int
    sha256: str


@dataclass(frozen=True)
class Job:
    id: int
    kind: str
    series_uid: str | None
    study_uid: str | None
    state: str
    attempts: int
    max_attempts: int
    last_error: str | None
    result: str | None
    created_at: float
    updated_at: float
    not_before: float


@dataclass(frozen=True)
class UpsertOutcome:
    previous: StoredInstance | None
    series_reopened: bool


class Index:
    """Repository of the node's state: SQLite at ``path`` (default), or PostgreSQL at ``url``."""

    def __init__(self, path: Path | None = None, synchronous: str = "normal", url: str | None = None) -> None:
        if url:
            self.backend: SQLiteBackend | PostgresBackend = PostgresBackend(url)
        elif path is not None:
            self.backend = SQLiteBackend(Path(path), synchronous)
        else:
            raise ValueError("an index needs a SQLite path or a PostgreSQL url")
        self.dialect = self.backend.dialect

    @property
    def reader(self) -> Any:
        """A connection for queries (private to the calling thread)."""
        return self.backend.reader

    def close(self) -> None:
        self.backend.close()

    def transaction(self) -> Any:
        """``with index.transaction() as conn:`` — one committed, durable transaction."""
        return self.backend.transaction()

    def _lock_rows(self, skip_locked: bool = False) -> str:
        """What a SELECT inside a transaction adds to keep the rows it read until the commit.

        SQLite's write transactions (BEGIN IMMEDIATE) are serial already; in PostgreSQL two
        nodes could otherwise both complete a series, or both claim a job (the second claimant
        skips a locked job instead of waiting for it).
        """
        if self.dialect != "postgresql":
            return ""
        return " FOR UPDATE SKIP LOCKED" if skip_locked else " FOR UPDATE"

    # -- instances ---------------------------------------------------------
    def get_instance(self, sop_instance_uid: str) -> StoredInstance | None:
        row = self.reader.execute(
            "SELECT sop_instance_uid, sop_class_uid, series_uid, study_uid, transfer_syntax_uid, path, size, sha256"
            " FROM instances WHERE sop_instance_uid = ?",
            (sop_instance_uid,),
        ).fetchone()
        return StoredInstance(*row) if row else None

    def upsert_instance(
        self, info: InstanceInfo, relpath: str, size: int, received_at: float, calling_ae: str | None
    ) -> UpsertOutcome:
        """Index one stored instance (and its series/study) in one transaction."""
        with self.transaction() as conn:
            row = conn.execute(
                "SELECT sop_instance_uid, sop_class_uid, series_uid, study_uid, transfer_syntax_uid, path, size, sha256"
                " FROM instances WHERE sop_instance_uid = ?",
                (info.sop_instance_uid,),
            ).fetchone()
            previous = StoredInstance(*row) if row else None
            study = info.level("study")
            cols = [_STUDY_COLUMNS[k] for k in study]
            conn.execute(
                f"INSERT INTO studies(study_uid, {', '.join(cols)}) VALUES (?{', ?' * len(cols)})"
                f" ON CONFLICT(study_uid) DO UPDATE SET "
                + ", ".join(f"{c} = COALESCE(excluded.{c}, studies.{c})" for c in cols),
                (info.study_uid, *study.values()),
            )
            series = info.level("series")
            cols = [_SERIES_COLUMNS[k] for k in series]
            state = conn.execute("SELECT state FROM series WHERE series_uid = ?", (info.series_uid,)).fetchone()
            conn.execute(
                f"INSERT INTO series(series_uid, study_uid, first_received_at, last_received_at, {', '.join(cols)})"
                f" VALUES (?, ?, ?, ?{', ?' * len(cols)})"
                " ON CONFLICT(series_uid) DO UPDATE SET state = 'open', completed_at = NULL,"
                " last_received_at = excluded.last_received_at, "
                + ", ".join(f"{c} = COALESCE(excluded.{c}, series.{c})" for c in cols),
                (info.series_uid, info.study_uid, received_at, received_at, *series.values()),
            )
            conn.execute(
                "INSERT INTO instances(sop_instance_uid, sop_class_uid, series_uid, study_uid,"
                " instance_number, transfer_syntax_uid, path, size, sha256, received_at, calling_ae)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(sop_instance_uid) DO UPDATE SET "
                + ", ".join(f"{c} = excluded.{c}" for c in ("sop_class_uid", "series_uid", "study_uid",
                                                           "instance_number", "transfer_syntax_uid", "path",
                                                           "size", "sha256", "received_at", "calling_ae")),
                (
                    info.sop_instance_uid,
                    info.sop_class_uid,
                    info.series_uid,
                    info.study_uid,
                    info.attributes.get("InstanceNumber"),
                    info.transfer_syntax_uid,
                    relpath,
                    size,
                    info.content_sha256,
                    received_at,
                    calling_ae,
                ),
            )
        return UpsertOutcome(previous=previous, series_reopened=bool(state and state[0] == "complete"))

    def delete_instance(self, sop_instance_uid: str) -> None:
        with self.transaction() as conn:
            conn.execute("DELETE FROM instances WHERE sop_instance_uid = ?", (sop_instance_uid,))

    def series_instances(self, series_uid: str) -> list[StoredInstance]:
        rows = self.reader.execute(
            "SELECT sop_instance_uid, sop_class_uid, series_uid, study_uid, transfer_syntax_uid, path, size, sha256"
            " FROM instances WHERE series_uid = ? ORDER BY instance_number, sop_instance_uid",
            (series_uid,),
        ).fetchall()
        return [StoredInstance(*r) for r in rows]

    def instances_where(self, column: str, values: Iterable[str]) -> list[StoredInstance]:
        """Instances whose ``column`` (sop_instance_uid/series_uid/study_uid) is in ``values``."""
        assert column in ("sop_instance_uid", "series_uid", "study_uid")
        values = list(values)
        out: list[StoredInstance] = []
        for start in range(0, len(values), 500):
            chunk = values[start : start + 500]
            rows = self.reader.execute(
                "SELECT sop_instance_uid, sop_class_uid, series_uid, study_uid, transfer_syntax_uid, path, size,"
                f" sha256 FROM instances WHERE {column} IN ({', '.join('?' * len(chunk))})"
                " ORDER BY study_uid, series_uid, instance_number, sop_instance_uid",
                chunk,
            ).fetchall()
            out.extend(StoredInstance(*r) for r in rows)
        return out

    def all_instance_paths(self) -> dict[str, str]:
        """sop_instance_uid -> relative path, for the start-up consistency check."""
        return {r[0]: r[1] for r in self.reader.execute("SELECT sop_instance_uid, path FROM instances")}

    def count_instances(self) -> int:
        return self.reader.execute("SELECT COUNT(*) FROM instances").fetchone()[0]

    # -- series completion -------------------------------------------------
    def open_series_idle_since(self, before: float) -> list[str]:
        rows = self.reader.execute(
            "SELECT series_uid FROM series WHERE state = 'open' AND last_received_at <= ?", (before,)
        ).fetchall()
        return [r[0] for r in rows]

    def oldest_open_series_activity(self) -> float | None:
        """The earliest last-received time among open series (None: no open series)."""
        row = self.reader.execute("SELECT MIN(last_received_at) FROM series WHERE state = 'open'").fetchone()
        return None if row is None or row[0] is None else float(row[0])

    def complete_series(self, series_uid: str, before: float, job_kind: str | None, max_attempts: int,
                        study_delay_s: float | None = None) -> int | None:
        """Mark a still-idle series complete and enqueue its job (if any) atomically.

        ``study_delay_s`` (not None) makes the job one of the study, due that long after the
        last of its series completed: a pending, never started job of the same kind and study
        takes this series instead of a new job being queued, and waits again.

        Returns the job id, ``NO_JOB`` (0) when completed without a job, or None when a new
        instance arrived meanwhile (not completed).
        """
        now = time.time()
        with self.transaction() as conn:
            row = conn.execute(
                "SELECT study_uid FROM series WHERE series_uid = ? AND state = 'open' AND last_received_at <= ?"
                + self._lock_rows(), (series_uid, before),
            ).fetchone()
            if row is None:  # a new instance arrived meanwhile
                return None
            conn.execute(
                "UPDATE series SET state = 'complete', completed_at = ? WHERE series_uid = ?", (now, series_uid)
            )
            if job_kind is None:
                return NO_JOB
            not_before = 0.0 if study_delay_s is None else now + study_delay_s
            if study_delay_s is not None:
                waiting = conn.execute(
                    "SELECT id FROM jobs WHERE kind = ? AND study_uid = ? AND state = 'pending' AND attempts = 0"
                    " ORDER BY id DESC LIMIT 1" + self._lock_rows(), (job_kind, row[0]),
                ).fetchone()
                if waiting is not None:
                    conn.execute("UPDATE jobs SET series_uid = ?, not_before = ?, updated_at = ? WHERE id = ?",
                                 (series_uid, not_before, now, waiting[0]))
                    return int(waiting[0])
            cur = conn.execute(
                "INSERT INTO jobs(kind, series_uid, study_uid, state, max_attempts, created_at, updated_at,"
                " not_before) VALUES (?, ?, ?, 'pending', ?, ?, ?, ?) RETURNING id",
                (job_kind, series_uid, row[0], max_attempts, now, now, not_before),
            )
            return int(cur.fetchone()[0])

    def series_state(self, series_uid: str) -> str | None:
        row = self.reader.execute("SELECT state FROM series WHERE series_uid = ?", (series_uid,)).fetchone()
        return row[0] if row else None

    # -- jobs ----------------------------------------------------------------
    _JOB_COLS = (
        "id, kind, series_uid, study_uid, state, attempts, max_attempts, last_error, result,"
        " created_at, updated_at, not_before"
    )

    def claim_job(self, now: float | None = None, one_per_study: Sequence[str] = ()) -> Job | None:
        """Take the oldest runnable pending job: state -> running, attempts + 1.

        A job of a kind in ``one_per_study`` waits while one of the same kind and study runs
        (a later one must not finish first and be overwritten by an older state of the study).
        """
        now = time.time() if now is None else now
        serial = list(one_per_study)
        guard = ""
        if serial:
            guard = (f" AND NOT (kind IN ({', '.join('?' * len(serial))}) AND EXISTS (SELECT 1 FROM jobs r"
                     " WHERE r.state = 'running' AND r.kind = jobs.kind AND r.study_uid = jobs.study_uid))")
        with self.transaction() as conn:
            row = conn.execute(
                f"SELECT id FROM jobs WHERE state = 'pending' AND not_before <= ?{guard} ORDER BY id LIMIT 1"
                + self._lock_rows(skip_locked=True),
                (now, *serial),
            ).fetchone()
            if row is None:
                return None
            conn.execute(
                "UPDATE jobs SET state = 'running', attempts = attempts + 1, updated_at = ? WHERE id = ?",
                (now, row[0]),
            )
            job = conn.execute(f"SELECT {self._JOB_COLS} FROM jobs WHERE id = ?", (row[0],)).fetchone()
        return Job(*job)

    def finish_job(self, job_id: int, result: str) -> None:
        with self.transaction() as conn:
            conn.execute(
                "UPDATE jobs SET state = 'done', result = ?, last_error = NULL, updated_at = ? WHERE id = ?",
                (result, time.time(), job_id),
            )

    def fail_job(self, job_id: int, error: str, retry_at: float | None) -> str:
        """Record a failed attempt: back to pending at ``retry_at``, or parked as failed."""
        state = "pending" if retry_at is not None else "failed"
        with self.transaction() as conn:
            conn.execute(
                "UPDATE jobs SET state = ?, last_error = ?, updated_at = ?, not_before = ? WHERE id = ?",
                (state, error[:2000], time.time(), retry_at or 0, job_id),
            )
        return state

    def requeue_job(self, job_id: int) -> bool:
        """Put a failed (or done) job back in the queue with a fresh attempt budget."""
        with self.transaction() as conn:
            cur = conn.execute(
                "UPDATE jobs SET state = 'pending', attempts = 0, not_before = 0, updated_at = ?"
                " WHERE id = ? AND state IN ('failed', 'done')",
                (time.time(), job_id),
            )
            return cur.rowcount == 1

    def recover_interrupted_jobs(self) -> int:
        """Jobs left 'running' by a crash go back to 'pending' (their attempt stays counted)."""
        with self.transaction() as conn:
            cur = conn.execute(
                "UPDATE jobs SET state = 'pending', last_error = 'interrupted by node restart', updated_at = ?"
                " WHERE state = 'running'",
                (time.time(),),
            )
            return cur.rowcount

    def jobs(self, states: Iterable[str] | None = None) -> list[Job]:
        sql = f"SELECT {self._JOB_COLS} FROM jobs"
        params: list[Any] = []
        if states:
            states = list(states)
            sql += f" WHERE state IN ({', '.join('?' * len(states))})"
            params = states
        return [Job(*r) for r in self.reader.execute(sql + " ORDER BY id", params)]

    def get_job(self, job_id: int) -> Job | None:
        row = self.reader.execute(f"SELECT {self._JOB_COLS} FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return Job(*row) if row else None

    # -- queries (used by dicom_node.qr) -----------------------------------
    def query(self, sql: str, params: Iterable[Any]) -> Iterator[Any]:
        yield from self.reader.execute(sql, list(params))


def index_path(storage_dir: Path) -> Path:
    """Where the index of a node storing under ``storage_dir`` lives."""
    return Path(storage_dir) / INDEX_FILE


def open_index(storage_dir: Path, synchronous: str = "normal", url: str = "") -> Index:
    """The index of the node storing under ``storage_dir`` (SQLite, created if missing), or the
    PostgreSQL index at ``url`` when one is configured (``[index] url``)."""
    return Index(index_path(storage_dir), synchronous, url=url or None)
