"""Wilson intervals: known values, the edges, bad input, and coverage computed exactly from the binomial."""

from __future__ import annotations

import math

import pytest

from kvpilot.evaluation.intervals import proportion_interval, wilson_interval


@pytest.mark.parametrize(
    ("successes", "n", "low", "high"),
    [
        (5, 10, 0.2366, 0.7634),  # textbook values (Newcombe 1998, method 3)
        (0, 10, 0.0, 0.2775),
        (10, 10, 0.7225, 1.0),
        (81, 263, 0.2553, 0.3662),
        (1, 1, 0.2065, 1.0),
    ],
)
def test_known_values(successes, n, low, high):
    lo, hi = wilson_interval(successes, n)
    assert lo == pytest.approx(low, abs=5e-4) and hi == pytest.approx(high, abs=5e-4)


def test_edges_and_width():
    assert wilson_interval(0, 0) == (0.0, 1.0)
    # more questions, narrower interval around the same share
    widths = [hi - lo for lo, hi in (wilson_interval(k // 2, k) for k in (12, 50, 200, 1000))]
    assert widths == sorted(widths, reverse=True) and widths[-1] < 0.07
    # a wider z gives a wider interval
    assert wilson_interval(7, 12, z=2.576)[0] < wilson_interval(7, 12)[0]
    assert proportion_interval(7 / 12, 12) == wilson_interval(7, 12)


@pytest.mark.parametrize(("successes", "n", "z"), [(-1, 5, 1.96), (6, 5, 1.96), (1, -1, 1.96), (1, 5, 0.0)])
def test_bad_input(successes, n, z):
    with pytest.raises(ValueError):
        wilson_interval(successes, n, z)


@pytest.mark.parametrize("n", [12, 50])
def test_coverage_is_near_95_percent_at_small_n(n):
    """The probability that the interval covers the true p, summed exactly over the binomial outcomes:
    Wilson's stays near 95 % where the normal approximation falls far short."""

    def coverage(p: float, interval) -> float:
        return sum(math.comb(n, k) * p**k * (1 - p) ** (n - k) for k in range(n + 1)
                   if interval(k)[0] <= p <= interval(k)[1])

    def wald(k: int) -> tuple[float, float]:
        q = k / n
        half = 1.96 * math.sqrt(q * (1 - q) / n)
        return q - half, q + half

    grid = [i / 100 for i in range(5, 96, 5)]
    wilson = [coverage(p, lambda k: wilson_interval(k, n)) for p in grid]
    normal = [coverage(p, wald) for p in grid]
    assert sum(wilson) / len(wilson) > 0.93 and min(wilson) > 0.85
    assert sum(wilson) / len(wilson) > sum(normal) / len(normal)
