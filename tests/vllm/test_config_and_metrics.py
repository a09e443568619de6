"""VLLMConfig in the registry, and turning /metrics text into rows; no vLLM server needed.

The exposition text is produced by prometheus-client itself (vLLM exports with the same library), so the
parser is checked against the format as written, with values whose rates and quantiles are known."""

from __future__ import annotations

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from kvpilot.config import KVConfig
from kvpilot.engine.watcher import ConfigWatcher
from kvpilot.storage import Store
from kvpilot.vllm.metrics import interval_row, parse, quantile
from kvpilot.vllm_config import VLLMConfig, VLLMConfigError, is_vllm_document

BUCKETS = (0.01, 0.05, 0.1, 0.5, 1.0, 5.0)


class FakeVLLM:
    """A registry with vLLM's metric names; `text()` is what /metrics would return."""

    def __init__(self) -> None:
        self.reg = CollectorRegistry()
        labels = ["engine", "model_name"]
        self.usage = Gauge("vllm:kv_cache_usage_perc", "", labels, registry=self.reg)
        self.queries = Counter("vllm:prefix_cache_queries", "", labels, registry=self.reg)
        self.hits = Counter("vllm:prefix_cache_hits", "", labels, registry=self.reg)
        self.preempt = Counter("vllm:num_preemptions", "", labels, registry=self.reg)
        self.gen = Counter("vllm:generation_tokens", "", labels, registry=self.reg)
        self.ttft = Histogram("vllm:time_to_first_token_seconds", "", labels, buckets=BUCKETS, registry=self.reg)
        info = Gauge("vllm:cache_config_info", "", ["block_size", "kv_cache_memory_bytes", "engine"],
                     registry=self.reg)
        info.labels("128", str(1 << 30), "0").set(1)

    def text(self) -> str:
        return generate_latest(self.reg).decode()


def test_counters_become_rates_and_ratios_and_histograms_quantiles():
    fake = FakeVLLM()
    rng = np.random.default_rng(0)
    # two engines: a row describes the whole server, so their series add up
    for engine in ("0", "1"):
        fake.queries.labels(engine, "m").inc(100)
        fake.hits.labels(engine, "m").inc(10)
        for v in rng.uniform(0, 0.05, 50):
            fake.ttft.labels(engine, "m").observe(v)
    first = parse(fake.text(), 1000.0)
    fake.usage.labels("0", "m").set(0.25)
    fake.queries.labels("0", "m").inc(400)
    fake.hits.labels("0", "m").inc(300)
    fake.preempt.labels("1", "m").inc(3)
    fake.gen.labels("0", "m").inc(500)
    later = rng.uniform(0.1, 0.5, 200)
    for v in later:
        fake.ttft.labels("0", "m").observe(v)
    row = interval_row(first, parse(fake.text(), 1010.0))
    assert row["interval_s"] == 10.0
    assert (row["prefix_queries"], row["prefix_hits"]) == (400, 300)
    assert row["prefix_hit_ratio"] == pytest.approx(0.75)
    assert row["preemptions"] == 3 and row["generation_tokens_per_s"] == pytest.approx(50.0)
    assert row["kv_capacity_bytes"] == 1 << 30 and row["kv_bytes"] == round(0.25 * (1 << 30))
    # only this interval's observations count: all in (0.1, 0.5], where interpolation is linear
    assert 0.1 < row["ttft_p50_s"] < 0.5 and row["ttft_p50_s"] == pytest.approx(np.median(later), abs=0.03)
    assert "cache_config" not in row  # unchanged since the first scrape, which carried it
    assert interval_row(None, first)["cache_config"]["block_size"] == "128"


def test_a_server_restart_resets_the_counters():
    fake = FakeVLLM()
    fake.queries.labels("0", "m").inc(1000)
    before = parse(fake.text(), 0.0)
    restarted = FakeVLLM()
    restarted.queries.labels("0", "m").inc(40)
    row = interval_row(before, parse(restarted.text(), 5.0))
    assert row["prefix_queries"] == 40  # counted from zero, never negative


def test_quantile_interpolates_inside_buckets_like_prometheus():
    assert quantile(0.5, {1.0: 0, 2.0: 10, float("inf"): 10}) == pytest.approx(1.5)
    assert quantile(0.99, {1.0: 5, float("inf"): 10}) == 1.0  # the overflow bucket: its lower bound
    assert quantile(0.5, {1.0: 0, float("inf"): 0}) is None


def test_vllm_config_validates_and_maps_to_server_arguments():
    cfg = VLLMConfig.parse({"kv_cache_gib": 2, "block_size": 64, "enable_prefix_caching": False})
    assert cfg.server_env() == {"VLLM_CPU_KVCACHE_SPACE": "2"}
    args = cfg.server_args()
    assert args[args.index("--block-size") + 1] == "64" and "--no-enable-prefix-caching" in args
    with pytest.raises(VLLMConfigError, match="block_size"):
        VLLMConfig.parse({"block_size": 48})
    with pytest.raises(VLLMConfigError, match="unknown field"):
        VLLMConfig.parse({"policy": "snapkv"})
    with pytest.raises(VLLMConfigError, match="chunked prefill"):
        VLLMConfig.parse({"enable_chunked_prefill": False, "max_num_batched_tokens": 256, "max_model_len": 2048})
    assert is_vllm_document(cfg.to_json()) and not is_vllm_document(KVConfig().to_json())


