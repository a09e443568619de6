"""The store's tables: metadata as a typed SQLAlchemy ORM model, samples as one declaration each.

Metadata (deployments, instances, runs, config versions) is read and written through the ORM. Each sample
table (layer stats, requests, memory samples, events) is declared once, as the record its readers return,
and `kvpilot.storage.tabledef.SampleTable` derives its SQL table, writer checks (bulk inserts, see
`kvpilot.storage.samples`), readers, OpenTelemetry mapping and dashboard metric lists from it. Every timestamp is wall-clock epoch seconds (`time.time()`) as a
double, so rows written by different processes and hosts line up and SQL can bucket them with arithmetic.
Alembic migrations in `kvpilot/storage/migrations` create exactly these tables; change both together.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import (
    JSON,
    BigInteger,
    Double,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    SmallInteger,
    String,
    Table,
    Text,
    UniqueConstraint,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from kvpilot.storage.rollups import GRAINS, RollupTable, derive_rollup
from kvpilot.storage.tabledef import Instrument, InstrumentKind, SampleRecord, SampleTable, TableOtel, column

RUN_KINDS = ("serving", "eval", "tuning_trial", "probe", "canary")
RUN_STATUSES = ("running", "completed", "failed", "pruned")
EVENT_KINDS = (
    "evict",
    "ttl_pin",
    "hit",
    "miss",
    "expire",
    "offload",
    "config_applied",
    "config_rejected",
    "recorder_drop",
    "probe_unavailable",
    "error",
    # a vLLM server's prefix-cache blocks (kvpilot.vllm.events): count = blocks, bytes = their KV bytes
    "kv_block_stored",
    "kv_block_removed",
    "kv_blocks_cleared",
    "quality",  # shadow fidelity of one sampled answer against the full cache (kvpilot.evaluation.shadow)
    # a canary rollout's control-plane decisions (kvpilot.evaluation.canary); detail carries the figures
    "canary_started",
    "canary_promoted",
    "canary_rolled_back",
    "canary_undecided",
)
CANARY_STATUSES = ("running", "promoted", "rolled_back")
ACK_STATUSES = ("applied", "rejected")
# Session-pool events (the Sessions page); `detail` may carry these keys so occupancy can be drawn.
SESSION_KINDS = ("ttl_pin", "hit", "miss", "expire", "offload")
POOL_DETAIL_KEYS = ("pool_sessions", "pool_bytes", "pinned_bytes")

# Named constraints let Alembic's batch mode rebuild SQLite tables without guessing names.
NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# A 64-bit key on PostgreSQL; on SQLite only INTEGER PRIMARY KEY is the auto-incrementing rowid.
BigId = BigInteger().with_variant(Integer, "sqlite")
Json = JSON().with_variant(JSONB(), "postgresql")
Time: Double[float] = Double()


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {dict[str, Any]: Json, list[float]: Json, float: Double()}


def table_of(model: type[Base]) -> Table:
    """An ORM class's Table, typed as one (`__table__` is declared as any FromClause)."""
    return cast(Table, model.__table__)


# ----- metadata -------------------------------------------------------------------------------------


class Deployment(Base):
    """A named service whose engines share one config (e.g. 'chat-prod')."""

    __tablename__ = "deployments"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    model: Mapped[str | None] = mapped_column(String(500))
    created_at: Mapped[float] = mapped_column(Time)
    active_version: Mapped[int | None]


