"""`random`: uniform random scores, the floor any real policy must beat (kvpress RandomPress)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from kvpilot.plugins import param
from kvpilot.policies.base import POLICY_REGISTRY, Policy, ScoringInputs

if TYPE_CHECKING:
    import torch


@POLICY_REGISTRY.register
@dataclass(frozen=True)
class RandomPolicy(Policy):
    """Random eviction, seeded by ``seed``, the layer and the tokens seen (reproducible)."""

    name = "random"
    description = "uniform random scores: the floor any real policy must beat"

    # bounded so that seed * 1_000_003 + layer * 7919 + seen stays a valid torch generator seed (< 2**64)
    seed: int = param(0, low=0, high=2**32 - 1, legacy="seed",
                      description="seed of the scores (with the layer and the tokens seen)")

    def score(self, inp: ScoringInputs) -> torch.Tensor:
        import torch

        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + inp.layer_idx * 7919 + inp.seen)
        return torch.rand(inp.valid.shape, generator=gen).to(inp.keys.device)