def test_kv_event_batches_become_cache_events(db_url):
    """Messages as vLLM's ZMQ publisher sends them: (topic, sequence number, msgpack batch)."""
    import msgspec

    from kvpilot.vllm.events import KVEventListener

    stored = {"type": "BlockStored", "block_hashes": [11, 12], "parent_block_hash": None,
              "token_ids": list(range(256)), "block_size": 128, "lora_id": None, "medium": "GPU"}
    removed = {"type": "BlockRemoved", "block_hashes": [11], "medium": "GPU"}
    enc = msgspec.msgpack.encode

    class Sink:
        rows: list = []

        def submit(self, table, rows):
            assert table == "cache_events"
            self.rows.extend(rows)

    sink = Sink()
    listener = KVEventListener("tcp://127.0.0.1:1", sink, bytes_per_token=1000)
    assert listener.handle([b"kv", (0).to_bytes(8, "big"), enc([1000.5, [stored], None])]) == 1
    assert listener.handle([b"kv", (3).to_bytes(8, "big"), enc([1001.0, [removed], None])]) == 1  # 1, 2 lost
    first, second = sink.rows
    assert (first["kind"], first["count"], first["bytes"], first["ts"]) == ("kv_block_stored", 2, 256_000, 1000.5)
    assert (second["kind"], second["count"], second["bytes"]) == ("kv_block_removed", 1, 128_000)
    assert second["detail"]["missed_batches"] == 2 and listener.missed == 2
    with Store.open(db_url) as store:  # the kinds are ones the store accepts
        inst = store.register_instance("chat-vllm", "vllm@test")
        assert store.add_events(sink.rows, instance_id=inst.id) == 2
        (row,) = store.events(deployment="chat-vllm", kinds=["kv_block_stored"])
        assert row.count == 2 and row.bytes == 256_000 and row.detail["tokens"] == 256


def test_a_kv_cache_the_machine_cannot_hold_is_refused_counting_what_the_old_server_frees():
    from kvpilot.vllm.supervisor import check_fits

    gib = 1 << 30
    check_fits(VLLMConfig(kv_cache_gib=4), VLLMConfig(kv_cache_gib=1), available_bytes=4 * gib)  # 4 + 1 freed >= 5
    with pytest.raises(VLLMConfigError, match="kv_cache_gib=8: needs 9 GiB"):
        check_fits(VLLMConfig(kv_cache_gib=8), VLLMConfig(kv_cache_gib=1), available_bytes=4 * gib)


def test_registry_versions_vllm_configs_and_a_kvpilot_engine_rejects_them(db_url):
    with Store.open(db_url) as store:
        v1 = store.push("chat-vllm", VLLMConfig(), pushed_by="t")
        v2 = store.push("chat-vllm", {"engine": "vllm", "max_num_seqs": 8}, pushed_by="t")
        with pytest.raises(VLLMConfigError):
            store.push("chat-vllm", {"engine": "vllm", "max_num_seqs": 0})
        assert [v.version for v in store.list_versions("chat-vllm")] == [1, 2]
        assert store.get_version("chat-vllm").vllm_config().max_num_seqs == 8
        assert [c.field for c in store.diff("chat-vllm", v1.version, v2.version)] == ["max_num_seqs"]
        assert store.rollback("chat-vllm").version == 1 and store.active_version("chat-vllm").is_vllm
        # a kvpilot engine pointed at a vLLM deployment refuses the document and keeps its config
        applied = []
        watcher = ConfigWatcher(store, "chat-vllm", "kvpilot-engine", applied.append, listen=False)
        result = watcher.check_once()
        assert result is not None and result.status == "rejected" and "engine" in (result.reason or "")
        assert applied == []
        # the supervisor's parse reads it
        seen = []
        ok = ConfigWatcher(store, "chat-vllm", "vllm-1", seen.append, listen=False, parse=lambda v: v.vllm_config())
        assert ok.check_once().status == "applied" and seen == [VLLMConfig()]


def test_vllm_samples_are_stored_and_read_back(db_url):
    fake = FakeVLLM()
    first = parse(fake.text(), 1000.0)
    fake.queries.labels("0", "m").inc(200)
    fake.hits.labels("0", "m").inc(50)
    rows = [interval_row(None, first), interval_row(first, parse(fake.text(), 1005.0))]
    with Store.open(db_url) as store:
        inst = store.register_instance("chat-vllm", "vllm@test")
        assert store.add_vllm_samples(rows, instance_id=inst.id) == 2
        got = store.vllm_samples(deployment="chat-vllm")
        assert [r.prefix_queries for r in got] == [200, None]  # newest first
        assert got[1].cache_config["kv_cache_memory_bytes"] == str(1 << 30)
        (bucket,) = store.vllm_series(deployment="chat-vllm", bucket_s=3600)
        assert bucket.scrapes == 2 and bucket.prefix_hit_ratio == pytest.approx(0.25)
