"""benchmarks/conversation_compression.py keeps per-question scores and pairs every compressed row with the
full cache on the same questions, in one run or against an earlier run's full-cache rows (--full-from)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "conversation_compression.py"


def _load(path: Path, name: str):
    """A benchmark script as a module (benchmarks/ is not a package)."""
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture()
def bench(tmp_path, monkeypatch):
    module = _load(BENCH, "conversation_compression_bench")
    import common  # the benchmark put benchmarks/ on sys.path

    monkeypatch.setattr(common, "RESULTS", tmp_path)
    here = tmp_path.parent / f"{tmp_path.name}-bench"  # this test's own: tmp_path.parent is shared by all tests
    monkeypatch.setattr(module, "HERE", here)
    here.mkdir()
    (here / "results").symlink_to(tmp_path)
    return module


@pytest.fixture()
def summary():
    return _load(BENCH.with_name("paired_summary.py"), "paired_summary_bench")


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


def test_paired_summary_pools_sizes_and_refuses_other_samples(summary, tmp_path, monkeypatch, capsys):
    """benchmarks/paired_summary.py pairs each compressed row with the full cache at its seed and size and pools
    the sizes and seeds; files of other samples are one error line."""
    module = summary
    monkeypatch.setattr(module, "RESULTS", tmp_path)
    import common

    monkeypatch.setattr(common, "RESULTS", tmp_path)
    head = {"seed": 1, "samples": 2, "questions_per_sample": 2}
    full = [{"side": "kvpilot", "tokens": t, "family": "full cache", "ratio": 0.0, "accuracy": 0.75,
             "scores": [1.0, 1.0, 1.0, 0.0]} for t in (300, 600)]
    press = [{"side": "kvpilot", "tokens": t, "family": "f", "ratio": 0.875, "config": {"policy": "keydiff"},
              "accuracy": a, "scores": s} for t, a, s in ((300, 0.5, [1.0, 0.0, 1.0, 0.0]),
                                                           (600, 0.75, [1.0, 1.0, 0.0, 1.0]))]
    other = [{**r, "family": "g", "config": {"policy": "snapkv"}, "accuracy": 0.5, "scores": [0.0, 1.0, 1.0, 0.0]}
             for r in press]
    (tmp_path / "full.json").write_text(json.dumps({**head, "rows": full}))
    (tmp_path / "other_config.json").write_text(json.dumps({**head, "rows": other}))
    (tmp_path / "runs.json").write_text(json.dumps({**head, "rows": press}))
    (tmp_path / "other.json").write_text(json.dumps({**head, "seed": 5, "rows": press}))
    monkeypatch.setattr(sys, "argv", ["paired_summary.py", "--full", "full", "--runs", "runs", "other_config",
                                      "--out", "s"])
    assert module.main() == 0
    written = json.loads((tmp_path / "s.json").read_text())
    item, _ = written["summary"]
    (between,) = written["between_configs"]  # g against f, later minus earlier, on the same questions
    assert (between["config"].split(" | ")[1], between["against"].split(" | ")[1]) == ("g", "f")
    assert [s["difference"] for s in between["sizes"]] == [0.0, -0.25]
    assert between["pooled"]["difference"] == pytest.approx(-0.125)
    assert [s["difference"] for s in item["sizes"]] == [-0.25, 0.0]
    pooled = item["pooled"]
    assert pooled["n_questions"] == 8 and pooled["difference"] == pytest.approx(-0.125)
    assert pooled["share_of_full"] == pytest.approx(0.625 / 0.75)
    low, high = pooled["difference_95"]
    assert low < -0.125 < high
    assert [(s["seed"], s["tokens"]) for s in item["sizes"]] == [(1, 300), (1, 600)]
    monkeypatch.setattr(sys, "argv", ["paired_summary.py", "--full", "full", "--runs", "other"])
    assert module.main() == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "error: other ran other samples than full (seed, samples, questions)"]

    # a second seed: its own full-cache file; each run pairs with the full cache of its seed, pooled over both
    full5 = [{**r, "accuracy": 0.25, "scores": [0.0, 0.0, 1.0, 0.0]} for r in full]
    (tmp_path / "full5.json").write_text(json.dumps({**head, "seed": 5, "rows": full5}))
    monkeypatch.setattr(sys, "argv", ["paired_summary.py", "--full", "full", "full5", "--runs", "runs", "other",
                                      "--out", "two"])
    assert module.main() == 0
    (both,) = json.loads((tmp_path / "two.json").read_text())["summary"]
    assert [(s["seed"], s["tokens"], s["difference"]) for s in both["sizes"]] == [
        (1, 300, -0.25), (1, 600, 0.0), (5, 300, 0.25), (5, 600, 0.5)]
    assert both["pooled"]["n_questions"] == 16 and both["pooled"]["seeds"] == [1, 5]
    assert both["pooled"]["difference"] == pytest.approx(0.125)
    assert both["pooled"]["full_accuracy"] == pytest.approx(0.5)
    monkeypatch.setattr(sys, "argv", ["paired_summary.py", "--full", "full", "full", "--runs", "runs"])
    assert module.main() == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == "error: full and full ran the same samples: give one"


def test_paired_summary_counts_by_budget_as_the_weights_it_chose(summary):
    """A `weights="by-budget"` row is the config that names the weights it picked at its budget, whatever the
    family was called when it ran, so seeds run under either name pool together; other weights stay apart."""
    module = summary

    def row(family: str, weights: str, ratio: float) -> dict:
        config = {"policy": "surrogate", "policy_params": {"weights": weights}, "compression_ratio": ratio,
                  "layer_allocation": "global", "layer_allocation_params": {"heads": True}}
        return {"side": "kvpilot", "tokens": 1000, "seed": 1, "family": family, "ratio": ratio, "config": config}

    tight = [row("surrogate + global heads", "by-budget", 0.9375), row("a30", "bundled-answers30", 0.9375)]
    assert module.config_key(tight[0]) == module.config_key(tight[1])
    assert module.label(tight) == ("kvpilot | surrogate + global heads / a30 | weights bundled-answers30 "
                                   "| ratio 0.9375")
    assert module.config_key(row("s", "by-budget", 0.875)) == module.config_key(row("a10", "bundled", 0.875))
    assert module.config_key(row("s", "by-budget", 0.9375)) != module.config_key(row("a10", "bundled", 0.9375))
    # same name and weights but another setting: two configs, neither dropped
    other = row("a30", "bundled-answers30", 0.9375)
    other["config"]["window"] = 0
    groups = module.group_by_config({(1, 1000): {}}, [tight[1], other])
    assert list(groups) == ["kvpilot | a30 | weights bundled-answers30 | ratio 0.9375",
                            "kvpilot | a30 | weights bundled-answers30 | ratio 0.9375 | variant 2"]


@pytest.mark.slow
def test_time_ratio_of_episodes_times_building_every_episode(bundled_engine, monkeypatch):
    """An episodes config is timed on what it costs at serving (clustering and one compression per episode),
    not on a single cache's compression, which would leave the episodes out."""
    from kvpilot.config import KVConfig
    from kvpilot.engine import engine as engine_module
    from kvpilot.workloads import generate

    bench = _load(BENCH, "conversation_compression_timing")  # no results folder needed

    built: list[int] = []
    real_build = engine_module.build_episodes

    def counting_build(engine, config, ids):
        built.append(config.episodes)
        return real_build(engine, config, ids)

    monkeypatch.setattr(engine_module, "build_episodes", counting_build)
    sample = generate("convqa", 1, 300, 1, bundled_engine.tokenizer, n_facts=3, n_questions=1)[0]
    ids = bundled_engine.encode(sample.context)
    config = KVConfig.parse({"policy": "kvzip", "scoring": "prompt", "episodes": 2, "compression_ratio": 0.75})
    ratios = bench.paired_time_ratio(bundled_engine, [ids], config)
    assert built == [2] and len(ratios) == 1 and ratios[0] > 0
    assert bench.paired_time_ratio(bundled_engine, [ids], KVConfig.parse({"compression_ratio": 0.75})) and built == [2]
