"""The small rough edges of a newcomer's first hour with the CLI, each on a real store file: one clear line
and exit status 2 for a one-slash SQLite URL, `configs --acks` that says when there is nothing, a search
space whose range reads as a range, a quick `profile` by default, and KVConfig's error type."""

from __future__ import annotations

import json

import pytest

from kvpilot.cli import build_parser, main
from kvpilot.commands.profile import QUICK_METHODS
from kvpilot.config import KVConfig, KVConfigError
from kvpilot.storage import Store
from kvpilot.tuner import SearchSpace


@pytest.mark.parametrize("url", ["sqlite:{tmp}/one.db", "sqlite:one.db"])
def test_sqlite_url_with_one_slash_is_one_clear_error(url, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["configs", "--db", url.format(tmp=tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "is not a SQLite URL" in err and "sqlite:///" in err
    assert list(tmp_path.iterdir()) == []  # no stray file named after the URL


def test_sqlite_url_with_one_slash_in_the_environment(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("KVPILOT_DB", f"sqlite:{tmp_path}/env.db")
    assert main(["configs"]) == 2
    assert "KVPILOT_DB" in capsys.readouterr().err


def test_acks_with_none_says_so(tmp_path, capsys):
    db = str(tmp_path / "k.db")
    with Store.open(db) as store:
        store.push("chat", {"policy": "snapkv", "compression_ratio": 0.5})
    assert main(["configs", "--db", db, "--deployment", "chat", "--acks"]) == 0
    assert "no engine has acknowledged or rejected a version of chat yet" in capsys.readouterr().out
    with Store.open(db) as store:
        inst = store.register_instance("chat", "engine-0")
        store.ack(inst.id, 1, "applied")
    assert main(["configs", "--db", db, "--deployment", "chat", "--acks"]) == 0
    out = capsys.readouterr().out
    assert "engine-0" in out and "applied" in out and "no engine" not in out


def test_show_space_reads_ranges_as_ranges(capsys):
    assert main(["tune", "--show-space"]) == 0
    captured = capsys.readouterr()
    rows = dict(line.split(None, 1) for line in captured.out.splitlines())
    assert rows["compression_ratio"] == "range 0.5 .. 0.9 step 0.05"  # not three choices
    assert rows["policy"].startswith("one of: snapkv, tova")
    assert rows["window"] == "one of: 0, 4, 8, 16, 32, 64" and rows["sink_tokens"] == "fixed: 4"
    assert rows["layer_allocation.pyramid.beta"] == "range 2.0 .. 20.0, log scale"
    assert rows["head_allocation.adaptive.alpha"] == "range 0.1 .. 0.5"
    assert "[0.5, 0.9, 0.05]" not in captured.out and "--show-space --json" in captured.err


def test_show_space_json_is_a_space_file(capsys):
    assert main(["tune", "--show-space", "--json"]) == 0
    captured = capsys.readouterr()
    assert SearchSpace.from_dict(json.loads(captured.out)) == SearchSpace()  # a valid --space file
    ratio = next(line for line in captured.out.splitlines() if '"compression_ratio"' in line)
    assert json.loads("{" + ratio.rstrip(",") + "}")["compression_ratio"] == [0.5, 0.9, 0.05]  # one line
    assert "compression_ratio is a range [low, high, step]" in captured.err


def test_show_space_of_a_file_and_of_agents(tmp_path, capsys):
    path = tmp_path / "space.json"
    path.write_text(json.dumps({"policy": ["snapkv"], "compression_ratio": [0.75, 0.75, 0.05],
                                "params": {"policy.snapkv.observation_window": [8, 64],
                                           "policy.snapkv.pooling_kernel": [3, 5, 7]},
                                "fixed": {"prefill_block_size": 128}}))
    assert main(["tune", "--show-space", "--space", str(path)]) == 0
    rows = dict(line.split(None, 1) for line in capsys.readouterr().out.splitlines())
    assert rows["policy"] == "fixed: snapkv" and rows["compression_ratio"] == "fixed: 0.75"
    assert rows["policy.snapkv.observation_window"] == "integers 8 .. 64"
    assert rows["policy.snapkv.pooling_kernel"] == "one of: 3, 5, 7" and rows["prefill_block_size"] == "fixed: 128"
    assert main(["tune", "--show-space", "-w", "agents"]) == 0
    rows = dict(line.split(None, 1) for line in capsys.readouterr().out.splitlines())
    assert rows["session_ttl"] == "one of: none, fixed, cdf"
    assert rows["session_ttl.cdf.memory_price"] == "range 1e-10 .. 1e-07, log scale"


def test_profile_defaults_are_quick():
    args = build_parser().parse_args(["profile"])
    assert args.method is None and (args.samples, args.tokens) == (1, 512)
    assert "ablation_kl" not in QUICK_METHODS


def test_replay_records_unless_told_otherwise():
    parser = build_parser()
    assert parser.parse_args(["replay"]).no_db is False
    assert parser.parse_args(["replay", "--no-db"]).no_db is True


def test_kvconfig_with_a_misspelt_policy_raises_kvconfigerror():
    with pytest.raises(KVConfigError, match="snapvk"):
        KVConfig(policy="snapvk")
