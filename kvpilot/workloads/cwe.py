"""RULER's common-words extraction: a numbered list where ten words repeat more often than the rest.

Word counts follow RULER: below 4k target tokens the ten common words appear 6 times and the others once
(example: 20 words, 3 and 1); from 4k on, 30 and 3 (example: 40 words, 10 and 3). The length search runs on
the number of distinct uncommon words. The vocabulary is built in; made-up words extend it when a long
context needs more distinct words than it has.
"""

from __future__ import annotations

import random

from kvpilot.workloads.base import SampleContext, Task
from kvpilot.workloads.sample import QA
from kvpilot.workloads.sizing import Builder, Built, TextBuilder
from kvpilot.workloads.wordlists import VOCABULARY, pseudo_words

HEADER = (
    "Below is a numbered list of words. In these words, some appear more often than others. "
    "Memorize the ones that appear most often."
)
QUESTION = "Question: What are the {num_cw} most common words in the above list?"
ANSWER_PREFIX = "Answer: The top {num_cw} words that appear most often in the list are:"
_TEMPLATE_WORDS = set((HEADER + QUESTION + ANSWER_PREFIX).lower().replace(".", " ").replace(":", " ").split())


class _Vocabulary:
    """The sample's shuffled word order, extended with made-up words on demand (deterministically)."""

    def __init__(self, rng: random.Random) -> None:
        self.words = [w for w in VOCABULARY if w not in _TEMPLATE_WORDS]
        rng.shuffle(self.words)
        self._rng = random.Random(rng.random())

    def first(self, n: int) -> list[str]:
        if n > len(self.words):
            self.words += pseudo_words(n - len(self.words), self._rng, avoid=self.words)
        return self.words[:n]


def _numbered(out: TextBuilder, entries: list[str], track: set[str]) -> dict[str, tuple[int, int]]:
    """Write `1. w 2. w ...`; return the span of the first occurrence of each tracked word."""
    first: dict[str, tuple[int, int]] = {}
    for i, w in enumerate(entries):
        span = out.add_with(("" if i == 0 else " ") + f"{i + 1}. ", w)
        if w in track and w not in first:
            first[w] = span
    return first


def _entries(
    common: list[str], uncommon: list[str], freq_cw: int, freq_ucw: int, rng: random.Random
) -> list[str]:
    entries = [w for w in common for _ in range(freq_cw)] + [w for w in uncommon for _ in range(freq_ucw)]
    rng.shuffle(entries)
    return entries


def make_builder(
    sctx: SampleContext,
    num_cw: int = 10,
    freq_cw: int | None = None,
    freq_ucw: int | None = None,
    icl: bool = True,
) -> Builder:
    short = sctx.target_tokens < 4096
    freq_cw = freq_cw or (6 if short else 30)
    freq_ucw = freq_ucw or (1 if short else 3)
    if freq_ucw >= freq_cw:
        raise ValueError("freq_cw must exceed freq_ucw, or the common words are not the most common")
    icl_words, icl_cw, icl_ucw = (20, 3, 1) if short else (40, 10, 3)
    vocab = _Vocabulary(sctx.rng("vocabulary"))
    example = ""
    if icl:
        words = vocab.first(icl_words)
        ex = TextBuilder()
        ex.add(HEADER + "\n")
        _numbered(ex, _entries(words[:num_cw], words[num_cw:], icl_cw, icl_ucw, sctx.rng("example")), set())
        answer = " ".join(f"{i + 1}. {w}" for i, w in enumerate(words[:num_cw]))
        ex.add(f"\n{QUESTION.format(num_cw=num_cw)} {ANSWER_PREFIX.format(num_cw=num_cw)} {answer}\n\n")
        example = ex.text()
    skip = icl_words if icl else 0

    def build(m: int) -> Built:
        words = vocab.first(skip + num_cw + m)[skip:]
        common, uncommon = words[:num_cw], words[num_cw:]
        out = TextBuilder()
        out.add(example + HEADER + "\n")
        first = _numbered(
            out, _entries(common, uncommon, freq_cw, freq_ucw, sctx.rng(f"shuffle/{m}")), set(common)
        )
        qa = QA(
            QUESTION.format(num_cw=num_cw),
            list(common),
            ANSWER_PREFIX.format(num_cw=num_cw),
            [first[w] for w in common],
        )
        meta = {"freq_cw": freq_cw, "freq_ucw": freq_ucw, "num_words": num_cw + m, "icl": icl}
        return Built(out.text(), [qa], meta)

    return build


TASK = Task("cwe", make_builder, max_new_tokens=120)
