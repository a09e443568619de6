"""`full`: the uncompressed baseline; never evicts anything."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from kvpilot.policies.base import POLICY_REGISTRY, Policy, ScoringInputs

if TYPE_CHECKING:
    import torch


@POLICY_REGISTRY.register
@dataclass(frozen=True)
class FullPolicy(Policy):
    """No eviction. Budgets are ignored; this is the reference every other policy is compared to."""

    name = "full"
    description = "no eviction: the uncompressed baseline every other policy is compared to"
    evicts = False

    def score(self, inp: ScoringInputs) -> torch.Tensor:
        import torch

        return torch.zeros(inp.valid.shape, dtype=torch.float32, device=inp.keys.device)
