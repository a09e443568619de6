"""The store's tables as a typed SQLAlchemy ORM model.

Metadata (deployments, instances, runs, config versions) is read and written through the ORM; the sample
tables (layer stats, requests, memory samples, events) are only declared here and are written with bulk
inserts (see `kvpilot.storage.samples`). Every timestamp is wall-clock epoch seconds (`time.time()`) as a
double, so rows written by different processes and hosts line up and SQL can bucket them with arithmetic.
Alembic migrations in `kvpilot/storage/migrations` create exactly these tables; change both together.
"""

from __future__ import annotations

from typing import Any

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
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

RUN_KINDS = ("serving", "eval", "tuning_trial", "probe")
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
)
ACK_STATUSES = ("applied", "rejected")

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
Time = Double()


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {dict[str, Any]: Json, list[float]: Json, float: Double()}


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


# ----- samples (bulk-inserted, time-indexed) -------------------------------------------------------


def _sample_indexes(table: str) -> tuple[Index, ...]:
    # Dashboards read one instance or one run over a time window, and prune deletes per owner by time.
    # The indexes are partial (owner NOT NULL): engine rows without a run skip the run index entirely,
    # which is a third of the insert cost. Every sample row has an instance or a run (samples.py checks).
    return tuple(
        Index(
            f"ix_{table}_{owner.removesuffix('_id')}_ts",
            owner,
            "ts",
            sqlite_where=text(f"{owner} IS NOT NULL"),
            postgresql_where=text(f"{owner} IS NOT NULL"),
        )
        for owner in ("instance_id", "run_id")
    )


class LayerStat(Base):
    """Attention statistics of one layer (head = -1) or one KV head at one moment."""

    __tablename__ = "layer_stats"
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    ts: Mapped[float] = mapped_column(Time)
    instance_id: Mapped[int | None] = mapped_column(ForeignKey("engine_instances.id", ondelete="CASCADE"))
    run_id: Mapped[int | None] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    step: Mapped[int | None]
    layer: Mapped[int] = mapped_column(SmallInteger)
    head: Mapped[int] = mapped_column(SmallInteger, default=-1)
    entropy: Mapped[float | None]
    retained_mass: Mapped[float | None]
    tokens_90: Mapped[float | None]
    sink_mass: Mapped[float | None]
    recent_mass: Mapped[float | None]
    gini: Mapped[float | None]
    kv_bytes: Mapped[int | None] = mapped_column(BigInteger)
    kept_tokens: Mapped[int | None]
    seen_tokens: Mapped[int | None]
    __table_args__ = _sample_indexes("layer_stats")


class RequestRecord(Base):
    """One served request: sizes, latencies and what its KV cache cost."""

    __tablename__ = "requests"
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    ts: Mapped[float] = mapped_column(Time)
    instance_id: Mapped[int | None] = mapped_column(ForeignKey("engine_instances.id", ondelete="CASCADE"))
    run_id: Mapped[int | None] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    prompt_tokens: Mapped[int | None]
    output_tokens: Mapped[int | None]
    ttft_s: Mapped[float | None]
    tpot_s: Mapped[float | None]
    e2e_s: Mapped[float | None]
    kv_bytes: Mapped[int | None] = mapped_column(BigInteger)
    compression_ratio: Mapped[float | None]
    error: Mapped[str | None] = mapped_column(Text)
    __table_args__ = _sample_indexes("requests")


class MemorySample(Base):
    """KV cache and device memory at one moment (bytes; NVML utilisation in percent)."""

    __tablename__ = "memory_samples"
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    ts: Mapped[float] = mapped_column(Time)
    instance_id: Mapped[int | None] = mapped_column(ForeignKey("engine_instances.id", ondelete="CASCADE"))
    run_id: Mapped[int | None] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    device: Mapped[str | None] = mapped_column(String(50))
    kv_bytes_physical: Mapped[int | None] = mapped_column(BigInteger)
    kv_bytes_logical: Mapped[int | None] = mapped_column(BigInteger)
    kv_bytes_peak: Mapped[int | None] = mapped_column(BigInteger)
    device_allocated: Mapped[int | None] = mapped_column(BigInteger)
    device_reserved: Mapped[int | None] = mapped_column(BigInteger)
    device_peak: Mapped[int | None] = mapped_column(BigInteger)
    nvml_used: Mapped[int | None] = mapped_column(BigInteger)
    nvml_total: Mapped[int | None] = mapped_column(BigInteger)
    nvml_util: Mapped[float | None]
    rss_bytes: Mapped[int | None] = mapped_column(BigInteger)
    __table_args__ = _sample_indexes("memory_samples")


class CacheEvent(Base):
    """Something that happened to the cache or its config; `count`/`bytes` let one row stand for a batch."""

    __tablename__ = "cache_events"
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    ts: Mapped[float] = mapped_column(Time)
    instance_id: Mapped[int | None] = mapped_column(ForeignKey("engine_instances.id", ondelete="CASCADE"))
    run_id: Mapped[int | None] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(30))
    layer: Mapped[int | None] = mapped_column(SmallInteger)
    count: Mapped[int] = mapped_column(BigInteger, default=1)
    bytes: Mapped[int | None] = mapped_column(BigInteger)
    detail: Mapped[dict[str, Any] | None]
    __table_args__ = (*_sample_indexes("cache_events"), Index("ix_cache_events_kind_ts", "kind", "ts"))


class IngestedPart(Base):
    """Ids of recorder parts already stored, written in the same transaction as the part's rows: a part
    replayed after its COMMIT answer was lost (or its spool ack) finds its id here and is skipped."""

    __tablename__ = "ingested_parts"
    part_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    ts: Mapped[float] = mapped_column(Time, index=True)


SAMPLE_TABLES = {
    "layer_stats": LayerStat.__table__,
    "requests": RequestRecord.__table__,
    "memory_samples": MemorySample.__table__,
    "cache_events": CacheEvent.__table__,
}
