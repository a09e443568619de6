"""Every dashboard page under Streamlit's AppTest, on an empty and on a seeded store (SQLite, and PostgreSQL
when KVPILOT_TEST_DATABASE_URL is set): no exception, guidance when empty, and numbers that match the store."""

from __future__ import annotations

import json

import pytest
import streamlit as st

from kvpilot.config import KVConfig
from tests.dashboard import seed as S
from tests.dashboard.helpers import PAGES, button_labels, charts, frame, metrics, open_page, texts

EMPTY_GUIDANCE = {
    "overview": "kvpilot demo",
    "runs": "No runs recorded yet",
    "layers": "kvpilot demo",
    "sessions": "kvpilot demo",
    "events": "kvpilot demo",
    "tuning": "No Optuna studies",
    "configs": "kvpilot push",
    "quality": "kvpilot demo",
}


def test_empty_store_every_page_guides(app, store, db_url):
    at = app(db_url)
    for page in PAGES:
        open_page(at, page)
        shown = texts(at)
        assert EMPTY_GUIDANCE[page] in shown, (page, shown)
        assert not at.error, (page, [e.value for e in at.error])


def test_overview_matches_store(app, store, seeded, db_url):
    at = app(db_url)
    assert not at.exception
    m = metrics(at)
    insts = store.instances()
    assert m["Deployments"] == str(len(store.deployments())) == "3"
    assert m["Engines alive"] == f"{sum(i.alive for i in insts)} / {len(insts)}" == "2 / 4"
    assert m[f"Active config of {S.DEPLOYMENT}"] == f"v{store.active_version(S.DEPLOYMENT).version}" == "v2"
    buckets = store.requests_series(deployment=S.DEPLOYMENT, last_s=3600)
    assert m["Requests"] == str(sum(b.requests for b in buckets)) == str(S.REQUESTS)
    assert m["Errors"] == str(sum(b.errors for b in buckets)) == str(S.REQUEST_ERRORS)
    ttft = [0.05 + 0.001 * i for i in range(S.REQUESTS)]
    assert m["Mean TTFT"] == f"{sum(ttft) / len(ttft) * 1000:.1f} ms"
    table = frame(at, "instance", "status")
    assert dict(zip(table["instance"], table["status"], strict=True)) == {
        "engine-0": "alive", "engine-1": "stale", "engine-s": "alive", "engine-q": "stale"}
    assert "Active config of chat: v2" in texts(at)
    # what each engine reports, in words: applied version, whether it is the active one, or "not reported"
    applied = dict(zip(table["instance"], table["config applied"], strict=True))
    current = dict(zip(table["instance"], table["runs the active config"], strict=True))
    assert applied == {"engine-0": "v2", "engine-1": "v1", "engine-s": "not reported", "engine-q": "not reported"}
    assert current == {"engine-0": "yes", "engine-1": "no (active is v2)", "engine-s": "unknown", "engine-q": "unknown"}
    drawn = charts(at)
    assert {"Request rate", "TTFT over time (ms)", "TPOT over time (ms)", "Memory pressure (MiB)",
            "TTFT distribution", "TPOT distribution"} <= set(drawn)
    assert drawn["TTFT distribution"]["requests"].sum() == S.REQUESTS
    # TTFT and TPOT each on their own axis, in milliseconds
    assert set(drawn["TTFT over time (ms)"]["series"]) == {"TTFT mean", "TTFT max"}
    assert set(drawn["TPOT over time (ms)"]["series"]) == {"TPOT mean"}
    assert drawn["TPOT over time (ms)"]["value"].max() == pytest.approx(1000 * (0.02 + 0.0001 * (S.REQUESTS - 1)), rel=0.05)
    memory = drawn["Memory pressure (MiB)"]
    assert memory[memory.series == "engine-0: KV logical"]["value"].max() == pytest.approx(100.0)


def test_overview_opens_on_the_deployment_with_the_newest_data(app, store, seeded, db_url):
    store.push("aaa-no-data", {"policy": "snapkv", "compression_ratio": 0.5})  # newest, alphabetically first
    at = app(db_url)
    assert metrics(at)["Active config of chat"] == "v2"
    store.heartbeat(seeded.engine_staging, ts=seeded.now + 60)  # a heartbeat is not data
    st.cache_data.clear()
    assert metrics(app(db_url))["Active config of chat"] == "v2"
    store.add_events([{"ts": seeded.now + 5, "kind": "evict", "count": 3}], instance_id=seeded.engine_staging)
    st.cache_data.clear()
    assert metrics(app(db_url))["Active config of staging"] == "-"  # staging has the newest sample now