class EngineInstance(Base):
    """One running engine process of a deployment; alive while its heartbeat is fresh."""

    __tablename__ = "engine_instances"
    id: Mapped[int] = mapped_column(primary_key=True)
    deployment_id: Mapped[int] = mapped_column(ForeignKey("deployments.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(200))
    host: Mapped[str | None] = mapped_column(String(255))
    pid: Mapped[int | None]
    started_at: Mapped[float] = mapped_column(Time)
    last_heartbeat: Mapped[float] = mapped_column(Time, index=True)
    config_version: Mapped[int | None]
    __table_args__ = (UniqueConstraint("deployment_id", "name"),)


class Run(Base):
    """A span of work whose samples belong together: serving, an evaluation, a tuning trial or a probe."""

    __tablename__ = "runs"
    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(String(20))
    deployment_id: Mapped[int | None] = mapped_column(ForeignKey("deployments.id", ondelete="SET NULL"))
    instance_id: Mapped[int | None] = mapped_column(ForeignKey("engine_instances.id", ondelete="SET NULL"))
    name: Mapped[str | None] = mapped_column(String(200))
    study_name: Mapped[str | None] = mapped_column(String(500))
    trial_number: Mapped[int | None]
    status: Mapped[str] = mapped_column(String(20))
    started_at: Mapped[float] = mapped_column(Time, index=True)
    finished_at: Mapped[float | None] = mapped_column(Time)
    config: Mapped[dict[str, Any] | None]
    params: Mapped[dict[str, Any] | None]
    metrics: Mapped[dict[str, Any] | None]
    __table_args__ = (Index(None, "study_name", "trial_number"),)


class SensitivityProfile(Base):
    """Per-layer sensitivity of a model to eviction, measured by a named method."""

    __tablename__ = "sensitivity_profiles"
    id: Mapped[int] = mapped_column(primary_key=True)
    model: Mapped[str] = mapped_column(String(500))
    method: Mapped[str] = mapped_column(String(100))
    values: Mapped[list[float]]
    meta: Mapped[dict[str, Any] | None]
    run_id: Mapped[int | None] = mapped_column(ForeignKey("runs.id", ondelete="SET NULL"))
    created_at: Mapped[float] = mapped_column(Time)
    __table_args__ = (Index(None, "model", "created_at"),)


# ----- control plane --------------------------------------------------------------------------------


class ConfigVersion(Base):
    """An immutable, validated KVConfig pushed to a deployment. `config` keeps the exact JSON text."""

    __tablename__ = "config_versions"
    id: Mapped[int] = mapped_column(primary_key=True)
    deployment_id: Mapped[int] = mapped_column(ForeignKey("deployments.id", ondelete="CASCADE"))
    version: Mapped[int]
    config: Mapped[str] = mapped_column(Text)
    config_hash: Mapped[str] = mapped_column(String(64))
    pushed_by: Mapped[str | None] = mapped_column(String(200))
    source: Mapped[str | None] = mapped_column(String(500))
    parent_version: Mapped[int | None]
    created_at: Mapped[float] = mapped_column(Time)
    __table_args__ = (UniqueConstraint("deployment_id", "version"),)


class ConfigActivation(Base):
    """Which version became active when, and why: the undo history that `rollback` walks back."""

    __tablename__ = "config_activations"
    id: Mapped[int] = mapped_column(primary_key=True)
    deployment_id: Mapped[int] = mapped_column(ForeignKey("deployments.id", ondelete="CASCADE"), index=True)
    version: Mapped[int]
    action: Mapped[str] = mapped_column(String(20))  # push | activate | rollback
    by: Mapped[str | None] = mapped_column(String(200))
    ts: Mapped[float] = mapped_column(Time)


class Canary(Base):
    """A config version served to a fraction of requests next to the incumbent until the control plane
    promotes it or rolls it back (`kvpilot.storage.canary`, `kvpilot.evaluation.canary`). `seed` makes each
    engine's per-request choice reproducible; `run_id` is the run that owns its decision events; `figures`
    holds the deciding figures."""

    __tablename__ = "canaries"
    id: Mapped[int] = mapped_column(primary_key=True)
    deployment_id: Mapped[int] = mapped_column(ForeignKey("deployments.id", ondelete="CASCADE"))
    version: Mapped[int]
    baseline_version: Mapped[int]
    fraction: Mapped[float]
    seed: Mapped[int]
    status: Mapped[str] = mapped_column(String(20))  # running | promoted | rolled_back
    run_id: Mapped[int | None] = mapped_column(ForeignKey("runs.id", ondelete="SET NULL"))
    started_at: Mapped[float] = mapped_column(Time)
    decided_at: Mapped[float | None] = mapped_column(Time)
    reason: Mapped[str | None] = mapped_column(Text)
    figures: Mapped[dict[str, Any] | None]
    __table_args__ = (Index(None, "deployment_id", "status"),)


class ConfigAck(Base):
    """An engine's answer to a config version: applied, or rejected with the reason."""

    __tablename__ = "config_acks"
    id: Mapped[int] = mapped_column(primary_key=True)
    deployment_id: Mapped[int] = mapped_column(ForeignKey("deployments.id", ondelete="CASCADE"))
    instance_id: Mapped[int] = mapped_column(ForeignKey("engine_instances.id", ondelete="CASCADE"))
    version: Mapped[int]
    status: Mapped[str] = mapped_column(String(20))
    reason: Mapped[str | None] = mapped_column(Text)
    ts: Mapped[float] = mapped_column(Time)
    __table_args__ = (Index(None, "deployment_id", "version"), Index(None, "instance_id", "ts"))


class EvictionLineage(Base):
    """Which units of a sampled request's context its compressed cache forgot (`kvpilot.engine.lineage`).

    `units` is a list of [token_start, token_end, char_start, char_end, kept] (offsets into `context`, the
    context as decoded token by token); `answers` a list of {"question", "answer"}; `request_key` is the
    same key as the `request` of the request's `quality` cache event when the shadow probe measured it."""

    __tablename__ = "eviction_lineage"
    id: Mapped[int] = mapped_column(primary_key=True)
    ts: Mapped[float] = mapped_column(Time)
    deployment_id: Mapped[int | None] = mapped_column(ForeignKey("deployments.id", ondelete="CASCADE"))
    instance_id: Mapped[int | None] = mapped_column(ForeignKey("engine_instances.id", ondelete="SET NULL"))
    run_id: Mapped[int | None] = mapped_column(ForeignKey("runs.id", ondelete="SET NULL"))
    request_key: Mapped[str] = mapped_column(String(64), index=True)
    config: Mapped[dict[str, Any] | None]
    config_version: Mapped[int | None]
    kind: Mapped[str] = mapped_column(String(20))
    context_tokens: Mapped[int]
    kept_fraction: Mapped[float]
    evicted_units: Mapped[int]
    total_units: Mapped[int]
    context: Mapped[str] = mapped_column(Text)
    units: Mapped[list[Any]] = mapped_column(Json)
    answers: Mapped[list[Any] | None] = mapped_column(Json)
    __table_args__ = (Index(None, "deployment_id", "ts"), Index(None, "ts"))


# ----- samples (bulk-inserted, time-indexed): one declaration each, see `kvpilot.storage.tabledef` -----
#
# Each sample table is the frozen dataclass its readers return; the SQL table, the writers' checks, the
# readers, the OpenTelemetry mapping and the dashboard's metric lists are derived from it.

# GenAI semantic conventions (Development stability); strings copied here so that a semconv package
# upgrade cannot rename them under us.
TTFT = "gen_ai.server.time_to_first_token"
TPOT = "gen_ai.server.time_per_output_token"
REQUEST_DURATION = "gen_ai.server.request.duration"
TOKEN_USAGE = "gen_ai.client.token.usage"
ATTR_TOKEN_TYPE = "gen_ai.token.type"
ATTR_LAYER = "kvpilot.layer"

TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
TPOT_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5)
DURATION_BUCKETS = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92)
TOKEN_BUCKETS = tuple(float(4**i) for i in range(14))
FRACTION_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99, 0.999, 1.0)
COUNT_BUCKETS = tuple(float(2**i) for i in range(18))

