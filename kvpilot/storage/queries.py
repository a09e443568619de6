"""Readers for dashboards and the CLI: time windows, latest values per layer, per-run summaries.

Anything that can grow with the number of samples is aggregated in SQL (GROUP BY a computed time bucket)
and filtered through the (instance_id, ts), (run_id, ts) or (ts) indexes, so a dashboard panel reads a few
hundred rows even when the tables hold tens of millions.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, Literal

from sqlalchemy import Table, func, select
from sqlalchemy.engine import Connection
from sqlalchemy.sql import ColumnElement

from kvpilot.storage.core import StoreCore
from kvpilot.storage.errors import StoreError
from kvpilot.storage.schema import EVENT_KINDS, SAMPLE_TABLES, Deployment, EngineInstance
from kvpilot.storage.types import (
    Event,
    EventBucket,
    LayerStat,
    LayerStatBucket,
    LayerSummary,
    MemoryBucket,
    Request,
    RequestBucket,
    RunSummary,
)

Level = Literal["layer", "head", "all"]
LS = SAMPLE_TABLES["layer_stats"]
RQ = SAMPLE_TABLES["requests"]
MEM = SAMPLE_TABLES["memory_samples"]
EV = SAMPLE_TABLES["cache_events"]
_LAYER_METRICS = (
    "entropy", "retained_mass", "tokens_90", "sink_mass", "recent_mass", "gini", "kv_bytes", "kept_tokens",
    "seen_tokens",
)
DEFAULT_POINTS = 300


def _opt_float(v: Any) -> float | None:
    return None if v is None else float(v)


def _opt_int(v: Any) -> int | None:
    return None if v is None else int(v)


class QueryStore(StoreCore):
    """Read-only queries; every method takes the same owner and time filters."""

    # ----- filters -----------------------------------------------------------------------------------

    def _where(
        self,
        table: Table,
        *,
        instance_id: int | None = None,
        deployment: str | None = None,
        run_id: int | None = None,
        since: float | None = None,
        until: float | None = None,
        last_s: float | None = None,
    ) -> list[ColumnElement[bool]]:
        conds: list[ColumnElement[bool]] = []
        if instance_id is not None:
            conds.append(table.c.instance_id == instance_id)
        if deployment is not None:
            # Resolved to literal ids first: a semi-join hides the index from PostgreSQL's planner.
            conds.append(table.c.instance_id.in_(self._deployment_instance_ids(deployment)))
        if instance_id is not None or deployment is not None:
            conds.append(table.c.instance_id.is_not(None))  # lets the planners use the partial index
        if run_id is not None:
            conds += [table.c.run_id == run_id, table.c.run_id.is_not(None)]
        if last_s is not None:
            since = max(since or 0.0, time.time() - last_s)
        if since is not None:
            conds.append(table.c.ts >= since)
        if until is not None:
            conds.append(table.c.ts < until)
        return conds

    def _deployment_instance_ids(self, deployment: str) -> list[int]:
        q = (
            select(EngineInstance.id)
            .join(Deployment, EngineInstance.deployment_id == Deployment.id)
            .where(Deployment.name == deployment)
        )
        return self._read(lambda conn: list(conn.execute(q).scalars()))

    @staticmethod
    def _level(level: Level) -> list[ColumnElement[bool]]:
        if level == "layer":
            return [LS.c.head == -1]
        if level == "head":
            return [LS.c.head >= 0]
        if level == "all":
            return []
        raise StoreError(f"level {level!r} unknown; use 'layer', 'head' or 'all'")

    @staticmethod
    def _bucket_width(bucket_s: float | None, since: float | None, until: float | None, last_s: float | None) -> float:
        if bucket_s is not None:
            if bucket_s <= 0:
                raise StoreError(f"bucket_s must be positive, got {bucket_s}")
            return float(bucket_s)
        span = last_s if last_s is not None else ((until or time.time()) - since if since is not None else None)
        return max(1.0, span / DEFAULT_POINTS) if span else 60.0

    # ----- layer statistics ---------------------------------------------------------------------------

    def layer_stats_latest(
        self,
        *,
        instance_id: int | None = None,
        deployment: str | None = None,
        run_id: int | None = None,
        level: Level = "layer",
        lookback_s: float = 120.0,
    ) -> list[LayerStat]:
        """The newest sample of each (instance, layer, head), among samples at most `lookback_s` older than
        the owner's newest one; ordered by instance, layer, head."""
        if instance_id is None and deployment is None and run_id is None:
            raise StoreError("layer_stats_latest needs instance_id, deployment or run_id")

        def run(conn: Connection) -> list[LayerStat]:
            owners: list[ColumnElement[bool]]
            if run_id is not None:
                owners = [LS.c.run_id == run_id]
            elif instance_id is not None:
                owners = [LS.c.instance_id == instance_id]
            else:
                owners = [LS.c.instance_id == i for i in self._deployment_instance_ids(deployment)]
            out: list[LayerStat] = []
            for owner in owners:
                newest = conn.execute(select(func.max(LS.c.ts)).where(owner)).scalar()
                if newest is None:
                    continue
                rank = (
                    func.row_number()
                    .over(partition_by=(LS.c.instance_id, LS.c.layer, LS.c.head), order_by=(LS.c.ts.desc(), LS.c.id.desc()))
                    .label("rank")
                )
                inner = (
                    select(*LS.c, rank).where(owner, LS.c.ts >= newest - lookback_s, *self._level(level)).subquery()
                )
                q = (
                    select(*(inner.c[c.name] for c in LS.c))
                    .where(inner.c.rank == 1)
                    .order_by(inner.c.instance_id, inner.c.layer, inner.c.head)
                )
                out.extend(LayerStat(*row) for row in conn.execute(q))
            return out

        return self._read(run)

    def layer_stats_window(
        self,
        *,
        instance_id: int | None = None,
        deployment: str | None = None,
        run_id: int | None = None,
        since: float | None = None,
        until: float | None = None,
        last_s: float | None = None,
        layers: Sequence[int] | None = None,
        level: Level = "layer",
        limit: int = 100_000,
    ) -> list[LayerStat]:
        """Raw layer-stat samples in a time window, oldest first (at most `limit`; use the series for more)."""
        conds = self._where(
            LS, instance_id=instance_id, deployment=deployment, run_id=run_id, since=since, until=until, last_s=last_s
        )
        conds += self._level(level)
        if layers is not None:
            conds.append(LS.c.layer.in_(list(layers)))
        q = select(*LS.c).where(*conds).order_by(LS.c.ts, LS.c.id).limit(limit)
        return self._read(lambda conn: [LayerStat(*r) for r in conn.execute(q)])

    def layer_stats_series(
        self,
        *,
        instance_id: int | None = None,
        deployment: str | None = None,
        run_id: int | None = None,
        since: float | None = None,
        until: float | None = None,
        last_s: float | None = None,
        layers: Sequence[int] | None = None,
        level: Level = "layer",
        bucket_s: float | None = None,
    ) -> list[LayerStatBucket]:
        """Layer stats averaged per time bucket and (layer, head), in SQL: the layer heatmap's query.

        Without `bucket_s` the window is cut into about 300 buckets."""
        width = self._bucket_width(bucket_s, since, until, last_s)
        bucket = self._backend.time_bucket(LS.c.ts, width).label("bucket")
        conds = self._where(
            LS, instance_id=instance_id, deployment=deployment, run_id=run_id, since=since, until=until, last_s=last_s
        )
        conds += self._level(level)
        if layers is not None:
            conds.append(LS.c.layer.in_(list(layers)))
        q = (
            select(bucket, LS.c.layer, LS.c.head, func.count(), *(func.avg(LS.c[m]) for m in _LAYER_METRICS))
            .where(*conds)
            .group_by(bucket, LS.c.layer, LS.c.head)
            .order_by(bucket, LS.c.layer, LS.c.head)
        )

        def run(conn: Connection) -> list[LayerStatBucket]:
            return [
                LayerStatBucket(float(r[0]), int(r[1]), int(r[2]), int(r[3]), *(_opt_float(v) for v in r[4:]))
                for r in conn.execute(q)
            ]

        return self._read(run)

    # ----- requests -----------------------------------------------------------------------------------

    def requests_window(
        self,
        *,
        instance_id: int | None = None,
        deployment: str | None = None,
        run_id: int | None = None,
        since: float | None = None,
        until: float | None = None,
        last_s: float | None = None,
        limit: int = 10_000,
    ) -> list[Request]:
        """Raw request records, newest first."""
        conds = self._where(
            RQ, instance_id=instance_id, deployment=deployment, run_id=run_id, since=since, until=until, last_s=last_s
        )
        q = select(*RQ.c).where(*conds).order_by(RQ.c.ts.desc(), RQ.c.id.desc()).limit(limit)
        return self._read(lambda conn: [Request(*r) for r in conn.execute(q)])

    def requests_series(
        self,
        *,
        instance_id: int | None = None,
        deployment: str | None = None,
        run_id: int | None = None,
        since: float | None = None,
        until: float | None = None,
        last_s: float | None = None,
        bucket_s: float | None = None,
    ) -> list[RequestBucket]:
        """Requests per time bucket: counts, token sums, TTFT/TPOT means and maxima, in SQL."""
        width = self._bucket_width(bucket_s, since, until, last_s)
        bucket = self._backend.time_bucket(RQ.c.ts, width).label("bucket")
        conds = self._where(
            RQ, instance_id=instance_id, deployment=deployment, run_id=run_id, since=since, until=until, last_s=last_s
        )
        q = (
            select(bucket, *self._request_aggregates())
            .where(*conds)
            .group_by(bucket)
            .order_by(bucket)
        )
        return self._read(lambda conn: [RequestBucket(float(r[0]), *_request_values(r[1:])) for r in conn.execute(q)])

    @staticmethod
    def _request_aggregates() -> list[ColumnElement[Any]]:
        return [
            func.count(),
            func.count(RQ.c.error),
            func.coalesce(func.sum(RQ.c.prompt_tokens), 0),
            func.coalesce(func.sum(RQ.c.output_tokens), 0),
            func.avg(RQ.c.ttft_s),
            func.max(RQ.c.ttft_s),
            func.avg(RQ.c.tpot_s),
            func.max(RQ.c.tpot_s),
            func.avg(RQ.c.e2e_s),
            func.avg(RQ.c.kv_bytes),
            func.avg(RQ.c.compression_ratio),
        ]

    # ----- memory -------------------------------------------------------------------------------------

    def memory_window(
        self,
        *,
        instance_id: int | None = None,
        deployment: str | None = None,
        run_id: int | None = None,
        since: float | None = None,
        until: float | None = None,
        last_s: float | None = None,
        bucket_s: float | None = None,
    ) -> list[MemoryBucket]:
        """Memory per instance and time bucket, aggregated in SQL: means of levels, maxima of peaks."""
        width = self._bucket_width(bucket_s, since, until, last_s)
        bucket = self._backend.time_bucket(MEM.c.ts, width).label("bucket")
        conds = self._where(
            MEM, instance_id=instance_id, deployment=deployment, run_id=run_id, since=since, until=until, last_s=last_s
        )
        c = MEM.c
        q = (
            select(
                bucket,
                c.instance_id,
                func.count(),
                func.avg(c.kv_bytes_physical),
                func.max(c.kv_bytes_physical),
                func.avg(c.kv_bytes_logical),
                func.max(c.kv_bytes_peak),
                func.avg(c.device_allocated),
                func.max(c.device_reserved),
                func.max(c.device_peak),
                func.max(c.nvml_used),
                func.max(c.nvml_total),
                func.avg(c.nvml_util),
                func.max(c.rss_bytes),
            )
            .where(*conds)
            .group_by(bucket, c.instance_id)
            .order_by(bucket, c.instance_id)
        )

        def run(conn: Connection) -> list[MemoryBucket]:
            out = []
            for r in conn.execute(q):
                out.append(
                    MemoryBucket(
                        float(r[0]), _opt_int(r[1]), int(r[2]), _opt_float(r[3]), _opt_int(r[4]), _opt_float(r[5]),
                        _opt_int(r[6]), _opt_float(r[7]), _opt_int(r[8]), _opt_int(r[9]), _opt_int(r[10]),
                        _opt_int(r[11]), _opt_float(r[12]), _opt_int(r[13]),
                    )
                )
            return out

        return self._read(run)

    # ----- events -------------------------------------------------------------------------------------

    def events(
        self,
        *,
        instance_id: int | None = None,
        deployment: str | None = None,
        run_id: int | None = None,
        kinds: Sequence[str] | None = None,
        since: float | None = None,
        until: float | None = None,
        last_s: float | None = None,
        limit: int = 1000,
    ) -> list[Event]:
        """Cache events, newest first."""
        conds = self._where(
            EV, instance_id=instance_id, deployment=deployment, run_id=run_id, since=since, until=until, last_s=last_s
        )
        if kinds is not None:
            _check_kinds(kinds)
            conds.append(EV.c.kind.in_(list(kinds)))
        q = select(*EV.c).where(*conds).order_by(EV.c.ts.desc(), EV.c.id.desc()).limit(limit)
        return self._read(lambda conn: [Event(*r) for r in conn.execute(q)])

    def event_series(
        self,
        *,
        instance_id: int | None = None,
        deployment: str | None = None,
        run_id: int | None = None,
        kinds: Sequence[str] | None = None,
        since: float | None = None,
        until: float | None = None,
        last_s: float | None = None,
        bucket_s: float | None = None,
    ) -> list[EventBucket]:
        """Events per time bucket and kind: rows, summed counts and bytes (evictions/s, hits vs misses)."""
        width = self._bucket_width(bucket_s, since, until, last_s)
        bucket = self._backend.time_bucket(EV.c.ts, width).label("bucket")
        conds = self._where(
            EV, instance_id=instance_id, deployment=deployment, run_id=run_id, since=since, until=until, last_s=last_s
        )
        if kinds is not None:
            _check_kinds(kinds)
            conds.append(EV.c.kind.in_(list(kinds)))
        q = (
            select(bucket, EV.c.kind, func.count(), func.sum(EV.c.count), func.coalesce(func.sum(EV.c.bytes), 0))
            .where(*conds)
            .group_by(bucket, EV.c.kind)
            .order_by(bucket, EV.c.kind)
        )
        return self._read(
            lambda conn: [
                EventBucket(float(r[0]), r[1], int(r[2]), int(r[3] or 0), int(r[4])) for r in conn.execute(q)
            ]
        )

    # ----- runs and counts ----------------------------------------------------------------------------

    def run_summary(self, run_id: int) -> RunSummary:
        """Everything recorded under a run, aggregated in SQL (for trial comparison and reports)."""
        info = self.get_run(run_id)  # type: ignore[attr-defined]  # provided by EntityStore

        def run(conn: Connection) -> RunSummary:
            req = conn.execute(select(*self._request_aggregates()).where(RQ.c.run_id == run_id)).one()
            (n, errors, prompt, output, ttft_mean, ttft_max, tpot_mean, _tpot_max, _e2e, kv_mean, ratio) = req
            spans = [
                conn.execute(select(func.min(t.c.ts), func.max(t.c.ts)).where(t.c.run_id == run_id)).one()
                for t in SAMPLE_TABLES.values()
            ]
            firsts = [s[0] for s in spans if s[0] is not None]
            lasts = [s[1] for s in spans if s[1] is not None]
            mem = conn.execute(
                select(func.max(MEM.c.kv_bytes_peak), func.max(MEM.c.kv_bytes_physical), func.max(MEM.c.device_peak))
                .where(MEM.c.run_id == run_id)
            ).one()
            events = {
                kind: int(total or 0)
                for kind, total in conn.execute(
                    select(EV.c.kind, func.sum(EV.c.count)).where(EV.c.run_id == run_id).group_by(EV.c.kind)
                )
            }
            layers = [
                LayerSummary(int(r[0]), int(r[1]), *(_opt_float(v) for v in r[2:]))
                for r in conn.execute(
                    select(
                        LS.c.layer,
                        func.count(),
                        func.avg(LS.c.entropy),
                        func.avg(LS.c.retained_mass),
                        func.avg(LS.c.tokens_90),
                        func.avg(LS.c.gini),
                        func.avg(LS.c.kv_bytes),
                        func.avg(LS.c.kept_tokens),
                    )
                    .where(LS.c.run_id == run_id, LS.c.head == -1)
                    .group_by(LS.c.layer)
                    .order_by(LS.c.layer)
                )
            ]
            return RunSummary(
                run=info,
                first_ts=min(firsts) if firsts else None,
                last_ts=max(lasts) if lasts else None,
                requests=int(n),
                request_errors=int(errors),
                prompt_tokens=int(prompt),
                output_tokens=int(output),
                ttft_mean=_opt_float(ttft_mean),
                ttft_max=_opt_float(ttft_max),
                tpot_mean=_opt_float(tpot_mean),
                kv_bytes_mean=_opt_float(kv_mean),
                compression_ratio_mean=_opt_float(ratio),
                kv_bytes_peak=_opt_int(mem[0] if mem[0] is not None else mem[1]),
                device_peak=_opt_int(mem[2]),
                events=events,
                layers=layers,
            )

        return self._read(run)

    def counts(
        self, *, instance_id: int | None = None, deployment: str | None = None, run_id: int | None = None
    ) -> dict[str, int]:
        """Rows per sample table for an owner (or all rows)."""

        def run(conn: Connection) -> dict[str, int]:
            out = {}
            for name, table in SAMPLE_TABLES.items():
                conds = self._where(table, instance_id=instance_id, deployment=deployment, run_id=run_id)
                out[name] = int(conn.execute(select(func.count()).select_from(table).where(*conds)).scalar_one())
            return out

        return self._read(run)


def _request_values(r: Sequence[Any]) -> tuple:
    n, errors, prompt, output, ttft_mean, ttft_max, tpot_mean, tpot_max, e2e, kv, ratio = r
    return (
        int(n), int(errors), int(prompt), int(output), _opt_float(ttft_mean), _opt_float(ttft_max),
        _opt_float(tpot_mean), _opt_float(tpot_max), _opt_float(e2e), _opt_float(kv), _opt_float(ratio),
    )


def _check_kinds(kinds: Sequence[str]) -> None:
    unknown = sorted(set(kinds) - set(EVENT_KINDS))
    if unknown:
        raise StoreError(f"event kind(s) {unknown} unknown; allowed: {', '.join(EVENT_KINDS)}")
