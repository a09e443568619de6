"""The control-plane and db commands through `kvpilot.cli.main`, including their one-line errors."""

from __future__ import annotations

import importlib
import json

import pytest

from kvpilot import cli
from kvpilot.storage import Store, migrate


@pytest.fixture(autouse=True)
def _only_importable_commands(monkeypatch):
    # Other command modules are written in parallel; test ours even if one of theirs is not there yet.
    present = []
    for name in cli.COMMAND_MODULES:
        try:
            importlib.import_module(name)
        except ImportError:
            continue
        present.append(name)
    monkeypatch.setattr(cli, "COMMAND_MODULES", present)


def run(capsys, *argv):
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _write(tmp_path, name, cfg):
    path = tmp_path / name
    path.write_text(json.dumps(cfg) if isinstance(cfg, dict) else cfg)
    return str(path)


def test_push_configs_diff_show_rollback(db_url, tmp_path, capsys):
    a = _write(tmp_path, "a.json", {"policy": "snapkv", "compression_ratio": 0.5})
    b = _write(tmp_path, "b.json", {"policy": "h2o", "budget": 128})
    code, out, _ = run(capsys, "db", "upgrade", "--db", db_url)
    assert code == 0 and f"-> {migrate.head_revision()}" in out
    code, out, _ = run(capsys, "db", "upgrade", "--db", db_url)
    assert f"already at schema revision {migrate.head_revision()}" in out
    assert run(capsys, "push", "--deployment", "chat", "--config", a, "--by", "alice", "--db", db_url)[0] == 0
    code, out, _ = run(capsys, "push", "-d", "chat", "-c", b, "--db", db_url)
    assert code == 0 and "version 2 (active)" in out

    code, out, _ = run(capsys, "configs", "--db", db_url)
    assert "chat" in out and "active version     2" in out
    code, out, _ = run(capsys, "configs", "-d", "chat", "--db", db_url)
    lines = out.splitlines()
    assert "alice" in lines[1] and lines[2].startswith("*")
    code, out, _ = run(capsys, "configs", "-d", "chat", "--diff", "1", "2", "--db", db_url)
    assert 'policy: "snapkv" -> "h2o"' in out and "budget: null -> 128" in out
    code, out, _ = run(capsys, "configs", "-d", "chat", "--show", "1", "--db", db_url)
    assert json.loads(out)["compression_ratio"] == 0.5

    code, out, _ = run(capsys, "rollback", "--deployment", "chat", "--db", db_url)
    assert code == 0 and "from version 2 to version 1" in out
    code, _, err = run(capsys, "rollback", "--deployment", "chat", "--db", db_url)
    assert code == 2 and "no earlier active version" in err
    assert run(capsys, "activate", "-d", "chat", "-v", "2", "--db", db_url)[0] == 0
    with Store.open(db_url) as s:
        assert s.active_version("chat").version == 2
        inst = s.register_instance("chat", "e0")
        s.ack(inst.id, 2, "rejected", "does not fit")
    code, out, _ = run(capsys, "configs", "-d", "chat", "--acks", "--db", db_url)
    assert "e0" in out and "rejected: does not fit" in out
    code, out, _ = run(capsys, "db", "status", "--db", db_url)
    assert f"revision {migrate.head_revision()}" in out and "deployment chat" in out
    code, out, _ = run(capsys, "db", "prune", "--older-than", "7d", "--db", db_url)
    assert code == 0 and "deleted 0 samples" in out


def test_bad_push_stores_nothing(db_url, tmp_path, capsys):
    bad = _write(tmp_path, "bad.json", {"policy": "snapkv", "pooling_kernel": 4, "colour": "red"})
    code, _, err = run(capsys, "push", "-d", "chat", "-c", bad, "--db", db_url)
    assert code == 2 and "pooling_kernel" in err and "colour" in err
    code, _, err = run(capsys, "push", "-d", "chat", "-c", str(tmp_path / "missing.json"), "--db", db_url)
    assert code == 2 and "cannot read config file" in err
    with Store.open(db_url) as s:
        assert s.deployments() == []


