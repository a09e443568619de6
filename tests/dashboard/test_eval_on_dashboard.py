"""A `kvpilot eval` run, on the bundled model through the CLI, appears on the dashboard's Runs page."""

from __future__ import annotations

import json

import pytest

from kvpilot.cli import main
from kvpilot.engine import Engine
from tests.dashboard.helpers import frame, open_page

pytestmark = pytest.mark.slow

CONTEXT = "Ana: my dog is called Biscuit.\nBen: lovely name!\nAna: I am going to Lisbon in May."


@pytest.fixture
def reuse_engine(bundled_engine, monkeypatch):
    monkeypatch.setattr(Engine, "load", classmethod(lambda cls, model=None, **kw: bundled_engine))


def test_kvpilot_eval_is_listed_on_the_runs_page(reuse_engine, app, db_url, tmp_path, capsys):
    data = tmp_path / "chat.jsonl"
    qa = [{"question": "What is the name of Ana's dog?", "answers": ["Biscuit"], "answer_prefix": "Ana's dog is called"}]
    data.write_text(json.dumps({"id": "chat-1", "context": CONTEXT, "qa": qa, "max_new_tokens": 4}) + "\n")
    args = ["eval", "--workload", f"jsonl:{data}", "--policy", "snapkv", "--ratio", "0.5", "--no-fidelity",
            "--out", str(tmp_path / "runs"), "--db", db_url, "--json", "--quiet"]
    assert main(args) == 0
    metrics = json.loads(capsys.readouterr().out)

    at = open_page(app(db_url), "runs")
    assert not at.error, [e.value for e in at.error]
    [row] = frame(at, "id", "kind", "status", "config").to_dict("records")
    assert (row["kind"], row["status"], row["config"]) == ("eval", "completed", "snapkv-0.5")
    assert row["accuracy"] == metrics["accuracy"]
    assert row["kv_bytes (MiB)"] == pytest.approx(metrics["kv_bytes"] / 2**20)  # bytes shown in MiB
