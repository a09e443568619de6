"""OpenTelemetry: the in-memory reader and span exporter see the GenAI and kvpilot metrics and the spans."""

from __future__ import annotations

import pytest

from kvpilot.attach import attach
from kvpilot.errors import KVPilotError
from kvpilot.probes import SamplingPolicy, Telemetry
from tests.probes.conftest import ids


def _metrics(tel: Telemetry) -> dict:
    out = {}
    for rm in tel.metric_reader.get_metrics_data().resource_metrics:
        for sm in rm.scope_metrics:
            for m in sm.metrics:
                out[m.name] = m
    return out


def test_metrics_and_spans(tiny_engine):
    tel = Telemetry.in_memory()
    handle = attach(tiny_engine, store=None, otel=tel, model_name="tiny", sampling=SamplingPolicy(decode_every=2))
    tiny_engine.run(ids(64), [ids(5, 2), ids(6, 3)], 5)
    handle.event("hit")
    handle.event("miss")
    handle.detach()
    m = _metrics(tel)
    for name in ("gen_ai.server.time_to_first_token", "gen_ai.server.time_per_output_token",
                 "gen_ai.server.request.duration", "gen_ai.client.token.usage", "kvpilot.kv.compression_ratio",
                 "kvpilot.kv.evictions", "kvpilot.kv.evicted_tokens", "kvpilot.kv.eviction.duration",
                 "kvpilot.attention.retained_mass", "kvpilot.attention.entropy", "kvpilot.kv.physical_bytes",
                 "kvpilot.kv.layer.bytes", "process.memory.usage", "kvpilot.cache.hits", "kvpilot.cache.queries",
                 "kvpilot.recorder.rows"):
        assert name in m, name
    (ttft,) = m["gen_ai.server.time_to_first_token"].data.data_points
    assert ttft.count == 2 and ttft.attributes["gen_ai.request.model"] == "tiny"
    assert ttft.attributes["gen_ai.operation.name"] == "text_completion"
    assert m["gen_ai.server.time_to_first_token"].unit == "s"
    usage = {p.attributes["gen_ai.token.type"]: p for p in m["gen_ai.client.token.usage"].data.data_points}
    assert usage["output"].sum == 10 and usage["input"].count == 2
    layers = {p.attributes["kvpilot.layer"] for p in m["kvpilot.attention.retained_mass"].data.data_points}
    assert layers == {0, 1, 2, 3}
    assert set(ttft.attributes) == {"gen_ai.operation.name", "gen_ai.provider.name", "gen_ai.request.model",
                                    "kvpilot.deployment"}  # low cardinality: no request ids
    assert next(iter(m["kvpilot.cache.hits"].data.data_points)).value == 1
    assert next(iter(m["kvpilot.cache.queries"].data.data_points)).value == 2
    assert sum(p.value for p in m["kvpilot.kv.evictions"].data.data_points) > 0

    spans = tel.span_exporter.get_finished_spans()
    roots = [s for s in spans if s.parent is None]
    assert [s.name for s in roots] == ["text_completion tiny"] * 2
    first = roots[0]
    children = {s.name: s for s in spans if s.parent is not None and s.parent.span_id == first.context.span_id}
    assert set(children) == {"kvpilot.prefill", "kvpilot.decode", "kvpilot.evict"}
    for child in children.values():
        assert first.start_time <= child.start_time <= child.end_time <= first.end_time + 1_000_000
    assert first.attributes["gen_ai.usage.output_tokens"] == 5
    second_children = {s.name for s in spans if s.parent is not None and s.parent.span_id == roots[1].context.span_id}
    assert "kvpilot.prefill" not in second_children  # the context was compressed once, for the first question


def test_from_spec():
    assert Telemetry.from_spec(None) is None and Telemetry.from_spec(False) is None
    assert isinstance(Telemetry.from_spec(True), Telemetry)  # the application's (here: no-op) providers
    console = Telemetry.from_spec("console", interval_s=3600)
    console.shutdown()
    with pytest.raises(KVPilotError, match="otel="):
        Telemetry.from_spec("prometheus")
    try:
        import opentelemetry.exporter.otlp.proto.http  # noqa: F401
    except ImportError:
        with pytest.raises(KVPilotError, match=r"kvpilot\[otlp\]"):
            Telemetry.from_spec("otlp")
