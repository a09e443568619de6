"""Confidence intervals for the proportions kvpilot reports (accuracy, top-1 agreement).

A tuner that compares 58 % on twelve questions with 42 % on twelve others is comparing noise: each figure
is a proportion measured on few trials, and its uncertainty must travel with it. The Wilson score
interval is used because it stays inside [0, 1] and keeps sensible coverage at the small counts and the
0 % / 100 % ends where the normal approximation (p +- z sqrt(p(1-p)/n)) collapses to a zero-width
interval. Pure Python, no torch: importable by torch-free readers through a function-level import.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

Z95 = 1.959963984540054  # two-sided 95 %
FEW_QUESTIONS = 50  # below this many questions a measurement is flagged as resting on too few


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval (low, high) for `successes` out of `n` trials; (0.0, 1.0) when n == 0.

    Raises ValueError for negative counts, more successes than trials, or a non-positive z.
    """
    if n < 0 or successes < 0 or successes > n:
        raise ValueError(f"need 0 <= successes <= n, got successes={successes}, n={n}")
    if z <= 0:
        raise ValueError(f"z must be positive, got {z}")
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    z2 = z * z
    denom = 1.0 + z2 / n
    centre = (p + z2 / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denom
    # clamp rounding at the ends: 0 successes has low exactly 0, n successes high exactly 1
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == n else min(1.0, centre + half)
    return low, high


def proportion_interval(value: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson interval of a measured share `value` of `n` trials (partial scores rounded to a count)."""
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"a proportion must be in [0, 1], got {value}")
    return wilson_interval(min(n, round(value * n)), n, z)


def paired_difference_interval(first: Sequence[float], second: Sequence[float],
                               z: float = 1.96) -> tuple[float, float, float]:
    """(difference, low, high): accuracy of `first` minus accuracy of `second` on the same questions, with
    Newcombe's interval for paired proportions (1998, method 10: the two Wilson intervals combined through
    the correlation of the pairs).

    Two configs answering the same 120 questions mostly agree, so their difference is far better known than
    two independent Wilson intervals suggest: this is what says whether a compressed cache answers as many
    questions as the full one. Scores are per question, 0 or 1 (a partial score counts as its share of a
    right answer in each cell of the 2x2 table). Questions of one conversation are treated as independent,
    as the single-proportion intervals treat them.
    """
    if len(first) != len(second):
        raise ValueError(f"need one score per question on both sides, got {len(first)} and {len(second)}")
    if any(not 0.0 <= s <= 1.0 for s in (*first, *second)):
        raise ValueError("scores must be in [0, 1]")
    n = len(first)
    if n == 0:
        return 0.0, -1.0, 1.0
    both = sum(a * b for a, b in zip(first, second, strict=True))
    only_first = sum(a * (1 - b) for a, b in zip(first, second, strict=True))
    only_second = sum((1 - a) * b for a, b in zip(first, second, strict=True))
    neither = n - both - only_first - only_second
    p1, p2 = (both + only_first) / n, (both + only_second) / n
    l1, u1 = proportion_interval(p1, n, z)
    l2, u2 = proportion_interval(p2, n, z)
    margins = (both + only_first) * (only_second + neither) * (both + only_second) * (only_first + neither)
    phi = (both * neither - only_first * only_second) / math.sqrt(margins) if margins > 0 else 0.0
    below = math.sqrt(max(0.0, (p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2))
    above = math.sqrt(max(0.0, (u1 - p1) ** 2 - 2 * phi * (u1 - p1) * (p2 - l2) + (p2 - l2) ** 2))
    diff = p1 - p2
    return diff, max(-1.0, diff - below), min(1.0, diff + above)
