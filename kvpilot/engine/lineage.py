"""Eviction lineage: which parts of a request's context its compressed cache forgot.

`Engine.serve` computes it for a request that asks (`Request(lineage=True)`; `kvpilot.attach(...,
lineage=rate)` samples requests), right after the context is compressed and before any question is asked:
the cache the answers read. For every context token it counts the (layer, KV head) slots that still hold
it; a *unit*'s ``kept`` is the share of its tokens' slots still held (1.0: all of it in every layer and
head, 0.0: forgotten everywhere). Units follow the config's granularity: turns, sentences or chunks as the
cache selected them; at token granularity, the maximal runs of tokens on one side of `EVICTED_BELOW`
(spans). Character offsets index `Lineage.text`, the context decoded token by token (special tokens
included), so an excerpt is ``text[char_start:char_end]``.

A request that continues a session's cache covers only its own context tokens (the earlier turns' lineage
was recorded with them); a request with episodes (EpiCache) has none: each question reads another cache.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from kvpilot.engine.units import text_decoder, unit_ids

EVICTED_BELOW = 0.5  # a unit counts as evicted when less than half of its slots are still held
UNIT_KINDS = ("turn", "sentence", "chunk", "span")


@dataclass(frozen=True)
class LineageUnit:
    """One unit of the context: its tokens [token_start, token_end) and characters [char_start, char_end)."""

    token_start: int
    token_end: int
    char_start: int
    char_end: int
    kept: float

    @property
    def evicted(self) -> bool:
        return self.kept < EVICTED_BELOW

    def as_list(self) -> list[Any]:
        return [self.token_start, self.token_end, self.char_start, self.char_end, round(self.kept, 6)]

    @classmethod
    def from_list(cls, values: Sequence[Any]) -> LineageUnit:
        ts, te, cs, ce, kept = values
        return cls(int(ts), int(te), int(cs), int(ce), float(kept))


@dataclass(frozen=True)
class Lineage:
    """What one request's compressed context kept, unit by unit."""

    kind: str  # turn | sentence | chunk | span
    text: str
    context_tokens: int
    kept_fraction: float  # over all context tokens: the share of their (layer, KV head) slots still held
    units: tuple[LineageUnit, ...]

    @property
    def evicted(self) -> list[LineageUnit]:
        return [u for u in self.units if u.evicted]

    def excerpt(self, unit: LineageUnit) -> str:
        return self.text[unit.char_start:unit.char_end]


def kept_per_token(cache: Any, start: int, n: int) -> torch.Tensor:
    """For logical positions [start, start + n): the share of (layer, KV head) slots that hold each one."""
    counts = torch.zeros(n, dtype=torch.float64)
    slots = 0
    for layer in cache.layers:
        if layer.positions is None:
            continue
        held = layer.positions[layer.valid_mask()].flatten().cpu() - start
        held = held[(held >= 0) & (held < n)]
        counts += torch.bincount(held, minlength=n)[:n].to(torch.float64)
        slots += layer.positions.shape[0]
    return counts / max(slots, 1)


def compute(tokenizer: Any, cache: Any, context_ids: Sequence[int], start: int = 0) -> Lineage:
    """The lineage of a context whose tokens sit at logical positions [start, start + len) of ``cache``."""
    ids = [int(t) for t in context_ids]
    n = len(ids)
    kept = kept_per_token(cache, start, n)
    text_of = text_decoder(tokenizer)
    offsets = [0]
    for tok in ids:
        offsets.append(offsets[-1] + len(text_of(tok)))
    text = "".join(text_of(tok) for tok in ids)
    granularity = cache.config.granularity
    bounds = _unit_bounds(tokenizer, ids, granularity, start, cache.config.chunk_size, kept)
    kind = granularity if granularity in ("turn", "sentence", "chunk") else "span"
    units = tuple(
        LineageUnit(a, b, offsets[a], offsets[b], float(kept[a:b].mean()) if b > a else 1.0) for a, b in bounds
    )
    return Lineage(kind, text, n, float(kept.mean()) if n else 1.0, units)


def _unit_bounds(tokenizer: Any, ids: list[int], granularity: str, start: int, chunk_size: int,
                 kept: torch.Tensor) -> list[tuple[int, int]]:
    """[a, b) token ranges partitioning the context, one per unit."""
    n = len(ids)
    if n == 0:
        return []
    if granularity in ("sentence", "turn"):
        labels = unit_ids(tokenizer, ids, granularity) or [0] * n
    elif granularity == "chunk":
        labels = [(start + i) // chunk_size for i in range(n)]
    else:  # tokens: runs on one side of the threshold
        labels = [int(k < EVICTED_BELOW) for k in kept.tolist()]
        runs, current = [], 0
        for i in range(1, n):
            if labels[i] != labels[i - 1]:
                current += 1
            runs.append(current)
        labels = [0, *runs]
    bounds, a = [], 0
    for i in range(1, n):
        if labels[i] != labels[i - 1]:
            bounds.append((a, i))
            a = i
    bounds.append((a, n))
    return bounds
