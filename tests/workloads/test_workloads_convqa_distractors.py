"""convqa filler that looks like conversation: distractors that are not the facts, enough questions, seeds.

The filler names other people, places, pets, numbers and dates; these tests check that none of them can
be mistaken for an asked fact by the scorer (substring rule), that 20 conversations give 120 questions at
every size the benchmark uses, and that a seed always gives the same conversation.
"""

from __future__ import annotations

import random
import re

import pytest

from kvpilot.workloads import generate
from kvpilot.workloads.chitchat import DISTRACTOR_EXCHANGES, distractor_pool_values, fill_exchange
from kvpilot.workloads.convqa_facts import ALL_POOL_VALUES, SPEAKERS
from kvpilot.workloads.smalltalk import exchange_templates

NUMBER = re.compile(r"\d+")
OPTS = {"n_facts": 10, "n_questions": 6}


@pytest.fixture(scope="module")
def conversations(tokenizer):
    return {t: generate("convqa", 20, t, 1, tokenizer, **OPTS) for t in (1000, 2000, 4000)}


def _overlap(a: str, b: str) -> bool:
    a, b = a.lower(), b.lower()
    return a in b or b in a


def test_distractor_pools_never_overlap_facts_or_speakers():
    """Named distractors can never be (or contain, or be contained in) a fact value or a speaker."""
    facts = list(ALL_POOL_VALUES) + SPEAKERS
    clashes = [(d, f) for d in distractor_pool_values() for f in facts if _overlap(d, f)]
    assert not clashes


def test_twenty_conversations_give_120_questions_at_each_size(conversations):
    for target, samples in conversations.items():
        assert sum(len(s.qa) for s in samples) == 120, target
        for s in samples:
            assert abs(s.meta["context_tokens"] - target) <= 0.05 * target


def test_distractors_are_said_and_differ_from_every_fact(conversations):
    for samples in conversations.values():
        for s in samples:
            answers = [f["answer"] for f in s.meta["facts"]]
            distractors = s.meta["distractors"]
            assert distractors, s.id
            low = s.context.lower()
            for d in distractors:
                assert d.lower() in low, (s.id, d)
                assert not any(a.lower() in d.lower() for a in answers), (s.id, d, answers)
                assert d not in answers


def test_filler_has_names_places_and_numbers_that_are_not_facts(conversations):
    """Distractors of every form the facts take: third-party names, cities, 3-4 digit numbers, dates."""
    for samples in conversations.values():
        every = [d for s in samples for d in s.meta["distractors"]]
        assert {"Greta", "Marco", "Hannah"} & set(every) or any(d in distractor_pool_values() for d in every)
        assert any(re.fullmatch(r"\d{3}", d) for d in every)
        assert any(re.fullmatch(r"\d{4}", d) for d in every)
        assert any(re.fullmatch(r"[A-Z][a-z]+ \d{1,2}", d) for d in every)
    for s in conversations[4000]:  # a long chat mentions plenty of them
        assert len(s.meta["distractors"]) >= 30


def test_numbers_in_the_filler_are_not_numeric_answers(conversations):
    for samples in conversations.values():
        for s in samples:
            fact_lines = {f["line"] for f in s.meta["facts"]}
            numeric = [f["answer"] for f in s.meta["facts"] if f["answer"].isdigit()]
            for i, line in enumerate(s.context.split("\n")):
                if i in fact_lines or line.startswith("---"):
                    continue
                for n in NUMBER.findall(line):
                    assert not any(a in n for a in numeric), (s.id, line, numeric)


def test_filler_is_varied(conversations):
    """Not a handful of repeated lines: most filler lines of a long chat are distinct."""
    for s in conversations[4000]:
        fact_lines = {f["line"] for f in s.meta["facts"]}
        lines = [ln.split(": ", 1)[1] for i, ln in enumerate(s.context.split("\n")[1:], 1)
                 if ": " in ln and i not in fact_lines and not ln.startswith("---")]
        assert len(set(lines)) >= 0.6 * len(lines), s.id
        assert len(lines) >= 150


def test_same_seed_same_conversation_other_seed_other(tokenizer):
    a = generate("convqa", 3, 1500, 7, tokenizer, **OPTS)
    b = generate("convqa", 3, 1500, 7, tokenizer, **OPTS)
    c = generate("convqa", 3, 1500, 8, tokenizer, **OPTS)
    assert [s.to_dict() for s in a] == [s.to_dict() for s in b]
    assert all(x.context != y.context for x, y in zip(a, c, strict=True))


def test_sample_i_does_not_depend_on_how_many_are_asked(tokenizer):
    few = generate("convqa", 2, 1500, 3, tokenizer, **OPTS)
    many = generate("convqa", 5, 1500, 3, tokenizer, **OPTS)
    assert [s.to_dict() for s in few] == [s.to_dict() for s in many[:2]]


def test_without_distractors_the_filler_names_nothing(tokenizer):
    for s in generate("convqa", 3, 2000, 1, tokenizer, distractors=False):
        assert s.meta["distractors"] == []
        fact_lines = {f["line"] for f in s.meta["facts"]}
        for i, line in enumerate(s.context.split("\n")):
            if i not in fact_lines and not line.startswith("---") and i > 0:
                assert not NUMBER.search(line), line


def test_fill_exchange_keeps_a_repeated_slot_consistent():
    rng = random.Random(0)
    for template in DISTRACTOR_EXCHANGES:
        lines, values = fill_exchange(template, rng)
        assert not any(re.search(r"\{(person|city|pet|n\d|date|clock)\d?\}", ln) for ln in lines)
        assert all(any(v in ln for ln in lines) for v in values)
    for template in exchange_templates():  # neutral small talk has no distractor slot (names do not clash)
        assert fill_exchange(template, rng) == (list(template), [])
    lines, values = fill_exchange(("{person} and {person2} met {person}.",), random.Random(1))
    first, second = lines[0].split(" and ")[0], lines[0].split(" and ")[1].split(" met ")[0]
    assert first != second and lines[0].endswith(f"met {first}.") and sorted([first, second]) == values


def test_distractor_templates_use_no_fact_vocabulary():
    """The fixed words of the new exchanges are as clean as the neutral small talk's."""
    words = [t for ex in DISTRACTOR_EXCHANGES + exchange_templates() for t in ex]
    for text in words:
        for value in ALL_POOL_VALUES:
            assert not re.search(rf"\b{re.escape(value.lower())}\b", text.lower()), (value, text)
