"""A local JSONL spool for samples the store could not take, replayed later without duplicates.

The recorder writes each table's share of a batch as one *part* with a unique id
(``<session>-<seq>-<table>``). A part goes to the store in one transaction (the store's bulk insert), so
it is either all in or not in at all. While the store is down, parts are appended here; when the store
answers again each part is written and then an ``ack`` line is appended. Loading the file skips acked
parts, so a part written once is never written again, even across a process restart. When nothing is
pending the file is removed.

Restarts: each deployment has its own spool folder, one file per instance. A process holds an exclusive
lock (``<file>.lock``, flock) on its own file while it lives, so when it dies (kill -9, a crash, a restart
under a new default instance name ``<host>-<pid>``) the lock goes with it. `orphans` finds every file in
the folder whose lock nobody holds and adopts it (taking the lock), so the next process of the deployment,
whatever its instance name, replays those parts too, each exactly once.

The one window the spool cannot close (the process dies after the store committed a part and before its
ack line reached the disk, or a PostgreSQL COMMIT whose answer was lost) is closed by the store: the part
id is claimed in the rows' own transaction, so a part already stored is skipped (see docs/telemetry.md).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
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


def spool_path(folder: str | os.PathLike[str], deployment: str, instance: str) -> Path:
    """Where an instance of a deployment spools: ``<folder>/<deployment>/<instance>.jsonl``."""
    return Path(folder) / _safe_name(deployment) / f"{_safe_name(instance)}.jsonl"


def orphans(own: Spool) -> list[Spool]:
    """Spools in ``own``'s folder that no live process holds, adopted (locked) by this process."""
    found = []
    try:
        paths = sorted(own.path.parent.glob("*.jsonl"))
    except OSError:
        return []
    for path in paths:
        if path == own.path or not _lock_path(path).exists():  # every spool has its lock file beside it
            continue
        spool = Spool.adopt(path, max_bytes=own.max_bytes, fsync=own.fsync)
        if spool is not None:
            found.append(spool)
    return found


class Spool:
    """Append-only file of pending parts and acknowledgements."""

    def __init__(self, path: str | os.PathLike[str], *, max_bytes: int = 256 << 20, fsync: bool = True,
                 _locked: Any = None):
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.fsync = fsync
        self._lock = threading.Lock()
        self._pending: dict[str, Part] = {}
        self._size = 0
        self.corrupt_lines = 0
        self._owner = _locked if _locked is not None else _try_lock(self.path)
        if self._owner is None:  # another live process runs under the same instance name: share, as before
            log.warning("spool %s is in use by another process with the same instance name", self.path)
        self._load()

    @classmethod
    def adopt(cls, path: Path, **kwargs: Any) -> Spool | None:
        """The spool at ``path`` if its writer is gone (its lock is free), now held by us; else None."""
        owner = _try_lock(path)
        if owner is None:
            return None
        if not path.exists():  # a lock file left by a process that finished cleanly
            _release(owner, path, unlink=True)
            return None
        return cls(path, _locked=owner, **kwargs)

    def close(self) -> None:
        """Release the lock; the lock file goes too when nothing is pending (the spool file is gone)."""
        with self._lock:
            if self._owner is not None:
                _release(self._owner, self.path, unlink=not self._pending)
                self._owner = None

    def _load(self) -> None:
        """Read an existing spool (e.g. left by a previous process of the same instance)."""
        if not self.path.exists():
            return
        acked: set[str] = set()
        with self.path.open("r", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                self._size += len(line.encode("utf-8", errors="replace"))
                try:
                    rec = json.loads(line)
                except (ValueError, RecursionError):
                    rec = None
                if not isinstance(rec, dict):
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


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text)[:120] or "_"


def _lock_path(path: Path) -> Path:
    return path.with_name(path.name + ".lock")


def _try_lock(path: Path) -> Any:
    """An open lock file held exclusively (flock) for ``path``, or None if another process holds it."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fh = _lock_path(path).open("a")
    except OSError as exc:
        log.warning("cannot create the lock of spool %s: %s", path, exc)
        return None
    try:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        fh.close()
        return None
    return fh


def _release(fh: Any, path: Path, *, unlink: bool) -> None:
    if unlink:
        _lock_path(path).unlink(missing_ok=True)
    fh.close()  # closing the descriptor releases the flock
