"""Durable instance storage: files below ``<storage>/instances`` plus the SQLite index.

Write path (all before the C-STORE success status goes out): write the received bytes
to ``<storage>/tmp``, fsync, rename into ``instances/<study>/<series>/<sop>.dcm``, fsync
the directory, then index in one committed transaction. A crash at any point leaves
either nothing visible, or a complete file that the start-up check indexes.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import sqlite3
import threading
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from pynetdicom.dsutils import split_dataset

from dicom_node.index import Index
from dicom_node.instance import InstanceInfo, parse_instance
from dicom_node.logs import log_event

LOG = logging.getLogger("dicom_node.store")

# Errors that mean "no room / cannot write here", answered with 0xA700.
_RESOURCE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO}


class StorageUnavailable(OSError):
    """The store cannot take the instance now (disk full, read-only, permissions)."""


# SQLite result codes meaning "the volume cannot take it": FULL, IOERR, READONLY, CANTOPEN
_SQLITE_RESOURCE_CODES = {13, 10, 8, 14}


def _resource_error(exc: BaseException) -> StorageUnavailable | None:
    """The StorageUnavailable an exception amounts to, or None."""
    if isinstance(exc, StorageUnavailable):
        return exc
    if isinstance(exc, OSError) and exc.errno in _RESOURCE_ERRNOS:
        return StorageUnavailable(exc.errno, f"cannot store instance: {exc.strerror}")
    if isinstance(exc, sqlite3.OperationalError) and (
        getattr(exc, "sqlite_errorcode", 0) & 0xFF in _SQLITE_RESOURCE_CODES or "disk is full" in str(exc)
    ):
        return StorageUnavailable(errno.ENOSPC, f"cannot index instance: {exc}")
    return None


def _remove_quietly(path: Path) -> None:
    """Unlink if present; on a read-only or failing volume even that can fail (EROFS), which is
    no reason to turn an 'out of resources' answer into a crash of the handler."""
    try:
        path.unlink(missing_ok=True)
    except OSError:
        pass


@dataclass(frozen=True)
class PutResult:
    outcome: str  # stored | duplicate | replaced
    path: Path
    reopened_series: bool = False


@dataclass
class ConsistencyReport:
    temp_files_removed: int = 0
    rows_without_file: list[str] = field(default_factory=list)
    files_indexed: int = 0
    files_reindexed: int = 0
    files_quarantined: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not (self.rows_without_file or self.files_indexed or self.files_reindexed or self.files_quarantined)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _write_durably(path: Path, meta: bytes, body: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
    try:
        _write_all(fd, meta)
        _write_all(fd, body)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        _remove_quietly(path)
        raise
    os.close(fd)


@dataclass(frozen=True)
class StagedFile:
    path: Path
    future: Future
    size: int


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class InstanceStore:
    """Files + index; thread-safe, one instance per node process."""

    def __init__(self, root: Path, index: Index) -> None:
        self.root = Path(root)
        self.index = index
        self.instances_dir = self.root / "instances"
        self.tmp_dir = self.root / "tmp"
        self.quarantine_dir = self.root / "quarantine"
        for d in (self.instances_dir, self.tmp_dir):
            d.mkdir(parents=True, exist_ok=True)
        self._locks = [threading.Lock() for _ in range(64)]
        # fsyncs release the GIL: running them here overlaps them with parsing and indexing
        self._io = ThreadPoolExecutor(max_workers=8, thread_name_prefix="store-io")
        self._durable_dirs: set[Path] = set()
        self._dir_lock = threading.Lock()

    def relpath_for(self, info: InstanceInfo) -> str:
        # UIDs are validated (digits and dots only), so they are safe path parts.
        return f"instances/{info.study_uid}/{info.series_uid}/{info.sop_instance_uid}.dcm"

    def abspath(self, relpath: str) -> Path:
        return self.root / relpath

    def _ensure_dir(self, directory: Path) -> None:
        """Create ``directory`` and make its entry durable in its parents (once)."""
        if directory in self._durable_dirs:
            return
        with self._dir_lock:
            missing = []
            d = directory
            while not d.exists():
                missing.append(d)
                d = d.parent
            directory.mkdir(parents=True, exist_ok=True)
            for created in reversed(missing):
                _fsync_dir(created.parent)
            self._durable_dirs.add(directory)

    def stage(self, meta: bytes, body: bytes) -> "StagedFile":
        """Start writing and fsyncing the received bytes to a temp file, in the background.

        The caller checks the data set meanwhile, then calls :meth:`commit` or :meth:`discard`.
        """
        tmp = self.tmp_dir / f"{uuid.uuid4().hex}.part"
        return StagedFile(tmp, self._io.submit(_write_durably, tmp, meta, body), len(meta) + len(body))

    def discard(self, staged: "StagedFile") -> None:
        try:
            staged.future.result()
        except Exception:  # the write failed anyway; nothing to keep
            pass
        _remove_quietly(staged.path)

    def commit(self, info: InstanceInfo, staged: "StagedFile", calling_ae: str | None = None) -> PutResult:
        """Move a staged file into the store and index it; durable when this returns."""
        relpath = self.relpath_for(info)
        final = self.abspath(relpath)
        with self._locks[hash(info.sop_instance_uid) % len(self._locks)]:
            previous = self.index.get_instance(info.sop_instance_uid)
            if (
                previous is not None
                and previous.sha256 == info.content_sha256
                and previous.path == relpath
                and self.abspath(previous.path).exists()
            ):
                self.discard(staged)
                return PutResult("duplicate", final)
            moved, backup = False, None
            try:
                staged.future.result()
                self._ensure_dir(final.parent)
                if previous is not None and final.exists():
                    # replacing: keep the old file until the index says the new one is in place
                    backup = self.tmp_dir / f"{uuid.uuid4().hex}.prev"
                    os.link(final, backup)
                try:
                    os.replace(staged.path, final)
                except FileNotFoundError:  # the directory vanished (removed by hand): recreate
                    self._durable_dirs.discard(final.parent)
                    self._ensure_dir(final.parent)
                    os.replace(staged.path, final)
                moved = True
                # The rename is visible at once (enough against a process crash); the directory
                # fsync makes it survive a power cut and runs while the index commits.
                dir_synced = self._io.submit(_fsync_dir, final.parent)
                try:
                    outcome = self.index.upsert_instance(info, relpath, staged.size, time.time(), calling_ae)
                finally:
                    dir_synced.result()
            except BaseException as exc:
                if moved:  # the index did not take it: the store must not keep an unindexed file
                    if backup is not None:
                        try:
                            os.replace(backup, final)
                            backup = None
                        except OSError:
                            pass
                    else:
                        _remove_quietly(final)
                _remove_quietly(staged.path)
                if backup is not None:
                    _remove_quietly(backup)
                unavailable = _resource_error(exc)
                if unavailable is not None:
                    raise unavailable from exc
                raise
            if backup is not None:
                _remove_quietly(backup)
            if outcome.previous is not None:
                if outcome.previous.path != relpath:
                    _remove_quietly(self.abspath(outcome.previous.path))
                log_event(
                    LOG,
                    "instance.replaced",
                    logging.WARNING,
                    sop_instance_uid=info.sop_instance_uid,
                    series_uid=info.series_uid,
                    old_sha256=outcome.previous.sha256[:16],
                    new_sha256=info.content_sha256[:16],
                    reason="same SOP Instance UID received with different content; newer kept",
                )
                return PutResult("replaced", final, outcome.series_reopened)
            return PutResult("stored", final, outcome.series_reopened)

    def put(self, info: InstanceInfo, meta: bytes, body: bytes, calling_ae: str | None = None) -> PutResult:
        """Store one instance durably; ``meta`` is preamble + file meta, ``body`` the data set."""
        return self.commit(info, self.stage(meta, body), calling_ae)

    def close(self) -> None:
        self._io.shutdown(wait=True)

    # -- start-up check ----------------------------------------------------
    @property
    def _clean_marker(self) -> Path:
        return self.root / "clean-shutdown"

    def begin_session(self) -> ConsistencyReport:
        """Start-up check: full reconciliation unless the last shutdown was clean."""
        clean = self._clean_marker.exists()
        self._clean_marker.unlink(missing_ok=True)
        _fsync_dir(self.root)
        return self.check_consistency(full=not clean)

    def end_session(self) -> None:
        """Record a clean shutdown (everything committed; no reconciliation needed)."""
        self.close()
        self._clean_marker.touch()
        _fsync_dir(self.root)

    def check_consistency(self, full: bool = True) -> ConsistencyReport:
        """Remove orphan temp files and (``full``) reconcile the index with the files.

        A file in the store without an index row was renamed into place but the node died
        before committing (its sender never got a success status): it is complete and
        fsync'd, so it is indexed rather than dropped. A row without a file is reported
        and removed. Unreadable files are moved to ``quarantine/``.
        """
        report = ConsistencyReport()
        for tmp in self.tmp_dir.iterdir():
            tmp.unlink(missing_ok=True)
            report.temp_files_removed += 1
        if not full:
            log_event(LOG, "store.consistency_check", mode="quick", temp_files_removed=report.temp_files_removed)
            return report

        indexed = self.index.all_instance_paths()
        on_disk: dict[str, Path] = {}
        for path in self.instances_dir.rglob("*.dcm"):
            on_disk[path.stem] = path

        for sop, rel in indexed.items():
            if sop not in on_disk or self.abspath(rel) != on_disk[sop]:
                if not self.abspath(rel).exists():
                    report.rows_without_file.append(sop)
                    self.index.delete_instance(sop)

        for sop, path in on_disk.items():
            rel = path.relative_to(self.root).as_posix()
            row = self.index.get_instance(sop)
            if row is not None and row.path == rel and row.size == path.stat().st_size:
                continue
            try:
                self._index_file(path, rel)
            except Exception as exc:  # anything unreadable is kept aside, not deleted
                self.quarantine_dir.mkdir(parents=True, exist_ok=True)
                target = self.quarantine_dir / path.name
                shutil.move(path, target)
                report.files_quarantined.append(str(target))
                log_event(LOG, "store.quarantined", logging.ERROR, path=rel, reason=str(exc))
                continue
            if row is None:
                report.files_indexed += 1
            else:
                report.files_reindexed += 1

        level = logging.INFO if report.clean else logging.WARNING
        log_event(
            LOG,
            "store.consistency_check",
            level,
            mode="full",
            temp_files_removed=report.temp_files_removed,
            rows_without_file=len(report.rows_without_file),
            files_indexed=report.files_indexed,
            files_reindexed=report.files_reindexed,
            files_quarantined=len(report.files_quarantined),
        )
        return report

    def _index_file(self, path: Path, relpath: str) -> None:
        file_meta, offset = split_dataset(path)
        with open(path, "rb") as fh:
            fh.seek(offset)
            body = fh.read()
        info = parse_instance(body, str(file_meta.TransferSyntaxUID))
        if self.relpath_for(info) != relpath:
            raise ValueError(f"file {relpath} holds instance {info.sop_instance_uid} of another location")
        self.index.upsert_instance(info, relpath, path.stat().st_size, path.stat().st_mtime, None)