def test_stored_text_never_renders_as_markdown(app, store, seeded, db_url):
    evil = "[click me](https://evil.example) **bold** <b>x</b>"
    store.push(S.DEPLOYMENT, {"policy": "tova", "compression_ratio": 0.5}, pushed_by=evil, source=evil)
    inst = store.register_instance(S.DEPLOYMENT, "engine-x")
    store.ack(inst.id, 4, "rejected", evil)
    at = app(db_url)
    shown = texts(at)
    assert "\\[click me\\]\\(https\\:" in shown and "[click me](" not in shown
    open_page(at, "configs")
    errors = [e.value for e in at.error]
    assert any("\\[click me\\]" in e and "\\*\\*bold\\*\\*" in e and "\\<b\\>" in e for e in errors), errors


def test_overview_scope_follows_sidebar(app, seeded, db_url):
    at = app(db_url)
    at.selectbox(key="instance").set_value(seeded.engine1).run()
    assert metrics(at)["Requests"] == "0"  # all requests were served by engine-0
    at.selectbox(key="instance").set_value(None).run()
    at.selectbox(key="window").set_value("5m").run()
    assert 0 < int(metrics(at)["Requests"]) < S.REQUESTS
    at.selectbox(key="deployment").set_value(S.OTHER_DEPLOYMENT).run()
    assert "No config pushed to staging yet" in texts(at)


def test_layers_heatmap_profile_and_budgets(app, store, seeded, db_url):
    at = open_page(app(db_url), "layers")
    drawn = charts(at)
    cells = drawn["entropy: layer x query head (window mean)"]
    assert len(cells) == S.LAYERS * S.HEADS
    for row in cells.itertuples():
        assert row.entropy == pytest.approx(S.entropy(row.layer, row[2]))
    latest = {(s.layer, s.head): s.entropy for s in store.layer_stats_latest(deployment=S.DEPLOYMENT, level="head")}
    assert latest[(7, 2)] == pytest.approx(cells.query("layer == 7")["entropy"].iloc[2])
    profile = store.latest_profile(S.MODEL)
    assert drawn[f"kl sensitivity of {S.MODEL}"]["sensitivity"].tolist() == pytest.approx(profile.values)
    from kvpilot.policies.layers import layer_budgets

    expected = layer_budgets(store.active_version(S.DEPLOYMENT).config(), S.LAYERS, 2048)
    assert drawn["budget per layer at 2,048 tokens seen"]["tokens kept"].tolist() == expected
    at.selectbox(key="layer_metric").set_value("gini").run()
    assert "gini: layer x query head (window mean)" in charts(at)
    at.selectbox(key="layer_metric").set_value("entropy").run()
    assert "normalised attention entropy, 0 to 1" in texts(at) and "nats" not in texts(at)


def test_sessions_counts_match_events(app, store, seeded, db_url):
    at = open_page(app(db_url), "sessions")
    m = metrics(at)
    totals = {}
    for b in store.event_series(deployment=S.DEPLOYMENT, last_s=3600, kinds=["ttl_pin", "hit", "miss", "expire"]):
        totals[b.kind] = totals.get(b.kind, 0) + b.count
    assert m["Sessions pinned"] == str(totals["ttl_pin"]) == "10"
    assert m["TTL hits / misses"] == f"{totals['hit']} / {totals['miss']}"
    assert m["Hit ratio"] == f"{totals['hit'] / (totals['hit'] + totals['miss']):.1%}" == "75.0%"
    assert m["Expiries"] == "4"
    # one number for pinned memory: the tile is the top of the chart's pinned line, in MiB
    pool = charts(at)["Pool occupancy (MiB)"]
    assert m["Peak pinned"] == f"{pool[pool.series == 'pinned']['value'].max():.1f} MiB" == "6.0 MiB"
    assert m["Peak pool"] == f"{pool[pool.series == 'pool']['value'].max():.1f} MiB" == "12.0 MiB"


def test_sessions_zoom_to_a_short_replay(app, store, db_url):
    inst = store.register_instance("replay", "r")
    t0 = store_now = __import__("time").time() - 100
    store.add_events([{"ts": t0 + 2 * j, "kind": "ttl_pin" if j % 2 else "hit", "count": 1, "bytes": 2**20,
                       "detail": {"pool_sessions": 1, "pool_bytes": 2**21, "pinned_bytes": 2**20}}
                      for j in range(15)], instance_id=inst.id)
    assert store_now
    at = open_page(app(db_url), "sessions")
    assert "Charts zoomed to the session events'" in texts(at)
    assert len(charts(at)["Pins, hits, misses, expiries"]) >= 10  # a line, not one or two points


