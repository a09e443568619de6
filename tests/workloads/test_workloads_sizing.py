"""The length search itself, on synthetic builders (no tokenizer model needed)."""

from __future__ import annotations

import pytest

from kvpilot.workloads.sample import QA
from kvpilot.workloads.sizing import Built, TargetTooSmallError, TextBuilder, count_tokens, fit


class Words:
    def encode(self, text, add_special_tokens=False):
        return text.split()


class NoKeyword:
    """A minimal tokenizer whose encode takes no keyword arguments."""

    def encode(self, text):
        return list(text)


def _linear(fixed: int, per_unit: int):
    return lambda n: Built(" ".join(["w"] * (fixed + per_unit * n)), [QA("q", ["w"])])


@pytest.mark.parametrize("target", [50, 999, 1000, 12345])
def test_fit_lands_on_the_closest_size(target):
    built, units, tokens = fit(_linear(7, 3), target, Words())
    assert tokens == 7 + 3 * units and abs(tokens - target) <= 1


def test_fit_handles_non_linear_growth():
    build = lambda n: Built(" ".join(["w"] * (5 + n * n)), [])  # noqa: E731
    _, units, tokens = fit(build, 40_000, Words())
    assert abs(tokens - 40_000) <= 0.05 * 40_000 and units == 200


def test_fit_rejects_targets_below_the_fixed_part():
    with pytest.raises(TargetTooSmallError, match="already 500 tokens"):
        fit(_linear(500, 1), 100, Words())


def test_count_tokens_accepts_minimal_tokenizers():
    assert count_tokens(NoKeyword(), "abc") == 3
    assert count_tokens(Words(), "a b c") == 3


def test_text_builder_spans():
    out = TextBuilder()
    out.add("Hello ")
    span = out.add_with("the key is ", "12345", ".")
    assert out.text()[slice(*span)] == "12345" and len(out) == len(out.text())
