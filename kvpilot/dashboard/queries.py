"""Aggregate queries the dashboard needs beyond the store's readers, all computed in the database.

Every function takes a `Scope` (deployment, optional instance, time window) and returns a few hundred
rows at most: sums, means and histograms are GROUP BY queries filtered through the (instance_id, ts)
indexes, so a page costs the same on a store of ten thousand samples or ten million. Nothing here imports
streamlit, so the queries are tested and benchmarked on their own.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

from sqlalchemy import Integer, Table, cast, exists, func, select, union_all
from sqlalchemy.engine import Connection
from sqlalchemy.sql import ColumnElement

from kvpilot.storage import Store
from kvpilot.storage.schema import SAMPLE_TABLES, Deployment

LS = SAMPLE_TABLES["layer_stats"]
RQ = SAMPLE_TABLES["requests"]
MEM = SAMPLE_TABLES["memory_samples"]
EV = SAMPLE_TABLES["cache_events"]

LAYER_METRICS = ("entropy", "retained_mass", "tokens_90", "sink_mass", "recent_mass", "gini", "kept_tokens")
SESSION_KINDS = ("ttl_pin", "hit", "miss", "expire", "offload")
# What a session-pool event may carry in `detail` so the Sessions page can draw occupancy over time.
POOL_DETAIL_KEYS = ("pool_sessions", "pool_bytes", "pinned_bytes")
LatencyColumn = Literal["ttft_s", "tpot_s", "e2e_s"]
_NICE_WIDTHS = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400)


@dataclass(frozen=True)
class Scope:
    """What a page looks at: one deployment (optionally one of its instances) over `window_s` up to `now`.

    `now` is fixed when the scope is made (rounded by the dashboard), so every query of one page run sees the
    same window and cached results can be shared between fragments and viewers."""

    deployment: str | None
    instance_id: int | None = None
    window_s: float = 3600.0
    now: float | None = None

    def owner(self) -> dict[str, Any]:
        """Keyword arguments selecting this scope's samples in the store's readers."""
        if self.instance_id is not None:
            return {"instance_id": self.instance_id}
        return {"deployment": self.deployment}

    def window(self) -> dict[str, Any]:
        """Owner plus time filters for the store's readers."""
        return {**self.owner(), "since": self.since}

    @property
    def end(self) -> float:
        return time.time() if self.now is None else self.now

    @property
    def since(self) -> float:
        return self.end - self.window_s


def bucket_width(window_s: float, points: int = 150) -> float:
    """A round bucket width giving about `points` buckets, so buckets stay put between refreshes."""
    raw = window_s / points
    return float(next((w for w in _NICE_WIDTHS if w >= raw), _NICE_WIDTHS[-1]))


def _owner_conds(store: Store, table: Table, scope: Scope) -> list[ColumnElement[bool]] | None:
    """Index-friendly filters for the scope and its window, or None when it holds no instance."""
    owner = _owner_only(store, table, scope)
    return None if owner is None else [*owner, table.c.ts >= scope.since]


def _owner_only(store: Store, table: Table, scope: Scope) -> list[ColumnElement[bool]] | None:
    if scope.instance_id is not None:
        ids = [scope.instance_id]
    elif scope.deployment is not None:
        ids = [i.id for i in store.instances(scope.deployment)]
    else:
        return None
    if not ids:
        return None
    # Literal ids plus IS NOT NULL let both planners use the partial (instance_id, ts) index.
    return [table.c.instance_id.in_(ids), table.c.instance_id.is_not(None)]


@contextlib.contextmanager
def _connect(store: Store) -> Iterator[Connection]:
    """A read connection. On PostgreSQL, JIT compilation is off for its transaction: these short aggregates
    (a union of 60 index range scans for a sampled heatmap) cost an estimated millions, which triggers JIT
    compiling for about 3 s to run a 0.2 s query."""
    with store.engine.connect() as conn:
        if store.backend_name == "postgresql":
            conn.exec_driver_sql("SET LOCAL jit = off")
        yield conn


