"""Head allocators: how a layer's budget is split over its KV heads (`ConfigView.head_allocation`).

`uniform` gives every head the layer's budget; `adaptive` is Ada-KV's global top-k over the heads with a
safeguard floor. Each allocator is a dataclass with its own `param(...)` knobs, registered in
`HEAD_ALLOCATORS`. The module is torch-free at import; the adaptive split imports torch when it runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from kvpilot.plugins import Plugin, Registry, param

if TYPE_CHECKING:
    import torch

    from kvpilot.policies.base import ConfigView


class HeadAllocator(Plugin):
    """Splits one layer's budget (tokens per KV head, on average) over its KV heads."""

    def within_budget(self, kept: list[int], budget: int) -> bool:
        """True when the heads, holding ``kept`` tokens each, need no eviction for ``budget``."""
        return max(kept) <= budget

    def split(self, scores: torch.Tensor, valid: torch.Tensor, protected: torch.Tensor, budget: int) -> list[int]:
        """Tokens each head keeps (never more than it holds)."""
        return [min(budget, a) for a in valid.sum(dim=-1).tolist()]


HEAD_ALLOCATORS: Registry[type[HeadAllocator]] = Registry("head allocation", HeadAllocator)


@HEAD_ALLOCATORS.register
@dataclass(frozen=True)
class UniformHeads(HeadAllocator):
    name = "uniform"
    description = "every KV head keeps the layer's budget"


@HEAD_ALLOCATORS.register
@dataclass(frozen=True)
class AdaptiveHeads(HeadAllocator):
    """Protected tokens first; the rest of the layer's total goes to the heads whose scores are highest."""

    name = "adaptive"
    description = "Ada-KV: the layer's total goes to the heads with the highest scores, above a floor"

    alpha: float = param(0.2, low=0.0, high=1.0, search=(0.1, 0.5), legacy="adaptive_alpha",
                         description="safeguard: each head keeps at least alpha x the layer's budget")

    def within_budget(self, kept: list[int], budget: int) -> bool:
        return sum(kept) <= budget * len(kept)

    def split(self, scores: torch.Tensor, valid: torch.Tensor, protected: torch.Tensor, budget: int) -> list[int]:
        n_protected = protected.sum(dim=-1).tolist()
        available = valid.sum(dim=-1).tolist()
        rest = budget - max(n_protected)
        extra = adaptive_head_budgets(scores, valid & ~protected, rest, self.alpha)
        return [min(p + e, a) for p, e, a in zip(n_protected, extra, available, strict=True)]


def make_head_allocator(config: ConfigView) -> HeadAllocator:
    return HEAD_ALLOCATORS.get(config.head_allocation)(**config.head_allocation_params)


def head_budgets(
    config: ConfigView, scores: torch.Tensor, valid: torch.Tensor, protected: torch.Tensor, budget: int
) -> list[int]:
    """Tokens each KV head of a layer keeps under ``budget`` (scores, valid, protected: [H_kv, n])."""
    return make_head_allocator(config).split(scores, valid, protected, budget)


def within_budget(config: ConfigView, kept: list[int], budget: int) -> bool:
    """True when a layer whose heads hold ``kept`` tokens needs no eviction (so nothing need be scored)."""
    return make_head_allocator(config).within_budget(kept, budget)


def adaptive_head_budgets(
    scores: torch.Tensor, candidates: torch.Tensor, per_head: int, alpha: float
) -> list[int]:
    """Ada-KV (Feng et al., 2025): split ``H_kv * per_head`` picks over heads by a global top-k.

    ``scores`` [H_kv, n] are normalised within each head so heads compare fairly; ``candidates`` [H_kv, n]
    marks selectable slots. Each head then gets at least ``alpha * per_head`` (the safeguard), and the
    total stays exactly ``H_kv * per_head`` (no head gets more than it has candidates).
    """
    import torch

    h_kv = scores.shape[0]
    available = candidates.sum(dim=-1).tolist()
    total = min(h_kv * per_head, int(sum(available)))
    if total <= 0:
        return [0] * h_kv
    probs = normalise_per_head(scores, candidates)
    flat = probs.masked_fill(~candidates, float("-inf")).reshape(-1)
    winners = flat.topk(total).indices // scores.shape[1]
    counts = torch.bincount(winners, minlength=h_kv).tolist()
    wanted = [c * (1 - alpha) + alpha * per_head for c in counts]
    budgets = [min(int(round(w)), a) for w, a in zip(wanted, available, strict=True)]
    # Fix rounding so the layer's total is exact: add to / take from the heads with most room / most kept.
    diff = total - sum(budgets)
    while diff != 0:
        if diff > 0:
            i = max(range(h_kv), key=lambda j: (available[j] - budgets[j], wanted[j] - budgets[j]))
            budgets[i] += 1
            diff -= 1
        else:
            i = max(range(h_kv), key=lambda j: (budgets[j] - wanted[j], budgets[j]))
            budgets[i] -= 1
            diff += 1
    return budgets


def normalise_per_head(scores: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """Scores as a distribution over each head's candidates, so they are comparable across heads."""
    import torch

    s = scores.float().masked_fill(~candidates, float("-inf"))
    finite = torch.isfinite(s)
    nonneg = bool(((s >= 0) | ~finite).all())
    if nonneg:
        s = s.masked_fill(~finite, 0.0)
        return s / s.sum(dim=-1, keepdim=True).clamp_min(1e-30)
    mean = s.masked_fill(~finite, 0.0).sum(-1, keepdim=True) / finite.sum(-1, keepdim=True).clamp_min(1)
    return torch.softmax(s - mean, dim=-1)
