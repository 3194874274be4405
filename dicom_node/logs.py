"""Structured logging: one JSON object per line, one line per event.

Callers pass an event name and fields (``log_event(log, "instance.stored", sop=...)``);
patient names and other identifying free text are never passed as fields.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import Any


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": getattr(record, "event", None) or record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if fields:
            entry.update(fields)
        elif getattr(record, "event", None) is None:
            entry.pop("event")
            entry["msg"] = record.getMessage()
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info).splitlines()[-1]
        return json.dumps(entry, default=str, ensure_ascii=False)


def log_event(logger: logging.Logger, event: str, level: int = logging.INFO, **fields: Any) -> None:
    """Emit one structured event line."""
    logger.log(level, event, extra={"event": event, "fields": fields})


def setup_logging(log_dir: Path | None = None, level: int = logging.INFO) -> None:
    """JSON lines to stderr and, if given, to ``log_dir/node.jsonl``."""
    root = logging.getLogger()
    root.handlers.clear()
    root.setLevel(level)
    fmt = JsonFormatter()
    err = logging.StreamHandler(sys.stderr)
    err.setFormatter(fmt)
    root.addHandler(err)
    if log_dir is not None:
        log_dir.mkdir(parents=True, exist_ok=True)
        fh = logging.FileHandler(log_dir / "node.jsonl", encoding="utf-8")
        fh.setFormatter(fmt)
        root.addHandler(fh)
    # pynetdicom logs every PDU at INFO/DEBUG with dataset dumps (patient names
    # included); keep only its warnings and errors.
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    # highdicom narrates every attribute copy at INFO
    logging.getLogger("highdicom").setLevel(logging.WARNING)