def _floor_div(store: Store, column: ColumnElement[Any], width: float) -> ColumnElement[Any]:
    """floor(column / width) for non-negative values (SQLite may lack floor(); truncation is floor here)."""
    if store.backend_name == "sqlite":
        return cast(column / width, Integer)
    return func.floor(column / width)


def _f(v: Any) -> float | None:
    return None if v is None else float(v)


# ----- whole store ------------------------------------------------------------------------------------


def is_empty(store: Store) -> bool:
    """True when the store has no deployment and no sample at all (the 'run kvpilot demo' case)."""

    tables = [Deployment.__table__, *SAMPLE_TABLES.values()]
    with _connect(store) as conn:
        return not any(conn.execute(select(exists().select_from(t))).scalar() for t in tables)


# ----- requests ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RequestTotals:
    """Requests in the window, aggregated in SQL."""

    requests: int = 0
    errors: int = 0
    prompt_tokens: int = 0
    output_tokens: int = 0
    ttft_mean: float | None = None
    tpot_mean: float | None = None
    e2e_mean: float | None = None
    kv_bytes_mean: float | None = None
    compression_ratio_mean: float | None = None
    first_ts: float | None = None
    last_ts: float | None = None

    @property
    def rate_per_s(self) -> float | None:
        """Requests per second over the span that actually has requests."""
        if not self.requests or self.first_ts is None or self.last_ts is None:
            return None
        return self.requests / max(self.last_ts - self.first_ts, 1.0)


def request_totals(store: Store, scope: Scope) -> RequestTotals:
    conds = _owner_conds(store, RQ, scope)
    if conds is None:
        return RequestTotals()
    c = RQ.c
    q = select(
        func.count(), func.count(c.error), func.coalesce(func.sum(c.prompt_tokens), 0),
        func.coalesce(func.sum(c.output_tokens), 0), func.avg(c.ttft_s), func.avg(c.tpot_s), func.avg(c.e2e_s),
        func.avg(c.kv_bytes), func.avg(c.compression_ratio), func.min(c.ts), func.max(c.ts),
    ).where(*conds)
    with _connect(store) as conn:
        r = conn.execute(q).one()
    return RequestTotals(int(r[0]), int(r[1]), int(r[2]), int(r[3]), *(_f(v) for v in r[4:]))


@dataclass(frozen=True)
class Histogram:
    """Counts per equal-width bin from 0 to the window's maximum; quantiles are read off the bins."""

    column: str
    width: float = 0.0
    counts: list[int] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(self.counts)

    def quantile(self, q: float) -> float | None:
        """The q-quantile, interpolated inside its bin (error at most one bin width)."""
        n = self.total
        if not n:
            return None
        target, cum = q * n, 0
        for i, c in enumerate(self.counts):
            if c and cum + c >= target:
                return (i + (target - cum) / c) * self.width
            cum += c
        return len(self.counts) * self.width


def latency_histogram(store: Store, scope: Scope, column: LatencyColumn, bins: int = 40) -> Histogram:
    """Distribution of one latency column: one MAX query, then one GROUP BY bin query."""
    conds = _owner_conds(store, RQ, scope)
    if conds is None:
        return Histogram(column)
    col = RQ.c[column]
    conds = [*conds, col.is_not(None)]
    with _connect(store) as conn:
        top = conn.execute(select(func.max(col)).where(*conds)).scalar()
        if top is None:
            return Histogram(column)
        width = max(float(top), 1e-9) / bins
        b = _floor_div(store, col, width).label("bin")
        rows = conn.execute(select(b, func.count()).where(*conds).group_by(b)).all()
    counts = [0] * bins
    for i, n in rows:
        counts[min(int(i), bins - 1)] += int(n)  # the maximum itself lands in the last bin
    return Histogram(column, width, counts)


# ----- layers -----------------------------------------------------------------------------------------
#
# Layer statistics are the big table (layers x heads rows per probe step per engine). A window holding more
# than ROW_BUDGET of them is read as SAMPLE_SLICES evenly spaced slices adding up to SAMPLE_SPAN_S seconds,
# each an index range scan, so a Layers page costs about the same for a 5-minute or a 7-day window.

