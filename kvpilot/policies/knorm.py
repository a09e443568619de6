"""`knorm`: KeyNorm (Devoto et al., EMNLP 2024), keep keys with the lowest L2 norm."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from kvpilot.policies.base import POLICY_REGISTRY, Policy, ScoringInputs

if TYPE_CHECKING:
    import torch


@POLICY_REGISTRY.register
@dataclass(frozen=True)
class KNormPolicy(Policy):
    """Score = -||k||. Needs no attention statistics; RoPE does not change key norms."""

    name = "knorm"
    description = "KeyNorm: keep the keys with the lowest L2 norm (no attention statistics)"

    def score(self, inp: ScoringInputs) -> torch.Tensor:
        return -inp.keys.float().norm(dim=-1)
