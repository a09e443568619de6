"""`kvpilot demo` end to end (policies compared with probes on, then a short tuning study) on the bundled model and a fresh SQLite file (slow: it loads the model)."""

from __future__ import annotations

import pytest

from kvpilot.cli import main
from kvpilot.commands.demo import DEFAULT_CONFIGS
from kvpilot.storage import Store

pytestmark = pytest.mark.slow


def test_demo_records_probes_runs_and_pushes_the_best_config(tmp_path, capsys):
    db = tmp_path / "demo.db"
    args = ["--db", str(db), "--samples", "1", "--tokens", "400", "--deployment", "d", "--trials", "2",
            "--sessions", "1"]
    assert main(["demo", *args]) == 0
    out = capsys.readouterr().out
    assert "pushed" in out and "version 1" in out
    with Store.open(str(db)) as store:
        runs = [r for r in store.runs(kind="eval") if r.name.startswith("passkey")]
        assert len(runs) == len(DEFAULT_CONFIGS)
        assert all(r.status == "completed" and 0.0 <= r.metrics["accuracy"] <= 1.0 for r in runs)
        assert all(r.metrics["recorder"].get("dropped_rows", 0) == 0 for r in runs)
        counts = store.counts()
        assert counts["requests"] == len(DEFAULT_CONFIGS)
        # the Layers page has skew rows (entropy) for every layer, the memory page has samples
        skew = store.layer_stats_latest(deployment="d", level="layer")
        assert {s.layer for s in skew} == set(range(30))
        assert counts["memory_samples"] == len(DEFAULT_CONFIGS)
        active = store.active_version("d")
        assert active is not None and active.version == 1 and active.config().compresses
        # the short study is in the store for the Tuning page; its trials are runs too
        assert len(store.runs(kind="tuning_trial")) == 2
        assert active.source == "demo" or active.source.startswith("tuner:demo-passkey/")
        # the replayed agent session left session-pool events for the Sessions page
        kinds = dict(store.engine.connect().exec_driver_sql(
            "SELECT kind, COUNT(*) FROM cache_events WHERE kind IN ('ttl_pin', 'hit', 'miss', 'expire') "
            "GROUP BY kind").all())
        assert sum(kinds.values()) >= 1
