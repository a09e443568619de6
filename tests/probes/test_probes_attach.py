"""attach/detach on an Engine, the store killed mid-run, the config watcher, raw-model use."""

from __future__ import annotations

import json

import pytest
import torch
from sqlalchemy import text

from kvpilot.attach import LazyStore, attach
from kvpilot.config import KVConfig
from kvpilot.errors import KVPilotError
from kvpilot.probes import SamplingPolicy
from tests.probes.conftest import ids


def _count(store, sql: str) -> list[tuple]:
    with store.engine.connect() as conn:
        return conn.execute(text(sql)).fetchall()


def test_attach_detach(tiny_engine, store, tmp_path):
    handle = attach(tiny_engine, store=store, deployment="d", otel=False, spool_dir=tmp_path, run_kind="serving",
                    decode_every=2)
    assert tiny_engine.observer is handle.probes and len(tiny_engine.request_hooks) == 1
    with pytest.raises(KVPilotError, match="already"):
        attach(tiny_engine, store=store, otel=False)
    results = tiny_engine.run(ids(64), [ids(5, 3), ids(4, 9)], 6)
    stats = handle.detach()
    assert tiny_engine.observer is None and tiny_engine.request_hooks == []
    assert handle.detach() == stats  # idempotent
    assert stats["written_rows"] == stats["rows"] and stats.get("dropped_rows", 0) == 0
    assert store.counts()["requests"] == len(results) == 2
    run = store.get_run(handle.run_id)
    assert run.status == "completed" and run.kind == "serving"
    (inst,) = store.instances("d")
    assert inst.id == handle.instance_id
    # the null GPU probe explains itself once, and is not counted as a failure
    off = [json.loads(d) for (d,) in _count(store, "SELECT detail FROM cache_events WHERE kind='probe_unavailable'")]
    assert sorted(d["probe"] for d in off) == ["nvml", "torch.cuda"] and all(d["reason"] for d in off)
    assert _count(store, "SELECT count(*) FROM cache_events WHERE kind='error'") == [(0,)]
    # evictions per layer (snapkv at 50 %, every 4 decode steps) and skew rows of sampled forwards
    evict = _count(store, "SELECT layer, count, bytes, detail FROM cache_events WHERE kind='evict'")
    assert {r[0] for r in evict} == {0, 1, 2, 3} and all(r[1] >= 1 and r[2] > 0 for r in evict)
    assert all(json.loads(r[3])["tokens"] > 0 for r in evict)
    skew = _count(store, "SELECT layer, head, retained_mass, entropy FROM layer_stats WHERE entropy IS NOT NULL")
    assert {r[0] for r in skew} == {0, 1, 2, 3} and {r[1] for r in skew} == {-1, 0, 1, 2, 3}
    assert all(0.0 <= r[2] <= 1.0 + 1e-6 and 0.0 <= r[3] <= 1.0 + 1e-6 for r in skew)
    mem = _count(store, "SELECT kv_bytes_physical, kv_bytes_logical, rss_bytes, nvml_used FROM memory_samples")
    assert len(mem) == 2 and all(p < lg and rss > 0 and nv is None for p, lg, rss, nv in mem)


def test_probe_unavailable_is_said_once_per_process_store_and_deployment(tiny_engine, sqlite_url, tmp_path):
    """A CPU-only engine attached again and again (the demo attaches once per compared policy) records the
    missing GPU once for its store and deployment; another deployment, or another store, hears it once too."""
    from kvpilot.storage import Store

    def attach_serve_detach(target, deployment: str) -> None:
        handle = attach(tiny_engine, store=target, deployment=deployment, otel=False, spool_dir=tmp_path,
                        watch=False, run_kind="eval")
        tiny_engine.run(ids(32), [], 2)
        handle.detach()

    def said(target) -> list[tuple[str, str]]:
        return sorted((dep, json.loads(d)["probe"]) for dep, d in _count(
            target, "SELECT d.name, e.detail FROM cache_events e JOIN engine_instances i ON i.id = e.instance_id "
                    "JOIN deployments d ON d.id = i.deployment_id WHERE e.kind = 'probe_unavailable'"))

    with Store.open(sqlite_url) as store:
        for _ in range(3):
            attach_serve_detach(store, "d")
        assert said(store) == [("d", "nvml"), ("d", "torch.cuda")]
        attach_serve_detach(store, "e")
        assert said(store) == [("d", "nvml"), ("d", "torch.cuda"), ("e", "nvml"), ("e", "torch.cuda")]
        assert store.counts()["requests"] == 4  # the later attaches recorded their requests all the same
    other = f"sqlite:///{tmp_path / 'other.db'}"
    attach_serve_detach(other, "d")  # a URL opened by attach itself
    attach_serve_detach(other, "d")
    with Store.open(other) as store:
        assert said(store) == [("d", "nvml"), ("d", "torch.cuda")]