ROW_BUDGET = 200_000
SAMPLE_SLICES = 60
SAMPLE_SPAN_S = 300.0
PROBES, PROBE_S = 12, 2.0


@dataclass(frozen=True)
class CellMean:
    layer: int
    head: int
    samples: int
    value: float | None


@dataclass(frozen=True)
class SamplePlan:
    """Which part of the window a layer query reads: all of it, or one short slice inside every bucket."""

    bucket_s: float
    slices: tuple[tuple[float, float], ...] = ()
    slice_s: float = 0.0

    @property
    def sampled(self) -> bool:
        return bool(self.slices)

    def describe(self) -> str:
        if not self.sampled:
            return "every sample in the window"
        return f"a sample: {self.slice_s:g} s (at a staggered offset) of every {self.bucket_s:g} s of the window"


@dataclass(frozen=True)
class LayerView:
    """One metric per layer and KV head over the window, and per layer over time (head = -1 rows)."""

    metric: str
    plan: SamplePlan
    cells: list[CellMean]  # KV heads (head >= 0)
    layers: list[CellMean]  # whole layers (head = -1)
    series: list[tuple[float, int, float]]  # (bucket start, layer, mean) of whole-layer rows


def layer_plan(store: Store, scope: Scope, points: int = SAMPLE_SLICES) -> SamplePlan:
    """Read the whole window when it holds about ROW_BUDGET layer rows or fewer, else one short slice inside
    each bucket.

    The row count is estimated from PROBES short probes spread over the window (a few index range scans):
    an exact COUNT would itself read the whole window, and PostgreSQL's bitmap scans ignore a LIMIT."""
    width = bucket_width(scope.window_s, points)
    length = SAMPLE_SPAN_S / points
    owner = _owner_only(store, LS, scope)
    if owner is None or length >= width:
        return SamplePlan(width)
    step = scope.window_s / PROBES
    # golden-ratio offsets inside each step, so probes never all fall between samples taken at a fixed period
    probes = [scope.since + (k + _golden(k)) * step for k in range(PROBES)]
    parts = [select(LS.c.id).where(*owner, LS.c.ts >= a, LS.c.ts < a + PROBE_S) for a in probes]
    with _connect(store) as conn:
        n = conn.execute(select(func.count()).select_from(union_all(*parts).subquery())).scalar_one()
    if n * scope.window_s / (PROBES * PROBE_S) <= ROW_BUDGET:
        return SamplePlan(width)
    first = math.floor(scope.since / width) * width
    slices = []
    for k in range(int(scope.window_s // width) + 2):
        # each slice sits at a different (golden-ratio) offset inside its bucket, so probes that sample at a
        # fixed period are caught in proportion to the slice length instead of always or never
        start = first + k * width + _golden(k) * (width - length)
        a, b = max(start, scope.since), min(start + length, scope.end)
        if b > a:
            slices.append((a, b))
    return SamplePlan(width, tuple(slices), length)


def _golden(k: int) -> float:
    """A low-discrepancy sequence in [0, 1): evenly spread offsets with no period."""
    return (k * 0.6180339887 + 0.25) % 1.0


def layer_view(store: Store, scope: Scope, metric: str, points: int = SAMPLE_SLICES) -> LayerView:
    """Heatmap data for `metric`: one GROUP BY (bucket, layer, head) query over the planned part of the window;
    per-cell means are weighted from the buckets, so the database does the only pass over rows."""
    if metric not in LAYER_METRICS and metric not in ("kv_bytes", "seen_tokens"):
        raise ValueError(f"unknown layer metric {metric!r}; use one of {', '.join(LAYER_METRICS)}")
    plan = layer_plan(store, scope, points)
    owner = _owner_only(store, LS, scope)
    if owner is None:
        return LayerView(metric, plan, [], [], [])
    cols = (LS.c.ts, LS.c.layer, LS.c.head, LS.c[metric].label("value"))
    ranges = plan.slices or ((scope.since, None),)
    parts = [
        select(*cols).where(*owner, LS.c.ts >= a, *(() if b is None else (LS.c.ts < b,))) for a, b in ranges
    ]
    src = (parts[0] if len(parts) == 1 else union_all(*parts)).subquery()
    bucket = (_floor_div(store, src.c.ts, plan.bucket_s) * plan.bucket_s).label("bucket")
    q = (
        select(bucket, src.c.layer, src.c.head, func.count(src.c.value), func.avg(src.c.value))
        .group_by(bucket, src.c.layer, src.c.head)
        .order_by(bucket, src.c.layer, src.c.head)
    )
    with _connect(store) as conn:
        rows = conn.execute(q).all()
    sums: dict[tuple[int, int], list[float]] = {}
    series = []
    for ts, layer, head, n, mean in rows:
        acc = sums.setdefault((int(layer), int(head)), [0, 0.0])
        if n:
            acc[0] += int(n)
            acc[1] += float(mean) * int(n)
            if head == -1:
                series.append((float(ts), int(layer), float(mean)))
    cells = [CellMean(k[0], k[1], n, total / n if n else None) for k, (n, total) in sorted(sums.items())]
    return LayerView(metric, plan, [c for c in cells if c.head >= 0], [c for c in cells if c.head == -1], series)


@dataclass(frozen=True)
class LayerShape:
    """How many layers the engines report and how many tokens their caches have seen (window mean)."""

    num_layers: int | None
    seen_tokens: float | None


def layer_shape(store: Store, scope: Scope) -> LayerShape:
    """From the newest sample of each layer (an indexed lookup, not a scan of the window)."""
    if scope.deployment is None and scope.instance_id is None:
        return LayerShape(None, None)
    latest = store.layer_stats_latest(**scope.owner(), level="layer")
    if not latest:
        return LayerShape(None, None)
    seen = [s.seen_tokens for s in latest if s.seen_tokens is not None]
    return LayerShape(max(s.layer for s in latest) + 1, sum(seen) / len(seen) if seen else None)


# ----- events and sessions ----------------------------------------------------------------------------


@dataclass(frozen=True)
class KindTotal:
    kind: str
    events: int
    count: int
    bytes: int


def event_totals(store: Store, scope: Scope, kinds: tuple[str, ...] | None = None) -> dict[str, KindTotal]:
    """Rows, summed counts and bytes per event kind over the window."""
    conds = _owner_conds(store, EV, scope)
    if conds is None:
        return {}
    if kinds is not None:
        conds.append(EV.c.kind.in_(list(kinds)))
    q = (
        select(EV.c.kind, func.count(), func.coalesce(func.sum(EV.c.count), 0), func.coalesce(func.sum(EV.c.bytes), 0))
        .where(*conds)
        .group_by(EV.c.kind)
    )
    with _connect(store) as conn:
        return {r[0]: KindTotal(r[0], int(r[1]), int(r[2]), int(r[3])) for r in conn.execute(q)}


@dataclass(frozen=True)
class PoolBucket:
    """Session-pool occupancy in one time bucket, read from session events' `detail` (maxima)."""

    ts: float
    pool_sessions: float | None
    pool_bytes: float | None
    pinned_bytes: float | None


def pool_series(store: Store, scope: Scope, bucket_s: float) -> list[PoolBucket]:
    """Occupancy over time from the `pool_sessions`, `pool_bytes`, `pinned_bytes` keys of session events."""
    conds = _owner_conds(store, EV, scope)
    if conds is None:
        return []
    b = (_floor_div(store, EV.c.ts, bucket_s) * bucket_s).label("bucket")
    fields = [func.max(EV.c.detail[k].as_float()) for k in POOL_DETAIL_KEYS]
    q = (
        select(b, *fields)
        .where(*conds, EV.c.kind.in_(list(SESSION_KINDS)), EV.c.detail.is_not(None))
        .group_by(b)
        .order_by(b)
    )
    with _connect(store) as conn:
        rows = [PoolBucket(float(r[0]), *(_f(v) for v in r[1:])) for r in conn.execute(q)]
    return [r for r in rows if any(v is not None for v in (r.pool_sessions, r.pool_bytes, r.pinned_bytes))]
