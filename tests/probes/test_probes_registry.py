"""The probe registry: torch-free specs with metadata, and a new probe is one class plus one registry line."""

from __future__ import annotations

import pytest

from kvpilot.attach import attach
from kvpilot.errors import KVPilotError
from kvpilot.probes.base import Probe, ProbeContext, RequestContext, SamplingPolicy
from kvpilot.probes.registry import (
    DEFAULT_PROBES,
    PROBES,
    ProbeSpec,
    UnknownProbeError,
    build_probes,
    probe_spec,
    register_probe,
)
from kvpilot.probes.skew import SkewProbe
from kvpilot.storage.schema import SAMPLES
from tests.probes.conftest import ids


def test_every_spec_names_its_class_tables_and_cost():
    assert DEFAULT_PROBES == ("skew", "latency", "memory", "evictions")
    for name, spec in PROBES.items():
        cls = spec.load()
        assert issubclass(cls, Probe) and cls.name == name == spec.name
        assert spec.records and spec.cost and spec.tables and set(spec.tables) <= set(SAMPLES)


def test_build_takes_each_probe_options_from_the_context():
    policy = SamplingPolicy(per_head=False, prefill_rows=2)
    skew, latency, memory = build_probes(["skew", "latency", "memory"], policy=policy, model_name="m",
                                         device="cpu", proxy_budget=16)
    assert isinstance(skew, SkewProbe)
    assert (skew.proxy_budget, skew.per_head, skew.prefill_rows) == (16, False, 2)
    assert latency.model_name == "m"
    assert memory.device.device_name == "cpu"
    memory.close()


def test_unknown_and_duplicate_names_are_refused():
    with pytest.raises(UnknownProbeError, match="unknown probe 'nope'; choose from skew, latency") as info:
        build_probes(["latency", "nope"], policy=SamplingPolicy())
    assert isinstance(info.value, KVPilotError) and isinstance(info.value, ValueError)
    with pytest.raises(ValueError, match="already registered"):
        register_probe(ProbeSpec("skew", "x:Y", records="r", tables=("requests",), cost="c"))
    with pytest.raises(ValueError, match="module:Class"):
        register_probe(ProbeSpec("no_colon", "kvpilot.probes.skew.SkewProbe", records="r", tables=(), cost="c"))


class CountingProbe(Probe):
    """A throwaway probe, defined here: it counts requests and writes one event row per request."""

    name = "test_counting"
    seen: list[int] = []

    def __init__(self, tag: str) -> None:
        super().__init__()
        self.tag = tag

    @classmethod
    def from_context(cls, context: ProbeContext) -> CountingProbe:
        return cls(tag=context.model_name or "?")

    def on_request(self, req: RequestContext, out) -> None:
        CountingProbe.seen.append(len(req.result.token_ids))
        out.submit("cache_events", [{"ts": req.ts, "kind": "hit", "detail": {"tag": self.tag}}])


@pytest.fixture
def counting_probe():
    spec = register_probe(ProbeSpec("test_counting", f"{__name__}:CountingProbe", records="requests seen",
                                    tables=("cache_events",), cost="nothing", default=False))
    CountingProbe.seen = []
    yield spec
    del PROBES[spec.name]


def test_a_probe_registered_from_outside_runs_under_attach(counting_probe, tiny_engine, store, tmp_path):
    assert probe_spec("test_counting") is counting_probe
    assert "test_counting" not in DEFAULT_PROBES  # default=False: only when asked for
    handle = attach(tiny_engine, store=store, deployment="d", otel=False, spool_dir=tmp_path, watch=False,
                    probes=["test_counting"], model_name="tiny")
    assert [type(p) for p in handle.probes.probes] == [CountingProbe]
    tiny_engine.run(ids(32), [ids(4, 3), ids(4, 9)], 3)  # two questions: two requests
    stats = handle.detach()
    assert CountingProbe.seen == [3, 3] and stats["written_rows"] == stats["rows"] == 2
    assert store.counts()["cache_events"] == 2
