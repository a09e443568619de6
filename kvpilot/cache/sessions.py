"""The session pool: conversations' KV caches kept between turns, each pinned for a time-to-live.

A session's cache is *active* while one of its turns is being served and *pinned* between turns (while
its agent runs a tool), for the τ its TTL policy chose. The next turn checks the cache out: a hit when it
is still pinned, a miss when it expired, was evicted for room, or was never pinned. A pool with a byte
capacity evicts the pinned caches closest to expiry first when a new pin would not fit.

Every decision is reported to `on_event(kind, **fields)` with the kinds the store and the dashboard's
Sessions page know: ttl_pin, hit, miss, expire (detail `reason`: ttl, pressure or no_ttl), each with
`bytes` and the pool's occupancy (`pool_sessions`, `pool_bytes`, `pinned_bytes`) in `detail`. Time comes
from `clock`, so a replay can drive the pool on simulated time.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kvpilot.policies.ttl import TTLContext, TTLPolicy

EventSink = Callable[..., Any]


@dataclass
class _Pinned:
    cache: Any
    bytes: int
    pinned_at: float
    expires_at: float
    tool: str | None


class SessionPool:
    """Pinned and active session caches under an optional byte capacity.

    caches need `physical_bytes` (a ManagedCache); `capacity_bytes=None` means no limit.
    """

    def __init__(
        self,
        ttl_policy: TTLPolicy,
        *,
        capacity_bytes: int | None = None,
        clock: Callable[[], float] = time.monotonic,
        on_event: EventSink | None = None,
        prefill_s_per_token: float = 1e-3,
    ) -> None:
        if capacity_bytes is not None and capacity_bytes < 0:
            raise ValueError(f"capacity_bytes must be >= 0, got {capacity_bytes}")
        self.ttl_policy = ttl_policy
        self.capacity_bytes = capacity_bytes
        self.clock = clock
        self.on_event = on_event
        self.prefill_s_per_token = prefill_s_per_token
        self._pinned: dict[str, _Pinned] = {}
        self._expiry: list[tuple[float, str]] = []  # heap of (expires_at, session); stale entries skipped
        self._active: dict[str, int] = {}  # session -> bytes of its cache while a turn is served
        self.counts = {"ttl_pin": 0, "hit": 0, "miss": 0, "expire": 0}
        self.pinned_byte_seconds = 0.0
        self._last_t = clock()
        self._pinned_bytes = 0

    # ----- occupancy -------------------------------------------------------------------------------

    @property
    def pinned_bytes(self) -> int:
        return self._pinned_bytes

    @property
    def pool_bytes(self) -> int:
        return self._pinned_bytes + sum(self._active.values())

    def __len__(self) -> int:
        return len(self._pinned) + len(self._active)

    def advance(self) -> float:
        """Account pinned byte-seconds up to now and drop caches whose TTL ran out; returns now."""
        now = self.clock()
        while self._expiry and self._expiry[0][0] <= now:
            expires_at, session = heapq.heappop(self._expiry)
            entry = self._pinned.get(session)
            if entry is not None and entry.expires_at == expires_at:
                self._account(expires_at)
                self._drop(session, "ttl")
        self._account(now)
        return now

    def _account(self, t: float) -> None:
        if t > self._last_t:
            self.pinned_byte_seconds += self._pinned_bytes * (t - self._last_t)
            self._last_t = t

    # ----- the session's life ----------------------------------------------------------------------

    def checkout(self, session: str) -> Any | None:
        """A new turn of `session` starts: its pinned cache (a hit), or None (a miss: prefill again)."""
        self.advance()
        entry = self._pinned.pop(session, None)
        if entry is None:
            self._emit("miss", session, 0)
            return None
        self._pinned_bytes -= entry.bytes
        self._active[session] = entry.bytes
        self._emit("hit", session, entry.bytes, waited_s=self.clock() - entry.pinned_at, tool=entry.tool)
        return entry.cache

    def serving(self, session: str, cache: Any) -> None:
        """Count a cache built on a miss as active (its bytes are in the pool while it is served)."""
        self._active[session] = int(cache.physical_bytes)

    def release(self, session: str, cache: Any, *, tool: str | None, history_tokens: int) -> float:
        """The turn ended; pin the cache for the τ its TTL policy chooses (0: dropped). Returns τ."""
        now = self.advance()
        self._active.pop(session, None)
        size = int(cache.physical_bytes)
        tau = self.ttl_policy.ttl(TTLContext(tool, size, history_tokens, self.prefill_s_per_token))
        if tau <= 0:
            if tool is not None:
                self._emit("expire", session, size, reason="no_ttl", tool=tool)
            return 0.0
        if self.capacity_bytes is not None and not self._make_room(size):
            self._emit("expire", session, size, reason="pressure", tool=tool)
            return 0.0
        self._pinned[session] = _Pinned(cache, size, now, now + tau, tool)
        self._pinned_bytes += size
        heapq.heappush(self._expiry, (now + tau, session))
        self._emit("ttl_pin", session, size, ttl_s=tau, tool=tool)
        return tau

    def tool_returned(self, tool: str | None, duration_s: float) -> None:
        """Teach the TTL policy how long this tool took (whether or not the cache was kept)."""
        self.ttl_policy.observe(tool, duration_s)

    def close(self, session: str) -> None:
        """The session is over: forget it (its last turn calls no tool, so nothing is pinned)."""
        self.advance()
        self._active.pop(session, None)
        if session in self._pinned:
            self._drop(session, "closed")

    # ----- internals -------------------------------------------------------------------------------

    def _make_room(self, size: int) -> bool:
        capacity = self.capacity_bytes
        if capacity is None:
            return True
        if size + sum(self._active.values()) > capacity:
            return False
        while self.pool_bytes + size > capacity and self._pinned:
            victim = min(self._pinned, key=lambda s: self._pinned[s].expires_at)
            self._drop(victim, "pressure")
        return self.pool_bytes + size <= capacity

    def _drop(self, session: str, reason: str) -> None:
        entry = self._pinned.pop(session)
        self._pinned_bytes -= entry.bytes
        self._emit("expire", session, entry.bytes, reason=reason, tool=entry.tool)

    def _emit(self, kind: str, session: str, size: int, **detail: Any) -> None:
        if kind in self.counts:
            self.counts[kind] += 1
        if self.on_event is not None:
            self.on_event(kind, bytes=size, detail={"session": session, "pool_sessions": len(self),
                                                     "pool_bytes": self.pool_bytes,
                                                     "pinned_bytes": self._pinned_bytes, **detail})
