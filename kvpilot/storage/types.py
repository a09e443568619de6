"""What the store hands out and takes in: plain dataclasses and TypedDicts, never ORM objects.

Readers (dashboard, CLI) get frozen dataclasses that stay valid after the session closes; writers (probes,
tuner) pass plain dicts shaped like the TypedDicts below. Times are epoch seconds (`time.time()`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, TypedDict

from kvpilot.config import KVConfig, KVConfigError

# ----- rows written by probes (all keys optional except where noted; missing ts = now) ---------------


class LayerStatRow(TypedDict, total=False):
    ts: float
    instance_id: int | None
    run_id: int | None
    step: int | None
    layer: int  # required
    head: int  # -1 (default) = the whole layer
    entropy: float | None
    retained_mass: float | None
    tokens_90: float | None
    sink_mass: float | None
    recent_mass: float | None
    gini: float | None
    kv_bytes: int | None
    kept_tokens: int | None
    seen_tokens: int | None


class RequestRow(TypedDict, total=False):
    ts: float
    instance_id: int | None
    run_id: int | None
    prompt_tokens: int | None
    output_tokens: int | None
    ttft_s: float | None
    tpot_s: float | None
    e2e_s: float | None
    kv_bytes: int | None
    compression_ratio: float | None
    error: str | None


class MemoryRow(TypedDict, total=False):
    ts: float
    instance_id: int | None
    run_id: int | None
    device: str | None
    kv_bytes_physical: int | None
    kv_bytes_logical: int | None
    kv_bytes_peak: int | None
    device_allocated: int | None
    device_reserved: int | None
    device_peak: int | None
    nvml_used: int | None
    nvml_total: int | None
    nvml_util: float | None
    rss_bytes: int | None


class EventRow(TypedDict, total=False):
    ts: float
    instance_id: int | None
    run_id: int | None
    kind: str  # required, one of schema.EVENT_KINDS
    layer: int | None
    count: int  # default 1
    bytes: int | None
    detail: dict[str, Any] | None


# ----- what readers get ----------------------------------------------------------------------------


@dataclass(frozen=True)
class DeploymentInfo:
    id: int
    name: str
    model: str | None
    created_at: float
    active_version: int | None


@dataclass(frozen=True)
class InstanceInfo:
    id: int
    deployment: str
    name: str
    host: str | None
    pid: int | None
    started_at: float
    last_heartbeat: float
    config_version: int | None
    alive: bool


@dataclass(frozen=True)
class RunInfo:
    id: int
    kind: str
    status: str
    deployment: str | None
    instance_id: int | None
    name: str | None
    study_name: str | None
    trial_number: int | None
    started_at: float
    finished_at: float | None
    config: dict[str, Any] | None
    params: dict[str, Any] | None
    metrics: dict[str, Any] | None


@dataclass(frozen=True)
class LayerStat:
    """One stored layer-stat sample (head = -1: the whole layer)."""

    id: int
    ts: float
    instance_id: int | None
    run_id: int | None
    step: int | None
    layer: int
    head: int
    entropy: float | None
    retained_mass: float | None
    tokens_90: float | None
    sink_mass: float | None
    recent_mass: float | None
    gini: float | None
    kv_bytes: int | None
    kept_tokens: int | None
    seen_tokens: int | None


@dataclass(frozen=True)
class LayerStatBucket:
    """Layer stats averaged in SQL over one time bucket (`ts` is the bucket start), one layer/head."""

    ts: float
    layer: int
    head: int
    samples: int
    entropy: float | None
    retained_mass: float | None
    tokens_90: float | None
    sink_mass: float | None
    recent_mass: float | None
    gini: float | None
    kv_bytes: float | None
    kept_tokens: float | None
    seen_tokens: float | None


@dataclass(frozen=True)
class Request:
    id: int
    ts: float
    instance_id: int | None
    run_id: int | None
    prompt_tokens: int | None
    output_tokens: int | None
    ttft_s: float | None
    tpot_s: float | None
    e2e_s: float | None
    kv_bytes: int | None
    compression_ratio: float | None
    error: str | None


@dataclass(frozen=True)
class RequestBucket:
    """Requests aggregated over one time bucket: token sums, latency means and maxima."""

    ts: float
    requests: int
    errors: int
    prompt_tokens: int
    output_tokens: int
    ttft_mean: float | None
    ttft_max: float | None
    tpot_mean: float | None
    tpot_max: float | None
    e2e_mean: float | None
    kv_bytes_mean: float | None
    compression_ratio_mean: float | None


@dataclass(frozen=True)
class MemoryBucket:
    """Memory of one instance over one time bucket: means of levels, maxima of peaks (bytes)."""

    ts: float
    instance_id: int | None
    samples: int
    kv_bytes_physical: float | None
    kv_bytes_physical_max: int | None
    kv_bytes_logical: float | None
    kv_bytes_peak: int | None
    device_allocated: float | None
    device_reserved_max: int | None
    device_peak: int | None
    nvml_used_max: int | None
    nvml_total: int | None
    nvml_util: float | None
    rss_bytes_max: int | None


@dataclass(frozen=True)
class Event:
    id: int
    ts: float
    instance_id: int | None
    run_id: int | None
    kind: str
    layer: int | None
    count: int
    bytes: int | None
    detail: dict[str, Any] | None


@dataclass(frozen=True)
class EventBucket:
    """Events of one kind in one time bucket: rows, summed counts and bytes."""

    ts: float
    kind: str
    events: int
    count: int
    bytes: int


@dataclass(frozen=True)
class LayerSummary:
    layer: int
    samples: int
    entropy: float | None
    retained_mass: float | None
    tokens_90: float | None
    gini: float | None
    kv_bytes: float | None
    kept_tokens: float | None


@dataclass(frozen=True)
class RunSummary:
    """Everything recorded under one run, aggregated in SQL."""

    run: RunInfo
    first_ts: float | None
    last_ts: float | None
    requests: int
    request_errors: int
    prompt_tokens: int
    output_tokens: int
    ttft_mean: float | None
    ttft_max: float | None
    tpot_mean: float | None
    kv_bytes_mean: float | None
    compression_ratio_mean: float | None
    kv_bytes_peak: int | None
    device_peak: int | None
    events: dict[str, int] = field(default_factory=dict)
    layers: list[LayerSummary] = field(default_factory=list)


@dataclass(frozen=True)
class Profile:
    id: int
    model: str
    method: str
    values: list[float]
    meta: dict[str, Any] | None
    run_id: int | None
    created_at: float


# ----- control plane ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ConfigVersionInfo:
    """One pushed config. `config_json` is the stored text; `config()` parses and validates it."""

    deployment: str
    version: int
    config_json: str
    config_hash: str
    pushed_by: str | None
    source: str | None
    parent_version: int | None
    created_at: float
    active: bool

    def config(self) -> KVConfig:
        """The KVConfig, or CorruptConfigError if the stored row no longer parses."""
        from kvpilot.storage.errors import CorruptConfigError

        try:
            return KVConfig.parse(self.config_json)
        except KVConfigError as exc:
            raise CorruptConfigError(self.deployment, self.version, "; ".join(exc.problems)) from None

    def config_dict(self) -> dict[str, Any]:
        """The stored JSON object as is (for diffs); CorruptConfigError if it is not a JSON object."""
        from kvpilot.storage.errors import CorruptConfigError

        try:
            data = json.loads(self.config_json)
        except json.JSONDecodeError as exc:
            raise CorruptConfigError(self.deployment, self.version, f"not valid JSON: {exc}") from None
        if not isinstance(data, dict):
            raise CorruptConfigError(self.deployment, self.version, f"expected a JSON object, got {type(data).__name__}")
        return data


@dataclass(frozen=True)
class FieldChange:
    field: str
    old: Any
    new: Any


@dataclass(frozen=True)
class Ack:
    deployment: str
    instance_id: int
    instance: str
    version: int
    status: str  # applied | rejected
    reason: str | None
    ts: float


@dataclass(frozen=True)
class Activation:
    version: int
    action: str  # push | activate | rollback
    by: str | None
    ts: float
