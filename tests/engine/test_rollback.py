"""Automatic rollback: a config that validates and is applied but makes requests fail is rolled back by the
engine's watcher to the last good version, with the rejection recorded. Real engine (the bundled model),
real store (SQLite file, and PostgreSQL when configured).

The failing config is a real one: `scoring="reconstruct"` passes validation (it fits the model's shape) but
needs the chat template's turn markers at serving time, which an engine loaded without a tokenizer (serving
token ids, as the profiler does) does not have."""

from __future__ import annotations

import pytest

from kvpilot.attach import attach
from kvpilot.config import KVConfig
from kvpilot.engine import Engine
from kvpilot.engine.engine import Request

GOOD = {"policy": "snapkv", "compression_ratio": 0.5}
BAD = {"policy": "snapkv", "compression_ratio": 0.5, "scoring": "reconstruct"}


@pytest.fixture
def served(bundled_engine, store, monkeypatch):
    # The dry run before "applied" (kvpilot.engine.dryrun) would reject this config already; rollback is the
    # second line of defence, for failures a short rehearsal cannot foresee (a long request, a full device),
    # so the rehearsal is switched off here to reach it.
    monkeypatch.setattr("kvpilot.engine.dryrun.dry_run", lambda config, engine: None)
    engine = Engine(bundled_engine.model, None)  # token ids in, no tokenizer: reconstruction cannot run
    handle = attach(engine, store, "chat", probes=["latency"], otel=False, poll_s=3600, instance="e0")
    try:
        yield engine, handle
    finally:
        handle.detach()


def _check(watcher):
    """The result of picking up the newest push: on PostgreSQL the watcher's own thread, woken by NOTIFY, may
    have applied it already (then `check_once` finds nothing new and its last result is that one)."""
    return watcher.check_once() or watcher.last_result


def _request(bundled_engine) -> Request:
    text = " ".join(f"Line {i}: the harbour master logged ship {i * 7} at dawn." for i in range(20))
    return Request(bundled_engine.tokenizer.encode(text), (), 2)


def test_a_failing_config_is_rolled_back_to_the_last_good_version(bundled_engine, store, served):
    engine, handle = served
    watcher, request = handle.watcher, _request(bundled_engine)
    store.push("chat", GOOD)
    assert _check(watcher).status == "applied"
    assert handle.serve(request).answers[0].config == KVConfig.parse(GOOD)  # version 1 served: the last good

    store.push("chat", BAD)
    assert _check(watcher).status == "applied" and watcher.version == 2  # it validates
    for _ in range(2):
        with pytest.raises(ValueError, match="needs the engine's tokenizer"):
            handle.serve(request)
    assert watcher.version == 2  # two failures: not yet
    with pytest.raises(ValueError):
        handle.serve(request)
    result = watcher.last_result
    assert (result.version, result.status) == (2, "rolled_back") and watcher.version == 1
    assert "rolled back to version 1: 3 requests failed in a row; last error: ValueError" in result.reason
    assert handle.serve(request).answers[0].config == KVConfig.parse(GOOD)  # serving again, on version 1
    assert watcher.check_once() is None and 2 in watcher.rejected  # never re-applied

    # recorded: the rejection (ack and event, with the figures), and the instance back on version 1
    acks = {(a.version, a.status) for a in store.acks("chat")}
    assert {(1, "applied"), (2, "applied"), (2, "rejected")} <= acks
    [rejected] = store.acks("chat", version=2)[:1]
    assert rejected.status == "rejected" and "3 requests failed in a row" in rejected.reason
    [event] = store.events(deployment="chat", kinds=["config_rejected"])
    assert event.detail["rolled_back"] is True and event.detail["to_version"] == 1
    assert event.detail["failures"] == 3 and "ValueError" in event.detail["error"]
    assert store.instance(watcher.instance_id).config_version == 1

    # a newer push is applied as usual
    store.push("chat", {"policy": "knorm", "compression_ratio": 0.3})
    assert _check(watcher).status == "applied" and watcher.version == 3
    assert handle.serve(request).answers[0].config.policy == "knorm"


def test_failures_that_are_not_the_deployment_config_roll_nothing_back(bundled_engine, store, served):
    engine, handle = served
    watcher, request = handle.watcher, _request(bundled_engine)
    store.push("chat", GOOD)
    watcher.check_once()
    handle.serve(request)
    store.push("chat", {"policy": "knorm", "compression_ratio": 0.3})
    watcher.check_once()
    # requests carrying their own (failing) config are not the deployment's doing
    own = Request(request.context_ids, (), 2, config=KVConfig.parse(BAD))
    for _ in range(4):
        with pytest.raises(ValueError):
            handle.serve(own)
    assert watcher.version == 2 and watcher.last_result.status == "applied"
    # a success resets the count; version 2 is now the last good one, so its own failures roll nothing back
    assert handle.serve(request).answers[0].config.policy == "knorm"
    for _ in range(3):
        assert watcher.request_failed("backend timeout") is None
    assert watcher.version == 2 and not watcher.rejected