def test_store_killed_mid_run_loses_and_duplicates_nothing(tiny_engine, flaky, store, tmp_path):
    handle = attach(tiny_engine, store=flaky, deployment="d", otel=False, spool_dir=tmp_path, watch=False,
                    sampling=SamplingPolicy(decode_every=1), flush_interval_s=0.05)
    handle.recorder._retry_min = handle.recorder._retry_max = 0.05  # retry quickly in the test
    n_requests = 0

    def serve(k: int) -> None:
        nonlocal n_requests
        for i in range(k):
            out = tiny_engine.run(ids(48, i), [], 5)
            assert len(out[0].token_ids) == 5  # the engine keeps generating
            n_requests += 1

    serve(2)
    assert handle.flush()
    flaky.down.set()  # the database dies
    serve(4)
    assert handle.flush()
    mid = handle.stats()
    assert mid["spooled_rows"] > 0 and flaky.calls_while_down > 0
    flaky.down.clear()  # ... and comes back
    serve(1)
    handle.recorder.retry_now()  # do not wait out the back-off in a test
    stats = handle.detach()
    assert stats.get("dropped_rows", 0) == 0 and stats["spooled_pending_rows"] == 0
    # rows recorded just after the database returns may still be spooled while the recorder backs off;
    # whatever was spooled is replayed
    assert stats["replayed_rows"] == stats["spooled_rows"] >= mid["spooled_rows"]
    assert stats["written_rows"] + stats["replayed_rows"] == stats["rows"]
    counts = store.counts()
    assert counts["requests"] == n_requests == 7
    assert sum(counts.values()) == stats["rows"]  # every sample is there, none twice
    dupes = _count(store, "SELECT ts, layer, head, step, COUNT(*) FROM layer_stats GROUP BY ts, layer, head, step, "
                          "kv_bytes HAVING COUNT(*) > 1")
    assert dupes == []
    assert not list(tmp_path.glob("*.jsonl"))  # spool emptied and removed


def test_attach_while_the_database_is_down(tiny_engine, tmp_path):
    url = "postgresql+psycopg://nobody@127.0.0.1:9/none"  # nothing listens on port 9
    handle = attach(tiny_engine, store=url, otel=False, spool_dir=tmp_path, watch=True, poll_s=60)
    assert isinstance(handle.store, LazyStore)
    tiny_engine.run(ids(40), [], 3)
    stats = handle.detach()
    assert stats["spooled_rows"] == stats["rows"] > 0 and stats.get("dropped_rows", 0) == 0
    assert list(tmp_path.glob("*/*.jsonl"))  # kept for the next attach of this deployment


def test_watcher_applies_a_pushed_config_at_the_next_request(tiny_engine, store, tmp_path):
    handle = attach(tiny_engine, store=store, deployment="w", otel="memory", spool_dir=tmp_path, poll_s=60)
    try:
        new = KVConfig(policy="streaming", compression_ratio=0.25)
        store.push("w", new, pushed_by="test")
        assert handle.watcher.check_once().status == "applied"
        assert tiny_engine.config.policy == "snapkv"  # not before a request boundary
        (res,) = tiny_engine.run(ids(40), [], 2)
        assert res.config == new and tiny_engine.config == new
        # valid on its own, wrong for this model (2 layer budgets, 4 layers): the watcher rejects it
        store.push("w", {"policy": "snapkv", "compression_ratio": 0.5, "layer_allocation": "explicit",
                         "layer_budgets": [1, 2]}, pushed_by="test")
        assert handle.watcher.check_once().status == "rejected"
        assert tiny_engine.config == new
        handle.flush()
        handle.flush()
        points = _metric_points(handle.telemetry, "kvpilot.config.changes")
        assert sorted(p.attributes["kvpilot.status"] for p in points) == ["applied", "rejected"]
    finally:
        handle.detach()
    kinds = [k for (k,) in _count(store, "SELECT kind FROM cache_events WHERE kind LIKE 'config_%'")]
    assert sorted(kinds) == ["config_applied", "config_rejected"]


def test_raw_model_with_own_loop(tiny_model, store, tmp_path):
    """attach() also takes a transformers model; new_cache() gives a probed cache for a custom loop."""
    from kvpilot.engine.generation import greedy_decode, prefill

    handle = attach(tiny_model, store=store, otel=False, spool_dir=tmp_path, watch=False,
                    sampling=SamplingPolicy(decode_every=1))
    try:
        cache = handle.new_cache(KVConfig(policy="h2o", budget=16, decode_interval=1))
        with torch.inference_mode():
            first = prefill(tiny_model, cache, ids(40))
            dec = greedy_decode(tiny_model, cache, first, 4)
        assert handle.probes.state(cache).decode_steps == 3 and cache.eviction_count > 0
    finally:
        stats = handle.detach()
    assert stats["sampled_forwards"] == 4 and stats.get("probe_errors", 0) == 0
    assert len(dec.token_ids) == 4
    assert store.counts()["layer_stats"] == 4 * 4 * (1 + 4)  # 4 forwards x 4 layers x (layer + 4 heads)


def test_unsampled_forwards_do_not_compute_statistics(tiny_engine, monkeypatch, tmp_path):
    import kvpilot.probes.skew as skew

    calls = []
    real = skew.attention_stats
    monkeypatch.setattr(skew, "attention_stats", lambda *a, **k: calls.append(1) or real(*a, **k))
    handle = attach(tiny_engine, store=None, otel=False, sampling=SamplingPolicy(decode_every=4, prefill=False))
    tiny_engine.run(ids(32), [], 9)  # decode steps 1..8 -> sampled at 1 and 5
    handle.detach()
    assert len(calls) == 2 * 4
    handle = attach(tiny_engine, store=None, otel=False, sample_rate=0.0)
    tiny_engine.run(ids(32), [], 9)
    assert handle.detach()["sampled_forwards"] == 0 and len(calls) == 8


def _metric_points(telemetry, name):
    data = telemetry.metric_reader.get_metrics_data()
    for rm in data.resource_metrics:
        for sm in rm.scope_metrics:
            for m in sm.metrics:
                if m.name == name:
                    return list(m.data.data_points)
    return []


def test_import_kvpilot_stays_torch_free_and_attach_is_the_function():
    import subprocess
    import sys

    code = ("import sys, kvpilot, kvpilot.attach, kvpilot.probes.recorder; "
            "assert callable(kvpilot.attach) and kvpilot.attach.__name__ == 'attach'; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)
