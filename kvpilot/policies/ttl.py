"""How long to keep a session's KV cache pinned while its agent waits for a tool (Continuum's KV TTL).

When a turn ends with a tool call, the session's cache can be kept for a time-to-live τ: if the tool
returns within τ the next turn reuses it (a hit) and only the tool's output is prefilled; otherwise the
cache is dropped and the next turn prefills the whole history again (a miss). Keeping it costs memory for
as long as it is held. Continuum (arXiv 2511.02230) picks, per tool, the τ that maximises

    P(D <= τ) * benefit  -  price * bytes * E[min(D, τ)]

where D is the tool's duration (its empirical distribution, learned from the calls seen so far; an
exponential prior until there are enough), benefit is the prefill time a hit saves, and `price` converts
byte-seconds of memory into seconds of compute. `fixed` keeps every cache for the same τ; `none` never pins.

Each rule is a `Plugin` dataclass whose `param(...)` fields are its knobs, registered in `TTL_RULES`
(`ConfigView.session_ttl` names one, `session_ttl_params` holds its parameters). Torch-free.
"""

from __future__ import annotations

import math
from collections import defaultdict, deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from kvpilot.plugins import Plugin, Registry, param

if TYPE_CHECKING:
    from kvpilot.policies.base import ConfigView

DEFAULT_MAX_TTL_S = 120.0


@dataclass
class TTLContext:
    """What a TTL decision may look at for one pin."""

    tool: str | None
    bytes: int
    history_tokens: int  # tokens a miss would prefill again
    prefill_s_per_token: float


class TTLPolicy(Plugin):
    """Chooses τ (seconds; 0 = do not pin) and learns from the tool durations it is told about.

    The base class is the `none` rule: it never pins.
    """

    def ttl(self, ctx: TTLContext) -> float:
        return 0.0

    def observe(self, tool: str | None, duration_s: float) -> None:
        """A tool call of this kind took this long (called whether or not its cache was kept)."""


TTL_RULES: Registry[type[TTLPolicy]] = Registry("TTL rule", TTLPolicy)


@TTL_RULES.register
@dataclass
class NoTTL(TTLPolicy):
    name = "none"
    description = "never keep a session's cache while its agent runs a tool"


def _positive(seconds: float) -> str | None:
    return None if seconds > 0 else "must be > 0 (seconds a pinned cache is kept)"


@TTL_RULES.register
@dataclass
class FixedTTL(TTLPolicy):
    """The same τ for every tool call (0 disables pinning)."""

    name = "fixed"
    description = "keep every session's cache for the same time"

    ttl_s: float = param(low=0.0, high=86400.0, check=_positive, search=(1.0, 60.0), log=True,
                         legacy="session_ttl_s", description="the TTL (s)")

    def __post_init__(self) -> None:
        if self.ttl_s < 0:
            raise ValueError(f"ttl_s must be >= 0, got {self.ttl_s}")

    def ttl(self, ctx: TTLContext) -> float:
        return self.ttl_s if ctx.tool is not None else 0.0


@TTL_RULES.register
@dataclass
class CdfTTL(TTLPolicy):
    """Continuum's rule over each tool's empirical duration distribution.

    memory_price: seconds of compute one byte-second of pinned memory is worth (the trade-off's knob).
    prior_mean_s: mean of the exponential prior used while a tool has fewer than `min_samples` durations.
    max_ttl_s: the largest τ considered; candidates are the observed durations (and prior quantiles).
    window: how many recent durations per tool are kept (a bounded history adapts to drift).
    """

    name = "cdf"
    description = "Continuum: per tool, the TTL that best trades the prefill a hit saves against pinned memory"

    memory_price: float = param(1e-9, low=0.0, search=(1e-10, 1e-7), log=True, legacy="ttl_memory_price",
                                description="seconds of compute one byte-second of pinned KV is worth")
    prior_mean_s: float = 5.0
    max_ttl_s: float = param(DEFAULT_MAX_TTL_S, low=0.0, high=86400.0, check=_positive, legacy="session_ttl_s",
                             from_legacy=lambda s: s or DEFAULT_MAX_TTL_S,  # the old 0 meant the default
                             description="the largest TTL considered (s)")
    min_samples: int = 5
    window: int = 256
    _durations: dict[str | None, deque[float]] = field(default_factory=lambda: defaultdict(deque), repr=False)

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


def make_ttl_policy(config: ConfigView) -> TTLPolicy:
    """The TTL rule a config names (`session_ttl`), built with its parameters (`session_ttl_params`)."""
    return TTL_RULES.get(config.session_ttl)(**config.session_ttl_params)
