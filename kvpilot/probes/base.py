"""What a probe is: a small class with a few hooks, registered by name (one file + one line in
`kvpilot.probes.registry`).

The `ProbeSet` (kvpilot.probes.observer) is what the engine calls; it decides which forwards are sampled
and calls each probe's hooks:

- ``on_attention(fwd, cache, layer_idx, query, key, valid, scaling)``: only for sampled forwards;
- ``on_forward_end(fwd, out)``: after the last layer of a sampled forward;
- ``on_evict(state, layer_idx, evicted, seconds)``: every eviction of a managed cache;
- ``on_request(req, out)``: after each request (``req.result`` is the engine's GenerationResult).

``out`` is the recorder: probes hand it rows (``submit``), or callables that build rows in the recorder
thread (``submit_deferred``), so the inference thread never formats, copies to the host or writes.
"""

from __future__ import annotations

import time
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch-free at import, so `import kvpilot` stays cheap for the CLI and storage
    import torch


# The deployment config version serving the current request, set around `Engine.serve` by whoever chose it
# (`kvpilot.attach.ProbeHandle.serve`: a canary's or the incumbent's, or (None,) for a request that carries
# its own config); request rows carry it. None (not set): the version in force.
SERVING_VERSION: ContextVar[tuple[int | None] | None] = ContextVar("kvpilot_serving_version", default=None)


@dataclass
class SamplingPolicy:
    """Which forwards pay for attention statistics (latency, memory and evictions are always recorded).

    request_rate: fraction of requests (caches) whose attention is sampled.
    decode_every: sample decode steps 1, 1+N, 1+2N, ... of a sampled request (0: never at decode).
    prefill: sample every prefill forward (blocks, questions) of a sampled request, on its last
        ``prefill_rows`` query rows.
    per_head: store one row per query head besides the layer row.
    """

    request_rate: float = 1.0
    decode_every: int = 32
    prefill: bool = True
    prefill_rows: int = 4
    per_head: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0.0 <= self.request_rate <= 1.0:
            raise ValueError(f"request_rate={self.request_rate}: must be in [0, 1]")
        if self.decode_every < 0 or self.prefill_rows < 1:
            raise ValueError("decode_every must be >= 0 and prefill_rows >= 1")


@dataclass(frozen=True)
class ProbeContext:
    """What a probe may be built from: `attach`'s arguments (see `Probe.from_context`)."""

    policy: SamplingPolicy
    model_name: str | None = None
    device: Any = None  # the model's torch.device
    proxy_budget: int | None = None  # skew: retained-mass budget for a cache that never evicts


@dataclass
class CacheState:
    """What the probes remember about one managed cache (one request, or one context + its questions)."""

    sampled: bool
    forwards: int = 0  # forwards seen through kvpilot's attention
    decode_steps: int = 0
    first_wall: float = 0.0  # time.time() of the first forward
    first_perf: float = 0.0
    last_end_perf: float | None = None  # end of the previous question on this cache
    questions: int = 0
    evictions: dict[int, list[float]] = field(default_factory=dict)  # layer -> [passes, slots, seconds]
    evict_first_wall: float | None = None
    evict_seconds: float = 0.0

    def take_evictions(self) -> tuple[dict[int, list[float]], float | None, float]:
        out = (self.evictions, self.evict_first_wall, self.evict_seconds)
        self.evictions, self.evict_first_wall, self.evict_seconds = {}, None, 0.0
        return out


@dataclass
class SampledForward:
    """One forward whose attention is being sampled."""

    cache: Any
    step: int  # decode steps so far on this cache (0 = prefill)
    q_len: int
    budgets: list[int]
    ts: float = field(default_factory=time.time)
    per_layer: dict[str, list[Any]] = field(default_factory=dict)  # probe-owned results, by layer

    @property
    def is_decode(self) -> bool:
        return self.q_len == 1


@dataclass
class RequestContext:
    """One finished request as the probes see it."""

    result: Any  # kvpilot.engine.GenerationResult
    cache: Any
    state: CacheState
    ts: float
    start_wall: float
    e2e_s: float
    first_question: bool
    evictions: dict[int, list[float]]
    evict_first_wall: float | None
    evict_seconds: float
    config_version: int | None = None  # the deployment's config version that served it, when known


class Probe:
    """Base class: override the hooks you need; `ProbeSet` only calls the overridden ones."""

    name = "probe"

    def __init__(self, **options: Any):
        self.options = options

    @classmethod
    def from_context(cls, context: ProbeContext) -> Probe:
        """The probe as `attach` builds it; override to take options from the context."""
        return cls()

    def on_attention(
        self,
        fwd: SampledForward,
        cache: Any,
        layer_idx: int,
        query: torch.Tensor,
        key: torch.Tensor,
        valid: torch.Tensor | None,
        scaling: float,
    ) -> None:
        pass

    def on_forward_end(self, fwd: SampledForward, out: Any) -> None:
        pass

    def on_evict(self, state: CacheState, layer_idx: int, evicted: int, seconds: float) -> None:
        pass

    def on_request(self, req: RequestContext, out: Any) -> None:
        pass

    def unavailable(self) -> dict[str, str]:
        """Parts of this probe that cannot work here, with the reason (recorded once as an event)."""
        return {}

    def close(self) -> None:
        pass
