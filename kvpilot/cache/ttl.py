"""How long to keep a session's KV cache pinned while its agent waits for a tool (Continuum's KV TTL).

When a turn ends with a tool call, the session's cache can be kept for a time-to-live τ: if the tool
returns within τ the next turn reuses it (a hit) and only the tool's output is prefilled; otherwise the
cache is dropped and the next turn prefills the whole history again (a miss). Keeping it costs memory for
as long as it is held. Continuum (arXiv 2511.02230) picks, per tool, the τ that maximises

    P(D <= τ) * benefit  -  price * bytes * E[min(D, τ)]

where D is the tool's duration (its empirical distribution, learned from the calls seen so far; an
exponential prior until there are enough), benefit is the prefill time a hit saves, and `price` converts
byte-seconds of memory into seconds of compute. `fixed` keeps every cache for the same τ; `none` never pins.
"""

from __future__ import annotations

import math
from collections import defaultdict, deque
from dataclasses import dataclass, field
from typing import ClassVar


@dataclass
class TTLContext:
    """What a TTL decision may look at for one pin."""

    tool: str | None
    bytes: int
    history_tokens: int  # tokens a miss would prefill again
    prefill_s_per_token: float


class TTLPolicy:
    """Chooses τ (seconds; 0 = do not pin) and learns from the tool durations it is told about."""

    name = "none"

    def ttl(self, ctx: TTLContext) -> float:
        return 0.0

    def observe(self, tool: str | None, duration_s: float) -> None:
        """A tool call of this kind took this long (called whether or not its cache was kept)."""


class FixedTTL(TTLPolicy):
    """The same τ for every tool call (0 disables pinning)."""

    name = "fixed"

    def __init__(self, ttl_s: float) -> None:
        if ttl_s < 0:
            raise ValueError(f"ttl_s must be >= 0, got {ttl_s}")
        self.ttl_s = ttl_s

    def ttl(self, ctx: TTLContext) -> float:
        return self.ttl_s if ctx.tool is not None else 0.0


@dataclass
class CdfTTL(TTLPolicy):
    """Continuum's rule over each tool's empirical duration distribution.

    memory_price: seconds of compute one byte-second of pinned memory is worth (the trade-off's knob).
    prior_mean_s: mean of the exponential prior used while a tool has fewer than `min_samples` durations.
    max_ttl_s: the largest τ considered; candidates are the observed durations (and prior quantiles).
    window: how many recent durations per tool are kept (a bounded history adapts to drift).
    """

    memory_price: float = 1e-9
    prior_mean_s: float = 5.0
    max_ttl_s: float = 120.0
    min_samples: int = 5
    window: int = 256
    name: ClassVar[str] = "cdf"
    _durations: dict[str | None, deque] = field(default_factory=lambda: defaultdict(deque), repr=False)

    def observe(self, tool: str | None, duration_s: float) -> None:
        seen = self._durations[tool]
        seen.append(float(duration_s))
        while len(seen) > self.window:
            seen.popleft()

    def samples(self, tool: str | None) -> list[float]:
        seen = self._durations.get(tool)
        if seen is not None and len(seen) >= self.min_samples:
            return sorted(seen)
        # exponential prior: evenly spaced quantiles stand in for observations
        n = 64
        return [-self.prior_mean_s * math.log(1 - (i + 0.5) / n) for i in range(n)]

    def ttl(self, ctx: TTLContext) -> float:
        if ctx.tool is None:
            return 0.0
        durations = self.samples(ctx.tool)
        benefit = ctx.history_tokens * ctx.prefill_s_per_token
        rate = self.memory_price * ctx.bytes
        best_tau, best_gain = 0.0, 0.0
        n = len(durations)
        prefix = 0.0  # sum of durations <= tau
        for i, tau in enumerate(durations):
            if tau > self.max_ttl_s:
                break
            prefix += tau
            covered = (i + 1) / n
            expected_hold = (prefix + tau * (n - i - 1)) / n  # E[min(D, tau)]
            gain = covered * benefit - rate * expected_hold
            if gain > best_gain:
                best_tau, best_gain = tau, gain
        return best_tau


def make_ttl_policy(kind: str, ttl_s: float = 0.0, memory_price: float = 1e-9) -> TTLPolicy:
    """The policy a KVConfig names (`session_ttl`), with its parameters."""
    if kind == "none":
        return TTLPolicy()
    if kind == "fixed":
        return FixedTTL(ttl_s)
    if kind == "cdf":
        return CdfTTL(memory_price=memory_price, max_ttl_s=ttl_s or CdfTTL.max_ttl_s)
    raise ValueError(f"unknown TTL policy {kind!r}; choose none, fixed or cdf")