def test_events_filter_and_config_changes(app, seeded, db_url):
    at = open_page(app(db_url), "events")
    totals = frame(at, "kind", "events", "items counted")
    counted = {k: n * c for k, (n, c, _) in S.EVENTS.items()}
    shown = dict(zip(totals["kind"], totals["items counted"], strict=True))
    # a count is shown only where it says more than the number of events
    assert {k: v for k, v in shown.items() if v} == {k: f"{v:,}" for k, v in counted.items() if v != S.EVENTS[k][0]}
    assert dict(zip(totals["kind"], totals["bytes"], strict=True))["ttl_pin"] == "20.0 MiB"
    latest = frame(at, "kind", "detail")
    assert len(latest) == 100  # newest 100 of 102
    assert "None" not in set(latest["layer"]) and "" in set(latest["layer"])
    assert all("{" not in d for d in latest["detail"])  # key value pairs, not a JSON dump
    assert any("pool_bytes " in d and "MiB" in d for d in latest["detail"])
    changes = frame(at, "what", "version")
    assert {"push", "rollback", "applied", "rejected"} <= set(changes["what"])
    assert S.REJECT_REASON in set(changes["reason"])
    at.multiselect(key="event_kinds").set_value(["evict", "error"]).run()
    totals = frame(at, "kind", "events")
    assert set(totals["kind"]) == {"evict", "error"}
    latest = frame(at, "kind", "detail")
    assert len(latest) == S.EVENTS["evict"][0] + 1
    assert "CUDA out of memory" in " ".join(latest["detail"])


def test_tuning_front_trials_and_promote(app, store, seeded, db_url):
    at = open_page(app(db_url), "tuning")
    m = metrics(at)
    assert m["Trials"] == str(len(S.TRIALS)) and m["Pareto front"] == str(len(S.PARETO))
    trials = frame(at, "trial", "state", "pareto")
    assert set(trials[trials["pareto"]]["trial"]) == S.PARETO
    front = charts(at)
    assert any("trial" in df.columns and len(df) == len(S.TRIALS) for df in front.values())
    assert "importance for kv_mib" in charts(at)
    assert "No full-cache reference point" not in texts(at)  # the full cache is drawn beside the trials
    assert "Objectives: kv_mib (minimised), accuracy (maximised)" in texts(at)
    # the trial's objectives, params and config are tables with units, not JSON trees
    assert not at.json
    objectives = frame(at, "field", "value")
    assert set(objectives["field"]) >= {"kv_mib", "accuracy"}
    at.selectbox(key="trial").set_value(1).run()  # trial 1 has a tuning_trial run with 5 requests
    assert metrics(at)["Requests"] == "5"
    at.selectbox(key="trial").set_value(2).run()
    at.button(key="promote:chat-tune:2").click().run()
    assert "replacing v2" in at.warning[0].value and "compression_ratio" not in at.warning[0].value.split("Changes")[0]
    at.button(key="promote:chat-tune:2:yes").click().run()
    assert not at.exception
    v = store.active_version(S.DEPLOYMENT)
    assert v.version == 4 and v.source == "tuner:chat-tune/2" and v.pushed_by == "dashboard"
    assert v.config() == KVConfig.parse({"policy": "snapkv", "compression_ratio": 0.7})
    assert "pushed v4" in at.success[0].value


def test_configs_history_diff_rollback_push(app, store, seeded, db_url):
    at = open_page(app(db_url), "configs")
    versions = frame(at, "version", "active", "applied", "rejected")
    assert versions["version"].tolist() == [3, 2, 1]
    assert versions.set_index("version")["active"].to_dict() == {3: False, 2: True, 1: False}
    assert versions.set_index("version")["rejected"][3] == 1
    assert any(S.REJECT_REASON in e.value for e in at.error)
    diff = frame(at, "field", "v1", "v2")
    assert set(diff["field"]) == {c.field for c in store.diff(S.DEPLOYMENT, 1, 2)}
    assert not at.json
    at.button(key="rollback").click().run()
    assert "from v2 to v1" in at.warning[0].value
    at.button(key="rollback:no").click().run()
    assert store.active_version(S.DEPLOYMENT).version == 2  # cancel changes nothing
    at.button(key="rollback").click().run()
    at.button(key="rollback:yes").click().run()
    assert store.active_version(S.DEPLOYMENT).version == 1
    new = {"policy": "tova", "compression_ratio": 0.6}
    at.text_area(key="push_text:chat").set_value(json.dumps(new)).run()
    at.button(key="push:chat").click().run()
    at.button(key="push:chat:yes").click().run()
    v = store.active_version(S.DEPLOYMENT)
    assert (v.version, v.pushed_by, v.config()) == (4, "dashboard", KVConfig.parse(new))
    at.text_area(key="push_text:chat").set_value('{"policy": "nope"}').run()
    assert any("policy" in e.value for e in at.error) and "push:chat" not in [b.key for b in at.button]


