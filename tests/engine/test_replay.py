"""Agent-trace replay through the bundled model and the session pool (simulated tool time, real compute)."""

from __future__ import annotations

import json

import pytest

from kvpilot.cli import main
from kvpilot.config import KVConfig
from kvpilot.evaluation.replay import Replay
from kvpilot.storage import Store
from kvpilot.workloads.trace import TraceEvent

pytestmark = pytest.mark.slow


def _trace() -> list[TraceEvent]:
    """Three programs of three turns; program b's first tool takes 30 s, every other tool under 2 s."""
    out = []
    for pid, arrival, durations in (("a", 0.0, (1.0, 0.5)), ("b", 0.2, (30.0, 1.5)), ("c", 0.4, (0.8, 1.2))):
        t, prompt = arrival, 120
        for turn in range(3):
            last = turn == 2
            out.append(TraceEvent(pid, turn, 3, t, prompt, prompt if turn == 0 else 60, 4,
                                  None if last else ("search" if turn == 0 else "file_read"),
                                  0.0 if last else durations[turn]))
            if not last:
                t += durations[turn]
                prompt += 4 + 60
    return out


def _replay(engine, **config):
    return Replay(engine, KVConfig(**config), max_response_tokens=4).run(_trace())


def test_ttl_turns_misses_into_hits_and_costs_pinned_memory(bundled_engine):
    none = _replay(bundled_engine)
    assert (none.hits, none.misses, none.turns, none.programs) == (0, 6, 9, 3)
    assert none.reprefilled_tokens > 0 and none.pinned_byte_seconds == 0
    forever = _replay(bundled_engine, session_ttl="fixed", session_ttl_s=1000.0)
    assert (forever.hits, forever.misses, forever.reprefilled_tokens) == (6, 0, 0)
    assert forever.prefilled_tokens < none.prefilled_tokens and forever.pinned_byte_seconds > 0
    assert forever.decoded_tokens == none.decoded_tokens == 9 * 4
    short = _replay(bundled_engine, session_ttl="fixed", session_ttl_s=5.0)
    assert (short.hits, short.misses) == (5, 1)  # only b's 30 s tool outlives a 5 s TTL
    assert 0 < short.pinned_byte_seconds < forever.pinned_byte_seconds
    m = short.metrics()
    # b waits 30 s + 1.5 s of simulated tool time; compute time adds to it (not asserted: it is wall time)
    assert m["hit_ratio"] == pytest.approx(5 / 6) and max(short.jct_s) > 31.5 and m["mean_jct_s"] < max(short.jct_s)
    assert m["makespan_s"] >= max(short.jct_s)


def test_compression_shrinks_what_the_pool_pins(bundled_engine):
    full = _replay(bundled_engine, session_ttl="fixed", session_ttl_s=1000.0)
    compressed = _replay(bundled_engine, policy="snapkv", compression_ratio=0.5, session_ttl="fixed",
                         session_ttl_s=1000.0)
    assert compressed.hits == 6 and compressed.peak_pool_bytes < 0.75 * full.peak_pool_bytes


def test_a_pool_too_small_pins_nothing(bundled_engine):
    tiny = Replay(bundled_engine, KVConfig(session_ttl="fixed", session_ttl_s=1000.0), capacity_bytes=1024,
                  max_response_tokens=4).run(_trace())
    assert tiny.hits == 0 and tiny.misses == 6 and tiny.expiries == 6


def test_replay_command_records_pool_events(tmp_path, capsys):
    db = tmp_path / "r.db"
    code = main(["replay", "--programs", "2", "--token-scale", "0.05", "--max-response-tokens", "2", "--ttl",
                 "fixed:1000", "--policy", "snapkv", "--ratio", "0.5", "--db", str(db), "--deployment", "agents",
                 "--quiet", "--json"])
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    assert out["misses"] == 0 and out["hits"] == out["turns"] - out["programs"] > 0
    with Store.open(str(db)) as store:
        (run,) = store.runs(kind="eval")
        assert run.status == "completed" and run.metrics["hits"] == out["hits"]
        # the run carries the replayed config (the Runs page's config column), not the engine's initial one
        recorded = KVConfig.parse(run.config)
        assert (recorded.policy, recorded.compression_ratio, recorded.session_ttl) == ("snapkv", 0.5, "fixed")
        counts = dict(store.engine.connect().exec_driver_sql(
            "SELECT kind, COUNT(*) FROM cache_events GROUP BY kind").all())
        assert {k: counts.get(k, 0) for k in ("ttl_pin", "hit", "miss", "expire")} == \
            {"ttl_pin": out["hits"], "hit": out["hits"], "miss": 0, "expire": 0}
        assert counts["evict"] > 0  # snapkv's evictions, recorded by the serving path's probes
        # every replayed turn is a request row of this run, like any served request
        rows = store.engine.connect().exec_driver_sql("SELECT run_id, output_tokens FROM requests").all()
        assert len(rows) == out["turns"] and {r[0] for r in rows} == {run.id}
        assert all(r[1] >= 1 for r in rows)
    for bad in (["--ttl", "sometimes"], ["--token-scale", "2"], ["--trace", str(tmp_path / "missing.jsonl")]):
        assert main(["replay", *bad]) == 2


def test_replayed_turns_are_requests_timed_from_their_own_start(bundled_engine, tmp_path):
    """`run_replay` with a store records each turn through the probes that record served requests: one row
    per turn, its prompt the session's whole history on a hit, and its end-to-end time measured from that
    turn's own start (a hit continues a cache filled turns earlier, with other programs served between)."""
    from kvpilot.commands.replay import run_replay

    config = KVConfig(session_ttl="fixed", session_ttl_s=1000.0)
    with Store.open(str(tmp_path / "replay.db")) as store:
        m = run_replay(bundled_engine, config, _trace(), store=store, deployment="agents", max_response_tokens=4,
                       progress=False, instance="replayer")
        assert (m["turns"], m["hits"], m["misses"]) == (9, 6, 0)
        (run,) = store.runs(kind="eval")
        with store.engine.connect() as conn:
            rows = conn.exec_driver_sql(
                "SELECT run_id, prompt_tokens, output_tokens, ttft_s, e2e_s FROM requests ORDER BY id").all()
            memory = conn.exec_driver_sql("SELECT COUNT(*) FROM memory_samples").scalar()
        assert len(rows) == 9 and {r[0] for r in rows} == {run.id} and memory == 9
        assert all(out == 4 for _, _, out, _, _ in rows)
        # on a hit the cache holds the history: each program's third turn is asked on 120 + 60 + 60 prompt
        # tokens plus the 3 of each earlier answer's 4 tokens that were fed back
        assert sorted(r[1] for r in rows)[-3:] == [120 + 60 + 60 + 2 * 3] * 3
        # each request's end-to-end covers its own prefill and decode, and no more: together they fit in the
        # engine time the replay measured (a hit timed from when its cache was first filled would not)
        assert all(e2e >= ttft > 0 for *_, ttft, e2e in rows)
        assert sum(r[4] for r in rows) <= m["compute_s"] * 1.05
