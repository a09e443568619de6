"""`snapkv`: SnapKV (Li et al., 2024), observation-window attention pooled over neighbours."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from kvpilot.plugins import param
from kvpilot.policies.base import (
    POLICY_REGISTRY,
    Policy,
    ScoringInputs,
    odd_kernel,
    pool_over_neighbours,
    scoring_mass_or_raise,
)

if TYPE_CHECKING:
    import torch


@POLICY_REGISTRY.register
@dataclass(frozen=True)
class SnapKVPolicy(Policy):
    """Score = mass from the last ``observation_window`` queries (or a scoring prompt), pooled.

    Pooling (avg or max, ``pooling_kernel`` wide) keeps neighbours of important tokens together so
    that retrieved spans stay readable. The GQA group is already summed by the statistics kernel.
    """

    name = "snapkv"
    description = "SnapKV: attention from the last queries (or a scoring prompt), pooled over neighbours"
    stats = "scoring"

    observation_window: int = param(32, low=1, high=8192, legacy="observation_window",
                                    description="queries whose attention scores the cache")
    pooling: Literal["avg", "max", "none"] = param("avg", legacy="pooling",
                                                   description="smoothing of scores over neighbouring keys")
    pooling_kernel: int = param(5, low=1, high=63, check=odd_kernel, legacy="pooling_kernel",
                                description="width of the pooling window (odd)")
    reduce: Literal["sum", "mean", "max"] = param(
        "sum", description="how a key's weights from the scoring queries combine: the mass (the paper), the "
        "mean, or the largest weight any one query gave it")

    def score(self, inp: ScoringInputs) -> torch.Tensor:
        mass = scoring_mass_or_raise(inp).masked_fill(~inp.valid, 0.0)
        return pool_over_neighbours(mass, inp.valid, self.pooling, self.pooling_kernel)
