"""Evaluator bookkeeping without a model: fidelity maths, aggregation, folder names, run loading."""

from __future__ import annotations

import json

import pytest
import torch

from kvpilot.config import KVConfig
from kvpilot.evaluation import Reference, aggregate, compare, config_label, load_run, log_probs
from kvpilot.evaluation.results import METRICS_FILE, RunResult, run_dir_name, save_run


def _ref(logits: torch.Tensor) -> Reference:
    return Reference(tokens=logits.argmax(-1).tolist(), logprobs=log_probs(list(logits)), text="x")


def test_identical_logits_give_exact_agreement_and_zero_kl():
    logits = torch.randn(5, 50, generator=torch.Generator().manual_seed(0))
    fid = compare(_ref(logits), list(logits.clone()))
    assert (fid.tokens, fid.top1_agree, fid.kl_sum) == (5, 5, 0.0)
    assert fid.agreement == 1.0 and fid.mean_kl == 0.0


def test_kl_matches_definition_and_disagreement_is_counted():
    g = torch.Generator().manual_seed(1)
    full, comp = torch.randn(4, 30, generator=g), torch.randn(4, 30, generator=g)
    fid = compare(_ref(full), list(comp))
    p, q = full.softmax(-1), comp.softmax(-1)
    expected = (p * (p.log() - q.log())).sum(-1).sum()
    assert fid.kl_sum == pytest.approx(float(expected), rel=1e-5)
    assert fid.top1_agree == int((full.argmax(-1) == comp.argmax(-1)).sum())
    with pytest.raises(ValueError):
        compare(_ref(full), list(comp[:2]))


def _row(sid, score, tokens=None, agree=None, kl=None, gen=3, later_s=0.2, ttft=1.0):
    return {
        "sample_id": sid, "task": "passkey", "score": score, "fidelity_tokens": tokens, "top1_agree": agree,
        "kl_sum": kl, "generated_tokens": gen, "decode_after_first_s": later_s, "ttft_s": ttft,
    }


def _prefill(kv, logical, peak, tokens=100, secs=0.5):
    return {
        "context_tokens": tokens, "prefill_tokens": tokens, "prefill_s": secs, "kv_bytes": kv,
        "logical_kv_bytes": logical, "compression_ratio": 1 - kv / logical, "peak_kv_bytes": peak,
    }


def test_aggregate_pools_tokens_and_averages_questions():
    rows = [_row("a", 1.0, 4, 4, 0.0), _row("a", 0.0, 6, 3, 3.0), _row("b", 0.5, 2, 1, 1.0, gen=1)]
    m = aggregate(rows, [_prefill(25, 100, 120), _prefill(50, 100, 110)])
    assert m["n_samples"] == 2 and m["n_questions"] == 3
    assert m["accuracy"] == pytest.approx(0.5)
    assert m["top1_agreement"] == pytest.approx(8 / 12) and m["mean_kl"] == pytest.approx(4 / 12)
    assert m["kv_bytes"] == 37.5 and m["peak_kv_bytes"] == 120
    assert m["compression_ratio"] == pytest.approx(0.625)
    assert m["tpot_s"] == pytest.approx(0.6 / 4)  # 2 + 2 + 0 tokens after the first, 0.2 s each row
    assert m["prefill_tokens_per_s"] == pytest.approx(200)
    no_fid = aggregate([_row("a", 1.0)], [_prefill(1, 1, 1)])
    assert no_fid["top1_agreement"] is None and no_fid["mean_kl"] is None


def test_folder_names_and_labels():
    assert config_label(KVConfig()) == "full"
    assert config_label(KVConfig(policy="snapkv", compression_ratio=0.75)) == "snapkv-0.75"
    assert config_label(KVConfig(policy="h2o", budget=64)) == "h2o-b64"
    name = run_dir_name("passkey-1000t-10s-seed0", KVConfig(policy="tova", compression_ratio=0.5), True, "abc")
    assert name == "passkey-1000t-10s-seed0-tova-0.5-qa-abc"


def test_load_run_refuses_unfinished_corrupt_or_foreign_folders(tmp_path):
    cfg = KVConfig(policy="knorm", compression_ratio=0.5)
    result = RunResult(config=cfg, metrics={"key": "k1", "accuracy": 1.0}, predictions=[{"score": 1.0}])
    save_run(tmp_path, {"key": "k1", "config": cfg.to_dict()}, result)
    loaded = load_run(tmp_path, "k1")
    assert loaded is not None and loaded.cached and loaded.config == cfg and loaded.predictions == [{"score": 1.0}]
    assert load_run(tmp_path, "other-key") is None
    (tmp_path / METRICS_FILE).write_text("{not json")
    assert load_run(tmp_path, "k1") is None
    (tmp_path / METRICS_FILE).unlink()
    assert load_run(tmp_path, "k1") is None
    assert json.loads((tmp_path / "config.json").read_text())["key"] == "k1"
