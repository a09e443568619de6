"""`kvpilot demo` end to end (policies compared with probes on, then a short tuning study) on the bundled model
and a fresh SQLite file (slow: it loads the model), and its push rule on a real store (fast)."""

from __future__ import annotations

import argparse

import pytest

from kvpilot.cli import main
from kvpilot.commands.demo import DEFAULT_CONFIGS, SESSION_REQUESTS, STAGES, _estimate, _pace, _push
from kvpilot.config import KVConfig
from kvpilot.storage import Store


def _args(**kw) -> argparse.Namespace:
    return argparse.Namespace(deployment="d", **kw)


def test_push_only_a_config_that_met_the_constraint(tmp_path, capsys):
    knorm = KVConfig(policy="knorm", compression_ratio=0.75)
    with Store.open(str(tmp_path / "push.db")) as store:
        # no compressed config matched the full cache: nothing is pushed, the sessions run on the full cache
        assert _push(_args(), store, {"accuracy": 1.0, "kv_bytes": 100}, None, "demo") == KVConfig()
        assert "nothing pushed" in capsys.readouterr().out
        # the full cache answered nothing: a 0 % config would "match" it, and is not pushed either
        assert _push(_args(), store, {"accuracy": 0.0, "kv_bytes": 100}, (knorm, {"accuracy": 0.0, "kv_bytes": 25}),
                     "demo") == KVConfig()
        assert "answered 0 %" in capsys.readouterr().out
        assert store.active_version("d") is None
        assert _push(_args(), store, {"accuracy": 1.0, "kv_bytes": 100}, (knorm, {"accuracy": 1.0, "kv_bytes": 25}),
                     "demo") == knorm
        active = store.active_version("d")
        assert active is not None and active.config() == knorm and active.source == "demo"
        assert "accuracy 100% >= the full cache's 100%" in capsys.readouterr().out


def test_demo_rejects_bad_sizes_in_one_line(tmp_path, capsys):
    assert main(["demo", "--db", str(tmp_path / "x.db"), "--samples", "0"]) == 2
    err = capsys.readouterr().err
    assert "--samples must be at least 1" in err and "Traceback" not in err
    assert main(["demo", "--db", str(tmp_path / "x.db"), "--threads", "0"]) == 2
    assert "--threads must be at least 1" in capsys.readouterr().err


def test_estimate_scales_with_the_work_and_the_measured_speed():
    """The up-front figure is for a quiet 2-core machine and grows with the work asked for; the second one
    is this machine's measured speed on the first policy times the work left."""
    small = argparse.Namespace(samples=2, tokens=500, trials=2, sessions=1, threads=None, threads_used=1)
    big = argparse.Namespace(samples=6, tokens=1000, trials=8, sessions=4, threads=None, threads_used=2)
    assert "quiet 2-core machine (2 torch threads)" in _estimate(small) and "this run uses 1 torch thread" in _estimate(small)

    def seconds(line: str) -> float:
        text = line.split("about ")[1].split(" on ")[0].split(";")[0]
        if "min" in text:
            m, _, rest = text.partition(" min ")
            return int(m) * 60 + int(rest.split(" s")[0])
        return float(text.split(" s")[0])

    assert seconds(_estimate(big)) > 4 * seconds(_estimate(small))
    one = argparse.Namespace(**{**vars(small), "threads": 1})
    assert "(1 torch thread)" in _estimate(one) and seconds(_estimate(one)) > 1.5 * seconds(_estimate(small))
    # the first policy took 10 s for 2 x 500 tokens: 10 s per 1,000 tokens; left: 5 policies and 2 trials on
    # 1,000 tokens each, plus 1 session of SESSION_REQUESTS
    assert seconds(_pace(small, 10.0)) == pytest.approx((7 + SESSION_REQUESTS) * 10.0, abs=1)
    assert seconds(_pace(small, 20.0)) == pytest.approx(2 * seconds(_pace(small, 10.0)), abs=1)


