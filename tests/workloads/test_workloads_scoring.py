"""RULER scoring: a known-correct prediction scores 1, a known-wrong one 0."""

from __future__ import annotations

import pytest

from kvpilot.workloads import first_integer, metric_for, passkey_match, string_match_all, string_match_part


def test_string_match_all():
    refs = ["NHCBR", "DWRRO", "FOBCK"]
    assert string_match_all(" nhcbr, DWRRO and FOBCK.", refs) == 1.0
    assert string_match_all("ABCDE XYZZY", refs) == 0.0
    assert string_match_all("NHCBR only", refs) == pytest.approx(1 / 3)


def test_string_match_part():
    assert string_match_part(" Biscuit, I think.", ["Biscuit"]) == 1.0
    assert string_match_part(" Rufus.", ["Biscuit"]) == 0.0
    assert string_match_part("it is 14 March", ["March 14", "14 March"]) == 1.0


def test_control_characters_are_stripped_without_gluing_words():
    assert string_match_part("Bis\x00cuit", ["Biscuit"]) == 0.0
    assert string_match_part("\x1bBiscuit\x07", ["biscuit"]) == 1.0
    assert string_match_all("pad\nthai", ["pad thai"]) == 1.0


def test_passkey_first_integer_exact():
    assert passkey_match(" 48043. Remember it.", ["48043"]) == 1.0
    assert passkey_match(" 480431", ["48043"]) == 0.0
    assert passkey_match(" 12345 no wait 48043", ["48043"]) == 0.0
    assert passkey_match(" I do not know.", ["48043"]) == 0.0
    assert first_integer("key: 00042!") == "00042"


def test_empty_references_are_an_error():
    with pytest.raises(ValueError):
        string_match_all("x", [])


@pytest.mark.parametrize(
    ("task", "metric"),
    [
        ("passkey", passkey_match),
        ("niah_multikey_1", string_match_all),
        ("vt", string_match_all),
        ("cwe", string_match_all),
        ("convqa", string_match_part),
        ("jsonl", string_match_part),
    ],
)
def test_metric_for_task(task, metric):
    assert metric_for(task) is metric


def test_generated_answers_score_as_correct(tokenizer):
    """A prediction that is the answer prefix plus the answers scores 1 on every task; a blank one 0."""
    from kvpilot.workloads import generate

    for task in ("passkey", "niah", "niah_multivalue", "vt", "cwe", "convqa"):
        for s in generate(task, 2, 800, 0, tokenizer):
            metric = metric_for(s.task)
            for qa in s.qa:
                assert metric(" " + " ".join(qa.answers) + ".", qa.answers) == 1.0
                assert metric(" I am not sure.", qa.answers) == 0.0