_SQL_TYPES: dict[type, Any] = {int: Integer, float: Double, dict: lambda: Json}


def _skew(name: str, help: str, *, tokens: bool = False) -> Any:
    """An attention-skew metric column: averaged by readers, a per-layer histogram in OpenTelemetry."""
    return column(
        metric=True, group="skew", help=help,
        otel=Instrument(
            f"kvpilot.attention.{name}", "{token}" if tokens else "1",
            f"Attention skew: {name} of sampled rows, per layer",
            buckets=COUNT_BUCKETS if tokens else FRACTION_BUCKETS,
        ),
    )


def _gauge(
    name: str, description: str, *, unit: str = "By", kind: InstrumentKind = "updown", hw: bool = False,
    scale: float = 1.0,
) -> Instrument:
    """An observable instrument reporting a column's latest value."""
    return Instrument(name, unit, description, kind=kind, hw=hw, scale=scale)


@dataclass(frozen=True)
class LayerStat(SampleRecord):
    """Attention statistics of one layer (head = -1) or one KV head at one moment."""

    step: int | None = column()
    layer: int = column(SmallInteger, required=True, key=True)
    head: int = column(SmallInteger, default=-1, key=True)  # -1: the whole layer (means over its heads)
    entropy: float | None = _skew(
        "entropy", "attention entropy (nats): high = attention spread over many tokens, hard to compress")
    retained_mass: float | None = _skew(
        "retained_mass", "attention mass on the tokens the cache keeps: 1.0 = eviction lost nothing")
    tokens_90: float | None = _skew("tokens_90", "tokens holding 90 % of the attention mass", tokens=True)
    sink_mass: float | None = _skew("sink_mass", "attention on the first (sink) tokens")
    recent_mass: float | None = _skew("recent_mass", "attention on the protected recent window")
    gini: float | None = _skew("gini", "Gini coefficient of attention: high = a few tokens take most of it")
    kv_bytes: int | None = column(
        BigInteger, metric=True, group="size", otel=_gauge("kvpilot.kv.layer.bytes", "KV bytes per layer"))
    kept_tokens: int | None = column(metric=True, group="size", help="tokens kept in the cache")
    seen_tokens: int | None = column(metric=True, group="size")


