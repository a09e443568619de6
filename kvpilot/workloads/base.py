"""The shared driver: one seeded builder per sample, sized by the token-length search.

A task is a function that, given a per-sample RNG, returns a builder `n_units -> Built`. Everything random
about a sample (keys, values, depths) is drawn before the builder is returned, so the search only changes
the haystack size. Each sample has its own RNG seeded from (task, seed, index), so sample i is the same
whatever n_samples is asked for, and the same keys are used at every target length.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kvpilot.workloads.sample import Sample
from kvpilot.workloads.sizing import Builder, TokenizerLike, fit


@dataclass
class SampleContext:
    """What a task's builder factory may depend on."""

    name: str
    seed: int
    index: int
    n_samples: int
    target_tokens: int

    @property
    def key(self) -> str:
        return f"{self.name}/{self.seed}/{self.index}"

    def rng(self, purpose: str = "") -> random.Random:
        """An RNG for one purpose of this sample; string seeds are stable across Python runs."""
        return random.Random(f"{self.key}/{purpose}")


BuilderFactory = Callable[..., Builder]


@dataclass(frozen=True)
class Task:
    """A named generator: its builder factory and RULER's (or our) default answer budget."""

    name: str
    make_builder: BuilderFactory
    max_new_tokens: int
    min_units: int = 0


def generate_task(
    task: Task,
    n_samples: int,
    target_tokens: int,
    seed: int,
    tokenizer: TokenizerLike,
    max_new_tokens: int | None = None,
    **opts: Any,
) -> list[Sample]:
    if n_samples < 0 or target_tokens <= 0:
        raise ValueError("n_samples must be >= 0 and target_tokens > 0")
    samples = []
    for i in range(n_samples):
        sctx = SampleContext(task.name, seed, i, n_samples, target_tokens)
        build = task.make_builder(sctx, **opts)
        built, units, tokens = fit(build, target_tokens, tokenizer, min_units=task.min_units)
        meta = {
            "seed": seed,
            "index": i,
            "target_tokens": target_tokens,
            "context_tokens": tokens,
            "haystack_units": units,
            **built.meta,
        }
        samples.append(
            Sample(
                id=f"{task.name}-{target_tokens}-{seed}-{i}",
                task=task.name,
                context=built.context,
                qa=built.qa,
                max_new_tokens=max_new_tokens or task.max_new_tokens,
                meta=meta,
            )
        )
    return samples
