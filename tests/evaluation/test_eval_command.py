"""`kvpilot eval` end to end through `kvpilot.cli.main`: JSON output, summary table, one-line errors."""

from __future__ import annotations

import json

import pytest

from kvpilot.cli import main
from kvpilot.engine import Engine

CONTEXT = (
    "Ana: Morning, Ben! How was the weekend?\n"
    "Ben: Quiet. I mostly read. You?\n"
    "Ana: We took the dog to the lake. By the way, my dog is called Biscuit.\n"
    "Ben: Biscuit, that is a great name.\n"
    "Ana: And I finally booked my trip: I am going to Lisbon in May.\n"
    "Ben: Lovely. Send pictures!"
)


@pytest.fixture
def data_file(tmp_path):
    path = tmp_path / "chat.jsonl"
    qa = [
        {"question": "What is the name of Ana's dog?", "answers": ["Biscuit"], "answer_prefix": "Ana's dog is called"},
        {"question": "Which city is Ana going to?", "answers": ["Lisbon"], "answer_prefix": "Ana is going to"},
    ]
    path.write_text(json.dumps({"id": "chat-1", "context": CONTEXT, "qa": qa, "max_new_tokens": 6}) + "\n")
    return path


@pytest.fixture
def reuse_engine(bundled_engine, monkeypatch):
    """Serve the CLI with the session's engine instead of loading the model again."""
    monkeypatch.setattr(Engine, "load", classmethod(lambda cls, model=None, **kw: bundled_engine))


def test_json_output_is_one_object_and_the_run_is_reused(reuse_engine, data_file, tmp_path, capsys):
    args = ["eval", "--workload", f"jsonl:{data_file}", "--policy", "streaming", "--ratio", "0.5",
            "--out", str(tmp_path / "runs"), "--json"]
    assert main(args) == 0
    out = capsys.readouterr().out
    metrics = json.loads(out)  # the whole of stdout is one JSON object
    assert out.count("\n") == 1
    assert metrics["config"]["policy"] == "streaming" and metrics["config"]["compression_ratio"] == 0.5
    assert metrics["n_questions"] == 2 and not metrics["cached"]
    for key in ("accuracy", "top1_agreement", "mean_kl", "kv_bytes", "peak_kv_bytes", "compression_ratio",
                "ttft_s", "tpot_s", "prefill_tokens_per_s", "decode_tokens_per_s"):
        assert key in metrics, key
    assert (tmp_path / "runs").is_dir() and metrics["run_dir"].startswith(str(tmp_path / "runs"))
    assert main(args) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["cached"] and again["accuracy"] == metrics["accuracy"] and again["key"] == metrics["key"]


def test_summary_table_for_the_full_cache(reuse_engine, data_file, tmp_path, capsys):
    assert main(["eval", "-w", f"jsonl:{data_file}", "--out", str(tmp_path), "--no-fidelity", "-q"]) == 0
    out = capsys.readouterr().out
    for label in ("accuracy", "fidelity", "KV cache", "latency", "throughput"):
        assert label in out, label
    assert "100.0 % (2/2 fully right)" in out  # the full cache answers both questions


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-w", "bogus"], "unknown workload 'bogus'"),
        (["-w", "jsonl:/no/such/file.jsonl"], "no such JSONL file"),
        (["-w", "passkey", "--policy", "snapkv"], "needs --ratio"),
        (["-w", "passkey", "--policy", "nope", "--ratio", "0.5"], "unknown policy 'nope'"),
        (["-w", "passkey", "--policy", "snapkv", "--ratio", "1.5"], "compression_ratio=1.5"),
        (["-w", "passkey", "--config", "/no/such/config.json"], "cannot read config file"),
        (["-w", "passkey", "--samples", "0"], "--samples must be at least 1"),
    ],
)
def test_bad_input_is_one_line_on_stderr(args, message, capsys):
    assert main(["eval", *args]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert message in captured.err and captured.err.count("\n") == 1


def test_bad_config_file_and_bad_jsonl_lines(tmp_path, capsys):
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({"policy": "snapkv", "compression_ratio": 0.5, "bogus": 1}))
    assert main(["eval", "-w", "passkey", "--config", str(cfg)]) == 2
    assert "bogus: unknown field" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "context": "x"}\nnot json\n')
    assert main(["eval", "-w", f"jsonl:{bad}"]) == 2
    err = capsys.readouterr().err
    assert "no usable sample (2 bad line(s))" in err and "line 1" in err


def test_config_file_and_policy_flags_build_the_same_config(tmp_path):
    import argparse

    from kvpilot.commands.eval import build_config
    from kvpilot.config import KVConfig

    path = tmp_path / "cfg.json"
    path.write_text(KVConfig(policy="tova", compression_ratio=0.5).to_json())
    from_file = build_config(argparse.Namespace(config=str(path), policy=None, ratio=None))
    from_flags = build_config(argparse.Namespace(config=None, policy="tova", ratio=0.5))
    assert from_file == from_flags == KVConfig(policy="tova", compression_ratio=0.5)
    assert build_config(argparse.Namespace(config=None, policy=None, ratio=None)) == KVConfig()