def test_errors_are_one_clear_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("KVPILOT_HOME", str(tmp_path))
    code, _, err = run(capsys, "configs", "--db", "mysql://x@y/z")
    assert code == 2 and "unsupported database URL scheme" in err and "Traceback" not in err
    code, _, err = run(capsys, "configs", "--db", "postgresql+psycopg://u@127.0.0.1:1/x")
    assert code == 2 and "cannot reach database" in err
    code, _, err = run(capsys, "db", "prune", "--older-than", "soon")
    assert code == 2 and "cannot read duration" in err
    Store.open().close()  # the default store must exist: a read command never creates one
    code, _, err = run(capsys, "configs", "-d", "nope")
    assert code == 2 and "no deployment named 'nope'" in err


def test_older_schema_names_the_fix(tmp_path, capsys):
    from kvpilot.storage import migrate
    from kvpilot.storage.core import open_for_migration

    url = f"sqlite:///{tmp_path / 'old.db'}"
    h = open_for_migration(url)
    migrate.upgrade(h.engine, h._backend, "0001")
    h.close()
    code, _, err = run(capsys, "configs", "--db", url)
    assert code == 2 and "kvpilot db upgrade" in err
    assert run(capsys, "db", "upgrade", "--db", url)[0] == 0
    assert run(capsys, "configs", "--db", url)[0] == 0


def test_corrupt_row_names_the_fix(db_url, tmp_path, capsys):
    with Store.open(db_url) as s:
        s.push("chat", {"policy": "h2o", "budget": 8})
        with s.engine.begin() as conn:
            conn.exec_driver_sql("UPDATE config_versions SET config = '{oops'")
    code, _, err = run(capsys, "configs", "-d", "chat", "--show", "active", "--db", db_url)
    assert code == 2 and "corrupt" in err and "kvpilot push" in err


def test_help_mentions_the_essentials(capsys):
    for argv, words in [
        (["push", "--help"], "--no-activate"),
        (["configs", "--help"], "--diff"),
        (["rollback", "--help"], "Undo the last activation"),
        (["db", "prune", "--help"], "--older-than"),
        (["db", "upgrade", "--help"], "KVPILOT_DB"),
    ]:
        with pytest.raises(SystemExit):
            cli.main(argv)
        assert words in capsys.readouterr().out


def test_db_backends_lists_the_registry(capsys):
    code, out, _ = run(capsys, "db", "backends")
    assert code == 0 and "sqlite:///PATH" in out and "postgresql+psycopg://USER@HOST:PORT/DBNAME" in out


def test_db_rollup_and_prune_keep_rollups(db_url, capsys):
    with Store.open(db_url) as store:
        inst = store.register_instance("chat", "engine-0").id
        store.add_requests([{"ts": 1_000_000.0 + i, "ttft_s": 0.1} for i in range(120)], instance_id=inst)
    code, out, _ = run(capsys, "db", "rollup", "--db", db_url)
    assert code == 0 and "requests 120" in out
    code, out, _ = run(capsys, "db", "prune", "--older-than", "1d", "--db", db_url)
    assert code == 0 and "requests 120" in out and "rollup rows" not in out
    hour = {"instance_id": inst, "since": 997_200.0, "until": 1_000_800.0}  # the whole hour around the samples
    with Store.open(db_url) as store:
        [bucket] = store.requests_series(**hour, bucket_s=3600)
        assert bucket.requests == 120  # from the rollups: the raw rows are gone
        assert [b.requests for b in store.requests_series(**hour, bucket_s=60)] == [20, 60, 40]
    code, out, _ = run(capsys, "db", "prune", "--older-than", "1d", "--minute-rollups-older-than", "2d", "--db", db_url)
    assert code == 0 and "requests_1m 3" in out and "requests_1h" not in out
    with Store.open(db_url) as store:
        assert [b.requests for b in store.requests_series(**hour, bucket_s=3600)] == [120]  # the hourly rollup
        assert store.requests_series(**hour, bucket_s=60) == []
    code, out, _ = run(capsys, "db", "prune", "--older-than", "1d", "--hour-rollups-older-than", "3d", "--db", db_url)
    assert code == 0 and "requests_1h 1" in out
    code, _, err = run(capsys, "db", "prune", "--older-than", "1d", "--hour-rollups-older-than", "soon", "--db", db_url)
    assert code == 2 and "cannot read duration 'soon'" in err and "Traceback" not in err
