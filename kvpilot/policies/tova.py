"""`tova`: Token Omission Via Attention (Oren et al., EMNLP 2024), the last query's attention."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from kvpilot.policies.base import POLICY_REGISTRY, Policy, ScoringInputs, scoring_mass_or_raise

if TYPE_CHECKING:
    import torch


@POLICY_REGISTRY.register
@dataclass(frozen=True)
class TOVAPolicy(Policy):
    """Score = attention of the current (last) query averaged over all heads of the layer.

    The average is shared by every KV head (one ranking per layer, as in the paper); with decode-time
    eviction every step this is the paper's fixed-size "multi-state RNN".
    """

    name = "tova"
    description = "TOVA: the last query's attention, averaged over the layer's heads"
    stats = "scoring"
    last_query_only = True

    def score(self, inp: ScoringInputs) -> torch.Tensor:
        mass = scoring_mass_or_raise(inp)
        masked = mass.masked_fill(~inp.valid, 0.0)
        # Slots are aligned across heads only when no head has padding; otherwise fall back per head.
        if bool(inp.valid.all()):
            return masked.mean(dim=0, keepdim=True).expand_as(mass).contiguous()
        return masked
