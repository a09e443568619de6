"""benchmarks/fact_retention.py finds each asked fact's answer and speaker tokens in the prompt and measures
how much of the compressed cache still holds them."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

from kvpilot.engine.prompts import chat_parts
from kvpilot.evaluation.evaluator import load_samples

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "fact_retention.py"


@pytest.fixture()
def bench(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("fact_retention_bench", BENCH)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    import common  # the benchmark put benchmarks/ on sys.path

    monkeypatch.setattr(common, "RESULTS", tmp_path)
    return module


def test_answer_and_speaker_tokens_are_found_in_the_prompt(bench, bundled_engine):
    tok = bundled_engine.tokenizer
    samples = load_samples(tok, "convqa", 2, 600, 3, n_facts=4, n_questions=3)
    for sample in samples:
        ids = chat_parts(tok, sample.context, "").context_ids
        offsets, base = bench.context_offsets(tok, sample.context, ids)
        people = {f["answer"]: f["person"] for f in sample.meta["facts"]}
        for qa in sample.qa:
            start, end = qa.spans[0]
            answer = bench.token_span(offsets, base + start, base + end)
            assert qa.answers[0] in tok.decode([ids[i] for i in answer])
            kept = torch.zeros(len(ids), dtype=torch.float64)
            kept[answer] = 1.0  # only the answer is held, in every slot
            m = bench.fact_measures(sample, qa, kept, offsets, base)
            assert m["answer_mean"] == m["answer_min"] == 1.0
            assert m["speaker"] == 0.0 and 0.0 < m["line"] < 1.0
            assert m["context"] == pytest.approx(len(answer) / len(ids))
            line_start = sample.context.rfind("\n", 0, start) + 1
            speaker = bench.token_span(offsets, base + line_start, base + sample.context.index(":", line_start))
            assert tok.decode([ids[i] for i in speaker]).strip() == people[qa.answers[0]]


def test_groups_follow_both_outcomes(bench):
    assert [bench.group_of(f, c) for f, c in [(1, 1), (1, 0), (0, 1), (0, 0)]] == list(bench.GROUPS)


@pytest.mark.slow
def test_a_run_measures_every_question_against_the_full_cache(bench, monkeypatch, tmp_path):
    monkeypatch.setattr(sys, "argv", ["fact_retention.py", "--sizes", "300", "--samples", "1", "--questions", "2",
                                      "--facts", "3", "--ratio", "0.75", "--family", "keydiff", "--oracle", "drop-distractors",
                                      "--out", "run"])
    assert bench.main() == 0
    data = json.loads((tmp_path / "run.json").read_text())
    rows = data["rows"]
    assert len(rows) == 2 and data["config"]["policy"] == "keydiff"
    for r in rows:
        assert r["group"] == bench.group_of(r["full"], r["compressed"])
        assert 0.0 <= r["answer_min"] <= r["answer_mean"] <= 1.0
        assert 0.15 < r["context"] < 0.35  # a quarter of each head kept (budgets round per head)
    assert sum(g["n"] for g in data["pooled"].values()) == 2
    tally = data["right"]
    assert tally["questions"] == 2 and tally["full"] == sum(r["full"] for r in rows)
    assert tally["oracle"] == sum(r["oracle"] for r in rows)
    assert tally["oracle_vs_full"]["difference"] == pytest.approx((tally["oracle"] - tally["full"]) / 2)
    assert data["right_by_size"]["300"] == tally


def test_the_oracle_keeps_the_marked_facts_in_every_slot(bench, bundled_engine):
    from kvpilot.config import KVConfig

    tok = bundled_engine.tokenizer
    sample = load_samples(tok, "convqa", 1, 400, 5, n_facts=3, n_questions=2)[0]
    ids = chat_parts(tok, sample.context, "").context_ids
    offsets, base = bench.context_offsets(tok, sample.context, ids)
    marked = bench.marked_positions(sample, len(ids), offsets, base, "line")
    config = KVConfig.parse({"policy": "keydiff", "compression_ratio": 0.75})
    _, plain = bench.answer(bundled_engine, sample, config)
    scores, kept = bench.answer(bundled_engine, sample, config, marked)
    assert len(scores) == 2 and 0 < int(marked.sum()) < len(ids) // 4
    assert bool((kept[marked] == 1.0).all()) and not bool((plain[marked] == 1.0).all())
    assert float(kept.mean()) == pytest.approx(float(plain.mean()), abs=0.01)  # the same budget, spent otherwise


def test_distractor_values_are_found_and_never_in_a_fact_line(bench, bundled_engine):
    tok = bundled_engine.tokenizer
    for sample in load_samples(tok, "convqa", 2, 1000, 4, n_facts=6, n_questions=4):
        ids = chat_parts(tok, sample.context, "").context_ids
        offsets, base = bench.context_offsets(tok, sample.context, ids)
        marked = bench.distractor_positions(sample, len(ids), offsets, base)
        assert 0 < int(marked.sum()) < len(ids) // 10
        text = tok.decode([ids[i] for i in marked.nonzero().flatten().tolist()])
        assert any(str(v) in text for v in sample.meta["distractors"])
        for qa in sample.qa:  # the facts asked are never evicted with the distractors
            start, end = bench.fact_ranges(sample, qa)["line"]
            assert not bool(marked[bench.token_span(offsets, base + start, base + end)].any())


def test_the_drop_oracle_evicts_every_distractor_from_every_slot(bench, bundled_engine):
    from kvpilot.config import KVConfig

    tok = bundled_engine.tokenizer
    sample = load_samples(tok, "convqa", 1, 600, 4, n_facts=3, n_questions=2)[0]
    ids = chat_parts(tok, sample.context, "").context_ids
    offsets, base = bench.context_offsets(tok, sample.context, ids)
    drop = bench.distractor_positions(sample, len(ids), offsets, base)
    config = KVConfig.parse({"policy": "keydiff", "compression_ratio": 0.5})
    _, plain = bench.answer(bundled_engine, sample, config)
    _, kept = bench.answer(bundled_engine, sample, config, drop=drop)
    assert bool(drop.any()) and float(plain[drop].max()) > 0.0
    assert float(kept[drop].max()) == 0.0
    assert float(kept.mean()) == pytest.approx(float(plain.mean()), abs=0.01)
    m = bench.fact_measures(sample, sample.qa[0], plain, offsets, base, drop)
    assert m["distractors"] == pytest.approx(float(plain[drop].mean()))
    assert bench.fact_measures(sample, sample.qa[0], plain, offsets, base)["distractors"] is None
