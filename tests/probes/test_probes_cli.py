"""`kvpilot probe` and `kvpilot profile` on the bundled model (slow: they load it)."""

from __future__ import annotations

import pytest

from kvpilot.cli import main
from kvpilot.storage import Store

pytestmark = pytest.mark.slow


def test_probe_command(tmp_path, capsys):
    db = tmp_path / "p.db"
    code = main(["probe", "--db", str(db), "-n", "1", "--tokens", "200", "--max-new-tokens", "4", "--no-watch",
                 "--quiet", "--instance", "cli-test"])
    assert code == 0
    out = capsys.readouterr().out
    assert "0 dropped" in out and "to run 1" in out
    with Store.open(str(db)) as store:
        counts = store.counts()
        assert counts["requests"] >= 1 and counts["layer_stats"] > 30 and counts["memory_samples"] >= 1
        (run,) = store.runs(kind="probe")
        assert run.status == "completed" and run.metrics["recorder"].get("dropped_rows", 0) == 0


def test_profile_command(tmp_path, capsys):
    db = tmp_path / "p.db"
    code = main(["profile", "--db", str(db), "--method", "retained_mass", "--method", "key_cosine", "-n", "1",
                 "--workload", "passkey", "--tokens", "400", "--block", "128", "--quiet"])
    assert code == 0
    out = capsys.readouterr().out
    assert "layer" in out and "retained_mass (saved as profile" in out
    with Store.open(str(db)) as store:
        for method in ("retained_mass", "key_cosine"):
            prof = store.latest_profile("bundled", method)
            assert prof is not None and len(prof.values) == 30
