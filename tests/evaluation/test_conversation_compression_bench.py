"""benchmarks/conversation_compression.py keeps per-question scores and pairs every compressed row with the
full cache on the same questions, in one run or against an earlier run's full-cache rows (--full-from)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "conversation_compression.py"


@pytest.fixture()
def bench(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("conversation_compression_bench", BENCH)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    import common  # the benchmark put benchmarks/ on sys.path

    monkeypatch.setattr(common, "RESULTS", tmp_path)
    monkeypatch.setattr(module, "HERE", tmp_path.parent / "bench")
    (tmp_path.parent / "bench").mkdir()
    (tmp_path.parent / "bench" / "results").symlink_to(tmp_path)
    return module


def _run(bench, monkeypatch, *args: str) -> int:
    monkeypatch.setattr(sys, "argv", ["conversation_compression.py", "--sizes", "300", "--samples", "2",
                                      "--questions", "2", "--facts", "3", "--kvpress", "--timing-samples", "0",
                                      *args])
    return bench.main()


@pytest.mark.slow
def test_rows_keep_scores_and_pair_with_the_full_cache(bench, monkeypatch, tmp_path, capsys):
    assert _run(bench, monkeypatch, "--ratios", "0.75", "--families", "keydiff", "--out", "first") == 0
    rows = json.loads((tmp_path / "first.json").read_text())["rows"]
    full, keydiff = rows
    assert full["family"] == "full cache" and "vs_full" not in full
    assert len(full["scores"]) == len(keydiff["scores"]) == 4
    paired = keydiff["vs_full"]
    assert paired["difference"] == pytest.approx(keydiff["accuracy"] - full["accuracy"])
    low, high = paired["difference_95"]
    assert -1.0 <= low <= paired["difference"] <= high <= 1.0
    assert "vs full" in capsys.readouterr().out

    assert _run(bench, monkeypatch, "--ratios", "0.75", "--families", "keydiff", "--full-from", "first",
                "--out", "second") == 0
    again = json.loads((tmp_path / "second.json").read_text())["rows"]
    assert [r["family"] for r in again] == ["keydiff"] and again[0]["vs_full"] == paired
    capsys.readouterr()

    assert _run(bench, monkeypatch, "--seed", "5", "--families", "--full-from", "first", "--out", "third") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --full-from first: ") and "seed 1" in err[0]
