"""Synthetic haystacks (no downloads): RULER's repeated noise line and a templated "essay".

RULER's essay haystack is Paul Graham's essays, which would be a download; here sentences are drawn from
templates in a similar register. Essay text is harder than the noise line for retrieval because it is not
trivially repetitive, so record which one a sample used. Neither haystack contains digits, so numeric
needles and answers can only come from the needles themselves.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")

NOISE_LINE = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."

HAYSTACKS = ("noise", "essay", "needle")


class LazyStream(Generic[T]):
    """An endless deterministic sequence of items (strings, or exchanges for conversations), produced on demand from one seeded RNG.

    Builders take prefixes of a stream, so a sample built with n units and one built with n + 1 units share
    their first n units, which keeps the token count monotone for the length search.
    """

    def __init__(self, make: Callable[[random.Random], T], seed: str) -> None:
        self._make = make
        self._rng = random.Random(seed)
        self._items: list[T] = []

    def take(self, n: int) -> list[T]:
        while len(self._items) < n:
            self._items.append(self._make(self._rng))
        return self._items[:n]


_SLOTS: dict[str, list[str]] = {
    "person": [
        "a founder",
        "a good programmer",
        "an investor",
        "a writer",
        "a student",
        "a friend of mine",
        "the average employee",
        "a small team",
        "a beginner",
        "a careful reader",
        "a manager",
    ],
    "people": [
        "founders",
        "programmers",
        "investors",
        "writers",
        "students",
        "teachers",
        "engineers",
        "designers",
        "hackers",
        "painters",
        "scientists",
        "editors",
    ],
    "thing": [
        "a new idea",
        "the first version",
        "a hard problem",
        "an unpopular opinion",
        "a side project",
        "good taste",
        "a rough draft",
        "a bad habit",
        "the right question",
        "a simple tool",
        "a small detail",
        "an awkward silence",
    ],
    "doing": [
        "writing essays",
        "building prototypes",
        "reading old books",
        "talking to users",
        "fixing bugs",
        "raising money",
        "learning a language",
        "hiring people",
        "making things",
        "asking questions",
        "rewriting code",
        "giving talks",
        "sketching ideas",
    ],
    "adj": [
        "surprising",
        "obvious",
        "dangerous",
        "valuable",
        "rare",
        "underrated",
        "boring",
        "hard",
        "useful",
        "misleading",
        "strange",
        "overrated",
    ],
    "abstract": [
        "ambition",
        "curiosity",
        "patience",
        "taste",
        "honesty",
        "focus",
        "luck",
        "discipline",
        "boredom",
        "confidence",
        "stubbornness",
        "imagination",
    ],
    "place": [
        "a big company",
        "a university",
        "a small town",
        "an office",
        "a garage",
        "a coffee shop",
        "a startup",
        "a research lab",
        "a newsroom",
    ],
    "time": [
        "at first",
        "in the long run",
        "most of the time",
        "years later",
        "in the beginning",
        "eventually",
        "in practice",
        "sooner or later",
        "looking back",
    ],
}

_TEMPLATES = [
    "{Time}, {doing} seems {adj}, but it rarely is.",
    "The best {people} I know are driven by {abstract} more than by money.",
    "If you want to understand {abstract}, watch how {person} handles {thing}.",
    "{People} tend to underestimate how much {abstract} matters.",
    "One of the most {adj} things about {doing} is how little it resembles what you expected.",
    "When {person} starts {doing}, the hardest part is usually {thing}.",
    "I used to think {abstract} was {adj}, and I was wrong.",
    "There is a big difference between {doing} in {place} and doing it on your own.",
    "Most of what {people} learn comes from {doing}, not from lectures.",
    "{Thing} is worth more than it looks, because its value compounds.",
    "Nobody in {place} will tell you that {abstract} is the real bottleneck.",
    "It is {adj} how often {thing} turns out to be the whole answer.",
    "You can tell a lot about {person} from what they do when nobody is watching.",
    "{Time}, {people} who keep {doing} end up ahead of those who only plan.",
    "The trouble with {thing} is that it feels finished long before it is.",
    "Good work often starts as {thing} that seemed {adj} to everyone else.",
    "Why do {people} avoid {doing}? Mostly because it is uncomfortable.",
    "A lot of {abstract} is simply the habit of noticing {thing}.",
    "{Person} who works in {place} learns different lessons than one who works alone.",
    "The surest way to waste a year is to spend it {doing} without feedback.",
    "What looks like {abstract} from the outside is often just {doing} every day.",
    "In {place}, {thing} can survive for years because nobody questions it.",
]


def _fill(template: str, rng: random.Random) -> str:
    out = template
    for slot, options in _SLOTS.items():
        cap = "{" + slot.capitalize() + "}"
        low = "{" + slot + "}"
        if cap in out:
            word = rng.choice(options)
            out = out.replace(cap, word[0].upper() + word[1:], 1)
        while low in out:
            out = out.replace(low, rng.choice(options), 1)
    return out


def essay_sentence(rng: random.Random) -> str:
    """One templated essay sentence."""
    return _fill(rng.choice(_TEMPLATES), rng)


def noise_line(_rng: random.Random) -> str:
    return NOISE_LINE


def sentence_stream(kind: str, seed: str) -> LazyStream[str]:
    """A stream of haystack units: noise lines or essay sentences."""
    if kind == "noise":
        return LazyStream(noise_line, seed)
    if kind == "essay":
        return LazyStream(essay_sentence, seed)
    raise ValueError(f"unknown haystack {kind!r}; expected 'noise' or 'essay'")
