"""`streaming`: StreamingLLM (Xiao et al., ICLR 2024), attention sinks plus the most recent tokens."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from kvpilot.policies.base import POLICY_REGISTRY, Policy, ScoringInputs

if TYPE_CHECKING:
    import torch


@POLICY_REGISTRY.register
@dataclass(frozen=True)
class StreamingPolicy(Policy):
    """Keeps the config's ``sink_tokens`` first tokens (protected) and fills the budget with the most recent.

    Positions are not re-indexed (kept keys keep their rotation), as in kvpress's prefill variant.
    """

    name = "streaming"
    description = "StreamingLLM: the attention sinks plus the most recent tokens"

    def score(self, inp: ScoringInputs) -> torch.Tensor:
        return inp.positions.float()
