"""The node's index: studies, series, instances and jobs in SQLite.

One writer connection (guarded by a lock; SQLite allows one writer at a time anyway)
and one reader connection per thread, in WAL mode. With ``synchronous=NORMAL`` a
committed transaction survives a crash of the process (``kill -9``); after a crash of
the machine the last commits may be missing, which is why the instance files are the
durable record (each fsync'd with its directory before the commit) and the store's
start-up check re-indexes files that lack a row after any unclean shutdown.
``synchronous="full"`` makes each commit itself durable at about one fsync per commit.
All SQL lives here: a PostgreSQL-backed repository can later implement the same methods.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

from dicom_node.instance import InstanceInfo

SCHEMA_VERSION = 1
INDEX_FILE = "index.sqlite"  # under the storage directory
NO_JOB = 0  # complete_series: completed, no work queued

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS studies (
    study_uid TEXT PRIMARY KEY,
    patient_id TEXT, patient_name TEXT, patient_birth_date TEXT, patient_sex TEXT,
    study_date TEXT, study_time TEXT, accession_number TEXT, study_id TEXT,
    study_description TEXT, referring_physician_name TEXT
);
CREATE INDEX IF NOT EXISTS studies_patient ON studies(patient_id);
CREATE TABLE IF NOT EXISTS series (
    series_uid TEXT PRIMARY KEY,
    study_uid TEXT NOT NULL,
    modality TEXT, series_number INTEGER, series_description TEXT,
    series_date TEXT, series_time TEXT, body_part_examined TEXT, protocol_name TEXT,
    state TEXT NOT NULL DEFAULT 'open',          -- open | complete
    first_received_at REAL NOT NULL,
    last_received_at REAL NOT NULL,
    completed_at REAL
);
CREATE INDEX IF NOT EXISTS series_study ON series(study_uid);
CREATE INDEX IF NOT EXISTS series_open ON series(state, last_received_at);
CREATE TABLE IF NOT EXISTS instances (
    sop_instance_uid TEXT PRIMARY KEY,
    sop_class_uid TEXT NOT NULL,
    series_uid TEXT NOT NULL,
    study_uid TEXT NOT NULL,
    instance_number INTEGER,
    transfer_syntax_uid TEXT NOT NULL,
    path TEXT NOT NULL,                          -- relative to the storage root
    size INTEGER NOT NULL,
    sha256 TEXT NOT NULL,                        -- of the encoded data set as received
    received_at REAL NOT NULL,
    calling_ae TEXT
);
CREATE INDEX IF NOT EXISTS instances_series ON instances(series_uid);
CREATE INDEX IF NOT EXISTS instances_study ON instances(study_uid);
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    series_uid TEXT,
    study_uid TEXT,
    state TEXT NOT NULL,                         -- pending | running | done | failed
    attempts INTEGER NOT NULL DEFAULT 0,
    max_attempts INTEGER NOT NULL,
    last_error TEXT,
    result TEXT,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    not_before REAL NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state, not_before);
"""

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
    """SQLite-backed repository of the node's state."""

    def __init__(self, path: Path, synchronous: str = "normal") -> None:
        if synchronous not in ("normal", "full"):
            raise ValueError(f"synchronous must be 'normal' or 'full', not {synchronous!r}")
        self.synchronous = synchronous
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._write_lock = threading.RLock()
        self._local = threading.local()
        self._writer = self._connect()
        with self._write_lock, self._writer:
            self._writer.executescript(_SCHEMA)
            self._writer.execute(
                "INSERT OR IGNORE INTO meta(key, value) VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),)
            )

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=30.0, check_same_thread=False, isolation_level=None)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={self.synchronous.upper()}")
        conn.execute("PRAGMA foreign_keys=ON")
        return conn

    @property
    def reader(self) -> sqlite3.Connection:
        """A connection for queries, private to the calling thread."""
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._connect()
            conn.execute("PRAGMA query_only=ON")
            self._local.conn = conn
        return conn

    def close(self) -> None:
        with self._write_lock:
            self._writer.close()
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    # -- transactions ------------------------------------------------------
    class _Tx:
        def __init__(self, index: "Index") -> None:
            self.index = index

        def __enter__(self) -> sqlite3.Connection:
            self.index._write_lock.acquire()
            self.index._writer.execute("BEGIN IMMEDIATE")
            return self.index._writer

        def __exit__(self, exc_type: Any, *_: Any) -> None:
            try:
                self.index._writer.execute("ROLLBACK" if exc_type else "COMMIT")
            finally:
                self.index._write_lock.release()

    def transaction(self) -> "Index._Tx":
        """``with index.transaction() as conn:`` — one committed, durable transaction."""
        return Index._Tx(self)

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
                + ", ".join(f"{c} = COALESCE(excluded.{c}, {c})" for c in cols),
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
                + ", ".join(f"{c} = COALESCE(excluded.{c}, {c})" for c in cols),
                (info.series_uid, info.study_uid, received_at, received_at, *series.values()),
            )
            conn.execute(
                "INSERT OR REPLACE INTO instances(sop_instance_uid, sop_class_uid, series_uid, study_uid,"
                " instance_number, transfer_syntax_uid, path, size, sha256, received_at, calling_ae)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
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
                "SELECT study_uid FROM series WHERE series_uid = ? AND state = 'open' AND last_received_at <= ?",
                (series_uid, before),
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
                    " ORDER BY id DESC LIMIT 1", (job_kind, row[0]),
                ).fetchone()
                if waiting is not None:
                    conn.execute("UPDATE jobs SET series_uid = ?, not_before = ?, updated_at = ? WHERE id = ?",
                                 (series_uid, not_before, now, waiting[0]))
                    return int(waiting[0])
            cur = conn.execute(
                "INSERT INTO jobs(kind, series_uid, study_uid, state, max_attempts, created_at, updated_at,"
                " not_before) VALUES (?, ?, ?, 'pending', ?, ?, ?, ?)",
                (job_kind, series_uid, row[0], max_attempts, now, now, not_before),
            )
            return int(cur.lastrowid)

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
                f"SELECT id FROM jobs WHERE state = 'pending' AND not_before <= ?{guard} ORDER BY id LIMIT 1",
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
    def query(self, sql: str, params: Iterable[Any]) -> Iterator[sqlite3.Row]:
        yield from self.reader.execute(sql, list(params))


def index_path(storage_dir: Path) -> Path:
    """Where the index of a node storing under ``storage_dir`` lives."""
    return Path(storage_dir) / INDEX_FILE


def open_index(storage_dir: Path, synchronous: str = "normal") -> Index:
    """The index of the node storing under ``storage_dir`` (created if missing)."""
    return Index(index_path(storage_dir), synchronous)