@dataclass(frozen=True)
class Request(SampleRecord):
    """One served request: sizes, latencies and what its KV cache cost."""

    prompt_tokens: int | None = column(otel=Instrument(
        TOKEN_USAGE, "{token}", "Input and output tokens per request", buckets=TOKEN_BUCKETS,
        attributes=((ATTR_TOKEN_TYPE, "input"),)))
    output_tokens: int | None = column(otel=Instrument(
        TOKEN_USAGE, "{token}", "Input and output tokens per request", buckets=TOKEN_BUCKETS,
        attributes=((ATTR_TOKEN_TYPE, "output"),)))
    ttft_s: float | None = column(otel=Instrument(TTFT, "s", "Time to first token", buckets=TTFT_BUCKETS))
    tpot_s: float | None = column(otel=Instrument(
        TPOT, "s", "Time per output token after the first", buckets=TPOT_BUCKETS,
        when=lambda r: (r.get("output_tokens") or 0) > 1))
    e2e_s: float | None = column(otel=Instrument(REQUEST_DURATION, "s", "Request duration", buckets=DURATION_BUCKETS))
    kv_bytes: int | None = column(BigInteger)
    compression_ratio: float | None = column(otel=Instrument(
        "kvpilot.kv.compression_ratio", "1", "1 - physical/logical KV bytes per request", buckets=FRACTION_BUCKETS))
    error: str | None = column(Text)
    # the deployment's config version that served it (a canary's or the incumbent's); kept per rollup bucket
    config_version: int | None = column(key=True)


