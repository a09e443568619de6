"""`expected_attention`: Expected Attention (Devoto, Jeblick, Jegou, arXiv 2510.00636; kvpress).

Future queries are modelled as a Gaussian per head, fitted on the prompt's own pre-RoPE queries; the
score is the expected softmax weight under that Gaussian, averaged over the next positions' rotations.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from kvpilot.plugins import param
from kvpilot.policies.base import POLICY_REGISTRY, Policy, RopeInfo, ScoringInputs

if TYPE_CHECKING:
    import torch

N_FUTURE_POSITIONS = 512


def mean_rotation(rope: RopeInfo, start: int, count: int, head_dim: int) -> torch.Tensor:
    """The [d, d] average of the RoPE rotation matrices for positions [start, start + count)."""
    import torch

    pos = torch.arange(start, start + count, dtype=torch.float32, device=rope.inv_freq.device)
    angles = pos[:, None] * rope.inv_freq.float()[None, :]
    c = torch.cos(angles).mean(0) * rope.attention_scaling
    s = torch.sin(angles).mean(0) * rope.attention_scaling
    half = head_dim // 2
    rot = torch.zeros(head_dim, head_dim, dtype=torch.float32, device=c.device)
    idx = torch.arange(half, device=c.device)
    rot[idx, idx] = c
    rot[idx + half, idx + half] = c
    rot[idx, idx + half] = -s
    rot[idx + half, idx] = s
    return rot


@POLICY_REGISTRY.register
@dataclass(frozen=True)
class ExpectedAttentionPolicy(Policy):
    """Score_i = mean over the group of softmax_i(s mu'.k_i + s^2/2 k_i' Sigma' k_i), times ||v_i||."""

    name = "expected_attention"
    description = "Expected Attention: attention expected from future queries (a Gaussian fitted on the prompt's)"
    stats = "queries"

    n_future_positions: int = param(N_FUTURE_POSITIONS, low=1, high=65536,
                                    description="future positions whose RoPE rotations are averaged")

    def score(self, inp: ScoringInputs) -> torch.Tensor:
        import torch

        st = inp.stats
        if st.query_count < 2 or inp.rope is None or st.query_sum is None or st.query_outer is None:
            return -inp.keys.float().norm(dim=-1)  # no query statistics yet: fall back to key norm
        h_kv, n, d = inp.keys.shape
        group = inp.num_heads // h_kv
        mu = st.query_sum / st.query_count  # [H, d]
        cov = st.query_outer / st.query_count - mu[:, :, None] * mu[:, None, :]  # [H, d, d]
        rot = mean_rotation(inp.rope, inp.seen, self.n_future_positions, d)
        mu_f = mu @ rot.T
        cov_f = rot @ cov @ rot.T
        scaling = d**-0.5
        keys = inp.keys.float().repeat_interleave(group, dim=0)  # [H, n, d]
        lin = torch.einsum("hnd,hd->hn", keys, mu_f) * scaling
        quad = torch.einsum("hnd,hde,hne->hn", keys, cov_f, keys) * (scaling**2) / 2
        logits = (lin + quad).masked_fill(~inp.valid.repeat_interleave(group, dim=0), float("-inf"))
        probs = torch.softmax(logits, dim=-1).view(h_kv, group, n).mean(dim=1)
        return probs * inp.values.float().norm(dim=-1)
