"""`keydiff`: KeyDiff (Park et al., 2025), keep the keys least like the layer's average key.

A query-free geometric score: -cos(k_i, mean k) per KV head. Keys that point where most keys point carry
little that others do not; distinctive keys are kept. Needs no attention statistics, so it costs nothing
during prefill and composes with any scoring mode; the cheap baseline every study should include.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from kvpilot.policies.base import POLICY_REGISTRY, Policy, ScoringInputs

if TYPE_CHECKING:
    import torch


@POLICY_REGISTRY.register
@dataclass(frozen=True)
class KeyDiffPolicy(Policy):
    """Score = -cos(k_i, the mean of the head's valid keys)."""

    name = "keydiff"
    description = "KeyDiff: keep the keys least similar to the head's mean key (no attention statistics)"

    def score(self, inp: ScoringInputs) -> torch.Tensor:
        import torch.nn.functional as F

        keys = inp.keys.float()
        weight = inp.valid.unsqueeze(-1).float()
        mean = (keys * weight).sum(dim=1, keepdim=True) / weight.sum(dim=1, keepdim=True).clamp_min(1.0)
        return -F.cosine_similarity(keys, mean.expand_as(keys), dim=-1)
