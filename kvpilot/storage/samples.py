"""Writers for the sample tables: layer stats, requests, memory samples and cache events.

Samples arrive in batches from the probe recorder, so each call is one transaction with one bulk insert
(DBAPI executemany on SQLite, COPY on PostgreSQL), without the ORM. Rows are plain dicts; unknown keys are
refused so a typo never silently drops a metric.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping
from operator import itemgetter
from typing import Any

from sqlalchemy import Table
from sqlalchemy.engine import Connection

from kvpilot.storage.core import StoreCore, json_safe
from kvpilot.storage.errors import StoreError
from kvpilot.storage.schema import EVENT_KINDS, SAMPLE_TABLES, IngestedPart
from kvpilot.storage.types import EventRow, LayerStatRow, MemoryRow, RequestRow

_EVENT_KINDS = frozenset(EVENT_KINDS)
_PARTS = IngestedPart.__table__


class _Spec:
    """How dict rows become tuples for one sample table."""

    def __init__(self, table: Table, required: tuple[str, ...] = (), defaults: Mapping[str, Any] | None = None):
        self.table = table
        self.columns = tuple(c.name for c in table.columns if c.name != "id")
        self.allowed = frozenset(self.columns)
        self.required = required
        self.defaults = {c: None for c in self.columns} | dict(defaults or {})
        self.getter = itemgetter(*self.columns)

    def tuples(
        self, rows: Iterable[Mapping[str, Any]], instance_id: int | None, run_id: int | None
    ) -> list[tuple]:
        base = dict(self.defaults, ts=time.time(), instance_id=instance_id, run_id=run_id)
        allowed, getter, required = self.allowed, self.getter, self.required
        out = []
        for row in rows:
            if not allowed.issuperset(row):
                unknown = sorted(set(row) - allowed)
                raise StoreError(
                    f"{self.table.name} row has unknown field(s) {unknown}; allowed: {', '.join(self.columns)}"
                )
            merged = {**base, **row}
            if merged["instance_id"] is None and merged["run_id"] is None:
                raise StoreError(
                    f"{self.table.name} row belongs to no engine instance and no run: pass instance_id= or run_id="
                )
            for name in required:
                if merged[name] is None:
                    raise StoreError(f"{self.table.name} row is missing {name!r}: {dict(row)}")
            out.append(getter(merged))
        return out


_LAYER = _Spec(SAMPLE_TABLES["layer_stats"], required=("layer",), defaults={"head": -1})
_REQUESTS = _Spec(SAMPLE_TABLES["requests"])
_MEMORY = _Spec(SAMPLE_TABLES["memory_samples"])
_EVENTS = _Spec(SAMPLE_TABLES["cache_events"], required=("kind",), defaults={"count": 1})
_EVENT_DETAIL = _EVENTS.columns.index("detail")
_EVENT_KIND = _EVENTS.columns.index("kind")


class SampleWriter(StoreCore):
    """Bulk writers used by probes and the recorder. Each returns the number of rows stored."""

    def add_layer_stats(
        self, rows: Iterable[LayerStatRow], *, instance_id: int | None = None, run_id: int | None = None,
        part_id: str | None = None,
    ) -> int:
        """Store per-layer (head = -1) and per-head attention statistics; `instance_id`/`run_id` fill rows
        that do not name their own."""
        return self._insert(_LAYER, _LAYER.tuples(rows, instance_id, run_id), part_id)

    def add_requests(
        self, rows: Iterable[RequestRow], *, instance_id: int | None = None, run_id: int | None = None,
        part_id: str | None = None,
    ) -> int:
        return self._insert(_REQUESTS, _REQUESTS.tuples(rows, instance_id, run_id), part_id)

    def add_memory_samples(
        self, rows: Iterable[MemoryRow], *, instance_id: int | None = None, run_id: int | None = None,
        part_id: str | None = None,
    ) -> int:
        return self._insert(_MEMORY, _MEMORY.tuples(rows, instance_id, run_id), part_id)

    def add_events(
        self, rows: Iterable[EventRow], *, instance_id: int | None = None, run_id: int | None = None,
        part_id: str | None = None,
    ) -> int:
        """Store cache events; `kind` must be one of `schema.EVENT_KINDS`, `detail` any JSON-able dict."""
        tuples = _EVENTS.tuples(rows, instance_id, run_id)
        for i, row in enumerate(tuples):
            if row[_EVENT_KIND] not in _EVENT_KINDS:
                raise StoreError(f"cache event kind {row[_EVENT_KIND]!r} unknown; allowed: {', '.join(EVENT_KINDS)}")
            detail = row[_EVENT_DETAIL]
            if detail is not None:
                row = list(row)
                row[_EVENT_DETAIL] = json.dumps(json_safe(detail), default=str)
                tuples[i] = tuple(row)
        return self._insert(_EVENTS, tuples, part_id)

    def _insert(self, spec: _Spec, tuples: list[tuple], part_id: str | None = None) -> int:
        """Bulk-insert in one transaction. With a `part_id` (the recorder's) the rows go in at most once:
        the id is claimed in the same transaction, and a part whose id is already there is skipped (0)."""
        if not tuples:
            return 0

        def write(conn: Connection) -> int:
            if part_id is not None and not self._backend.insert_ignore(
                conn, _PARTS, {"part_id": part_id, "ts": time.time()}
            ):
                return 0
            self._backend.bulk_insert(conn, spec.table, spec.columns, tuples)
            return len(tuples)

        return self._write(write)
