"""Sizing a context in tokens of the target model's own tokenizer.

Every generator describes a sample as a pure function of one integer (how many haystack units: lines,
sentences, words or conversation exchanges) and this module searches that integer so the context has the
requested number of tokens. Characters or words are a poor proxy: tokenizers differ by 2x on digits and
rare words, so the search always tokenizes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from kvpilot.errors import KVPilotError
from kvpilot.workloads.sample import QA

TOLERANCE = 0.05  # generators promise |tokens - target| <= 5 % of the target


class TokenizerLike(Protocol):
    def encode(self, text: str, *args: Any, **kwargs: Any) -> list[int]: ...


def count_tokens(tokenizer: TokenizerLike, text: str) -> int:
    """Token count of `text` without special tokens (BOS and chat markers belong to the evaluator)."""
    try:
        ids = tokenizer.encode(text, add_special_tokens=False)
    except TypeError:  # a plain callable-style or minimal tokenizer without the keyword
        ids = tokenizer.encode(text)
    return len(ids)


@dataclass
class Built:
    """What a sample builder returns for one haystack size."""

    context: str
    qa: list[QA]
    meta: dict[str, Any] = field(default_factory=dict)


Builder = Callable[[int], Built]


class TargetTooSmallError(KVPilotError, ValueError):
    """The fixed parts of a sample (instructions, needles, facts) alone exceed the requested length."""


def fit(build: Builder, target: int, tokenizer: TokenizerLike, min_units: int = 0, max_units: int = 1 << 22):
    """Return `(built, units, tokens)` whose context token count is closest to `target`.

    Token count grows almost linearly with the number of units, so a secant search lands within a unit or
    two in three or four tokenizations (each costs ~20 ms at 8k tokens); a few neighbour probes then pick
    the closest. If that ever misses the tolerance (a strongly non-linear builder), a plain doubling and
    bisection search decides.
    """
    cache: dict[int, tuple[Built, int]] = {}

    def measure(n: int) -> int:
        if n not in cache:
            built = build(n)
            cache[n] = (built, count_tokens(tokenizer, built.context))
        return cache[n][1]

    floor_tokens = measure(min_units)
    if floor_tokens > target * (1 + TOLERANCE):
        raise TargetTooSmallError(
            f"the fixed part of this sample is already {floor_tokens} tokens, more than the target of {target}; "
            "raise target_tokens or ask for fewer needles, facts or sessions"
        )
    if floor_tokens < target:
        _secant(measure, target, min_units, max_units)
    best = min(cache, key=lambda n: (abs(cache[n][1] - target), n))
    if abs(cache[best][1] - target) > TOLERANCE * target:
        best = _bisect(measure, target, min_units, max_units)
    built, tokens = cache[best]
    return built, best, tokens


def _secant(measure: Callable[[int], int], target: int, lo: int, max_units: int) -> None:
    """Probe sizes along the secant toward `target`, then step to the closest neighbour."""
    points = [(lo, measure(lo))]
    n = min(lo + 16, max_units)
    for _ in range(8):
        points.append((n, measure(n)))
        (n0, t0), (n1, t1) = points[-2], points[-1]
        if n1 == n0 or t1 <= t0:  # flat or non-increasing: double the probe, or halve it if past the target
            step = max(16, n1 - lo) if t1 < target else -((n1 - lo) // 2)
        else:
            step = round((target - t1) * (n1 - n0) / (t1 - t0))
        nxt = min(max(lo, n1 + step), max_units)
        if nxt == n1:
            break
        n = nxt
    best = min(points, key=lambda p: abs(p[1] - target))[0]
    for direction in (1, -1):  # hill-climb to the closest size (counts can wobble by a token at joins)
        while lo <= best + direction <= max_units and abs(measure(best + direction) - target) < abs(
            measure(best) - target
        ):
            best += direction


def _bisect(measure: Callable[[int], int], target: int, lo: int, max_units: int) -> int:
    """Grow an upper bound by doubling, bisect to the crossing, return the closer of its two sides."""
    hi = max(lo + 1, 16)
    while measure(hi) < target:
        lo = hi
        if hi >= max_units:
            raise ValueError(f"could not reach {target} tokens with {max_units} haystack units")
        hi = min(hi * 2, max_units)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if measure(mid) < target:
            lo = mid
        else:
            hi = mid
    return min((lo, hi), key=lambda n: (abs(measure(n) - target), n))


class TextBuilder:
    """Concatenates text pieces while recording where marked pieces land, so spans are exact by construction."""

    def __init__(self) -> None:
        self._parts: list[str] = []
        self._len = 0

    def __len__(self) -> int:
        return self._len

    def add(self, text: str) -> tuple[int, int]:
        start = self._len
        self._parts.append(text)
        self._len += len(text)
        return start, self._len

    def add_with(self, before: str, marked: str, after: str = "") -> tuple[int, int]:
        """Append `before + marked + after`; return the span of `marked`."""
        self.add(before)
        span = self.add(marked)
        self.add(after)
        return span

    def text(self) -> str:
        return "".join(self._parts)
