"""The session pool and its TTL policies, on a hand-driven clock with caches of known size."""

from __future__ import annotations

import pytest

from kvpilot.cache.sessions import SessionPool
from kvpilot.config import KVConfig, KVConfigError
from kvpilot.policies.ttl import CdfTTL, FixedTTL, TTLContext, TTLPolicy, make_ttl_policy


class FakeCache:
    def __init__(self, size: int) -> None:
        self.physical_bytes = size


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def _pool(policy, capacity=None):
    clock, events = Clock(), []
    pool = SessionPool(policy, capacity_bytes=capacity, clock=clock,
                       on_event=lambda kind, **f: events.append((kind, f)))
    return pool, clock, events


def test_hit_within_ttl_and_expiry_after_it():
    pool, clock, events = _pool(FixedTTL(10.0))
    a = FakeCache(100)
    pool.serving("s", a)
    assert pool.release("s", a, tool="search", history_tokens=50) == 10.0
    assert pool.pinned_bytes == pool.pool_bytes == 100 and len(pool) == 1
    clock.t = 4.0
    assert pool.checkout("s") is a  # tool returned in time: hit
    assert pool.pinned_bytes == 0 and pool.pool_bytes == 100  # active again
    pool.release("s", a, tool="code_exec", history_tokens=60)
    clock.t = 4.0 + 10.5
    assert pool.checkout("s") is None  # expired at 14.0: miss
    kinds = [k for k, _ in events]
    assert kinds == ["ttl_pin", "hit", "ttl_pin", "expire", "miss"]
    expire = events[3][1]
    assert expire["bytes"] == 100 and expire["detail"]["reason"] == "ttl" and expire["detail"]["tool"] == "code_exec"
    assert {"pool_sessions", "pool_bytes", "pinned_bytes", "session"} <= set(events[0][1]["detail"])
    # pinned byte-seconds: 100 B for 4 s, then 100 B for 10 s (until the expiry, not until the miss)
    assert pool.pinned_byte_seconds == pytest.approx(100 * 4 + 100 * 10)
    assert pool.counts == {"ttl_pin": 2, "hit": 1, "miss": 1, "expire": 1}


def test_no_ttl_never_pins():
    pool, clock, events = _pool(TTLPolicy())
    pool.release("s", FakeCache(100), tool="search", history_tokens=10)
    assert pool.checkout("s") is None
    assert [k for k, _ in events] == ["expire", "miss"] and events[0][1]["detail"]["reason"] == "no_ttl"


def test_capacity_evicts_the_pins_closest_to_expiry_first():
    policy = FixedTTL(100.0)
    pool, clock, events = _pool(policy, capacity=250)
    pool.release("a", FakeCache(100), tool="t", history_tokens=1)  # expires at 100
    clock.t = 10.0
    pool.release("b", FakeCache(100), tool="t", history_tokens=1)  # expires at 110
    clock.t = 20.0
    pool.release("c", FakeCache(100), tool="t", history_tokens=1)  # needs room: "a" goes
    assert pool.checkout("a") is None and pool.checkout("b") is not None and pool.pinned_bytes == 100
    pressure = [f for k, f in events if k == "expire"]
    assert [f["detail"]["session"] for f in pressure] == ["a"] and pressure[0]["detail"]["reason"] == "pressure"
    # a cache larger than the whole pool is never pinned
    assert pool.release("d", FakeCache(1000), tool="t", history_tokens=1) == 0.0
    with pytest.raises(ValueError):
        SessionPool(policy, capacity_bytes=-1)


def test_cdf_ttl_covers_a_fast_tool_and_gives_up_on_a_slow_one():
    policy = CdfTTL(memory_price=1e-6, min_samples=5)
    for d in (0.5, 0.6, 0.7, 0.8, 0.9):
        policy.observe("file_read", d)
    for d in (50.0, 60.0, 70.0, 80.0, 90.0):
        policy.observe("build", d)
    # a hit saves 1 s of prefill; holding 100 kB costs 0.1 s of compute per second
    ctx = TTLContext("file_read", bytes=100_000, history_tokens=1000, prefill_s_per_token=1e-3)
    assert policy.ttl(ctx) == 0.9  # waits for every observed call: 1 s saved for ~0.07 s of memory cost
    slow = TTLContext("build", bytes=100_000, history_tokens=1000, prefill_s_per_token=1e-3)
    assert policy.ttl(slow) == 0.0  # waiting ~70 s would cost 7 s to save 1 s
    cheap = TTLContext("build", bytes=1_000, history_tokens=1000, prefill_s_per_token=1e-3)
    assert policy.ttl(cheap) == 90.0  # a small cache is worth keeping for the slow tool too
    assert policy.ttl(TTLContext(None, 10, 10, 1e-3)) == 0.0  # the last turn calls no tool
    # before min_samples, the exponential prior (mean 5 s) decides
    unknown = TTLContext("new_tool", bytes=10_000, history_tokens=1000, prefill_s_per_token=1e-3)
    assert 0.0 < policy.ttl(unknown) <= policy.max_ttl_s


def test_make_ttl_policy():
    assert make_ttl_policy(KVConfig()).ttl(TTLContext("t", 1, 1, 1.0)) == 0.0
    assert make_ttl_policy(KVConfig(session_ttl="fixed", session_ttl_s=3.0)).ttl(TTLContext("t", 1, 1, 1.0)) == 3.0
    cdf = make_ttl_policy(KVConfig(session_ttl="cdf", session_ttl_s=30.0, ttl_memory_price=2e-9))
    assert isinstance(cdf, CdfTTL) and cdf.max_ttl_s == 30.0 and cdf.memory_price == 2e-9
    with pytest.raises(KVConfigError, match="session_ttl='lru'"):
        KVConfig.parse({"session_ttl": "lru"})
