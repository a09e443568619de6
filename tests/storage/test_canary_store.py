"""Canary rollouts in the store (both backends): migration 0008, start/read/decide, the arms' figures, the
watcher's seeded per-request split, and the CLI's one-line errors."""

from __future__ import annotations

import json
import random

import pytest
from alembic import command
from sqlalchemy import inspect, text

from kvpilot import cli
from kvpilot.config import KVConfig
from kvpilot.engine.watcher import ConfigWatcher
from kvpilot.storage import RegistryError, Store, migrate
from kvpilot.storage.core import open_for_migration

LOSSY = {"policy": "streaming", "compression_ratio": 0.9}


def test_migration_0008_adds_canaries_and_request_versions_and_goes_back(db_url):
    old = open_for_migration(db_url)
    migrate.upgrade(old.engine, old._backend, "0007")
    with old.engine.begin() as conn:
        conn.execute(text("INSERT INTO deployments (name, created_at) VALUES ('d', 0)"))
        conn.execute(text("INSERT INTO engine_instances (deployment_id, name, started_at, last_heartbeat) "
                          "VALUES (1, 'e0', 0, 0)"))
        conn.execute(text("INSERT INTO requests (ts, instance_id, e2e_s) VALUES (1.0, 1, 0.5)"))
    migrate.upgrade(old.engine, old._backend, "0008")
    insp = inspect(old.engine)
    assert "canaries" in insp.get_table_names()
    for table in ("requests", "requests_1m", "requests_1h"):
        assert "config_version" in {c["name"] for c in insp.get_columns(table)}
    with old.engine.connect() as conn:  # the old row survives, untagged
        assert conn.execute(text("SELECT e2e_s, config_version FROM requests")).one() == (0.5, None)
    with old.engine.connect() as conn, conn.begin():
        command.downgrade(migrate.alembic_config(conn), "0007")
    insp = inspect(old.engine)
    assert "canaries" not in insp.get_table_names()
    assert "config_version" not in {c["name"] for c in insp.get_columns("requests")}
    with old.engine.connect() as conn:
        assert conn.execute(text("SELECT e2e_s FROM requests")).scalar_one() == 0.5
    old.close()


def test_start_read_and_decide_a_canary(store):
    with pytest.raises(RegistryError, match="no active version"):
        store.start_canary("chat", LOSSY, 0.1)
    store.push("chat", KVConfig(), pushed_by="alice")
    with pytest.raises(RegistryError, match="between 0 and 1"):
        store.start_canary("chat", LOSSY, 1.5)
    c = store.start_canary("chat", LOSSY, 0.25, seed=7, pushed_by="alice")
    assert (c.version, c.baseline_version, c.fraction, c.seed, c.status) == (2, 1, 0.25, 7, "running")
    assert store.active_version("chat").version == 1  # the canary is not active
    running = store.active_canary("chat")
    assert running.id == c.id and running.config.config().policy == "streaming"
    with pytest.raises(RegistryError, match="already has a canary running"):
        store.start_canary("chat", {"policy": "snapkv", "compression_ratio": 0.3}, 0.1)
    assert store.active_canary("nobody") is None

    inst = store.register_instance("chat", "e0").id
    store.add_requests([{"e2e_s": 0.2, "config_version": 1}, {"e2e_s": 0.3, "config_version": 2},
                        {"error": "RuntimeError: boom", "config_version": 2}], instance_id=inst)
    store.add_events([{"kind": "quality", "detail": {"version": 2, "top1_agreement": 0.4, "mean_kl": 1.5}},
                      {"kind": "quality", "detail": {"version": 1, "top1_agreement": 1.0, "mean_kl": 0.0}},
                      {"kind": "quality", "detail": {"version": 9, "top1_agreement": 1.0, "mean_kl": 0.0}}],
                     instance_id=inst)
    arms = store.canary_arms(running)
    assert (arms[2].requests, arms[2].errors, arms[2].latency_s, arms[2].agreement, arms[2].kl) == (
        2, 1, [0.3], [0.4], [1.5])
    assert (arms[1].requests, arms[1].errors, arms[1].agreement) == (1, 0, [1.0])

    done = store.finish_canary(c.id, "rollback", "fidelity: too lossy", {"canary": {"agreement": 0.4}}, by="judge")
    assert done.status == "rolled_back" and store.finish_canary(c.id, "promote", "late", {}) is None  # decided once
    assert store.active_canary("chat") is None and store.active_version("chat").version == 1
    events = store.canary_events("chat")
    assert [e["kind"] for e in events] == ["canary_rolled_back", "canary_started"]
    assert events[0]["detail"]["canary"] == {"agreement": 0.4} and events[0]["detail"]["reason"] == "fidelity: too lossy"
    run = store.get_run(c.run_id)
    assert run.kind == "canary" and run.status == "completed" and run.metrics["outcome"] == "rolled_back"

    good = store.start_canary("chat", {"policy": "snapkv", "compression_ratio": 0.3}, 0.5, seed=1)
    store.finish_canary(good.id, "promote", "fidelity: fine", {"fidelity_llr": -3.1})
    assert store.active_version("chat").version == good.version
    assert store.activations("chat")[-1].action == "promote"
    assert [c.status for c in store.canaries("chat")] == ["promoted", "rolled_back"]


