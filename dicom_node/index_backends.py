"""Where the index lives: SQLite under the storage directory (the embedded default) or PostgreSQL.

``Index`` (``dicom_node.index``) holds all SQL and speaks one dialect-neutral subset of it
(``?`` parameters, ``ON CONFLICT``, ``RETURNING``); a backend gives it connections, runs
transactions, and creates or upgrades the schema on start:

- ``SQLiteBackend``: one writer connection guarded by a lock (SQLite allows one writer at a
  time anyway) and one reader connection per thread, in WAL mode.
- ``PostgresBackend`` (``[index] url = "postgresql://USER@HOST:PORT/DB"``, psycopg 3): one
  connection per thread; every transaction is a PostgreSQL transaction, so several node
  processes can share one index. Schema creation takes an advisory lock, so that nodes
  starting together do not race.

The schema is versioned (``meta.schema_version``); ``MIGRATIONS`` upgrades an older index in
order, idempotently, and a newer one is refused rather than misread.
"""

from __future__ import annotations

import re
import sqlite3
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Protocol

SCHEMA_VERSION = 1

_TABLES = """
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
    state TEXT NOT NULL DEFAULT 'open',
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
    path TEXT NOT NULL,
    size INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
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
    state TEXT NOT NULL,
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
# version -> statements that bring an index of the version before it to this one
MIGRATIONS: dict[int, tuple[str, ...]] = {}


def schema(dialect: str) -> list[str]:
    """The statements creating the current schema in ``dialect`` ("sqlite" or "postgresql")."""
    text = _TABLES
    if dialect == "postgresql":
        # REAL is 4 bytes in PostgreSQL: time stamps need double precision
        text = (text.replace("INTEGER PRIMARY KEY AUTOINCREMENT", "BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY")
                .replace(" REAL", " DOUBLE PRECISION").replace("size INTEGER", "size BIGINT"))
    return [s.strip() for s in text.split(";") if s.strip()]


class Connection(Protocol):
    def execute(self, sql: str, params: Any = ()) -> Any: ...


class SchemaError(RuntimeError):
    """The index was written by a newer version of the node."""


def _upgrade(conn: Connection, dialect: str) -> None:
    """Create the schema if missing; apply the migrations an older index lacks."""
    for statement in schema(dialect):
        conn.execute(statement)
    row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    if row is None:
        conn.execute("INSERT INTO meta(key, value) VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
        return
    found = int(row[0])
    if found > SCHEMA_VERSION:
        raise SchemaError(f"the index has schema version {found}; this node knows up to {SCHEMA_VERSION}")
    for version in range(found + 1, SCHEMA_VERSION + 1):
        for statement in MIGRATIONS.get(version, ()):
            conn.execute(statement)
        conn.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(version),))


class SQLiteBackend:
    dialect = "sqlite"

    def __init__(self, path: Path, synchronous: str = "normal") -> None:
        if synchronous not in ("normal", "full"):
            raise ValueError(f"synchronous must be 'normal' or 'full', not {synchronous!r}")
        self.synchronous = synchronous
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._write_lock = threading.RLock()
        self._local = threading.local()
        self._writer = self._connect()
        with self.transaction() as conn:
            _upgrade(conn, self.dialect)

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=30.0, check_same_thread=False, isolation_level=None)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={self.synchronous.upper()}")
        conn.execute("PRAGMA foreign_keys=ON")
        return conn

    @property
    def reader(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._connect()
            conn.execute("PRAGMA query_only=ON")
            self._local.conn = conn
        return conn

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        with self._write_lock:
            self._writer.execute("BEGIN IMMEDIATE")
            try:
                yield self._writer
            except BaseException:
                self._writer.execute("ROLLBACK")
                raise
            self._writer.execute("COMMIT")

    def close(self) -> None:
        with self._write_lock:
            self._writer.close()
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None


class Row(tuple):
    """A result row read by position or by column name (as ``sqlite3.Row``), and ``dict(row)``."""

    _names: tuple[str, ...] = ()

    def __new__(cls, names: tuple[str, ...], values: Any) -> "Row":
        row = super().__new__(cls, values)
        row._names = names
        return row

    def keys(self) -> tuple[str, ...]:
        return self._names

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, str):
            return tuple.__getitem__(self, self._names.index(key))
        return tuple.__getitem__(self, key)


_PARAMETER = re.compile(r"\?")


def _postgres_sql(sql: str) -> str:
    """``?`` parameters as psycopg's ``%s`` (a literal ``%`` doubled first)."""
    return _PARAMETER.sub("%s", sql.replace("%", "%%"))


class _PostgresConnection:
    """A psycopg connection that takes the index's SQL (``?`` parameters) and gives ``Row`` rows."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn

    def execute(self, sql: str, params: Any = ()) -> Any:
        return self.conn.execute(_postgres_sql(sql), tuple(params))


class PostgresBackend:
    dialect = "postgresql"
    SCHEMA_LOCK = 7_272_026  # advisory lock id held while the schema is created or upgraded

    def __init__(self, url: str) -> None:
        import psycopg  # noqa: PLC0415  (only where the index is in PostgreSQL)

        self._psycopg = psycopg
        self.url = url
        self._local = threading.local()
        self._all: list[Any] = []
        self._lock = threading.Lock()
        with self.transaction() as conn:
            conn.execute("SELECT pg_advisory_xact_lock(?)", (self.SCHEMA_LOCK,))
            _upgrade(conn, self.dialect)

    def _connection(self) -> _PostgresConnection:
        conn = getattr(self._local, "conn", None)
        if conn is None or conn.conn.closed:
            raw = self._psycopg.connect(self.url, autocommit=True, row_factory=_row_factory)
            conn = _PostgresConnection(raw)
            self._local.conn = conn
            with self._lock:
                self._all.append(raw)
        return conn

    @property
    def reader(self) -> _PostgresConnection:
        return self._connection()

    @contextmanager
    def transaction(self) -> Iterator[_PostgresConnection]:
        conn = self._connection()
        with conn.conn.transaction():
            yield conn

    def close(self) -> None:
        with self._lock:
            for raw in self._all:
                raw.close()
            self._all.clear()
        self._local = threading.local()


def _row_factory(cursor: Any):
    names = tuple(d.name for d in cursor.description or ())

    def make(values: Any) -> Row:
        return Row(names, values)

    return make
