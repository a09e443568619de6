"""Wilson intervals: known values, the edges, bad input, and coverage computed exactly from the binomial."""

from __future__ import annotations

import math

import pytest

from kvpilot.evaluation.intervals import paired_difference_interval, proportion_interval, wilson_interval


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


def _pairs(both: int, only_first: int, only_second: int, neither: int) -> tuple[list[int], list[int]]:
    first = [1] * both + [1] * only_first + [0] * only_second + [0] * neither
    second = [1] * both + [0] * only_first + [1] * only_second + [0] * neither
    return first, second


def test_paired_difference_reduces_to_the_unpaired_hybrid_when_pairs_are_uncorrelated():
    """With no correlation (both x neither = only_first x only_second) method 10 is Newcombe's unpaired
    hybrid interval: the two Wilson half-widths combined in quadrature."""
    first, second = _pairs(24, 36, 16, 24)  # 24 x 24 == 36 x 16: phi = 0
    diff, low, high = paired_difference_interval(first, second)
    (l1, u1), (l2, u2) = wilson_interval(60, 100), wilson_interval(40, 100)
    assert diff == pytest.approx(0.2)
    assert low == pytest.approx(0.2 - math.hypot(0.6 - l1, u2 - 0.4))
    assert high == pytest.approx(0.2 + math.hypot(u1 - 0.6, 0.4 - l2))


def test_paired_difference_narrows_with_agreement_and_is_antisymmetric():
    """The same marginals (60 % vs 55 % of 120) are known far better when the two configs mostly agree;
    swapping the sides negates the interval."""
    agreeing = paired_difference_interval(*_pairs(66, 6, 0, 48))
    independent = paired_difference_interval(*_pairs(40, 32, 26, 22))
    assert agreeing[0] == pytest.approx(independent[0]) == pytest.approx(0.05)
    assert agreeing[2] - agreeing[1] < 0.5 * (independent[2] - independent[1])
    assert agreeing[1] > 0.0 > independent[1]  # 6 discordant pairs all one way: the first really answers more
    swapped = paired_difference_interval(*reversed(_pairs(66, 6, 0, 48)))
    assert swapped == pytest.approx((-agreeing[0], -agreeing[2], -agreeing[1]))


def test_paired_difference_covers_the_true_difference():
    """Simulated paired questions (true accuracies 0.55 and 0.50, mostly agreeing): the 95 % interval holds
    the true difference in about 95 % of 2,000 repetitions."""
    import random

    rng, hits, reps = random.Random(3), 0, 2000
    for _ in range(reps):
        first, second = [], []
        for _ in range(120):
            u = rng.random()  # joint cells: both 0.45, first only 0.10, second only 0.05, neither 0.40
            first.append(1 if u < 0.55 else 0)
            second.append(1 if u < 0.45 or 0.55 <= u < 0.60 else 0)
        _, low, high = paired_difference_interval(first, second)
        hits += low <= 0.05 <= high
    assert 0.93 <= hits / reps <= 0.975, hits / reps


def test_paired_difference_bad_input():
    with pytest.raises(ValueError, match="one score per question"):
        paired_difference_interval([1, 0], [1])
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        paired_difference_interval([2], [1])
    assert paired_difference_interval([], []) == (0.0, -1.0, 1.0)
