"""`snapkv`: SnapKV (Li et al., 2024), observation-window attention pooled over neighbours."""

import torch
import torch.nn.functional as F

from kvpilot.cache.policies.base import Policy, ScoringInputs, register, scoring_mass_or_raise


@register
class SnapKVPolicy(Policy):
    """Score = mass from the last ``observation_window`` queries (or a scoring prompt), pooled.

    Pooling (avg or max, ``pooling_kernel`` wide) keeps neighbours of important tokens together so
    that retrieved spans stay readable. The GQA group is already summed by the statistics kernel.
    """

    name = "snapkv"
    stats = "scoring"

    def score(self, inp: ScoringInputs) -> torch.Tensor:
        mass = scoring_mass_or_raise(inp).masked_fill(~inp.valid, 0.0)
        k = self.config.pooling_kernel
        if self.config.pooling == "none" or k <= 1:
            return mass
        x = mass[None]
        if self.config.pooling == "max":
            pooled = F.max_pool1d(x, kernel_size=k, stride=1, padding=k // 2)
        else:
            pooled = F.avg_pool1d(x, kernel_size=k, stride=1, padding=k // 2, count_include_pad=False)
        return pooled[0]
