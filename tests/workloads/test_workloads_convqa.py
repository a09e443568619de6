"""Conversational QA: each fact said once, filler free of answers, turn structure, questions and options."""

from __future__ import annotations

import random
import re

import pytest

from kvpilot.workloads import generate
from kvpilot.workloads.convqa_facts import ALL_POOL_VALUES, KINDS, SPEAKERS
from kvpilot.workloads.smalltalk import GOODBYES, GREETINGS, LEAD_INS, REACTIONS, exchange_templates, fill

HEADER = re.compile(r"^--- Session (\d+) \(([A-Z][a-z]+ \d{1,2})\) ---$")
TURN = re.compile(r"^([A-Z][a-z]+): \S")


@pytest.fixture(scope="module")
def conversations(tokenizer):
    out = []
    for target, seed in ((1000, 0), (2000, 1), (4000, 2)):
        out += generate("convqa", 3, target, seed, tokenizer)
    return out


def test_each_fact_is_stated_exactly_once(conversations):
    for s in conversations:
        low = s.context.lower()
        for fact in s.meta["facts"]:
            assert low.count(fact["answer"].lower()) == 1, (s.id, fact)
            start, end = fact["span"]
            assert s.context[start:end] == fact["answer"]


def test_filler_never_contains_an_answer(conversations):
    for s in conversations:
        lines = s.context.split("\n")
        fact_lines = {f["line"] for f in s.meta["facts"]}
        answers = [f["answer"].lower() for f in s.meta["facts"]]
        for i, line in enumerate(lines):
            if i not in fact_lines:
                assert not any(a in line.lower() for a in answers), (s.id, line)


def test_small_talk_vocabulary_has_no_possible_answer():
    """Statically: no template, slot value, greeting or reaction can produce any pool value."""
    texts = [t for ex in exchange_templates() + GREETINGS + GOODBYES for t in ex] + LEAD_INS + REACTIONS
    rng = random.Random(0)
    texts += [fill(t, rng, "Ana") for ex in exchange_templates() * 30 for t in ex]
    for text in texts:
        for value in ALL_POOL_VALUES:
            assert value.lower() not in text.lower(), (value, text)


def test_one_turn_per_line_and_sessions(conversations):
    for s in conversations:
        lines = s.context.split("\n")
        speakers = set(s.meta["speakers"])
        sessions = [HEADER.match(line) for line in lines[1:] if line.startswith("---")]
        assert [int(m.group(1)) for m in sessions] == list(range(1, s.meta["n_sessions"] + 1))
        for line in lines[1:]:
            if not line.startswith("---"):
                m = TURN.match(line)
                assert m and m.group(1) in speakers, line


def test_fact_line_turn_and_session_indices(conversations):
    for s in conversations:
        lines = s.context.split("\n")
        turn_lines = [i for i, line in enumerate(lines) if TURN.match(line)]
        for f in s.meta["facts"]:
            line = lines[f["line"]]
            assert line.startswith(f"{f['person']}: ") and f["answer"] in line
            assert turn_lines.index(f["line"]) == f["turn"]
            headers_before = sum(1 for line in lines[: f["line"]] if line.startswith("--- Session"))
            assert headers_before == f["session"]


def test_facts_spread_over_sessions_and_history(conversations):
    for s in conversations:
        sessions = {f["session"] for f in s.meta["facts"]}
        assert len(sessions) >= min(s.meta["n_sessions"], 2)
        depths = s.meta["fact_depths"]
        assert depths == sorted(depths) and depths[0] < 0.3 and depths[-1] > 0.7


def test_questions_name_the_person_and_match_facts(conversations):
    for s in conversations:
        assert len(s.qa) == 4
        asked = [f for f in s.meta["facts"] if f["asked"]]
        assert sorted(f["answer"] for f in asked) == sorted(q.answers[0] for q in s.qa)
        by_answer = {f["answer"]: f for f in asked}
        for q in s.qa:
            person = by_answer[q.answers[0]]["person"]
            assert person in q.question and person in q.answer_prefix
            assert q.question.endswith("?")


def test_options_are_honoured(tokenizer):
    (s,) = generate("convqa", 1, 3000, 5, tokenizer, n_sessions=6, n_facts=12, n_questions=7)
    assert s.meta["n_sessions"] == 6 and len(s.meta["facts"]) == 12 and len(s.qa) == 7
    assert s.context.count("--- Session") == 6
    (s,) = generate(
        "convqa", 1, 1500, 5, tokenizer, kinds=["dog", "cat"], n_facts=4, n_questions=4, share_kinds=True
    )
    assert {f["kind"] for f in s.meta["facts"]} == {"dog", "cat"}


def test_kinds_are_distinct_unless_shared(conversations, tokenizer):
    for s in conversations:
        kinds = [f["kind"] for f in s.meta["facts"]]
        assert len(kinds) == len(set(kinds))
    (s,) = generate("convqa", 1, 4000, 0, tokenizer, n_facts=2 * len(KINDS), n_questions=3, share_kinds=True)
    assert len(s.meta["facts"]) == 2 * len(KINDS)


def test_bad_options_are_rejected(tokenizer):
    with pytest.raises(ValueError, match="n_questions"):
        generate("convqa", 1, 1000, 0, tokenizer, n_facts=2, n_questions=3)
    with pytest.raises(ValueError, match="kinds"):
        generate("convqa", 1, 1000, 0, tokenizer, kinds=["dragon"])
    with pytest.raises(ValueError, match="share_kinds"):
        generate("convqa", 1, 1000, 0, tokenizer, n_facts=len(KINDS) + 1, n_questions=1)
    with pytest.raises(ValueError, match="at most"):
        generate("convqa", 1, 1000, 0, tokenizer, n_facts=2 * len(KINDS) + 1, n_questions=1, share_kinds=True)


def test_speakers_and_values_pools_are_disjoint():
    assert not {v.lower() for v in ALL_POOL_VALUES} & {n.lower() for n in SPEAKERS}
