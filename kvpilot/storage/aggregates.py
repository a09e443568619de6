"""The dashboard's aggregates as store methods, all computed in the database.

Every method takes a `Scope` (deployment, optional instance, time window) and returns a few hundred rows
at most: sums, means and histograms are GROUP BY queries filtered through the (instance_id, ts) indexes by
the store's one owner filter, so a page costs the same on a store of ten thousand samples or ten million.
A scope that names no deployment, instance or run selects nothing here (the dashboard before any
deployment exists). Like every store method they run through the store's error translation.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from sqlalchemy import exists, func, or_, select, union_all
from sqlalchemy.engine import Connection

from kvpilot.storage.errors import StoreError
from kvpilot.storage.queries import (
    CACHE_EVENTS,
    EV,
    EVENT_NUMERIC,
    LAYER_METRICS,
    LAYER_STATS,
    LS,
    REQUEST_NUMERIC,
    REQUESTS,
    RQ,
    QueryStore,
    opt_float,
)
from kvpilot.storage.rollups import GRAINS, Agg
from kvpilot.storage.schema import POOL_DETAIL_KEYS, SAMPLES, SESSION_KINDS, Deployment, Run, table_of
from kvpilot.storage.scope import Scope, bucket_width
from kvpilot.storage.types import (
    CellMean,
    Histogram,
    KindTotal,
    LatencyColumn,
    LayerShape,
    LayerView,
    PoolBucket,
    RequestTotals,
    SamplePlan,
)

LATENCY_COLUMNS = ("ttft_s", "tpot_s", "e2e_s")

# Layer statistics are the big table (layers x heads rows per probe step per engine). A window holding more
# than ROW_BUDGET of them is read as SAMPLE_SLICES evenly spaced slices adding up to SAMPLE_SPAN_S seconds,
# each an index range scan, so a Layers page costs about the same for a 5-minute or a 7-day window.
ROW_BUDGET = 200_000
SAMPLE_SLICES = 60
SAMPLE_SPAN_S = 300.0
PROBES, PROBE_S = 12, 2.0
HISTOGRAM_ROW_BUDGET = 50_000  # latency values binned per histogram before it reads slices instead


class AggregateStore(QueryStore):
    """What the dashboard's pages show, one method per panel."""

    def is_empty(self) -> bool:
        """True when the store has no deployment, no run and no sample at all (the 'run kvpilot demo' case)."""
        tables = [table_of(Deployment), table_of(Run), *(s.table for s in SAMPLES.values())]
        return self._read(lambda conn: not any(conn.execute(select(exists().select_from(t))).scalar() for t in tables))

    # ----- requests -----------------------------------------------------------------------------------

    def request_totals(self, scope: Scope) -> RequestTotals:
        """Requests in the window: counts, token sums, latency means, first and last time (from the coarsest
        rollups that fit the window, raw rows for its edges and the newest minutes)."""

        def run(conn: Connection) -> RequestTotals:
            src, _ = self._rollup_source(conn, REQUESTS, scope, None, numeric=REQUEST_NUMERIC, counted=("error",))
            if src is None:
                return RequestTotals()
            a = Agg(src)
            q = select(
                a.count(), a.count_of("error"), func.coalesce(a.sum("prompt_tokens"), 0),
                func.coalesce(a.sum("output_tokens"), 0), a.avg("ttft_s"), a.avg("tpot_s"), a.avg("e2e_s"),
                a.avg("kv_bytes"), a.avg("compression_ratio"), a.min("ts"), a.max("ts"),
            )
            r = conn.execute(q).one()
            return RequestTotals(int(r[0] or 0), int(r[1] or 0), int(r[2]), int(r[3]), *(opt_float(v) for v in r[4:]))

        return self._read(run, analytic=True)

    def latency_histogram(self, scope: Scope, column: LatencyColumn, bins: int = 40) -> Histogram:
        """Distribution of one latency column (see `latency_histograms`)."""
        return self.latency_histograms(scope, (column,), bins)[column]

    def latency_histograms(
        self, scope: Scope, columns: Sequence[LatencyColumn], bins: int = 40
    ) -> dict[str, Histogram]:
        """Distributions of latency columns, read together: each column's maximum and count from the rollups
        where they reach, then one GROUP BY over the raw rows binning every column at once (bins this fine
        are not in the rollups; a column's counts are the sums over the other columns' bins). A window with
        more than HISTOGRAM_ROW_BUDGET values is binned from SAMPLE_SLICES evenly spaced slices holding about
        that many, and each column's counts are scaled to the window's exact count (`Histogram.sampled`)."""
        unknown = [c for c in columns if c not in LATENCY_COLUMNS]
        if unknown or not columns:
            raise StoreError(f"latency column {unknown or columns!r} unknown; use one of {', '.join(LATENCY_COLUMNS)}")
        columns = list(dict.fromkeys(columns))

        def run(conn: Connection) -> dict[str, Histogram]:
            empty: dict[str, Histogram] = {c: Histogram(c) for c in columns}
            conds = self._owner_conds(conn, RQ, scope, require_owner=True)
            src, _ = self._rollup_source(conn, REQUESTS, scope, None, numeric=tuple(columns))
            if conds is None or src is None:
                return empty
            a = Agg(src)
            tops = conn.execute(select(*(x for c in columns for x in (a.max(c), a.count_of(c))))).one()
            totals = {c: (tops[2 * i], int(tops[2 * i + 1] or 0)) for i, c in enumerate(columns)}
            live = [c for c in columns if totals[c][0] is not None and totals[c][1]]
            if not live:
                return empty
            widths = {c: max(float(totals[c][0]), 1e-9) / bins for c in live}
            start, end = scope.bounds()
            slices = _histogram_slices(start, end if scope.until is None else scope.until,
                                       max(totals[c][1] for c in live))
            any_value = or_(*(RQ.c[c].is_not(None) for c in live))
            if slices:
                # the owner alone plus each slice's bounds: with the window's own lower bound beside a slice's,
                # SQLite ranges the index from the window's start and filters, reading the window 30 times over
                owner = self._owner_conds(conn, RQ, _unbounded(scope), require_owner=True) or []
                parts = [select(*(RQ.c[c] for c in live)).where(*owner, any_value, RQ.c.ts >= lo, RQ.c.ts < hi)
                         for lo, hi in slices]
                sub = union_all(*parts).subquery()
                values = [sub.c[c] for c in live]
                where: list[Any] = []
            else:
                values = [RQ.c[c] for c in live]
                where = [*conds, any_value]
            keys = [self._backend.floor_div(v, widths[c]).label(f"b_{c}") for v, c in zip(values, live, strict=True)]
            q = select(*keys, func.count()).where(*where).group_by(*keys)
            counts = {c: [0] * bins for c in live}
            for row in conn.execute(q):
                n = int(row[-1])
                for c, i in zip(live, row[:-1], strict=True):
                    if i is not None:
                        counts[c][min(int(i), bins - 1)] += n  # the maximum itself lands in the last bin
            out: dict[str, Histogram] = dict(empty)
            for c in live:
                if not slices:
                    out[c] = Histogram(c, widths[c], counts[c])
                    continue
                read = sum(counts[c])
                scale = totals[c][1] / read if read else 0.0
                out[c] = Histogram(c, widths[c], [round(x * scale) for x in counts[c]], sampled=read)
            return out

        return self._read(run, analytic=True)

    # ----- layers -------------------------------------------------------------------------------------

    def layer_plan(self, scope: Scope, points: int = SAMPLE_SLICES) -> SamplePlan:
        """Read the whole window when it holds about ROW_BUDGET layer rows or fewer, else one short slice
        inside each bucket.

        The row count is estimated from PROBES short probes spread over the window (a few index range scans):
        an exact COUNT would itself read the whole window, and PostgreSQL's bitmap scans ignore a LIMIT."""
        return self._read(lambda conn: self._layer_plan(conn, scope, points), analytic=True)

    def _layer_plan(self, conn: Connection, scope: Scope, points: int) -> SamplePlan:
        window_s, start = _window(scope)
        width = bucket_width(window_s, points)
        length = SAMPLE_SPAN_S / points
        owner = self._owner_conds(conn, LS, _unbounded(scope), require_owner=True)
        if owner is None or length >= width:
            return SamplePlan(width)
        step = window_s / PROBES
        # golden-ratio offsets inside each step, so probes never all fall between samples taken at a fixed period
        probes = [start + (k + _golden(k)) * step for k in range(PROBES)]
        parts = [select(LS.c.id).where(*owner, LS.c.ts >= a, LS.c.ts < a + PROBE_S) for a in probes]
        n = conn.execute(select(func.count()).select_from(union_all(*parts).subquery())).scalar_one()
        if n * window_s / (PROBES * PROBE_S) <= ROW_BUDGET:
            return SamplePlan(width)
        first = math.floor(start / width) * width
        end = start + window_s
        slices = []
        for k in range(int(window_s // width) + 2):
            # each slice sits at a different (golden-ratio) offset inside its bucket, so probes that sample at a
            # fixed period are caught in proportion to the slice length instead of always or never
            a = first + k * width + _golden(k) * (width - length)
            lo, hi = max(a, start), min(a + length, end)
            if hi > lo:
                slices.append((lo, hi))
        return SamplePlan(width, tuple(slices), length)

    def layer_view(self, scope: Scope, metric: str, points: int = SAMPLE_SLICES) -> LayerView:
        """Heatmap data for `metric`: one GROUP BY (bucket, layer, head) query over the whole window from the
        coarsest rollups that fit its buckets (raw rows for the newest minutes), else over the planned part of
        the raw window; per-cell means are weighted from the buckets, so the database does the only pass."""
        if metric not in LAYER_METRICS:
            raise ValueError(f"unknown layer metric {metric!r}; use one of {', '.join(LAYER_METRICS)}")

        def run(conn: Connection) -> LayerView:
            window_s, start = _window(scope)
            width = bucket_width(window_s, points)
            # the coarsest rollup that still gives at least a third of the buckets asked for (24 h: hours)
            fitting = [g for _, g in GRAINS if window_s / g >= points / 3]
            if fitting:
                width = math.ceil(width / max(fitting)) * max(fitting)
            bounded = Scope(scope.deployment, scope.instance_id, None, run_id=scope.run_id, since=start,
                            until=start + window_s)
            src, grains = self._rollup_source(conn, LAYER_STATS, bounded, width, keys=("layer", "head"),
                                              numeric=(metric,), require=True)
            if src is not None:
                a, b = Agg(src), self._backend.time_bucket(src.c.ts, width).label("bucket")
                q = (
                    select(b, src.c.layer, src.c.head, a.count_of(metric), a.avg(metric))
                    .group_by(b, src.c.layer, src.c.head)
                    .order_by(b, src.c.layer, src.c.head)
                )
                return _layer_view(metric, SamplePlan(width, rollups=grains), conn.execute(q).all())
            plan = self._layer_plan(conn, scope, points)
            owner = self._owner_conds(conn, LS, _unbounded(scope), require_owner=True)
            if owner is None:
                return LayerView(metric, plan, [], [], [])
            cols = (LS.c.ts, LS.c.layer, LS.c.head, LS.c[metric].label("value"))
            ranges: tuple[tuple[float, float | None], ...] = plan.slices or ((_window(scope)[1], scope.until),)
            parts = [
                select(*cols).where(*owner, LS.c.ts >= a, *(() if b is None else (LS.c.ts < b,))) for a, b in ranges
            ]
            src = (parts[0] if len(parts) == 1 else union_all(*parts)).subquery()
            bucket = self._backend.time_bucket(src.c.ts, plan.bucket_s).label("bucket")
            q = (
                select(bucket, src.c.layer, src.c.head, func.count(src.c.value), func.avg(src.c.value))
                .group_by(bucket, src.c.layer, src.c.head)
                .order_by(bucket, src.c.layer, src.c.head)
            )
            return _layer_view(metric, plan, conn.execute(q).all())

        return self._read(run, analytic=True)

    def layer_shape(self, scope: Scope) -> LayerShape:
        """How many layers the scope's engines report and their mean tokens seen, from the newest sample of
        each layer (an indexed lookup, not a scan of the window)."""
        if not scope.has_owner:
            return LayerShape(None, None)
        latest = self.layer_stats_latest(Scope(scope.deployment, scope.instance_id, run_id=scope.run_id), level="layer")
        if not latest:
            return LayerShape(None, None)
        seen = [s.seen_tokens for s in latest if s.seen_tokens is not None]
        return LayerShape(max(s.layer for s in latest) + 1, sum(seen) / len(seen) if seen else None)

    # ----- events and sessions ------------------------------------------------------------------------

    def event_totals(self, scope: Scope, kinds: tuple[str, ...] | None = None) -> dict[str, KindTotal]:
        """Rows, summed counts and bytes per event kind over the window."""

        def run(conn: Connection) -> dict[str, KindTotal]:
            src, _ = self._rollup_source(conn, CACHE_EVENTS, scope, None, keys=("kind",), numeric=EVENT_NUMERIC)
            if src is None:
                return {}
            a = Agg(src)
            q = (
                select(src.c.kind, a.count(), func.coalesce(a.sum("count"), 0), func.coalesce(a.sum("bytes"), 0))
                .where(*(() if kinds is None else (src.c.kind.in_(list(kinds)),)))
                .group_by(src.c.kind)
            )
            return {r[0]: KindTotal(r[0], int(r[1]), int(r[2]), int(r[3])) for r in conn.execute(q)}

        return self._read(run, analytic=True)

    def pool_series(self, scope: Scope, bucket_s: float) -> list[PoolBucket]:
        """Session-pool occupancy over time, from the `schema.POOL_DETAIL_KEYS` of session events' detail."""
        detail = CACHE_EVENTS.table.c.detail

        def run(conn: Connection) -> list[PoolBucket]:
            conds = self._owner_conds(conn, EV, scope, require_owner=True)
            if conds is None:
                return []
            # the rollups count session events with a detail: none in the window, no scan of its raw events
            src, _ = self._rollup_source(conn, CACHE_EVENTS, scope, None, keys=("kind",), counted=("detail",))
            if src is None or not conn.execute(
                select(Agg(src).count_of("detail")).where(src.c.kind.in_(list(SESSION_KINDS)))
            ).scalar():
                return []
            b = self._backend.time_bucket(EV.c.ts, bucket_s).label("bucket")
            fields = [func.max(detail[k].as_float()) for k in POOL_DETAIL_KEYS]
            q = (
                select(b, *fields)
                .where(*conds, EV.c.kind.in_(list(SESSION_KINDS)), detail.is_not(None))
                .group_by(b)
                .order_by(b)
            )
            return [PoolBucket(float(r[0]), *(opt_float(v) for v in r[1:])) for r in conn.execute(q)]

        rows = self._read(run, analytic=True)
        return [r for r in rows if any(v is not None for v in (r.pool_sessions, r.pool_bytes, r.pinned_bytes))]


def _window(scope: Scope) -> tuple[float, float]:
    """(length, start) of a scope's window; layer sampling needs a bounded one (the last hour by default)."""
    start, end = scope.bounds()
    if start is None:
        start = end - 3600.0
    return end - start, start


def _unbounded(scope: Scope) -> Scope:
    """The same owner without the window (the layer queries add their own time ranges)."""
    return Scope(scope.deployment, scope.instance_id, None, run_id=scope.run_id)


def _histogram_slices(start: float | None, end: float, total: int) -> list[tuple[float, float]]:
    """Evenly spaced slices of [start, end) holding about HISTOGRAM_ROW_BUDGET of its `total` values, or none
    when the whole window is small enough (or unbounded)."""
    if start is None or total <= HISTOGRAM_ROW_BUDGET or end <= start:
        return []
    step = (end - start) / SAMPLE_SLICES
    length = step * HISTOGRAM_ROW_BUDGET / total
    return [(start + k * step + _golden(k) * (step - length), start + k * step + _golden(k) * (step - length) + length)
            for k in range(SAMPLE_SLICES)]


def _golden(k: int) -> float:
    """A low-discrepancy sequence in [0, 1): evenly spread offsets with no period."""
    return (k * 0.6180339887 + 0.25) % 1.0


def _layer_view(metric: str, plan: SamplePlan, rows: Sequence[Any]) -> LayerView:
    sums: dict[tuple[int, int], list[float]] = {}
    series = []
    for ts, layer, head, n, mean in rows:
        acc = sums.setdefault((int(layer), int(head)), [0, 0.0])
        if n:
            acc[0] += int(n)
            acc[1] += float(mean) * int(n)
            if head == -1:
                series.append((float(ts), int(layer), float(mean)))
    cells = [CellMean(k[0], k[1], int(n), total / n if n else None) for k, (n, total) in sorted(sums.items())]
    return LayerView(metric, plan, [c for c in cells if c.head >= 0], [c for c in cells if c.head == -1], series)
