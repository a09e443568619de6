"""`h2o`: Heavy-Hitter Oracle (Zhang et al., NeurIPS 2023), accumulated attention per key."""

import torch

from kvpilot.cache.policies.base import Policy, ScoringInputs, register, scoring_mass_or_raise


@register
class H2OPolicy(Policy):
    """Score = attention mass a key received from every query that saw it, divided by how many did.

    The division is the length-bias correction (kvpress ObservedAttentionPress): raw sums favour early
    tokens, which more queries have seen. With ``scoring='prompt'`` the scoring prompt's mass is used.
    """

    name = "h2o"
    stats = "accumulated"

    def score(self, inp: ScoringInputs) -> torch.Tensor:
        if self.config.scoring == "prompt" or inp.stats.acc_mass is None:
            return scoring_mass_or_raise(inp)
        return inp.stats.acc_mass / inp.stats.acc_count.clamp_min(1.0)
