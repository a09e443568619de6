"""Unit boundaries (sentences, conversation turns) for unit-level selection, from token ids.

A turn ends at a newline (workloads write one turn per line); a sentence ends at . ! ? or a newline.
Chunks need no tokenizer (position // chunk_size) and are handled by the cache itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

SENTENCE_END = (".", "!", "?", "\n")


def unit_ids(tokenizer, ids: Sequence[int], granularity: str, first_unit: int = 0) -> list[int] | None:
    """One unit id per token (increasing), or None when the granularity needs no boundaries."""
    if granularity not in ("sentence", "turn"):
        return None
    text_of = text_decoder(tokenizer)
    units, current = [], first_unit
    for tok in ids:
        units.append(current)
        piece = text_of(int(tok))
        ends = "\n" in piece if granularity == "turn" else piece.rstrip(" ").endswith(SENTENCE_END) or "\n" in piece
        if ends:
            current += 1
    return units


def text_decoder(tokenizer):
    """The text of one token id, cached (empty without a tokenizer: work on token ids alone)."""

    @lru_cache(maxsize=65536)
    def text_of(tok: int) -> str:
        return tokenizer.decode([tok]) if tokenizer is not None else ""

    return text_of
