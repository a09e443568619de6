"""`kvzip`: KVzip (Kim et al., NeurIPS 2025), keep what the model reads to reproduce the context.

Used with ``scoring="reconstruct"``: after each block of context is in the cache, kvpilot runs a
reconstruction input (an instruction to repeat the context, the chat template's turn markers, then the
block's own tokens again) as queries that are never stored, and a pair's score is the largest attention
weight any reconstruction query, and any query head of its GQA group, gave it (softmax over the sinks, the
block's keys and the reconstruction's own keys). One query that needs a pair is enough to keep it.
With ``plus`` (KVzip+) each weight is first multiplied by the norm of what the pair writes to the residual
stream through its head (||W_O v||) and divided by the norm of that stream at the query (||h||).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from kvpilot.plugins import param
from kvpilot.policies.base import POLICY_REGISTRY, Policy, ScoringInputs, scoring_mass_or_raise

if TYPE_CHECKING:
    import torch


@POLICY_REGISTRY.register
@dataclass(frozen=True)
class KVzipPolicy(Policy):
    """Score = the reconstruction queries' attention, reduced by max (KVzip) unless told otherwise."""

    name = "kvzip"
    description = ("KVzip: the largest attention a scoring query gave each key; with scoring='reconstruct' the "
                   "queries reproduce the context (the paper)")
    stats = "scoring"

    reduce: Literal["sum", "mean", "max"] = param(
        "max", description="how a key's weights from the reconstruction queries combine (max in the paper)")

    plus: bool = param(
        False, search=(False, True), description="KVzip+: weigh each weight by what the pair writes to the residual stream, ||W_O v||, "
        "over the size of that stream at the query, ||h|| (the paper's normalised variant)")

    @property
    def residual_weighted(self) -> bool:
        return self.plus

    def score(self, inp: ScoringInputs) -> torch.Tensor:
        return scoring_mass_or_raise(inp).masked_fill(~inp.valid, 0.0)
