"""`h2o`: Heavy-Hitter Oracle (Zhang et al., NeurIPS 2023), accumulated attention per key."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from kvpilot.policies.base import POLICY_REGISTRY, Policy, ScoringInputs, scoring_mass_or_raise

if TYPE_CHECKING:
    import torch


@POLICY_REGISTRY.register
@dataclass(frozen=True)
class H2OPolicy(Policy):
    """Score = attention mass a key received from every query that saw it, divided by how many did.

    The division is the length-bias correction (kvpress ObservedAttentionPress): raw sums favour early
    tokens, which more queries have seen. With ``scoring='prompt'`` the scoring prompt's mass is used.
    """

    name = "h2o"
    description = "Heavy-Hitter Oracle: attention accumulated over every query, length-corrected"
    stats = "accumulated"

    def score(self, inp: ScoringInputs) -> torch.Tensor:
        st = inp.stats
        if inp.config.scoring == "prompt" or st.acc_mass is None or st.acc_count is None:
            return scoring_mass_or_raise(inp)
        return st.acc_mass / st.acc_count.clamp_min(1.0)
