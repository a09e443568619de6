"""Writers for the sample tables: layer stats, requests, memory samples and cache events.

Samples arrive in batches from the probe recorder, so each call is one transaction with one bulk insert
(DBAPI executemany on SQLite, COPY on PostgreSQL), without the ORM. Rows are plain dicts, checked against
their table's declaration (`kvpilot.storage.schema`): unknown keys are refused so a typo never silently
drops a metric.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import Any

from sqlalchemy import select
from sqlalchemy.engine import Connection

from kvpilot.storage.entities import EntityStore
from kvpilot.storage.errors import StoreError
from kvpilot.storage.retention import Retention
from kvpilot.storage.schema import (
    CACHE_EVENTS,
    LAYER_STATS,
    MEMORY_SAMPLES,
    REQUESTS,
    SAMPLES,
    VLLM_SAMPLES,
    EngineInstance,
    IngestedPart,
    Run,
    table_of,
)
from kvpilot.storage.tabledef import Batch, RaggedBatch, SampleRow, SampleTable

_PARTS = table_of(IngestedPart)
log = logging.getLogger(__name__)


class SampleWriter(EntityStore):
    """Bulk writers used by probes and the recorder. Each returns the number of rows stored.

    `instance_id` / `run_id` fill rows that do not name their own owner. With a `part_id` (the recorder's)
    the rows go in at most once: the id is claimed in the rows' own transaction, and a part whose id is
    already stored is skipped (0).

    Every `rollup_every_s` seconds (None: never) a writer also refreshes the rollups, one chunk per table
    after its own committed write, so a store written by engines keeps its rollups current by itself."""

    rollup_every_s: float | None = 60.0
    _rolled_at: float | None = None
    # a standing retention policy (`kvpilot.storage.retention`; from $KVPILOT_RETENTION at open), applied
    # every `retention_every_s` seconds by the writers
    retention: Retention | None = None
    retention_every_s: float = 3600.0
    _pruned_at: float | None = None

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.retention = Retention.from_env()

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
        rows = rows if isinstance(rows, list) else list(rows)
        try:
            return self._insert(spec, spec.batch(rows, instance_id, run_id), part_id)
        except RaggedBatch:  # rows with other keys, found while sending: rolled back, again row by row
            return self._insert(spec, spec.batch(rows, instance_id, run_id, by_rows=True), part_id)

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

    def _insert(self, spec: SampleTable[Any], batch: Batch, part_id: str | None = None) -> int:
        """Bulk-insert in one transaction, claiming `part_id` in the same one (see the class docstring)."""
        if not len(batch):
            return 0

        def write(conn: Connection) -> int:
            if part_id is not None and not self._backend.insert_ignore(
                conn, _PARTS, {"part_id": part_id, "ts": time.time()}
            ):
                return 0
            _check_owners(conn, spec.name, batch)
            self._backend.bulk_insert(conn, spec.table, batch.columns, batch.data)
            return len(batch)

        stored = self._write(write)
        self._maybe_refresh_rollups()
        self._maybe_apply_retention()
        return stored

    def _maybe_apply_retention(self) -> None:
        policy, now = self.retention, time.monotonic()
        if policy is None:
            return
        if self._pruned_at is not None and now - self._pruned_at < self.retention_every_s:
            return
        self._pruned_at = now
        try:
            self.prune(policy.raw_s, minute_rollups_older_than=policy.minute_s, hour_rollups_older_than=policy.hour_s)
        except StoreError as exc:  # the samples are stored; the policy runs again next period
            log.warning("retention (%s) failed, retried in %g s: %s", policy, self.retention_every_s, exc)

    def _maybe_refresh_rollups(self) -> None:
        every, now = self.rollup_every_s, time.monotonic()
        if every is None:
            return
        if self._rolled_at is None:  # the first refresh comes one period after the first write
            self._rolled_at = now
        if now - self._rolled_at < every:
            return
        self._rolled_at = now
        try:
            self.refresh_rollups(max_chunks=1)
        except StoreError as exc:  # the samples are stored; the next refresh picks their rollups up
            log.warning("rollup refresh failed (retried in %g s): %s", every, exc)


def _check_owners(conn: Connection, name: str, batch: Batch) -> None:
    """Refuse a batch naming an engine instance or run that does not exist: the raw sample tables have no
    per-row foreign key (migration 0010), so the batch's distinct owner ids are checked once here, in its
    transaction. On PostgreSQL the owner rows are locked FOR KEY SHARE, as a foreign key's check does, so they
    cannot be deleted before the batch commits; SQLite's write transactions are serialised already."""
    for ids, model, what in ((batch.instance_ids, EngineInstance, "engine instance"), (batch.run_ids, Run, "run")):
        if not ids:
            continue
        key = table_of(model).c.id
        query = select(key).where(key.in_(sorted(ids))).with_for_update(read=True, key_share=True)
        missing = ids - set(conn.execute(query).scalars())
        if missing:
            raise StoreError(f"{name} rows refused: no {what} with id {', '.join(map(str, sorted(missing)))}")


def _table(table: str | SampleTable[Any]) -> SampleTable[Any]:
    if isinstance(table, SampleTable):
        return table
    try:
        return SAMPLES[table]
    except KeyError:
        raise StoreError(f"sample table {table!r} unknown; tables: {', '.join(SAMPLES)}") from None
