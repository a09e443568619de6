"""Shadow fidelity on the bundled model: sampled answers replayed on the full cache, teacher-forced over the
answer tokens, off the request path; one `quality` event per answer in a real store and the
`kvpilot.quality.*` OpenTelemetry instruments."""

from __future__ import annotations

import pytest

from kvpilot.attach import attach
from kvpilot.config import KVConfig
from kvpilot.engine import Engine
from kvpilot.engine.engine import Request
from kvpilot.evaluation.shadow import ShadowFidelity
from kvpilot.probes.otel import Telemetry


def _points(telemetry, name):
    for rm in telemetry.metric_reader.get_metrics_data().resource_metrics:
        for sm in rm.scope_metrics:
            for m in sm.metrics:
                if m.name == name:
                    return list(m.data.data_points)
    return []


def _request(engine, config):
    from kvpilot.engine.prompts import chat_parts

    context = " ".join(f"Entry {i}: crate {i * 13} was shipped to the port of Lisbon." for i in range(30))
    context += " The pass key is 58213. Remember it."
    part = chat_parts(engine.tokenizer, context, "What is the pass key?", "The pass key is")
    return Request(part.context_ids, [part.question_ids], 8, config=config)


def test_sampled_answers_are_compared_with_the_full_cache(bundled_engine, store):
    engine = Engine(bundled_engine.model, bundled_engine.tokenizer)
    telemetry = Telemetry.in_memory()
    handle = attach(engine, store, "chat", probes=["latency"], otel=telemetry, watch=False, instance="e0",
                    shadow_fidelity=1.0)
    try:
        full = handle.serve(_request(engine, KVConfig()))
        squeezed = handle.serve(_request(engine, KVConfig(policy="streaming", compression_ratio=0.9)))
        assert handle.shadow.join(300)
        assert full.answers[0].step_logits  # kept for the sampled request only
        measured = handle.shadow.measurements
    finally:
        handle.detach()
    assert [m.config.policy for m in measured] == ["full", "streaming"]
    same, lossy = measured
    # the full cache against itself: identical distributions (up to float noise), every top-1 agreeing
    assert same.top1_agreement == 1.0 and same.mean_kl < 1e-3 and same.tokens == len(full.answers[0].raw_token_ids)
    # a cache that dropped 90 % of the context, including the key, moves the distributions measurably
    assert lossy.mean_kl > 100 * max(same.mean_kl, 1e-6) and lossy.tokens == len(squeezed.answers[0].raw_token_ids)
    events = store.events(deployment="chat", kinds=["quality"])
    assert sorted(e.detail["config"] for e in events) == ["full", "streaming-0.9"]
    assert {round(e.detail["mean_kl"], 6) for e in events} == {round(m.mean_kl, 6) for m in measured}
    assert sum(p.count for p in _points(telemetry, "kvpilot.quality.kl")) == 2
    assert sum(p.value for p in _points(telemetry, "kvpilot.quality.measurements")) == 2
    # the shadow engine serves no traffic of its own: only the two real requests were recorded
    assert len(store.requests_window(deployment="chat")) == 2


def test_the_sampling_rate_bounds_the_work(bundled_engine):
    engine = Engine(bundled_engine.model, bundled_engine.tokenizer)
    off = ShadowFidelity(engine, rate=0.0)
    request = _request(engine, None)
    assert not any(off.sample(request) for _ in range(100))
    some = ShadowFidelity(engine, rate=0.1, seed=0)
    assert 3 <= sum(some.sample(request) for _ in range(200)) <= 40
    off.close()
    some.close()
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        ShadowFidelity(engine, rate=1.5)
