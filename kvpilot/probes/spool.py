"""A local JSONL spool for samples the store could not take, replayed later without duplicates.

The recorder writes each table's share of a batch as one *part* with a unique id
(``<session>-<seq>-<table>``). A part goes to the store in one transaction (the store's bulk insert), so
it is either all in or not in at all. While the store is down, parts are appended here; when the store
answers again each part is written and then an ``ack`` line is appended. Loading the file skips acked
parts, so a part written once is never written again, even across a process restart. When nothing is
pending the file is removed.

The one window the spool cannot close (the process dies after the store committed a part and before its
ack line reached the disk, or a PostgreSQL COMMIT whose answer was lost) is closed by the store: the part
id is claimed in the rows' own transaction, so a part already stored is skipped (see docs/telemetry.md).
"""

from __future__ import annotations

import json
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


@dataclass
class Part:
    """Rows of one table from one recorder batch: the unit of writing, spooling and acknowledging."""

    id: str
    table: str
    rows: list[dict[str, Any]]


class Spool:
    """Append-only file of pending parts and acknowledgements."""

    def __init__(self, path: str | os.PathLike[str], *, max_bytes: int = 256 << 20, fsync: bool = True):
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.fsync = fsync
        self._lock = threading.Lock()
        self._pending: dict[str, Part] = {}
        self._size = 0
        self.corrupt_lines = 0
        self._load()

    def _load(self) -> None:
        """Read an existing spool (e.g. left by a previous process of the same instance)."""
        if not self.path.exists():
            return
        acked: set[str] = set()
        with self.path.open("r", encoding="utf-8") as fh:
            for line in fh:
                self._size += len(line.encode("utf-8"))
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    self.corrupt_lines += 1  # a torn last line after a crash: that part was never acked
                    continue
                if rec.get("t") == "part":
                    self._pending[rec["id"]] = Part(rec["id"], rec["table"], rec["rows"])
                elif rec.get("t") == "ack":
                    acked.add(rec["id"])
        for pid in acked:
            self._pending.pop(pid, None)
        if self.corrupt_lines:
            log.warning("spool %s: skipped %d unreadable line(s)", self.path, self.corrupt_lines)
        if not self._pending:
            self._remove()

    def __len__(self) -> int:
        return len(self._pending)

    @property
    def pending_rows(self) -> int:
        return sum(len(p.rows) for p in self._pending.values())

    def pending(self) -> list[Part]:
        """Parts not yet acknowledged, oldest first."""
        with self._lock:
            return list(self._pending.values())

    def append(self, part: Part) -> bool:
        """Keep a part for later; False (nothing kept) when the spool is full or the disk refuses."""
        line = json.dumps({"t": "part", "id": part.id, "table": part.table, "rows": part.rows}, default=str) + "\n"
        size = len(line.encode("utf-8"))
        with self._lock:
            if self._size + size > self.max_bytes:
                return False
            try:
                self._write(line)
            except OSError as exc:
                log.warning("cannot write spool %s: %s", self.path, exc)
                return False
            self._size += size
            self._pending[part.id] = part
            return True

    def ack(self, part_id: str) -> None:
        """Mark a part as stored; removes the file once nothing is pending."""
        with self._lock:
            if self._pending.pop(part_id, None) is None:
                return
            if not self._pending:
                self._remove()
                return
            line = json.dumps({"t": "ack", "id": part_id}) + "\n"
            try:
                self._write(line)
                self._size += len(line)
            except OSError as exc:  # the part may be replayed once more after a restart
                log.warning("cannot write ack to spool %s: %s", self.path, exc)

    def _write(self, line: str) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(line)
            fh.flush()
            if self.fsync:
                os.fsync(fh.fileno())

    def _remove(self) -> None:
        try:
            self.path.unlink(missing_ok=True)
        except OSError as exc:
            log.warning("cannot remove spool %s: %s", self.path, exc)
        self._size = 0