@dataclass(frozen=True)
class MemorySample(SampleRecord):
    """KV cache and device memory at one moment (bytes; NVML utilisation in percent)."""

    device: str | None = column(String(50))
    kv_bytes_physical: int | None = column(BigInteger, otel=_gauge(
        "kvpilot.kv.physical_bytes", "KV bytes held by the last request's cache"))
    kv_bytes_logical: int | None = column(BigInteger, otel=_gauge(
        "kvpilot.kv.logical_bytes", "KV bytes an uncompressed cache would hold"))
    kv_bytes_peak: int | None = column(BigInteger, otel=_gauge("kvpilot.kv.peak_bytes", "Peak KV bytes"))
    device_allocated: int | None = column(BigInteger, otel=_gauge(
        "kvpilot.device.memory.allocated", "torch.cuda allocated bytes"))
    device_reserved: int | None = column(BigInteger, otel=_gauge(
        "kvpilot.device.memory.reserved", "torch.cuda reserved bytes"))
    device_peak: int | None = column(BigInteger, otel=_gauge(
        "kvpilot.device.memory.peak", "torch.cuda peak allocated bytes"))
    nvml_used: int | None = column(BigInteger, otel=_gauge("hw.gpu.memory.usage", "NVML used bytes", hw=True))
    nvml_total: int | None = column(BigInteger, otel=_gauge("hw.gpu.memory.limit", "NVML total bytes", hw=True))
    nvml_util: float | None = column(otel=_gauge(
        "hw.gpu.utilization", "NVML GPU utilisation", unit="1", kind="gauge", hw=True, scale=0.01))
    rss_bytes: int | None = column(BigInteger, otel=_gauge("process.memory.usage", "Process resident set size"))


@dataclass(frozen=True)
class Event(SampleRecord):
    """Something that happened to the cache or its config; `count`/`bytes` let one row stand for a batch."""

    kind: str = column(String(30), required=True, choices=EVENT_KINDS, key=True)
    layer: int | None = column(SmallInteger)
    count: int = column(BigInteger, default=1)
    bytes: int | None = column(BigInteger)
    detail: dict[str, Any] | None = column()


def _vllm(name: str, unit: str, description: str, *, kind: InstrumentKind = "gauge", **kw: Any) -> Any:
    """A vLLM server metric column: averaged by readers, reported as `kvpilot.vllm.*` in OpenTelemetry."""
    return column(metric=True, group="vllm", help=description,
                  otel=Instrument(f"kvpilot.vllm.{name}", unit, description, kind=kind), **kw)


@dataclass(frozen=True)
class VLLMSample(SampleRecord):
    """One scrape of a vLLM server's /metrics: gauges as read, counters as deltas and rates over the interval
    since the previous scrape, latency quantiles from the histograms' bucket deltas over that interval."""

    interval_s: float | None = column(help="seconds since the previous scrape (None: the first one)")
    kv_usage: float | None = _vllm("kv_cache.usage", "1", "fraction of the KV cache's blocks in use")
    kv_bytes: int | None = _vllm("kv_cache.used_bytes", "By", "KV bytes in use (usage x cache size)", sql=BigInteger)
    kv_capacity_bytes: int | None = _vllm("kv_cache.capacity_bytes", "By", "KV cache size", sql=BigInteger)
    requests_running: int | None = _vllm("requests.running", "{request}", "requests being served")
    requests_waiting: int | None = _vllm("requests.waiting", "{request}", "requests queued")
    prefix_queries: int | None = _vllm(
        "prefix_cache.queries", "{token}", "prompt tokens looked up in the prefix cache", kind="counter",
        sql=BigInteger)
    prefix_hits: int | None = _vllm(
        "prefix_cache.hits", "{token}", "prompt tokens found in the prefix cache", kind="counter", sql=BigInteger)
    prefix_hit_ratio: float | None = _vllm("prefix_cache.hit_ratio", "1", "prefix-cache hits / queries this interval")
    preemptions: int | None = _vllm("preemptions", "{preemption}", "requests preempted (KV cache full)",
                                    kind="counter")
    prompt_tokens_per_s: float | None = _vllm("prompt_tokens.rate", "{token}/s", "prompt tokens processed per second")
    generation_tokens_per_s: float | None = _vllm(
        "generation_tokens.rate", "{token}/s", "tokens generated per second")
    requests_per_s: float | None = _vllm("requests.rate", "{request}/s", "requests finished per second")
    ttft_p50_s: float | None = _vllm("ttft.p50", "s", "median time to first token this interval")
    ttft_p99_s: float | None = _vllm("ttft.p99", "s", "99th-percentile time to first token this interval")
    tpot_p50_s: float | None = _vllm("tpot.p50", "s", "median time per output token this interval")
    tpot_p99_s: float | None = _vllm("tpot.p99", "s", "99th-percentile time per output token this interval")
    e2e_p50_s: float | None = _vllm("e2e.p50", "s", "median request latency this interval")
    e2e_p99_s: float | None = _vllm("e2e.p99", "s", "99th-percentile request latency this interval")
    cache_config: dict[str, Any] | None = column(help="vllm:cache_config_info labels (first scrape and on change)")