@pytest.mark.slow
def test_demo_records_probes_runs_and_pushes_only_a_feasible_config(tmp_path, capsys):
    db = tmp_path / "demo.db"
    args = ["--db", str(db), "--samples", "1", "--tokens", "400", "--deployment", "d", "--trials", "2",
            "--sessions", "1", "--threads", "1"]
    assert main(["demo", *args]) == 0
    out = capsys.readouterr().out
    # an estimate before the work, then the measured pace after the first policy, then one line per stage
    before = out.split(f"[2/{STAGES}]")[0]
    assert "estimate: about" in before and "this run uses 1 torch thread" in before
    assert "measured: the full cache took" in before and "the rest should take about" in before
    for stage in range(1, STAGES + 1):
        assert f"[{stage}/{STAGES}]" in out
    with Store.open(str(db)) as store:
        runs = [r for r in store.runs(kind="eval") if r.name.startswith("passkey")]
        assert len(runs) == len(DEFAULT_CONFIGS)
        # each compared config is its run's config (the Runs page), not the engine's initial full cache
        assert [(c.policy, c.compression_ratio) for c in (KVConfig.parse(r.config) for r in reversed(runs))] == \
            list(DEFAULT_CONFIGS)
        assert all(r.status == "completed" and 0.0 <= r.metrics["accuracy"] <= 1.0 for r in runs)
        assert all(r.metrics["recorder"].get("dropped_rows", 0) == 0 for r in runs)
        counts = store.counts()
        # one request per compared policy, and each replayed turn is a request too (the Overview's latency)
        (replay,) = [r for r in store.runs(kind="eval") if r.name.startswith("replay")]
        turns = replay.metrics["turns"]
        assert turns >= 2
        with store.engine.connect() as conn:
            by_run = dict(conn.exec_driver_sql("SELECT run_id, COUNT(*) FROM requests GROUP BY run_id").all())
            unavailable = conn.exec_driver_sql(
                "SELECT COUNT(*) FROM cache_events WHERE kind = 'probe_unavailable'").scalar()
        assert by_run == {**{r.id: 1 for r in runs}, replay.id: turns}
        assert counts["requests"] == len(DEFAULT_CONFIGS) + turns
        # a CPU-only engine says once (per probe) that it has no GPU, not once per compared policy
        assert unavailable == 2
        # one demo process is one engine on the dashboard, the replayed sessions included
        assert [i.name for i in store.instances()] == ["demo-engine"]
        # the Layers page has skew rows (entropy) for every layer, the memory page has samples
        skew = store.layer_stats_latest(deployment="d", level="layer")
        assert {s.layer for s in skew} == set(range(30))
        assert counts["memory_samples"] == len(DEFAULT_CONFIGS) + turns
        # the short study is in the store for the Tuning page; its trials are runs too
        trials = store.runs(kind="tuning_trial")
        assert len(trials) == 2
        full = next(r for r in runs if r.name == "passkey full 0.00").metrics["accuracy"]
        active = store.active_version("d")
        if active is None:
            assert "nothing pushed" in out
        else:
            # what was pushed met accuracy>=full on the samples it was measured on
            assert active.version == 1 and active.config().compresses and full > 0
            measured = [r.metrics["accuracy"] for r in [*runs, *trials]
                        if r.config and r.metrics and KVConfig.parse(r.config) == active.config()]
            assert measured and max(measured) >= full
            assert active.source == "demo" or active.source.startswith("tuner:demo-passkey-1x400t-seed7/")
        # the replayed agent session left session-pool events for the Sessions page
        kinds = dict(store.engine.connect().exec_driver_sql(
            "SELECT kind, COUNT(*) FROM cache_events WHERE kind IN ('ttl_pin', 'hit', 'miss', 'expire') "
            "GROUP BY kind").all())
        assert sum(kinds.values()) >= 1