class _Applied:
    def __init__(self):
        self.configs = []

    def __call__(self, cfg):
        self.configs.append(cfg)


def test_watcher_serves_the_seeded_fraction_and_drops_a_failing_canary(store):
    store.push("chat", KVConfig())
    apply = _Applied()
    prepared = []
    w = ConfigWatcher(store, "chat", "e0", apply, listen=False, initial=KVConfig(), prepare=prepared.append,
                      max_failures=2)
    w.check_once()
    assert w.choose() == (1, None)  # no canary: the version in force and the engine's own config
    c = store.start_canary("chat", LOSSY, 0.2, seed=11)
    w.check_once()
    assert [p.policy for p in prepared] == ["streaming"] and apply.configs == [] and w.version == 1
    picks = [w.choose() for _ in range(2000)]
    chosen = [v for v, _ in picks]
    rng = random.Random("11:e0")  # the documented stream: seed and instance name
    assert chosen == [2 if rng.random() < 0.2 else 1 for _ in range(2000)]
    share = chosen.count(2) / len(chosen)
    assert 0.2 - 4 * (0.2 * 0.8 / 2000) ** 0.5 < share < 0.2 + 4 * (0.2 * 0.8 / 2000) ** 0.5
    assert all(cfg.policy == "streaming" for v, cfg in picks if v == 2)
    assert all(cfg is None for v, cfg in picks if v == 1)

    w.request_failed(RuntimeError("boom"), 2)
    w.request_failed(RuntimeError("boom"), 1)  # the incumbent's failures are counted apart
    assert w.canary is not None
    result = w.request_failed(RuntimeError("boom"), 2)
    assert result.status == "rolled_back" and w.canary is None and w.version == 1
    assert {v for v, _ in (w.choose() for _ in range(50))} == {1}
    ack = store.acks("chat", 2)[0]
    assert ack.status == "rejected" and "2 requests failed in a row" in ack.reason
    assert store.canary_arms(store.active_canary("chat"))[2].rejected  # the judge will see it
    w.check_once()
    assert w.canary is None  # never taken up again
    assert c.id == store.active_canary("chat").id


def test_watcher_refuses_a_canary_its_dry_run_rejects(store):
    store.push("chat", KVConfig())

    def prepare(cfg):
        from kvpilot.config import KVConfigError

        raise KVConfigError(["dry run: too small for this model"])

    w = ConfigWatcher(store, "chat", "e0", _Applied(), listen=False, initial=KVConfig(), prepare=prepare)
    w.check_once()
    store.start_canary("chat", LOSSY, 0.5, seed=1)
    w.check_once()
    assert w.canary is None and {w.choose()[0] for _ in range(20)} == {1}
    ack = store.acks("chat", 2)[0]
    assert ack.status == "rejected" and ack.reason == "canary: dry run: too small for this model"


# ----- the CLI ------------------------------------------------------------------------------------------


def run(capsys, *argv):
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("value", ["1.5", "0", "1", "-0.1", "abc", "nan"])
def test_push_canary_bad_fraction_is_one_line(db_url, tmp_path, capsys, value):
    path = tmp_path / "c.json"
    path.write_text(json.dumps(LOSSY))
    code, out, err = run(capsys, "push", "-d", "chat", "-c", str(path), "--canary", value, "--db", db_url)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("kvpilot: error: --canary takes the fraction") and repr(value) in err


def test_push_canary_cli(db_url, tmp_path, capsys):
    path = tmp_path / "c.json"
    path.write_text(json.dumps(LOSSY))
    code, _, err = run(capsys, "push", "-d", "chat", "-c", str(path), "--canary", "0.1", "--db", db_url)
    assert code == 2 and err.count("\n") == 1 and "no active version" in err  # nothing to compare with
    code, _, err = run(capsys, "push", "-d", "chat", "-c", str(path), "--canary", "0.1", "--no-activate",
                       "--db", db_url)
    assert code == 2 and err.count("\n") == 1 and "exclude each other" in err
    assert run(capsys, "push", "-d", "chat", "-c", str(path), "--db", db_url)[0] == 0
    code, out, _ = run(capsys, "push", "-d", "chat", "-c", str(path), "--canary", "0.1", "--canary-seed", "5",
                       "--db", db_url)
    assert code == 0 and "version 2 as a canary on 10% of requests next to version 1 (seed 5)" in out
    code, out, _ = run(capsys, "canary", "status", "-d", "chat", "--db", db_url)
    assert code == 0 and "v2 vs v1  10% of requests  running" in out
    code, _, err = run(capsys, "canary", "status", "-d", "nobody", "--db", db_url)
    assert code == 2 and err.count("\n") == 1 and "no deployment named 'nobody'" in err
    code, _, err = run(capsys, "canary", "watch", "--once", "--tolerance", "0.2", "--harm", "0.1", "--db", db_url)
    assert code == 2 and err.count("\n") == 1 and "tolerance < harm" in err
    code, out, _ = run(capsys, "canary", "watch", "--once", "--db", db_url)
    assert code == 0 and "chat v2: undecided after 0 canary requests: waiting for measurements" in out
    with Store.open(db_url) as s:
        assert s.active_canary("chat").version == 2
