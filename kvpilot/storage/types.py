"""What the store hands out and takes in: plain dataclasses and dicts, never ORM objects.

Readers (dashboard, CLI) get frozen dataclasses that stay valid after the session closes: raw samples as
their table's record (`LayerStat`, `Request`, `Event`, declared in `kvpilot.storage.schema`), aggregates
as the dataclasses below. Writers (probes, tuner) pass plain dicts that each table's declaration checks.
Times are epoch seconds (`time.time()`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from kvpilot.config import KVConfig, KVConfigError
from kvpilot.storage.rows import SampleRow

if TYPE_CHECKING:
    from kvpilot.vllm_config import VLLMConfig

# the sample records, declared with their tables and re-exported here with the other reader types
from kvpilot.storage.schema import Event as Event
from kvpilot.storage.schema import LayerStat as LayerStat
from kvpilot.storage.schema import MemorySample as MemorySample
from kvpilot.storage.schema import Request as Request

# ----- rows written by probes: plain dicts, checked against the table's declaration (schema.py) -------

# Kept as names for annotations; every writer takes `SampleRow` and refuses keys its table does not declare.
LayerStatRow = RequestRow = MemoryRow = EventRow = SampleRow

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


class _LayerMeans:
    """Layer-stat metric means by column name (`bucket.entropy`), one per metric the table declares."""

    means: Mapping[str, float | None]

    def __getattr__(self, name: str) -> float | None:
        if name.startswith("_") or name == "means":  # pickling and copying look up dunders before fields
            raise AttributeError(name)
        try:
            return self.means[name]
        except KeyError:
            raise AttributeError(f"{type(self).__name__} has no metric {name!r}") from None


@dataclass(frozen=True)
class LayerStatBucket(_LayerMeans):
    """Layer stats averaged in SQL over one time bucket (`ts` is the bucket start), one layer/head.

    `means` has every metric column of `schema.LAYER_STATS` (also readable as attributes: `b.gini`)."""

    ts: float
    layer: int
    head: int
    samples: int
    means: Mapping[str, float | None]


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
class VLLMBucket:
    """A vLLM server over one time bucket: means of gauges and rates, hits over queries, sums of preemptions,
    the mean of the scrapes' p50s and the worst of their p99s."""

    ts: float
    instance_id: int | None
    scrapes: int
    kv_usage: float | None
    kv_bytes: float | None
    prefix_queries: int
    prefix_hits: int
    preemptions: int
    prompt_tokens_per_s: float | None
    generation_tokens_per_s: float | None
    requests_per_s: float | None
    ttft_p50_s: float | None
    ttft_p99_s: float | None
    tpot_p50_s: float | None
    tpot_p99_s: float | None

    @property
    def prefix_hit_ratio(self) -> float | None:
        return self.prefix_hits / self.prefix_queries if self.prefix_queries else None


@dataclass(frozen=True)
class EventBucket:
    """Events of one kind in one time bucket: rows, summed counts and bytes."""

    ts: float
    kind: str
    events: int
    count: int
    bytes: int


@dataclass(frozen=True)
class LayerSummary(_LayerMeans):
    """One layer's whole-layer rows (head = -1) of a run: every metric's mean (`summary.entropy`)."""

    layer: int
    samples: int
    means: Mapping[str, float | None]


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

    def vllm_config(self) -> VLLMConfig:
        """The VLLMConfig of a vLLM deployment's version, or CorruptConfigError if the row does not parse as one."""
        from kvpilot.storage.errors import CorruptConfigError
        from kvpilot.vllm_config import VLLMConfig

        try:
            return VLLMConfig.parse(self.config_json)
        except KVConfigError as exc:
            raise CorruptConfigError(self.deployment, self.version, "; ".join(exc.problems)) from None

    @property
    def is_vllm(self) -> bool:
        """Whether this version is a vLLM server's config (`"engine": "vllm"`) rather than a KVConfig."""
        from kvpilot.vllm_config import is_vllm_document

        return is_vllm_document(self.config_json)

    def document(self) -> KVConfig | VLLMConfig:
        """The version parsed as what it is (KVConfig or VLLMConfig); CorruptConfigError if it does not parse."""
        return self.vllm_config() if self.is_vllm else self.config()

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


# ----- dashboard aggregates (kvpilot.storage.aggregates) -----------------------------------------------


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


LatencyColumn = Literal["ttft_s", "tpot_s", "e2e_s"]


@dataclass(frozen=True)
class Histogram:
    """Counts per equal-width bin from 0 to the window's maximum; quantiles are read off the bins."""

    column: str
    width: float = 0.0
    counts: list[int] = field(default_factory=list)
    sampled: int = 0  # values the bins were read from when a long window was sampled (counts scaled); 0: all

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
    rollups: tuple[str, ...] = ()  # rollup grains read ("1m", "1h"), raw rows for the rest

    @property
    def sampled(self) -> bool:
        return bool(self.slices)

    def describe(self) -> str:
        if self.rollups:
            return f"every sample in the window (from the {' and '.join(self.rollups)} rollups and the newest raw rows)"
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


@dataclass(frozen=True)
class LayerShape:
    """How many layers the engines report and how many tokens their caches have seen (window mean)."""

    num_layers: int | None
    seen_tokens: float | None


@dataclass(frozen=True)
class KindTotal:
    kind: str
    events: int
    count: int
    bytes: int


@dataclass(frozen=True)
class PoolBucket:
    """Session-pool occupancy in one time bucket, read from session events' `detail` (maxima)."""

    ts: float
    pool_sessions: float | None
    pool_bytes: float | None
    pinned_bytes: float | None


@dataclass(frozen=True)
class LineageSummary:
    """One sampled request's eviction lineage, without its context text (`Store.lineages`).

    `top1_agreement` / `mean_kl`: the shadow probe's measurement of the same request (the mean over its
    answers), when it measured it."""

    id: int
    ts: float
    deployment: str | None
    instance_id: int | None
    run_id: int | None
    request_key: str
    config: dict[str, Any] | None
    config_version: int | None
    kind: str
    context_tokens: int
    kept_fraction: float
    evicted_units: int
    total_units: int
    first_question: str | None
    top1_agreement: float | None = None
    mean_kl: float | None = None


@dataclass(frozen=True)
class LineageUnitInfo:
    """A unit of the context: tokens [token_start, token_end), characters [char_start, char_end) of the
    lineage's `context`, and the share of its (layer, KV head) slots the cache still held."""

    token_start: int
    token_end: int
    char_start: int
    char_end: int
    kept: float
    evicted: bool


@dataclass(frozen=True)
class LineageInfo:
    """A request's full lineage (`Store.lineage`): the summary, the context, its units and the answers."""

    summary: LineageSummary
    context: str
    units: list[LineageUnitInfo]
    answers: list[dict[str, Any]]

    def excerpt(self, unit: LineageUnitInfo) -> str:
        return self.context[unit.char_start:unit.char_end]
