"""Confidence intervals for the proportions kvpilot reports (accuracy, top-1 agreement).

A tuner that compares 58 % on twelve questions with 42 % on twelve others is comparing noise: each figure
is a proportion measured on few trials, and its uncertainty must travel with it. The Wilson score
interval is used because it stays inside [0, 1] and keeps sensible coverage at the small counts and the
0 % / 100 % ends where the normal approximation (p +- z sqrt(p(1-p)/n)) collapses to a zero-width
interval. Pure Python, no torch: importable by torch-free readers through a function-level import.
"""

from __future__ import annotations

import math

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
