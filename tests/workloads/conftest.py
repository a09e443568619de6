"""Shared fixtures: the bundled model's tokenizer, loaded once per test session."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tokenizer():
    from kvpilot.engine.model import ModelNotFoundError, load_tokenizer

    try:
        return load_tokenizer()
    except ModelNotFoundError as exc:  # the bundled model package is not installed here
        pytest.skip(str(exc))


class WordTokenizer:
    """A stand-in tokenizer (one token per whitespace-separated word) for tests about mechanics only."""

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return [len(w) for w in text.split()]


@pytest.fixture
def word_tokenizer() -> WordTokenizer:
    return WordTokenizer()
