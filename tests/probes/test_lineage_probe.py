"""Eviction lineage from a served request to the store, on the bundled model and a real database:
`attach(..., lineage=rate)` traces sampled requests (and every shadowed one, whose fidelity then sits next
to its lineage), off the request path."""

from __future__ import annotations

import pytest

from kvpilot.attach import attach
from kvpilot.config import KVConfig
from kvpilot.engine import Engine
from kvpilot.engine.engine import Request
from kvpilot.engine.prompts import chat_parts
from kvpilot.errors import KVPilotError
from kvpilot.probes.lineage import LineageWriter
from kvpilot.storage import Scope, Store

KEY = "The pass key is 58213. Remember it."


def _request(engine, config):
    context = "\n".join([*(f"Entry {i}: crate {i * 13} was shipped to Lisbon." for i in range(16)), KEY])
    part = chat_parts(engine.tokenizer, context, "What is the pass key?", "The pass key is")
    return Request(part.context_ids, [part.question_ids], 6, config=config)


def test_shadowed_requests_are_traced_with_their_fidelity(bundled_engine, db_url):
    engine = Engine(bundled_engine.model, bundled_engine.tokenizer)
    with Store.open(db_url) as store:
        handle = attach(engine, store, "chat", probes=["latency"], otel=False, watch=False, instance="e0",
                        shadow_fidelity=1.0, lineage=0.0001)
        try:
            config = KVConfig(policy="streaming", compression_ratio=0.8, granularity="turn")
            response = handle.serve(_request(engine, config))
            assert handle.shadow.join(300) and handle.lineage.join(60)
            handle.flush()
        finally:
            handle.detach()
        assert handle.lineage.written == 1 and handle.lineage.errors == 0
        [summary] = store.lineages(Scope("chat", window_s=None))
        assert summary.instance_id == handle.instance_id and summary.kind == "turn"
        assert summary.config["policy"] == "streaming" and summary.kept_fraction == pytest.approx(
            response.lineage.kept_fraction, abs=1e-6)
        assert summary.top1_agreement is not None and summary.mean_kl > 0  # the shadow probe measured it
        info = store.lineage(summary.id)
        assert info.context == response.lineage.text
        assert [info.excerpt(u) for u in info.units] == [response.lineage.excerpt(u) for u in response.lineage.units]
        first_entry = next(u for u in info.units if "Entry 1:" in info.excerpt(u))
        assert first_entry.evicted and first_entry.kept == 0.0
        assert info.answers[0]["question"].startswith("What is the pass key?")
        assert info.answers[0]["answer"] == response.answers[0].text
        [quality] = store.events(deployment="chat", kinds=["quality"])
        assert quality.detail["request"] == summary.request_key


def test_sampling_rate_and_no_store(bundled_engine):
    writer = LineageWriter(None, "chat", rate=0.1, seed=0)
    assert 5 <= sum(writer.sample() for _ in range(300)) <= 60
    writer.close()
    assert not any(LineageWriter(None, "chat", rate=0.0).sample() for _ in range(100))
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        LineageWriter(None, "chat", rate=2.0)
    with pytest.raises(KVPilotError, match="store"):
        attach(Engine(bundled_engine.model, bundled_engine.tokenizer), None, lineage=0.5, otel=False)
