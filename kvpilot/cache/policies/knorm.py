"""`knorm`: KeyNorm (Devoto et al., EMNLP 2024), keep keys with the lowest L2 norm."""

import torch

from kvpilot.cache.policies.base import Policy, ScoringInputs, register


@register
class KNormPolicy(Policy):
    """Score = -||k||. Needs no attention statistics; RoPE does not change key norms."""

    name = "knorm"

    def score(self, inp: ScoringInputs) -> torch.Tensor:
        return -inp.keys.float().norm(dim=-1)
