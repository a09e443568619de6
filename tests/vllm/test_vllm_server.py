"""A real vLLM server under kvpilot: metrics recorded, configs pushed, restarted and acknowledged, an
impossible config rejected while the old server keeps serving, rollback, and a two-trial tuning study."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from openai import OpenAI

from kvpilot.vllm.collector import fetch_text
from kvpilot.vllm.metrics import CACHE_CONFIG, parse
from kvpilot.vllm_config import VLLMConfig
from tests.vllm.conftest import vllm_or_skip, wait_for

pytestmark = pytest.mark.vllm
ROOT = Path(__file__).resolve().parents[2]


def chat(url: str, text: str, max_tokens: int = 8) -> str:
    client = OpenAI(base_url=f"{url}/v1", api_key="kvpilot", max_retries=0, timeout=120)
    out = client.chat.completions.create(model="kvpilot-model", max_tokens=max_tokens, temperature=0,
                                         messages=[{"role": "user", "content": text}])
    return out.choices[0].message.content or ""


def cache_config(url: str) -> dict[str, str]:
    scrape = parse(fetch_text(f"{url}/metrics"), 0.0)
    assert CACHE_CONFIG in scrape.values
    return scrape.cache_config


def acks(store, version):
    return [a for a in store.acks("chat-vllm") if a.version == version]


def test_metrics_of_a_loaded_server_are_recorded(supervised):
    sup, store = supervised
    prompt = "Summarise the plot of a long novel about a lighthouse keeper. " * 40  # > 4 blocks of 128
    # counters are recorded as changes between scrapes: requests before the first scrape would go uncounted
    wait_for(lambda: store.vllm_samples(deployment="chat-vllm"), 60, "a first scrape")
    for _ in range(3):  # the same prompt again: whole blocks come from the prefix cache
        assert chat(sup.url, prompt)

    def hits_so_far() -> int:
        return sum(r.prefix_hits or 0 for r in store.vllm_samples(deployment="chat-vllm"))

    wait_for(lambda: hits_so_far() >= 2 * 512, 30, "scrapes that saw both repeats' prefix-cache hits")
    rows = [r for r in store.vllm_samples(deployment="chat-vllm") if r.prefix_hits]
    hits = hits_so_far()
    queries = sum(r.prefix_queries or 0 for r in store.vllm_samples(deployment="chat-vllm"))
    assert hits >= 2 * 512 and queries > hits  # two repeats, each reusing at least four full blocks
    assert rows[0].kv_capacity_bytes == 1 << 30  # VLLM_CPU_KVCACHE_SPACE=1 (GiB)
    assert any(r.generation_tokens_per_s for r in store.vllm_samples(deployment="chat-vllm"))
    # vLLM reports the blocks running requests hold at the moment of a scrape, and a short request can fall
    # between two scrapes: keep the server busy until a scrape lands inside one
    stop = threading.Event()

    def keep_busy() -> None:
        while not stop.is_set():
            chat(sup.url, prompt, max_tokens=32)

    busy = threading.Thread(target=keep_busy, daemon=True)
    busy.start()
    try:
        mem = wait_for(lambda: [b for b in store.memory_window(deployment="chat-vllm", bucket_s=3600)
                                if (b.kv_bytes_physical_max or 0) > 0], 60, "a scrape during a request")
    finally:
        stop.set()
        busy.join(timeout=120)
    assert mem[0].kv_bytes_physical_max <= 1 << 30  # held blocks, within the 1 GiB cache
    (inst,) = store.instances("chat-vllm")
    assert inst.alive and inst.config_version == 1
    # the server's KV events (its ZMQ publisher) arrive as cache events: blocks the prompts stored
    stored = wait_for(lambda: store.events(deployment="chat-vllm", kinds=["kv_block_stored"]), 30, "KV events")
    assert sum(e.count for e in stored) >= 4 and all(e.bytes for e in stored)


def test_watch_command_records_a_running_server(supervised, tmp_path):
    sup, _ = supervised
    db = f"sqlite:///{tmp_path / 'watch.db'}"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-m", "kvpilot.cli", "watch", "--vllm", sup.url, "--deployment", "obs",
                          "--interval", "0.5", "--duration", "3", "--db", db],
                         capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    from kvpilot.storage import Store

    with Store.open(db) as store:
        rows = store.vllm_samples(deployment="obs")
        assert len(rows) >= 3 and all(r.kv_capacity_bytes == 1 << 30 for r in rows)
    bad = subprocess.run([sys.executable, "-m", "kvpilot.cli", "watch", "--vllm", "http://127.0.0.1:9",
                          "--deployment", "obs", "--db", db], capture_output=True, text=True, env=env, timeout=60)
    assert bad.returncode == 2 and "cannot read http://127.0.0.1:9/metrics" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_serve_command_refuses_a_busy_port_and_a_kvconfig_deployment(supervised, tmp_path):
    sup, _ = supervised
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    db = f"sqlite:///{tmp_path / 'serve.db'}"
    busy = subprocess.run([sys.executable, "-m", "kvpilot.cli", "vllm", "serve", "-d", "x", "--port", str(sup.port),
                           "--db", db], capture_output=True, text=True, env=env, timeout=120)
    assert busy.returncode == 2 and f"port {sup.port} is already in use" in busy.stderr
    from kvpilot.config import KVConfig
    from kvpilot.storage import Store
    from kvpilot.vllm.server import free_port

    with Store.open(db) as store:
        store.push("chat", KVConfig())
    taken = subprocess.run([sys.executable, "-m", "kvpilot.cli", "vllm", "serve", "-d", "chat", "--port",
                            str(free_port()), "--db", db], capture_output=True, text=True, env=env, timeout=120)
    assert taken.returncode == 2 and "runs KVConfigs" in taken.stderr and "Traceback" not in taken.stderr


def test_pushed_config_restarts_the_server_and_is_acknowledged(supervised):
    sup, store = supervised
    restarts = sup.restarts
    v = store.push("chat-vllm", sup.config.replace(block_size=64, max_num_seqs=8), pushed_by="test")
    ack = wait_for(lambda: acks(store, v.version), 600, "the supervisor's answer to the new version")[0]
    assert ack.status == "applied", ack.reason
    assert sup.restarts == restarts + 1
    assert cache_config(sup.url)["block_size"] == "64"  # the server itself runs the new arguments
    assert chat(sup.url, "Say hello.")
    wait_for(lambda: store.instances("chat-vllm")[0].config_version == v.version, 30, "the instance's version")


def test_a_config_the_machine_cannot_hold_is_rejected_and_the_old_server_keeps_serving(supervised):
    sup, store = supervised
    pid, restarts, before = sup.server.proc.pid, sup.restarts, sup.config
    v = store.push("chat-vllm", before.replace(kv_cache_gib=256), pushed_by="test")
    ack = wait_for(lambda: acks(store, v.version), 60, "the rejection")[0]
    assert ack.status == "rejected" and "kv_cache_gib=256" in ack.reason
    assert sup.server.proc.pid == pid and sup.restarts == restarts and sup.config == before
    assert chat(sup.url, "Still there?")
    events = store.events(deployment="chat-vllm", kinds=["config_rejected"])
    assert events and events[0].detail["version"] == v.version


def test_rollback_returns_to_the_earlier_arguments(supervised):
    sup, store = supervised
    store.rollback("chat-vllm")  # from the rejected version to the one in force: nothing to do
    assert store.active_version("chat-vllm").vllm_config() == sup.config
    target = store.rollback("chat-vllm")  # back to version 1: a restart on vLLM's default block size
    assert target.version == 1
    wait_for(lambda: [a for a in acks(store, 1) if a.status == "applied" and sup.config.block_size == 128],
             600, "the rollback to version 1")
    assert cache_config(sup.url)["block_size"] == "128"


def test_two_trial_tuning_study_is_stored_and_its_winner_pushed(tmp_path, model_dir):
    python = vllm_or_skip()
    from kvpilot.storage import Store
    from kvpilot.vllm.load import LoadSpec
    from kvpilot.vllm.target import Bound, VLLMSpace, VLLMTarget, VLLMTuner

    with Store.open(f"sqlite:///{tmp_path / 'tune.db'}") as store:
        target = VLLMTarget(model_dir, LoadSpec(programs=3, seed=1), store=store, log_dir=tmp_path, python=python)
        space = VLLMSpace(VLLMConfig(), {"enable_prefix_caching": (True, False)})
        tuner = VLLMTuner(target, study_name="vllm-test", store=store,
                          objectives=["throughput_tok_s", "p99_ttft_s", "prefix_hit_ratio"],
                          constraints=[Bound.parse("error_rate<=0")], space=space, seed=3)
        result = tuner.optimize(2)
        assert len(result.trials) == 2 and result.best is not None
        for t in result.trials:
            m = t.user_attrs["metrics"]
            assert m["requests"] >= 6 and m["error_rate"] == 0 and m["throughput_tok_s"] > 0
            if "reused_from" not in t.user_attrs:
                run = [r for r in store.runs(kind="tuning_trial") if r.trial_number == t.number][0]
                assert store.counts(run_id=run.id)["requests"] == m["requests"]
                assert store.counts(run_id=run.id)["vllm_samples"] >= 2
            caching = t.user_attrs["config"]["enable_prefix_caching"]
            # without prefix caching nothing is looked up; with it, the sessions' shared history is found
            assert (m["prefix_hit_ratio"] > 0) == caching
        version = tuner.push("chat-vllm-tuned", result)
        assert store.get_version("chat-vllm-tuned", version).vllm_config() == result.config(result.best)
