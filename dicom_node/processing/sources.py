"""Where a job's series and the other series of its study come from.

The node reads them from its store and index (``StoredSeries``); ``dicom-node process``
from a folder (``FolderSeries``). The processing code sees only ``SeriesSource``, so both
run the same steps on the same files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, Sequence

from pydicom.dataset import Dataset

from dicom_node.index import Index
from dicom_node.processing.load import read_headers
from dicom_node.store import InstanceStore


class SeriesSource(Protocol):
    def series_paths(self, series_uid: str) -> list[Path]:
        """The files of one series."""
        ...

    def series_headers(self, series_uid: str) -> list[Dataset]:
        """The headers (no pixel data) of one series' instances."""
        ...

    def study_series(self, series_uid: str) -> dict[str, list[Path]]:
        """The other series of the same study that are complete: series UID -> files."""
        ...


class StoredSeries:
    """Series in the node's store, found through its index."""

    def __init__(self, index: Index, store: InstanceStore) -> None:
        self.index = index
        self.store = store

    def series_paths(self, series_uid: str) -> list[Path]:
        return [self.store.abspath(i.path) for i in self.index.series_instances(series_uid)]

    def series_headers(self, series_uid: str) -> list[Dataset]:
        return read_headers(self.series_paths(series_uid))

    def study_series(self, series_uid: str) -> dict[str, list[Path]]:
        instances = self.index.series_instances(series_uid)
        if not instances:
            return {}
        others: dict[str, list[Path]] = {}
        for inst in self.index.instances_where("study_uid", [instances[0].study_uid]):
            if inst.series_uid != series_uid:
                others.setdefault(inst.series_uid, []).append(self.store.abspath(inst.path))
        # a series still arriving is not used: its completion queues the work that will use it
        return {uid: paths for uid, paths in others.items() if self.index.series_state(uid) == "complete"}


class FolderSeries:
    """The DICOM files under a folder, grouped by series; files that are not DICOM are skipped."""

    def __init__(self, files: Sequence[Path]) -> None:
        self._paths: dict[str, list[Path]] = {}
        self._headers: dict[str, list[Dataset]] = {}
        self._study: dict[str, str] = {}
        for f in files:
            try:
                headers = read_headers([f])  # one per frame of a multi-frame image
            except Exception:  # noqa: BLE001 - not DICOM (a README, truth.npz, ...): not part of any series
                continue
            if not headers:
                continue
            uid = str(headers[0].get("SeriesInstanceUID", ""))
            self._paths.setdefault(uid, []).append(f)
            self._headers.setdefault(uid, []).extend(headers)
            self._study.setdefault(uid, str(headers[0].get("StudyInstanceUID", "")))

    @classmethod
    def scan(cls, folder: Path) -> "FolderSeries":
        """Every file under ``folder``, in name order."""
        return cls(sorted(f for f in Path(folder).rglob("*") if f.is_file()))

    @property
    def series_uids(self) -> list[str]:
        return list(self._paths)

    def series_paths(self, series_uid: str) -> list[Path]:
        return list(self._paths.get(series_uid, []))

    def series_headers(self, series_uid: str) -> list[Dataset]:
        return list(self._headers.get(series_uid, []))

    def study_series(self, series_uid: str) -> dict[str, list[Path]]:
        study = self._study.get(series_uid)
        return {uid: list(paths) for uid, paths in self._paths.items()
                if uid != series_uid and self._study[uid] == study}
