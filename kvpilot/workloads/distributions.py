"""Small, serialisable random distributions for agent-session traces.

Each is a frozen dataclass with `sample(rng, size)` and `mean`, built from the parameters people quote
(a mean and a coefficient of variation or a log-space sigma) rather than numpy's native ones, and with
`to_dict`/`dist_from_dict` so a trace's generator settings can be written down and read back.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import numpy as np


class Dist(Protocol):
    """Anything with `sample(rng, size)`, an expected value `mean` and `to_dict()`."""

    def sample(self, rng: np.random.Generator, size: int) -> np.ndarray: ...

    @property
    def mean(self) -> float: ...

    def to_dict(self) -> dict[str, Any]: ...


def _clip(x: np.ndarray, low: float | None, high: float | None) -> np.ndarray:
    return np.clip(x, low if low is not None else -np.inf, high if high is not None else np.inf)


class _Base:
    kind = ""

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, **asdict(self)}  # type: ignore[call-overload]


@dataclass(frozen=True)
class Fixed(_Base):
    value: float
    kind = "fixed"

    def sample(self, rng: np.random.Generator, size: int) -> np.ndarray:
        return np.full(size, float(self.value))

    @property
    def mean(self) -> float:
        return float(self.value)


@dataclass(frozen=True)
class Gamma(_Base):
    """Gamma with a given mean and coefficient of variation: shape 1/cv^2. cv = 1 is exponential."""

    mean: float
    cv: float
    kind = "gamma"

    def __post_init__(self) -> None:
        if self.mean <= 0 or self.cv <= 0:
            raise ValueError("gamma needs mean > 0 and cv > 0")

    def sample(self, rng: np.random.Generator, size: int) -> np.ndarray:
        shape = 1.0 / self.cv**2
        return rng.gamma(shape, self.mean / shape, size)


@dataclass(frozen=True)
class LogNormal(_Base):
    """Lognormal with a given mean (before clipping) and log-space sigma; optional bounds clip samples."""

    mean: float
    sigma: float
    low: float | None = None
    high: float | None = None
    kind = "lognormal"

    def __post_init__(self) -> None:
        if self.mean <= 0 or self.sigma < 0:
            raise ValueError("lognormal needs mean > 0 and sigma >= 0")

    def sample(self, rng: np.random.Generator, size: int) -> np.ndarray:
        mu = math.log(self.mean) - self.sigma**2 / 2
        return _clip(rng.lognormal(mu, self.sigma, size), self.low, self.high)


@dataclass(frozen=True)
class Zipf(_Base):
    """Discrete power law P(k) proportional to k^-alpha on the integers low..high (long-tailed lengths)."""

    alpha: float
    low: int
    high: int
    kind = "zipf"

    def __post_init__(self) -> None:
        if not 1 <= self.low <= self.high or self.alpha <= 0:
            raise ValueError("zipf needs 1 <= low <= high and alpha > 0")

    def _pmf(self) -> tuple[np.ndarray, np.ndarray]:
        support = np.arange(self.low, self.high + 1, dtype=np.float64)
        weights = support ** (-self.alpha)
        return support, weights / weights.sum()

    def sample(self, rng: np.random.Generator, size: int) -> np.ndarray:
        support, p = self._pmf()
        cdf = np.cumsum(p)
        idx = np.searchsorted(cdf, rng.random(size) * cdf[-1], side="right")
        return support[np.minimum(idx, len(support) - 1)]

    @property
    def mean(self) -> float:
        support, p = self._pmf()
        return float((support * p).sum())


@dataclass(frozen=True)
class Geometric(_Base):
    """Counts low, low+1, ... with a given mean (before clipping at high): turn counts per program."""

    mean: float
    low: int = 1
    high: int | None = None
    kind = "geometric"

    def __post_init__(self) -> None:
        if self.mean < self.low:
            raise ValueError("geometric mean must be >= low")

    def sample(self, rng: np.random.Generator, size: int) -> np.ndarray:
        p = 1.0 / (self.mean - self.low + 1)
        return _clip(self.low - 1 + rng.geometric(p, size).astype(np.float64), self.low, self.high)


@dataclass(frozen=True)
class Categorical(_Base):
    """Given values with given weights, e.g. an empirical turn-count histogram."""

    values: tuple[float, ...]
    weights: tuple[float, ...]
    kind = "categorical"

    def __post_init__(self) -> None:
        if (
            len(self.values) != len(self.weights)
            or not self.values
            or min(self.weights) < 0
            or sum(self.weights) <= 0
        ):
            raise ValueError("categorical needs as many non-negative weights as values, not all zero")

    def sample(self, rng: np.random.Generator, size: int) -> np.ndarray:
        p = np.asarray(self.weights, dtype=np.float64)
        return rng.choice(np.asarray(self.values, dtype=np.float64), size=size, p=p / p.sum())

    @property
    def mean(self) -> float:
        return float(np.dot(self.values, self.weights) / sum(self.weights))


KINDS: dict[str, type] = {c.kind: c for c in (Fixed, Gamma, LogNormal, Zipf, Geometric, Categorical)}


def dist_from_dict(d: dict[str, Any]) -> Dist:
    """Inverse of `to_dict`: {"kind": "lognormal", "mean": 2.0, "sigma": 0.8}."""
    d = dict(d)
    kind = d.pop("kind", None)
    if kind not in KINDS:
        raise ValueError(f"unknown distribution kind {kind!r}; choose from {sorted(KINDS)}")
    if kind == "categorical":
        d = {k: tuple(v) for k, v in d.items()}
    return KINDS[kind](**d)
