"""Writers for the sample tables: layer stats, requests, memory samples and cache events.

Samples arrive in batches from the probe recorder, so each call is one transaction with one bulk insert
(DBAPI executemany on SQLite, COPY on PostgreSQL), without the ORM. Rows are plain dicts, checked against
their table's declaration (`kvpilot.storage.schema`): unknown keys are refused so a typo never silently
drops a metric.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from sqlalchemy.engine import Connection

from kvpilot.storage.core import StoreCore
from kvpilot.storage.errors import StoreError
from kvpilot.storage.schema import (
    CACHE_EVENTS,
    LAYER_STATS,
    MEMORY_SAMPLES,
    REQUESTS,
    SAMPLES,
    VLLM_SAMPLES,
    IngestedPart,
    table_of,
)
from kvpilot.storage.tabledef import SampleRow, SampleTable

_PARTS = table_of(IngestedPart)


class SampleWriter(StoreCore):
    """Bulk writers used by probes and the recorder. Each returns the number of rows stored.

    `instance_id` / `run_id` fill rows that do not name their own owner. With a `part_id` (the recorder's)
    the rows go in at most once: the id is claimed in the rows' own transaction, and a part whose id is
    already stored is skipped (0)."""

    def add_samples(
        self,
        table: str | SampleTable[Any],
        rows: Iterable[SampleRow],
        *,
        instance_id: int | None = None,
        run_id: int | None = None,
        part_id: str | None = None,
    ) -> int:
        """Store rows of any sample table, named (`"layer_stats"`, ...) or given as its declaration."""
        spec = _table(table)
        return self._insert(spec, spec.tuples(rows, instance_id, run_id), part_id)

    def add_layer_stats(
        self, rows: Iterable[SampleRow], *, instance_id: int | None = None, run_id: int | None = None,
        part_id: str | None = None,
    ) -> int:
        """Per-layer (head = -1) and per-head attention statistics (`schema.LayerStat` columns)."""
        return self.add_samples(LAYER_STATS, rows, instance_id=instance_id, run_id=run_id, part_id=part_id)

    def add_requests(
        self, rows: Iterable[SampleRow], *, instance_id: int | None = None, run_id: int | None = None,
        part_id: str | None = None,
    ) -> int:
        """Served requests (`schema.Request` columns)."""
        return self.add_samples(REQUESTS, rows, instance_id=instance_id, run_id=run_id, part_id=part_id)

    def add_memory_samples(
        self, rows: Iterable[SampleRow], *, instance_id: int | None = None, run_id: int | None = None,
        part_id: str | None = None,
    ) -> int:
        """KV cache and device memory readings (`schema.MemorySample` columns)."""
        return self.add_samples(MEMORY_SAMPLES, rows, instance_id=instance_id, run_id=run_id, part_id=part_id)

    def add_events(
        self, rows: Iterable[SampleRow], *, instance_id: int | None = None, run_id: int | None = None,
        part_id: str | None = None,
    ) -> int:
        """Cache events; `kind` must be one of `schema.EVENT_KINDS`, `detail` any JSON-able dict."""
        return self.add_samples(CACHE_EVENTS, rows, instance_id=instance_id, run_id=run_id, part_id=part_id)

    def add_vllm_samples(
        self, rows: Iterable[SampleRow], *, instance_id: int | None = None, run_id: int | None = None,
        part_id: str | None = None,
    ) -> int:
        """Scrapes of a vLLM server's metrics (`schema.VLLMSample` columns), see `kvpilot.vllm.metrics`."""
        return self.add_samples(VLLM_SAMPLES, rows, instance_id=instance_id, run_id=run_id, part_id=part_id)

    def _insert(self, spec: SampleTable[Any], tuples: list[tuple], part_id: str | None = None) -> int:
        """Bulk-insert in one transaction, claiming `part_id` in the same one (see the class docstring)."""
        if not tuples:
            return 0

        def write(conn: Connection) -> int:
            if part_id is not None and not self._backend.insert_ignore(
                conn, _PARTS, {"part_id": part_id, "ts": time.time()}
            ):
                return 0
            self._backend.bulk_insert(conn, spec.table, spec.writable, tuples)
            return len(tuples)

        return self._write(write)


def _table(table: str | SampleTable[Any]) -> SampleTable[Any]:
    if isinstance(table, SampleTable):
        return table
    try:
        return SAMPLES[table]
    except KeyError:
        raise StoreError(f"sample table {table!r} unknown; tables: {', '.join(SAMPLES)}") from None