def _sample_table(name: str, record: type[Any], **kw: Any) -> SampleTable[Any]:
    return SampleTable(name, record, Base.metadata, types=_SQL_TYPES, id_type=BigId, **kw)


LAYER_STATS: SampleTable[LayerStat] = _sample_table(
    "layer_stats", LayerStat,
    # the high-rate table: a time index instead of the (instance_id, ts) B-tree (see `tabledef._sql_table`)
    owner_indexes=("run_id",), time_index=True,
    # per-head rows stay in the store: the layer is the metrics' finest attribute
    otel=TableOtel(rows=lambda r: r.get("head", -1) == -1, attributes=((ATTR_LAYER, "layer"),)),
)
REQUESTS: SampleTable[Request] = _sample_table(
    "requests", Request,
    otel=TableOtel(count=Instrument("kvpilot.requests", "{request}", "Requests observed", kind="counter")),
)
MEMORY_SAMPLES: SampleTable[MemorySample] = _sample_table(
    "memory_samples", MemorySample, otel=TableOtel(hw_id="device")
)
CACHE_EVENTS: SampleTable[Event] = _sample_table("cache_events", Event, indexes=[("kind", "ts")])
VLLM_SAMPLES: SampleTable[VLLMSample] = _sample_table("vllm_samples", VLLMSample)

# The attention-skew metrics of a layer_stats row, in column order (what the skew probe computes).
SKEW_METRICS = LAYER_STATS.names(group="skew")


class IngestedPart(Base):
    """Ids of recorder parts already stored, written in the same transaction as the part's rows: a part
    replayed after its COMMIT answer was lost (or its spool ack) finds its id here and is skipped."""

    __tablename__ = "ingested_parts"
    part_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    ts: Mapped[float] = mapped_column(Time, index=True)


# The sample tables by name, in the order `Store.counts` and `kvpilot db status` list them.
SAMPLES: dict[str, SampleTable[Any]] = {
    t.name: t for t in (LAYER_STATS, REQUESTS, MEMORY_SAMPLES, CACHE_EVENTS, VLLM_SAMPLES)
}
SAMPLE_TABLES = {name: t.table for name, t in SAMPLES.items()}  # the SQLAlchemy tables


# Per-minute and per-hour rollups of every sample table (`kvpilot.storage.rollups`), derived from the
# declarations above: ROLLUPS["layer_stats"] lists layer_stats_1m, layer_stats_1h.
ROLLUPS: dict[str, tuple[RollupTable, ...]] = {
    name: tuple(derive_rollup(spec, label, grain, Base.metadata, BigId) for label, grain in GRAINS)
    for name, spec in SAMPLES.items()
}


class RollupState(Base):
    """How far each sample table's rollups reach: raw rows with id <= `last_id` are in them, and readers
    take whole rollup buckets before `covered_until` (epoch seconds) and raw rows after it."""

    __tablename__ = "rollup_state"
    table_name: Mapped[str] = mapped_column(String(100), primary_key=True)
    last_id: Mapped[int] = mapped_column(BigInteger)
    covered_until: Mapped[float] = mapped_column(Time)
    updated_at: Mapped[float] = mapped_column(Time)
