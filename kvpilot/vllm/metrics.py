"""Reading a vLLM server's /metrics: one parsed scrape, and the row that two consecutive scrapes make.

The text is parsed with prometheus-client's parser. Series of one metric are summed over their labels
(engines, finish reasons), so a row describes the whole server. Counters become deltas and rates over the
interval between two scrapes (a counter that went down means the server restarted: the interval then
counts from zero); histograms become quantiles of the interval's bucket deltas, interpolated inside the
bucket the way Prometheus' `histogram_quantile` does. KV bytes in use are the usage fraction times the
cache size, which comes from `vllm:cache_config_info` (`kv_cache_memory_bytes`, else blocks x block size x
bytes per token).
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

# vLLM's metric names (v1 engine)
KV_USAGE = "vllm:kv_cache_usage_perc"
RUNNING = "vllm:num_requests_running"
WAITING = "vllm:num_requests_waiting"
PREFIX_QUERIES = "vllm:prefix_cache_queries_total"
PREFIX_HITS = "vllm:prefix_cache_hits_total"
PREEMPTIONS = "vllm:num_preemptions_total"
PROMPT_TOKENS = "vllm:prompt_tokens_total"
GENERATION_TOKENS = "vllm:generation_tokens_total"
REQUESTS_DONE = "vllm:request_success_total"
TTFT = "vllm:time_to_first_token_seconds"
TPOT = ("vllm:inter_token_latency_seconds", "vllm:time_per_output_token_seconds")
E2E = "vllm:e2e_request_latency_seconds"
CACHE_CONFIG = "vllm:cache_config_info"
RSS = "process_resident_memory_bytes"


@dataclass(frozen=True)
class Scrape:
    """One /metrics reading: sample values summed over labels, histogram buckets, the cache config."""

    ts: float
    values: dict[str, float]
    buckets: dict[str, dict[float, float]]  # histogram -> upper bound -> cumulative count
    cache_config: dict[str, str] = field(default_factory=dict)

    def get(self, name: str) -> float | None:
        return self.values.get(name)

    def histogram(self, *names: str) -> tuple[str, dict[float, float]] | None:
        """The first of `names` the server exports (vLLM renamed some histograms between releases)."""
        for name in names:
            if name in self.buckets:
                return name, self.buckets[name]
        return None


def parse(text: str, ts: float) -> Scrape:
    """Parse Prometheus text exposition into a Scrape."""
    values: dict[str, float] = defaultdict(float)
    buckets: dict[str, dict[float, float]] = defaultdict(lambda: defaultdict(float))
    cache_config: dict[str, str] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name.endswith("_bucket") and "le" in s.labels:
                buckets[s.name.removesuffix("_bucket")][float(s.labels["le"])] += s.value
            else:
                values[s.name] += s.value
            if s.name == CACHE_CONFIG and not cache_config:
                cache_config = dict(s.labels)
    return Scrape(ts, dict(values), {k: dict(v) for k, v in buckets.items()}, cache_config)


def quantile(q: float, bucket_deltas: dict[float, float]) -> float | None:
    """The q-quantile of observations given cumulative bucket counts (None when there are none)."""
    bounds = sorted(bucket_deltas)
    if not bounds:
        return None
    total = bucket_deltas[bounds[-1]]
    if total <= 0:
        return None
    rank = q * total
    prev_bound, prev_count = 0.0, 0.0
    for bound in bounds:
        count = bucket_deltas[bound]
        if count >= rank:
            if math.isinf(bound):  # in the overflow bucket: the last finite bound is the best we know
                return prev_bound
            if count == prev_count:
                return bound
            return prev_bound + (bound - prev_bound) * (rank - prev_count) / (count - prev_count)
        prev_bound, prev_count = bound, count
    return prev_bound


def capacity_bytes(cache_config: dict[str, str], bytes_per_token: int | None) -> int | None:
    """KV cache size: the server's `kv_cache_memory_bytes` label, else blocks x block size x bytes per token
    (None when neither is known)."""
    stated = _int(cache_config.get("kv_cache_memory_bytes"))
    if stated:
        return stated
    blocks = _int(cache_config.get("num_gpu_blocks")) or _int(cache_config.get("num_cpu_blocks"))
    block_size = _int(cache_config.get("block_size"))
    if not blocks or not block_size or not bytes_per_token:
        return None
    return blocks * block_size * bytes_per_token


def interval_row(prev: Scrape | None, cur: Scrape, *, bytes_per_token: int | None = None) -> dict[str, Any]:
    """The vllm_samples row for `cur` (gauges now; counters and histograms since `prev`)."""
    usage = cur.get(KV_USAGE)
    capacity = capacity_bytes(cur.cache_config, bytes_per_token)
    row: dict[str, Any] = {
        "ts": cur.ts,
        "interval_s": None if prev is None else cur.ts - prev.ts,
        "kv_usage": usage,
        "kv_capacity_bytes": capacity,
        "kv_bytes": None if usage is None or capacity is None else round(usage * capacity),
        "requests_running": _int(cur.get(RUNNING)),
        "requests_waiting": _int(cur.get(WAITING)),
    }
    if prev is None or prev.cache_config != cur.cache_config:
        row["cache_config"] = cur.cache_config or None
    if prev is None:
        return row
    dt = cur.ts - prev.ts
    queries, hits = _delta(prev, cur, PREFIX_QUERIES), _delta(prev, cur, PREFIX_HITS)
    row.update(
        prefix_queries=_int(queries),
        prefix_hits=_int(hits),
        prefix_hit_ratio=hits / queries if queries and hits is not None else None,
        preemptions=_int(_delta(prev, cur, PREEMPTIONS)),
        prompt_tokens_per_s=_rate(_delta(prev, cur, PROMPT_TOKENS), dt),
        generation_tokens_per_s=_rate(_delta(prev, cur, GENERATION_TOKENS), dt),
        requests_per_s=_rate(_delta(prev, cur, REQUESTS_DONE), dt),
    )
    for prefix, names in (("ttft", (TTFT,)), ("tpot", TPOT), ("e2e", (E2E,))):
        deltas = _bucket_deltas(prev, cur, names)
        row[f"{prefix}_p50_s"] = quantile(0.5, deltas)
        row[f"{prefix}_p99_s"] = quantile(0.99, deltas)
    return row


def _delta(prev: Scrape, cur: Scrape, name: str) -> float | None:
    now, before = cur.get(name), prev.get(name)
    if now is None:
        return None
    if before is None or now < before:  # first sight, or the server restarted and its counters reset
        return now
    return now - before


def _bucket_deltas(prev: Scrape, cur: Scrape, names: tuple[str, ...]) -> dict[float, float]:
    found = cur.histogram(*names)
    if found is None:
        return {}
    name, now = found
    before = prev.buckets.get(name, {})
    if any(now.get(b, 0.0) < c for b, c in before.items()):  # reset
        before = {}
    return {b: c - before.get(b, 0.0) for b, c in now.items()}


def _rate(delta: float | None, dt: float) -> float | None:
    return None if delta is None or dt <= 0 else delta / dt


def _int(value: Any) -> int | None:
    if value is None or value == "":
        return None
    try:
        return int(float(value))
    except (TypeError, ValueError):
        return None


__all__ = ["Scrape", "capacity_bytes", "interval_row", "parse", "quantile"]
