"""Keeping the rollups current (`refresh_rollups`) and pruning them on their own, longer, retention.

A refresh adds the aggregates of the raw rows stored since the previous one. It first takes, under a lock
that waits for in-flight writers, the largest raw id (every id up to it is committed then), then rolls up
the ids between the watermark in `rollup_state` and that id in chunks, each its own short transaction that
re-reads the watermark under the state lock, so concurrent refreshes (two engines' writers, a
`kvpilot db rollup`) never count a row twice, and a first refresh of a large store does not hold writers
off for long. Writers refresh on their own every `rollup_every_s` seconds (`kvpilot.storage.samples`).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Iterable
from typing import Any

from sqlalchemy import Table, func, select
from sqlalchemy.engine import Connection

from kvpilot.storage.core import StoreCore
from kvpilot.storage.errors import StoreError
from kvpilot.storage.rollups import coarsen_select, insert_columns, refresh_select
from kvpilot.storage.schema import ROLLUPS, SAMPLES, RollupState, table_of

STATE = table_of(RollupState)
LAG_S = 60.0  # readers use rollups up to this long before the newest rolled-up sample (late batches)
CHUNK_IDS = 2_000_000  # raw ids per refresh transaction
FINEST_S = min(r.grain_s for rs in ROLLUPS.values() for r in rs)


def covered_until(conn: Connection, table: str) -> float | None:
    """Where readers switch from a sample table's rollups to its raw rows (None: no rollups yet)."""
    return conn.execute(select(STATE.c.covered_until).where(STATE.c.table_name == table)).scalar()


class RollupJobs(StoreCore):
    """Rollup refresh and rollup retention; see the module docstring."""

    def refresh_rollups(
        self, tables: Iterable[str] | None = None, *, lag_s: float = LAG_S, chunk_ids: int = CHUNK_IDS,
        max_chunks: int | None = None,
    ) -> dict[str, int]:
        """Roll up the raw rows stored since the last refresh (at most `max_chunks` transactions of
        `chunk_ids` ids per table); returns raw rows rolled up per table."""
        names = list(SAMPLES) if tables is None else list(tables)
        unknown = [n for n in names if n not in SAMPLES]
        if unknown:
            raise StoreError(f"sample table(s) {unknown} unknown; tables: {', '.join(SAMPLES)}")
        return {name: self._refresh_one(name, lag_s, chunk_ids, max_chunks) for name in names}

    def _refresh_one(self, name: str, lag_s: float, chunk_ids: int, max_chunks: int | None) -> int:
        raw = SAMPLES[name].table

        def safe_max(conn: Connection) -> int:
            self._backend.rollup_lock(conn, STATE, raw)
            return int(conn.execute(select(func.coalesce(func.max(raw.c.id), 0))).scalar_one())

        top = self._write(safe_max)
        total, chunks = 0, 0
        while max_chunks is None or chunks < max_chunks:
            n, done = self._write(lambda conn: self._chunk(conn, name, top, lag_s, chunk_ids))
            total += n
            chunks += 1
            if done:
                break
        if SAMPLES[name].time_index:
            self._write(lambda conn: self._backend.summarize_time_index(conn, raw))
        return total

    def _chunk(self, conn: Connection, name: str, top: int, lag_s: float, chunk_ids: int) -> tuple[int, bool]:
        """Roll up ids (watermark, min(watermark + chunk_ids, top)] in `conn`'s transaction."""
        self._backend.rollup_lock(conn, STATE, None)
        raw = SAMPLES[name].table
        state = conn.execute(select(STATE.c.last_id, STATE.c.covered_until).where(STATE.c.table_name == name)).first()
        last = int(state[0]) if state is not None else 0
        covered = float(state[1]) if state is not None else 0.0  # 0: no rollup serves any window yet
        if top < last:  # the newest rows were deleted and SQLite may hand their ids out again: start over there
            self._save_state(conn, name, top, covered, exists=state is not None)
            return 0, True
        upto = min(top, last + chunk_ids)
        if upto <= last:
            return 0, True
        # one pass over the raw rows, into the finest rollup; coarser ones and the count from its new rows
        finest, *coarser = ROLLUPS[name]
        fine = finest.table
        before = int(conn.execute(select(func.coalesce(func.max(fine.c.id), 0))).scalar_one())
        bucket = self._backend.time_bucket(raw.c.ts, finest.grain_s)
        conn.execute(fine.insert().from_select(insert_columns(finest), refresh_select(finest, bucket, last, upto)))
        n, newest = conn.execute(select(func.sum(fine.c.n), func.max(fine.c.ts_max)).where(fine.c.id > before)).one()
        if n:
            for rollup in coarser:
                coarse = self._backend.time_bucket(fine.c.bucket, rollup.grain_s)
                conn.execute(rollup.table.insert().from_select(insert_columns(rollup),
                                                               coarsen_select(rollup, finest, coarse, before)))
            covered = max(covered, float(newest) - lag_s)
        self._save_state(conn, name, upto, covered, exists=state is not None)
        return int(n or 0), upto >= top

    @staticmethod
    def _save_state(conn: Connection, name: str, last_id: int, covered: float, *, exists: bool) -> None:
        values: dict[str, Any] = {"last_id": last_id, "covered_until": covered, "updated_at": time.time()}
        if exists:
            conn.execute(STATE.update().where(STATE.c.table_name == name).values(**values))
        else:
            conn.execute(STATE.insert().values(table_name=name, **values))

    def cover_until(self, ts: float) -> None:
        """Let readers take rollups up to `ts` at least: called by prune once every raw row before `ts` is
        rolled up and about to be deleted (from then on only the rollups hold them)."""

        def run(conn: Connection) -> None:
            self._backend.rollup_lock(conn, STATE, None)
            conn.execute(STATE.update().where(STATE.c.covered_until < ts).values(covered_until=ts))

        self._write(run)

    def prune_rollups(self, grain: str, older_than_s: float, *, now: float | None = None) -> dict[str, int]:
        """Delete `grain` ("1m" or "1h") rollup rows of buckets older than `older_than_s` seconds."""
        grains = {r.label for rs in ROLLUPS.values() for r in rs}
        if grain not in grains:
            raise StoreError(f"rollup grain {grain!r} unknown; grains: {', '.join(sorted(grains))}")
        cutoff = (time.time() if now is None else now) - older_than_s
        out = {}
        for rollups in ROLLUPS.values():
            for r in rollups:
                if r.label == grain:
                    out[r.name] = self._write(functools.partial(_delete_before, table=r.table, cutoff=cutoff))
        return out


def _delete_before(conn: Connection, *, table: Table, cutoff: float) -> int:
    return int(conn.execute(table.delete().where(table.c.bucket < cutoff)).rowcount)
