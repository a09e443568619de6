"""`random`: uniform random scores, the floor any real policy must beat (kvpress RandomPress)."""

import torch

from kvpilot.cache.policies.base import Policy, ScoringInputs, register


@register
class RandomPolicy(Policy):
    """Random eviction, seeded by ``config.seed``, the layer and the tokens seen (reproducible)."""

    name = "random"

    def score(self, inp: ScoringInputs) -> torch.Tensor:
        gen = torch.Generator().manual_seed(self.config.seed * 1_000_003 + inp.layer_idx * 7919 + inp.seen)
        return torch.rand(inp.valid.shape, generator=gen).to(inp.keys.device)
