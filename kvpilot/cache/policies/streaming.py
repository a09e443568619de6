"""`streaming`: StreamingLLM (Xiao et al., ICLR 2024), attention sinks plus the most recent tokens."""

import torch

from kvpilot.cache.policies.base import Policy, ScoringInputs, register


@register
class StreamingPolicy(Policy):
    """Keeps ``sink_tokens`` first tokens (protected) and fills the budget with the most recent ones.

    Positions are not re-indexed (kept keys keep their rotation), as in kvpress's prefill variant.
    """

    name = "streaming"

    def score(self, inp: ScoringInputs) -> torch.Tensor:
        return inp.positions.float()
