"""ConfigWatcher against a fake engine: apply, reject with reason, keep the last good config, no repeats."""

from __future__ import annotations

import time

import pytest

from kvpilot.config import KVConfig
from kvpilot.engine.watcher import ConfigWatcher
from kvpilot.storage import StoreError

LAYERS = 4


class FakeEngine:
    """Validates like the real engine (layer counts) and remembers what was applied."""

    def __init__(self):
        self.config = KVConfig()
        self.applied: list[KVConfig] = []

    def apply_config(self, cfg: KVConfig) -> None:
        cfg.validate_for_model(LAYERS, 2, 4)
        self.config = cfg
        self.applied.append(cfg)


def _wait_for(pred, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.02)
    return False


def test_apply_ack_and_no_repeat(store):
    eng = FakeEngine()
    w = ConfigWatcher(store, "chat", "e0", eng.apply_config, initial=eng.config)
    assert w.check_once() is None  # nothing pushed yet; the instance is registered anyway
    assert [i.name for i in store.instances("chat")] == ["e0"]
    store.push("chat", {"policy": "snapkv", "compression_ratio": 0.5})
    result = w.check_once()
    assert (result.version, result.status) == (1, "applied")
    assert eng.config.policy == "snapkv" and w.version == 1
    assert w.check_once() is None and len(eng.applied) == 1  # same version twice: no-op
    assert store.instance(w.instance_id).config_version == 1
    assert [a.status for a in store.acks("chat")] == ["applied"]
    assert [e.kind for e in store.events(deployment="chat")] == ["config_applied"]


def test_rejection_keeps_last_good_config(store):
    eng = FakeEngine()
    w = ConfigWatcher(store, "chat", "e0", eng.apply_config)
    store.push("chat", {"policy": "h2o", "budget": 64})
    w.check_once()
    store.push("chat", {"policy": "h2o", "layer_allocation": "explicit", "layer_budgets": [8, 8, 8]})
    result = w.check_once()
    assert result.status == "rejected" and "budgets has 3 entries" in result.reason
    assert eng.config.budget == 64 and w.version == 1  # still serving on version 1
    assert w.check_once() is None  # a rejected version is not retried
    [ack] = store.acks("chat", version=2)
    assert ack.status == "rejected" and "4 layers" in ack.reason
    assert store.instance(w.instance_id).config_version == 1
    rejected = store.events(deployment="chat", kinds=["config_rejected"])
    assert rejected[0].detail["version"] == 2
    store.rollback("chat")  # back to version 1: already in force, nothing to apply
    assert w.check_once() is None


def test_apply_crash_is_a_rejection(store):
    def boom(cfg):
        raise RuntimeError("CUDA out of memory")

    w = ConfigWatcher(store, "chat", "e0", boom)
    store.push("chat", {"policy": "tova", "budget": 32})
    result = w.check_once()
    assert result.status == "rejected" and "RuntimeError: CUDA out of memory" in result.reason


def test_corrupt_row_is_rejected_not_raised(store):
    eng = FakeEngine()
    w = ConfigWatcher(store, "chat", "e0", eng.apply_config)
    store.push("chat", {"policy": "h2o", "budget": 64})
    w.check_once()
    store.push("chat", {"policy": "h2o", "budget": 32})
    with store.engine.begin() as conn:
        conn.exec_driver_sql("UPDATE config_versions SET config = '{broken' WHERE version = 2")
    result = w.check_once()
    assert result.status == "rejected" and "corrupt" in result.reason
    assert eng.config.budget == 64


class FlakyStore:
    """Delegates to a real store, but the methods named in `failing` raise as if the database were down."""

    def __init__(self, store):
        self._store = store
        self.failing: set[str] = set()

    def __getattr__(self, name):
        attr = getattr(self._store, name)
        if not callable(attr):
            return attr

        def wrapped(*a, **kw):
            if name in self.failing:
                raise StoreError("database unreachable (test)")
            return attr(*a, **kw)

        return wrapped


def test_store_outage_is_survived_and_acks_are_replayed(store):
    flaky = FlakyStore(store)
    eng = FakeEngine()
    w = ConfigWatcher(flaky, "chat", "e0", eng.apply_config)
    w.check_once()
    flaky.failing = {"active_version", "heartbeat"}
    assert w.check_once() is None and w.store_errors == 1
    w.heartbeat()
    assert w.store_errors == 2
    store.push("chat", {"policy": "knorm", "budget": 16})
    flaky.failing = {"ack"}  # the config is applied, but its acknowledgement cannot be written yet
    result = w.check_once()
    assert result.status == "applied" and eng.config.budget == 16 and w.store_errors == 3
    assert store.acks("chat") == []
    flaky.failing = set()
    assert w.check_once() is None  # nothing new, but the pending ack is written now
    assert [(a.version, a.status) for a in store.acks("chat")] == [(1, "applied")]


def test_background_thread_applies_pushes_and_heartbeats(store):
    eng = FakeEngine()
    with ConfigWatcher(store, "chat", "e0", eng.apply_config, poll_s=0.1) as w:
        first_beat = store.instance(w.instance_id).last_heartbeat
        store.push("chat", {"policy": "streaming", "budget": 100})
        assert _wait_for(lambda: w.version == 1)
        store.push("chat", {"policy": "streaming", "layer_allocation": "explicit", "layer_budgets": [1]})
        assert _wait_for(lambda: 2 in w.rejected)
        store.rollback("chat")
        store.push("chat", {"policy": "streaming", "budget": 50})
        assert _wait_for(lambda: w.version == 3)
        assert eng.config.budget == 50
        assert _wait_for(lambda: store.instance(w.instance_id).last_heartbeat > first_beat)
    assert [c.budget for c in eng.applied] == [100, 50]


@pytest.mark.postgres
def test_listen_makes_pushes_arrive_fast(store):
    if store.config_listener() is None:
        pytest.skip("no LISTEN/NOTIFY on this backend")
    eng = FakeEngine()
    with ConfigWatcher(store, "chat", "e0", eng.apply_config, poll_s=30.0) as w:
        time.sleep(0.3)  # let the thread start listening
        store.push("chat", {"policy": "h2o", "budget": 10})
        assert _wait_for(lambda: w.version == 1, timeout=5.0)  # far sooner than the 30 s poll