def test_read_only_hides_every_action(app, store, seeded, db_url):
    at = app(db_url, read_only=True)
    assert "Read-only view" in texts(at) or any("Read-only" in i.value for i in at.sidebar.info)
    for page in ("configs", "tuning"):
        open_page(at, page)
        labels = button_labels(at)
        assert not [b for b in labels if b.startswith(("Push", "Roll back", "Activate", "Promote"))], labels
    assert store.active_version(S.DEPLOYMENT).version == 2


def test_unreachable_database_is_one_clear_error(app, monkeypatch):
    at = app("postgresql+psycopg://nobody@127.0.0.1:1/nothing")
    assert not at.exception
    assert any("Cannot open the store" in e.value and "cannot reach database" in e.value for e in at.error)


def test_overview_shows_a_vllm_deployment(app, store, db_url):
    """A vLLM server's scrapes (as `kvpilot watch --vllm` records them) and its VLLMConfig on the Overview page."""
    import time

    from kvpilot.vllm.metrics import interval_row, parse
    from kvpilot.vllm_config import VLLMConfig
    from tests.vllm.test_config_and_metrics import FakeVLLM

    fake = FakeVLLM()
    now = time.time()
    first = parse(fake.text(), now - 20)
    fake.usage.labels("0", "m").set(0.4)
    fake.queries.labels("0", "m").inc(800)
    fake.hits.labels("0", "m").inc(200)
    fake.preempt.labels("0", "m").inc(2)
    fake.gen.labels("0", "m").inc(100)
    second = parse(fake.text(), now - 10)
    store.push("chat-vllm", VLLMConfig(max_num_seqs=8), pushed_by="test")
    inst = store.register_instance("chat-vllm", "vllm@test")
    store.add_vllm_samples([interval_row(None, first), interval_row(first, second)], instance_id=inst.id)
    at = app(db_url)
    assert not at.exception
    m = metrics(at)
    assert m["Prefix hit ratio"] == "25.0%" and m["Preemptions"] == "2" and m["KV usage (latest)"] == "40.0%"
    assert m["Generation"] == "10.0 tok/s"
    assert "vLLM config in force on chat-vllm: v1" in texts(at) and "max_num_seqs 8" in texts(at)
    assert {"Throughput", "Prefix hits and KV usage"} <= set(charts(at))
    open_page(at, "layers")
    assert "is a vLLM server" in texts(at) and not at.exception


def test_quality_fidelity_canaries_and_lineage_point(app, store, seeded, db_url):
    at = app(db_url)
    at.selectbox(key="deployment").set_value(S.QUALITY_DEPLOYMENT).run()
    open_page(at, "quality")
    summary = frame(at, "version", "answers measured", "top-1 agreement")
    assert dict(zip(summary["version"], summary["answers measured"], strict=True)) == {
        f"v{v}": n for v, (n, _, _) in S.QUALITY.items()}
    assert dict(zip(summary["version"], summary["top-1 agreement"], strict=True))["v2"] == "62.5 %"
    assert dict(zip(summary["version"], summary["mean KL"], strict=True))["v2"] == "0.900 nats"
    shown = charts(at)
    agreement = shown["Top-1 agreement with the full cache, per version"]
    assert set(agreement["series"]) == {f"v{v}" for v in S.QUALITY}
    assert "Mean KL(full || served), per version" in shown
    canaries = frame(at, "canary", "status", "reason")
    assert canaries["status"].tolist() == ["running", "promoted", "rolled back"]
    rolled = canaries.set_index("canary").loc["v2"]
    assert rolled["reason"] == S.LOSSY_REASON and rolled["agreement canary"] == "62.5 %"
    assert rolled["requests (canary / incumbent)"] == "4 / 6" and rolled["LLR"] == "8.41"
    assert rolled["latency p50 (canary / incumbent)"] == "440.0 ms / 430.0 ms"
    log = frame(at, "time", "event", "canary")
    assert log["event"].tolist()[:2] == ["started", "promoted"] and "undecided" in set(log["event"])
    assert "Canary running" in texts(at) and "v4 on 10 % of requests next to v3" in texts(at)
    assert "Eviction lineage" in texts(at)  # the lineage panel's call point, until that panel exists
    at.selectbox(key="quality_version").set_value("v2").run()
    assert frame(at, "version", "answers measured")["version"].tolist() == ["v2"]
    assert not at.exception and not at.json
