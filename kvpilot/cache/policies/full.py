"""`full`: the uncompressed baseline; never evicts anything."""

import torch

from kvpilot.cache.policies.base import Policy, ScoringInputs, register


@register
class FullPolicy(Policy):
    """No eviction. Budgets are ignored; this is the reference every other policy is compared to."""

    name = "full"

    def score(self, inp: ScoringInputs) -> torch.Tensor:
        return torch.zeros(inp.valid.shape, dtype=torch.float32, device=inp.keys.device)
