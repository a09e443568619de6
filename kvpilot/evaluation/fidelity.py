"""Fidelity against the full cache: how far compression moves the model's next-token distribution.

Both caches are fed the same tokens: the full cache's own greedy answer (teacher forcing), so the
comparison measures deviation from the uncompressed model at every answer position, not just whether
the final string happens to match. Two numbers per position: whether the top-1 tokens agree, and
KL(full || compressed) in nats.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Reference:
    """The full cache's answer to one question and the distributions that produced it.

    `tokens` are the greedy tokens, the end-of-sequence token included when decoding stopped on it (ending
    the answer is part of the answer). `logprobs[i]` is the log-softmax that predicted `tokens[i]`.
    """

    tokens: list[int]
    logprobs: torch.Tensor
    text: str


@dataclass
class Fidelity:
    """Sums over the teacher-forced tokens of one question (so runs can pool them token-weighted)."""

    tokens: int
    top1_agree: int
    kl_sum: float

    @property
    def agreement(self) -> float | None:
        return self.top1_agree / self.tokens if self.tokens else None

    @property
    def mean_kl(self) -> float | None:
        return self.kl_sum / self.tokens if self.tokens else None


def log_probs(step_logits: list[torch.Tensor]) -> torch.Tensor:
    """Stack per-step logits [vocab] into fp32 log-probabilities [steps, vocab]."""
    if not step_logits:
        return torch.empty(0, 0)
    return torch.log_softmax(torch.stack([t.float() for t in step_logits]), dim=-1)


def compare(reference: Reference, step_logits: list[torch.Tensor]) -> Fidelity:
    """Top-1 agreement and summed KL(full || compressed) over the reference's answer tokens.

    `step_logits` are the compressed cache's logits fed the reference tokens (at least as many steps as
    the reference has tokens; extra steps are ignored). Identical logits give exactly 1.0 and 0.0.
    """
    n = len(reference.tokens)
    if n == 0:
        return Fidelity(0, 0, 0.0)
    if len(step_logits) < n:
        raise ValueError(f"need logits for {n} answer tokens, got {len(step_logits)}")
    ref = reference.logprobs
    got = log_probs(step_logits[:n])
    kl = (ref.exp() * (ref - got)).sum(-1).clamp_min(0.0)
    agree = int((got.argmax(-1) == ref.argmax(-1)).sum())
    return Fidelity(tokens=n, top1_agree=agree, kl_sum=float(kl.sum()))
