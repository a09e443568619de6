"""The evaluator on the bundled model: scoring, fidelity, run folders and caching, determinism.

Short contexts (about 400 tokens) and one or two samples keep this fast; the numbers that matter for the
README come from benchmarks/eval_suite.py.
"""

from __future__ import annotations

import dataclasses

import pytest

from kvpilot.config import KVConfig
from kvpilot.evaluation import EvaluationError, Evaluator, UnknownWorkloadError, WorkloadLoadError
from kvpilot.evaluation.results import METRICS_FILE, PREDICTIONS_FILE
from kvpilot.workloads import QA, generate

TOKENS = 400


@pytest.fixture(scope="module")
def passkey_sample(bundled_engine):
    """One passkey sample asked twice: with its real key (known correct) and with a wrong one."""
    sample = generate("passkey", 1, TOKENS, seed=0, tokenizer=bundled_engine.tokenizer)[0]
    good = sample.qa[0]
    wrong_key = "99999" if good.answers[0] != "99999" else "11111"
    bad = QA(question=good.question, answers=[wrong_key], answer_prefix=good.answer_prefix)
    return dataclasses.replace(sample, qa=[good, bad], max_new_tokens=8)


@pytest.fixture(scope="module")
def full_run(bundled_engine, passkey_sample, tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    ev = Evaluator(bundled_engine, [passkey_sample], label="pk", results_root=root, progress=False)
    return ev, ev.run(KVConfig())


def test_known_correct_and_known_wrong_answers_are_scored_as_such(full_run, passkey_sample):
    _, result = full_run
    right, wrong = result.predictions
    key = passkey_sample.qa[0].answers[0]
    assert key in right["prediction"] and right["score"] == 1.0
    assert wrong["prediction"] == right["prediction"] and wrong["score"] == 0.0  # same answer, wrong reference
    assert result.metrics["accuracy"] == 0.5
    assert result.metrics["accuracy_by_task"] == {"passkey": 0.5}


def test_full_cache_against_itself_is_exact(full_run):
    ev, reused = full_run
    assert ev.reference_passes == 1 and ev.computed_runs == 1  # KVConfig() reused the reference pass
    # A full config that is not the reference config object goes through the measured path.
    result = ev.run(KVConfig(window=8, sink_tokens=0))
    assert ev.reference_passes == 1 and ev.computed_runs == 2 and not result.cached
    assert [p["prediction"] for p in result.predictions] == [p["prediction"] for p in reused.predictions]
    m = result.metrics
    assert m["top1_agreement"] == 1.0 and m["mean_kl"] == 0.0 and m["fidelity_tokens"] > 0
    assert m["compression_ratio"] == 0.0 and m["kv_bytes"] == m["logical_kv_bytes"]
    assert m["peak_kv_bytes"] >= m["kv_bytes"]
    for p in result.predictions:
        assert p["reference"] == p["prediction"] and p["top1_agreement"] == 1.0 and p["mean_kl"] == 0.0
    for k in ("ttft_s", "tpot_s", "prefill_tokens_per_s", "decode_tokens_per_s"):
        assert m[k] is not None and m[k] > 0, k


def test_run_folder_is_written_and_a_finished_run_is_loaded_not_recomputed(full_run, bundled_engine, passkey_sample):
    ev, result = full_run
    path = result.path
    assert path is not None and path.name.startswith("pk-full-")
    for name in ("config.json", PREDICTIONS_FILE, METRICS_FILE):
        assert (path / name).is_file(), name
    mtime = (path / METRICS_FILE).stat().st_mtime_ns
    again = Evaluator(bundled_engine, [passkey_sample], label="pk", results_root=path.parent, progress=False)
    loaded = again.run(KVConfig())
    assert loaded.cached and loaded.path == path
    assert again.computed_runs == 0 and again.reference_passes == 0
    assert (path / METRICS_FILE).stat().st_mtime_ns == mtime
    assert loaded.metrics == result.metrics and loaded.predictions == result.predictions
    assert ev.run(KVConfig()).cached


def test_sweep_computes_the_reference_once_per_sample(bundled_engine, passkey_sample):
    ev = Evaluator(bundled_engine, [passkey_sample], label="pk", results_root=None, progress=False)
    full, stream = ev.sweep([KVConfig(), KVConfig(policy="streaming", compression_ratio=0.5)])
    assert ev.reference_passes == 1 and ev.computed_runs == 2
    assert full.path is None and not stream.cached
    m = stream.metrics
    assert m["kv_bytes"] < full.metrics["kv_bytes"]
    assert 0.45 < m["compression_ratio"] < 0.55
    assert 0.0 <= m["top1_agreement"] <= 1.0 and m["mean_kl"] >= 0.0
    # fidelity compares with the full cache's answer whatever the compressed cache said
    assert all(p["reference"] == q["prediction"] for p, q in zip(stream.predictions, full.predictions, strict=True))
    rerun = Evaluator(bundled_engine, [passkey_sample], fidelity=False, results_root=None, progress=False)
    again = rerun.run(KVConfig(policy="streaming", compression_ratio=0.5))  # deterministic
    assert [p["prediction"] for p in again.predictions] == [p["prediction"] for p in stream.predictions]
    assert again.metrics["kv_bytes"] == m["kv_bytes"] and again.metrics["top1_agreement"] is None


def test_query_aware_full_is_exact_and_holds_the_question(bundled_engine, passkey_sample):
    sample = dataclasses.replace(passkey_sample, qa=passkey_sample.qa[:1])
    ev = Evaluator(bundled_engine, [sample], query_aware=True, results_root=None, progress=False)
    m = ev.run(KVConfig()).metrics
    assert m["query_aware"] and m["top1_agreement"] == 1.0 and m["mean_kl"] == 0.0 and m["accuracy"] == 1.0


def test_bad_workloads_and_configs_raise_clear_errors(bundled_engine, tmp_path):
    with pytest.raises(UnknownWorkloadError, match="unknown workload 'bogus'"):
        Evaluator.for_workload(bundled_engine, "bogus", 1, TOKENS)
    with pytest.raises(WorkloadLoadError, match="no such JSONL file"):
        Evaluator.for_workload(bundled_engine, f"jsonl:{tmp_path}/missing.jsonl")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a"}\n')
    with pytest.raises(WorkloadLoadError, match="line 1"):
        Evaluator.for_workload(bundled_engine, f"jsonl:{bad}")
    with pytest.raises(WorkloadLoadError, match="passkey at 5 tokens"):
        Evaluator.for_workload(bundled_engine, "passkey", 1, 5)
    with pytest.raises(EvaluationError, match="at least 1"):
        Evaluator.for_workload(bundled_engine, "passkey", 0, TOKENS)
    ev = Evaluator(bundled_engine, generate("passkey", 1, 200, 0, bundled_engine.tokenizer), results_root=None)
    with pytest.raises(EvaluationError, match="budgets has 2 entries"):
        ev.run(KVConfig(policy="h2o", layer_allocation="explicit", layer_budgets=[8, 8]))
