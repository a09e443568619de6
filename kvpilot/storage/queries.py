"""Readers for dashboards and the CLI: time windows, latest values per layer, per-run summaries.

Every reader takes a `Scope` (or its fields as keywords) and filters through one owner filter,
`_owner_conds`, on the (instance_id, ts), (run_id, ts) or (ts) indexes. Anything that can grow with the
number of samples is aggregated in SQL (GROUP BY a computed time bucket), so a dashboard panel reads a few
hundred rows even when the tables hold tens of millions. Metric columns come from the tables'
declarations (`kvpilot.storage.schema`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

from sqlalchemy import Table, func, select, union_all
from sqlalchemy.engine import Connection
from sqlalchemy.sql import ColumnElement, Subquery

from kvpilot.storage.entities import EntityStore
from kvpilot.storage.errors import StoreError
from kvpilot.storage.rollup_jobs import STATE, covered_until
from kvpilot.storage.rollups import Agg, plan_segments, segment_select
from kvpilot.storage.schema import (
    CACHE_EVENTS,
    EVENT_KINDS,
    LAYER_STATS,
    MEMORY_SAMPLES,
    REQUESTS,
    ROLLUPS,
    SAMPLES,
    VLLM_SAMPLES,
    Deployment,
    EngineInstance,
    Event,
    LayerStat,
    Request,
    VLLMSample,
)
from kvpilot.storage.scope import Scope, ScopeFilters, Unpack
from kvpilot.storage.tabledef import SampleTable
from kvpilot.storage.types import (
    EventBucket,
    LayerStatBucket,
    LayerSummary,
    MemoryBucket,
    RequestBucket,
    RunSummary,
    VLLMBucket,
)

Level = Literal["layer", "head", "all"]
LS = LAYER_STATS.table
RQ = REQUESTS.table
MEM = MEMORY_SAMPLES.table
EV = CACHE_EVENTS.table
VS = VLLM_SAMPLES.table
LAYER_METRICS = LAYER_STATS.names(metric=True)  # every averaged layer-stat column, in table order
DEFAULT_POINTS = 300
# the columns the rollup-backed readers aggregate (means, sums, maxima), per table
REQUEST_NUMERIC = ("ts", "prompt_tokens", "output_tokens", "ttft_s", "tpot_s", "e2e_s", "kv_bytes", "compression_ratio")
MEMORY_NUMERIC = (
    "kv_bytes_physical", "kv_bytes_logical", "kv_bytes_peak", "device_allocated", "device_reserved", "device_peak",
    "nvml_used", "nvml_total", "nvml_util", "rss_bytes",
)
EVENT_NUMERIC = ("count", "bytes")


def opt_float(v: Any) -> float | None:
    return None if v is None else float(v)


def opt_int(v: Any) -> int | None:
    return None if v is None else int(v)


class QueryStore(EntityStore):
    """Read-only queries; every method takes the same Scope."""

    # ----- the owner filter --------------------------------------------------------------------------

    def _owner_conds(
        self, conn: Connection, table: Table, scope: Scope, *, require_owner: bool = False
    ) -> list[ColumnElement[bool]] | None:
        """Index-friendly filters selecting `scope`'s rows of a sample table, or None when it selects none
        (a deployment without instances; no owner at all when `require_owner`)."""
        if require_owner and not scope.has_owner:
            return None
        conds: list[ColumnElement[bool]] = []
        if scope.deployment is not None or scope.instance_id is not None:
            ids = [scope.instance_id] if scope.instance_id is not None else []
            if scope.deployment is not None:
                in_dep = self._deployment_instance_ids(conn, scope.deployment)
                ids = [i for i in ids if i in in_dep] if scope.instance_id is not None else in_dep
            if not ids:
                return None
            # Literal ids (a semi-join hides the index from PostgreSQL's planner) plus IS NOT NULL let both
            # planners use the partial (instance_id, ts) index.
            conds += [table.c.instance_id.in_(ids), table.c.instance_id.is_not(None)]
        if scope.run_id is not None:
            conds += [table.c.run_id == scope.run_id, table.c.run_id.is_not(None)]
        start = scope.start
        if start is not None:
            conds.append(table.c.ts >= start)
        if scope.until is not None:
            conds.append(table.c.ts < scope.until)
        return conds

    def _rollup_source(
        self, conn: Connection, spec: SampleTable[Any], scope: Scope, width: float | None, *,
        keys: Sequence[str] = (), numeric: Sequence[str] = (), counted: Sequence[str] = (), require: bool = False,
    ) -> tuple[Subquery | None, tuple[str, ...]]:
        """The scope's rows of a sample table in the rollups' normalised form (`rollups.segment_select`):
        whole rollup buckets, coarsest first, where they fit `width` (None: no time buckets) and the rollups
        reach, raw rows elsewhere. Returns (None, ()) when the scope selects nothing or, with `require`, when no
        rollup fits (the caller's raw query is the faster one then); else (source, the rollup grains used)."""
        owner = self._owner_conds(conn, spec.table, Scope(scope.deployment, scope.instance_id, None,
                                                          run_id=scope.run_id), require_owner=True)
        if owner is None:
            return None, ()
        start = scope.start  # like `_owner_conds`, no upper bound unless `until` is given
        end = math.inf if scope.until is None else scope.until
        segments = plan_segments(ROLLUPS[spec.name], -math.inf if start is None else start, end,
                                 covered_until(conn, spec.name), width)
        used = tuple(sorted({seg.rollup.label for seg in segments if seg.rollup is not None}))
        if require and not used:
            return None, ()
        parts = []
        for seg in segments:
            table = spec.table if seg.rollup is None else seg.rollup.table
            conds = owner if seg.rollup is None else self._owner_conds(
                conn, table, Scope(scope.deployment, scope.instance_id, None, run_id=scope.run_id))
            parts.append(segment_select(seg, spec, conds or [], keys, numeric, counted))
        src = parts[0] if len(parts) == 1 else union_all(*parts)
        return src.subquery("src"), used

    @staticmethod
    def _deployment_instance_ids(conn: Connection, deployment: str) -> list[int]:
        q = (
            select(EngineInstance.id)
            .join(Deployment, EngineInstance.deployment_id == Deployment.id)
            .where(Deployment.name == deployment)
        )
        return list(conn.execute(q).scalars())

    def _layer_conds(
        self, conn: Connection, sc: Scope, level: Level, layers: Sequence[int] | None
    ) -> list[ColumnElement[bool]] | None:
        """The layer-stat filters every layer reader shares: owner and window, level, chosen layers."""
        conds = self._owner_conds(conn, LS, sc)
        if conds is None:
            return None
        conds += self._level(level)
        if layers is not None:
            conds.append(LS.c.layer.in_(list(layers)))
        return conds

    @staticmethod
    def _level(level: Level) -> list[ColumnElement[bool]]:
        if level == "layer":
            return [LS.c.head == -1]
        if level == "head":
            return [LS.c.head >= 0]
        if level == "all":
            return []
        raise StoreError(f"level {level!r} unknown; use 'layer', 'head' or 'all'")

    # ----- layer statistics ---------------------------------------------------------------------------

    def layer_stats_latest(
        self, scope: Scope | None = None, *, level: Level = "layer", lookback_s: float = 120.0,
        **filters: Unpack[ScopeFilters],
    ) -> list[LayerStat]:
        """The newest sample of each (instance, layer, head), among samples at most `lookback_s` older than
        the owner's newest one; ordered by instance, layer, head. The scope's time window is not used."""
        sc = Scope.of(scope, **filters)
        if not sc.has_owner:
            raise StoreError("layer_stats_latest needs instance_id, deployment or run_id")

        def run(conn: Connection) -> list[LayerStat]:
            if sc.run_id is not None:
                runs = [LS.c.run_id == sc.run_id]
                newest_of = [conn.execute(select(func.max(LS.c.ts)).where(*runs)).scalar()]  # the (run_id, ts) index
                owners = runs
            else:
                ids = [sc.instance_id] if sc.instance_id is not None else []
                if sc.instance_id is None:
                    assert sc.deployment is not None
                    ids = self._deployment_instance_ids(conn, sc.deployment)
                owners = [LS.c.instance_id == i for i in ids]
                newest_of = [self._newest_of_instance(conn, LAYER_STATS, i) for i in ids]
            out: list[LayerStat] = []
            for owner, newest in zip(owners, newest_of, strict=True):
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
                out.extend(LAYER_STATS.record_of(row) for row in conn.execute(q))
            return out

        return self._read(run)

    @staticmethod
    def _newest_of_instance(conn: Connection, spec: SampleTable[Any], instance_id: int) -> float | None:
        """The newest `ts` of an instance's rows in a table without an (instance_id, ts) index, from indexed
        reads only: each rollup's newest bucket of the instance (their (instance_id, bucket) indexes; every
        grain holds the rows up to the watermark, so a pruned per-minute rollup leaves the hourly one) and
        the raw rows not rolled up yet (ids above the watermark, a primary-key range). Equal to MAX(ts) over
        the raw rows unless every rollup of the instance's rows was pruned before the rows themselves; a store
        never rolled up falls back to that scan."""
        raw = spec.table
        last_id = conn.execute(select(STATE.c.last_id).where(STATE.c.table_name == spec.name)).scalar()
        if last_id is None:
            return opt_float(conn.execute(select(func.max(raw.c.ts)).where(raw.c.instance_id == instance_id)).scalar())
        found = []
        for rollup in ROLLUPS[spec.name]:
            t = rollup.table
            mine = (t.c.instance_id == instance_id, t.c.instance_id.is_not(None))
            newest_bucket = select(func.max(t.c.bucket)).where(*mine).scalar_subquery()
            found.append(conn.execute(select(func.max(t.c.ts_max)).where(*mine, t.c.bucket >= newest_bucket)).scalar())
        # MAX(ts + 0), not MAX(ts): SQLite would answer MAX(ts) by walking the ts index back from its end,
        # testing every row (the whole table when the tail is empty) instead of the rowid range
        found.append(conn.execute(
            select(func.max(raw.c.ts + 0)).where(raw.c.instance_id == instance_id, raw.c.id > int(last_id))
        ).scalar())
        return max((float(v) for v in found if v is not None), default=None)

    def layer_stats_window(
        self, scope: Scope | None = None, *, layers: Sequence[int] | None = None, level: Level = "layer",
        limit: int = 100_000, **filters: Unpack[ScopeFilters],
    ) -> list[LayerStat]:
        """Raw layer-stat samples in a time window, oldest first (at most `limit`; use the series for more)."""
        sc = Scope.of(scope, **filters)

        def run(conn: Connection) -> list[LayerStat]:
            conds = self._layer_conds(conn, sc, level, layers)
            if conds is None:
                return []
            q = select(*LS.c).where(*conds).order_by(LS.c.ts, LS.c.id).limit(limit)
            return [LAYER_STATS.record_of(r) for r in conn.execute(q)]

        return self._read(run)

    def layer_stats_series(
        self, scope: Scope | None = None, *, layers: Sequence[int] | None = None, level: Level = "layer",
        bucket_s: float | None = None, **filters: Unpack[ScopeFilters],
    ) -> list[LayerStatBucket]:
        """Layer stats averaged per time bucket and (layer, head), in SQL: the layer heatmap's query.

        Without `bucket_s` the window is cut into about 300 round buckets."""
        sc = Scope.of(scope, **filters)
        bucket = self._backend.time_bucket(LS.c.ts, sc.bucket_s(DEFAULT_POINTS, bucket_s)).label("bucket")

        width = sc.bucket_s(DEFAULT_POINTS, bucket_s)

        def run(conn: Connection) -> list[LayerStatBucket]:
            conds = self._layer_conds(conn, sc, level, layers)
            if conds is None:
                return []
            src, _ = self._rollup_source(conn, LAYER_STATS, sc, width, keys=("layer", "head"), numeric=LAYER_METRICS,
                                         require=True)
            if src is not None:
                a = Agg(src)
                b = self._backend.time_bucket(src.c.ts, width).label("bucket")
                sel = [src.c.head == -1] if level == "layer" else [src.c.head >= 0] if level == "head" else []
                if layers is not None:
                    sel.append(src.c.layer.in_(list(layers)))
                q = (
                    select(b, src.c.layer, src.c.head, a.count(), *(a.avg(m) for m in LAYER_METRICS))
                    .where(*sel)
                    .group_by(b, src.c.layer, src.c.head)
                    .order_by(b, src.c.layer, src.c.head)
                )
                return [
                    LayerStatBucket(float(r[0]), int(r[1]), int(r[2]), int(r[3]), _means(r[4:]))
                    for r in conn.execute(q)
                ]
            q = (
                select(bucket, LS.c.layer, LS.c.head, func.count(), *(func.avg(LS.c[m]) for m in LAYER_METRICS))
                .where(*conds)
                .group_by(bucket, LS.c.layer, LS.c.head)
                .order_by(bucket, LS.c.layer, LS.c.head)
            )
            return [
                LayerStatBucket(float(r[0]), int(r[1]), int(r[2]), int(r[3]), _means(r[4:])) for r in conn.execute(q)
            ]

        return self._read(run, analytic=True)

    # ----- requests -----------------------------------------------------------------------------------

    def requests_window(
        self, scope: Scope | None = None, *, limit: int = 10_000, **filters: Unpack[ScopeFilters]
    ) -> list[Request]:
        """Raw request records, newest first."""
        sc = Scope.of(scope, **filters)

        def run(conn: Connection) -> list[Request]:
            conds = self._owner_conds(conn, RQ, sc)
            if conds is None:
                return []
            q = select(*RQ.c).where(*conds).order_by(RQ.c.ts.desc(), RQ.c.id.desc()).limit(limit)
            return [REQUESTS.record_of(r) for r in conn.execute(q)]

        return self._read(run)

    def requests_series(
        self, scope: Scope | None = None, *, bucket_s: float | None = None, **filters: Unpack[ScopeFilters]
    ) -> list[RequestBucket]:
        """Requests per time bucket: counts, token sums, TTFT/TPOT means and maxima, in SQL."""
        sc = Scope.of(scope, **filters)
        bucket = self._backend.time_bucket(RQ.c.ts, sc.bucket_s(DEFAULT_POINTS, bucket_s)).label("bucket")

        width = sc.bucket_s(DEFAULT_POINTS, bucket_s)

        def run(conn: Connection) -> list[RequestBucket]:
            conds = self._owner_conds(conn, RQ, sc)
            if conds is None:
                return []
            if sc.has_owner:
                src, _ = self._rollup_source(conn, REQUESTS, sc, width, numeric=REQUEST_NUMERIC, counted=("error",))
                if src is None:
                    return []
                b = self._backend.time_bucket(src.c.ts, width).label("bucket")
                q = select(b, *request_aggregates(Agg(src))).group_by(b).order_by(b)
                return [RequestBucket(float(r[0]), *_request_values(r[1:])) for r in conn.execute(q)]
            q = select(bucket, *_request_aggregates()).where(*conds).group_by(bucket).order_by(bucket)
            return [RequestBucket(float(r[0]), *_request_values(r[1:])) for r in conn.execute(q)]

        return self._read(run, analytic=True)

    # ----- memory -------------------------------------------------------------------------------------

    def memory_window(
        self, scope: Scope | None = None, *, bucket_s: float | None = None, **filters: Unpack[ScopeFilters]
    ) -> list[MemoryBucket]:
        """Memory per instance and time bucket, aggregated in SQL: means of levels, maxima of peaks."""
        sc = Scope.of(scope, **filters)
        bucket = self._backend.time_bucket(MEM.c.ts, sc.bucket_s(DEFAULT_POINTS, bucket_s)).label("bucket")
        c = MEM.c

        width = sc.bucket_s(DEFAULT_POINTS, bucket_s)

        def run(conn: Connection) -> list[MemoryBucket]:
            conds = self._owner_conds(conn, MEM, sc)
            if conds is None:
                return []
            if sc.has_owner:
                src, _ = self._rollup_source(conn, MEMORY_SAMPLES, sc, width, numeric=MEMORY_NUMERIC)
                if src is None:
                    return []
                a, b = Agg(src), self._backend.time_bucket(src.c.ts, width).label("bucket")
                q = (
                    select(
                        b, src.c.instance_id, a.count(), a.avg("kv_bytes_physical"), a.max("kv_bytes_physical"),
                        a.avg("kv_bytes_logical"), a.max("kv_bytes_peak"), a.avg("device_allocated"),
                        a.max("device_reserved"), a.max("device_peak"), a.max("nvml_used"), a.max("nvml_total"),
                        a.avg("nvml_util"), a.max("rss_bytes"),
                    )
                    .group_by(b, src.c.instance_id)
                    .order_by(b, src.c.instance_id)
                )
            else:
                q = (
                    select(
                        bucket, c.instance_id, func.count(), func.avg(c.kv_bytes_physical),
                        func.max(c.kv_bytes_physical), func.avg(c.kv_bytes_logical), func.max(c.kv_bytes_peak),
                        func.avg(c.device_allocated), func.max(c.device_reserved), func.max(c.device_peak),
                        func.max(c.nvml_used), func.max(c.nvml_total), func.avg(c.nvml_util), func.max(c.rss_bytes),
                    )
                    .where(*conds)
                    .group_by(bucket, c.instance_id)
                    .order_by(bucket, c.instance_id)
                )
            return [
                MemoryBucket(
                    float(r[0]), opt_int(r[1]), int(r[2]), opt_float(r[3]), opt_int(r[4]), opt_float(r[5]),
                    opt_int(r[6]), opt_float(r[7]), opt_int(r[8]), opt_int(r[9]), opt_int(r[10]),
                    opt_int(r[11]), opt_float(r[12]), opt_int(r[13]),
                )
                for r in conn.execute(q)
            ]

        return self._read(run, analytic=True)

    # ----- vLLM servers -------------------------------------------------------------------------------

    def vllm_samples(
        self, scope: Scope | None = None, *, limit: int = 10_000, **filters: Unpack[ScopeFilters]
    ) -> list[VLLMSample]:
        """Raw scrapes of vLLM servers (`kvpilot.vllm`), newest first."""
        sc = Scope.of(scope, **filters)

        def run(conn: Connection) -> list[VLLMSample]:
            conds = self._owner_conds(conn, VS, sc)
            if conds is None:
                return []
            q = select(*VS.c).where(*conds).order_by(VS.c.ts.desc(), VS.c.id.desc()).limit(limit)
            return [VLLM_SAMPLES.record_of(r) for r in conn.execute(q)]

        return self._read(run)

    def vllm_series(
        self, scope: Scope | None = None, *, bucket_s: float | None = None, **filters: Unpack[ScopeFilters]
    ) -> list[VLLMBucket]:
        """vLLM scrapes per instance and time bucket, aggregated in SQL (see `VLLMBucket`)."""
        sc = Scope.of(scope, **filters)
        bucket = self._backend.time_bucket(VS.c.ts, sc.bucket_s(DEFAULT_POINTS, bucket_s)).label("bucket")
        c = VS.c

        def run(conn: Connection) -> list[VLLMBucket]:
            conds = self._owner_conds(conn, VS, sc)
            if conds is None:
                return []
            q = (
                select(
                    bucket, c.instance_id, func.count(), func.avg(c.kv_usage), func.avg(c.kv_bytes),
                    func.coalesce(func.sum(c.prefix_queries), 0), func.coalesce(func.sum(c.prefix_hits), 0),
                    func.coalesce(func.sum(c.preemptions), 0), func.avg(c.prompt_tokens_per_s),
                    func.avg(c.generation_tokens_per_s), func.avg(c.requests_per_s), func.avg(c.ttft_p50_s),
                    func.max(c.ttft_p99_s), func.avg(c.tpot_p50_s), func.max(c.tpot_p99_s),
                )
                .where(*conds)
                .group_by(bucket, c.instance_id)
                .order_by(bucket, c.instance_id)
            )
            return [
                VLLMBucket(
                    float(r[0]), opt_int(r[1]), int(r[2]), opt_float(r[3]), opt_float(r[4]), int(r[5]), int(r[6]),
                    int(r[7]), *(opt_float(v) for v in r[8:]),
                )
                for r in conn.execute(q)
            ]

        return self._read(run, analytic=True)

    # ----- events -------------------------------------------------------------------------------------

    def events(
        self, scope: Scope | None = None, *, kinds: Sequence[str] | None = None, limit: int = 1000,
        **filters: Unpack[ScopeFilters],
    ) -> list[Event]:
        """Cache events, newest first."""
        sc = Scope.of(scope, **filters)

        def run(conn: Connection) -> list[Event]:
            conds = self._owner_conds(conn, EV, sc)
            if conds is None:
                return []
            conds += _kind_conds(kinds)
            q = select(*EV.c).where(*conds).order_by(EV.c.ts.desc(), EV.c.id.desc()).limit(limit)
            return [CACHE_EVENTS.record_of(r) for r in conn.execute(q)]

        return self._read(run)

    def event_series(
        self, scope: Scope | None = None, *, kinds: Sequence[str] | None = None, bucket_s: float | None = None,
        **filters: Unpack[ScopeFilters],
    ) -> list[EventBucket]:
        """Events per time bucket and kind: rows, summed counts and bytes (evictions/s, hits vs misses)."""
        sc = Scope.of(scope, **filters)
        bucket = self._backend.time_bucket(EV.c.ts, sc.bucket_s(DEFAULT_POINTS, bucket_s)).label("bucket")
        kind_conds = _kind_conds(kinds)

        width = sc.bucket_s(DEFAULT_POINTS, bucket_s)

        def run(conn: Connection) -> list[EventBucket]:
            conds = self._owner_conds(conn, EV, sc)
            if conds is None:
                return []
            if sc.has_owner:
                src, _ = self._rollup_source(conn, CACHE_EVENTS, sc, width, keys=("kind",), numeric=EVENT_NUMERIC)
                if src is None:
                    return []
                a, b = Agg(src), self._backend.time_bucket(src.c.ts, width).label("bucket")
                q = (
                    select(b, src.c.kind, a.count(), a.sum("count"), func.coalesce(a.sum("bytes"), 0))
                    .where(*_kind_conds(kinds, src.c.kind))
                    .group_by(b, src.c.kind)
                    .order_by(b, src.c.kind)
                )
            else:
                q = (
                    select(bucket, EV.c.kind, func.count(), func.sum(EV.c.count),
                           func.coalesce(func.sum(EV.c.bytes), 0))
                    .where(*conds, *kind_conds)
                    .group_by(bucket, EV.c.kind)
                    .order_by(bucket, EV.c.kind)
                )
            return [EventBucket(float(r[0]), r[1], int(r[2] or 0), int(r[3] or 0), int(r[4] or 0))
                    for r in conn.execute(q)]

        return self._read(run, analytic=True)

    # ----- runs and counts ----------------------------------------------------------------------------

    def run_summary(self, run_id: int) -> RunSummary:
        """Everything recorded under a run, aggregated in SQL (for trial comparison and reports)."""
        info = self.get_run(run_id)

        def run(conn: Connection) -> RunSummary:
            req = conn.execute(select(*_request_aggregates()).where(RQ.c.run_id == run_id)).one()
            (n, errors, prompt, output, ttft_mean, ttft_max, tpot_mean, _tpot_max, _e2e, kv_mean, ratio) = req
            spans = [
                conn.execute(select(func.min(t.c.ts), func.max(t.c.ts)).where(t.c.run_id == run_id)).one()
                for t in (s.table for s in SAMPLES.values())
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
                LayerSummary(int(r[0]), int(r[1]), _means(r[2:]))
                for r in conn.execute(
                    select(LS.c.layer, func.count(), *(func.avg(LS.c[m]) for m in LAYER_METRICS))
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
                ttft_mean=opt_float(ttft_mean),
                ttft_max=opt_float(ttft_max),
                tpot_mean=opt_float(tpot_mean),
                kv_bytes_mean=opt_float(kv_mean),
                compression_ratio_mean=opt_float(ratio),
                kv_bytes_peak=opt_int(mem[0] if mem[0] is not None else mem[1]),
                device_peak=opt_int(mem[2]),
                events=events,
                layers=layers,
            )

        return self._read(run)

    def counts(self, scope: Scope | None = None, **filters: Unpack[ScopeFilters]) -> dict[str, int]:
        """Rows per sample table for an owner (or all rows)."""
        sc = Scope.of(scope, **filters)

        def run(conn: Connection) -> dict[str, int]:
            out = {}
            for name, spec in SAMPLES.items():
                conds = self._owner_conds(conn, spec.table, sc)
                q = select(func.count()).select_from(spec.table).where(*(conds or ()))
                out[name] = 0 if conds is None else int(conn.execute(q).scalar_one())
            return out

        return self._read(run)


def _means(values: Sequence[Any]) -> dict[str, float | None]:
    return {m: opt_float(v) for m, v in zip(LAYER_METRICS, values, strict=True)}


def _request_aggregates() -> list[ColumnElement[Any]]:
    c = RQ.c
    return [
        func.count(), func.count(c.error), func.coalesce(func.sum(c.prompt_tokens), 0),
        func.coalesce(func.sum(c.output_tokens), 0), func.avg(c.ttft_s), func.max(c.ttft_s), func.avg(c.tpot_s),
        func.max(c.tpot_s), func.avg(c.e2e_s), func.avg(c.kv_bytes), func.avg(c.compression_ratio),
    ]


def _request_values(r: Sequence[Any]) -> tuple:
    n, errors, prompt, output, ttft_mean, ttft_max, tpot_mean, tpot_max, e2e, kv, ratio = r
    return (
        int(n), int(errors), int(prompt), int(output), opt_float(ttft_mean), opt_float(ttft_max),
        opt_float(tpot_mean), opt_float(tpot_max), opt_float(e2e), opt_float(kv), opt_float(ratio),
    )


def _kind_conds(kinds: Sequence[str] | None, column: ColumnElement[Any] | None = None) -> list[ColumnElement[bool]]:
    if kinds is None:
        return []
    unknown = sorted(set(kinds) - set(EVENT_KINDS))
    if unknown:
        raise StoreError(f"event kind(s) {unknown} unknown; allowed: {', '.join(EVENT_KINDS)}")
    return [(EV.c.kind if column is None else column).in_(list(kinds))]


def request_aggregates(a: Agg) -> list[ColumnElement[Any]]:
    """`_request_aggregates` over a rollup source."""
    return [
        a.count(), a.count_of("error"), func.coalesce(a.sum("prompt_tokens"), 0),
        func.coalesce(a.sum("output_tokens"), 0), a.avg("ttft_s"), a.max("ttft_s"), a.avg("tpot_s"),
        a.max("tpot_s"), a.avg("e2e_s"), a.avg("kv_bytes"), a.avg("compression_ratio"),
    ]
