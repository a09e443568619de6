"""Choosing which cache slots to keep, per KV head, at token or unit granularity.

Protected slots (sinks and the recent window) are always kept and count inside the budget. The rest of
each head's budget goes to the best-scoring tokens, or to whole units (sentences, turns, chunks; as in
SentenceKV and ChunkKV) whose token scores are pooled; units are kept or dropped whole, never exceeding
the budget. Returned slot indices are sorted, so kept tokens stay in their original order.
"""

from __future__ import annotations

import torch


def protected_slots(
    positions: torch.Tensor, valid: torch.Tensor, seen: int, sinks: int, window: int, budget: int
) -> torch.Tensor:
    """Slots [H_kv, n] that must survive: the first ``sinks`` positions and the last ``window`` seen.

    If sinks and window do not fit in the budget, sinks win and the window shrinks to what is left.
    """
    sinks = min(sinks, budget)
    window = max(0, min(window, budget - sinks))
    keep = (positions < sinks) | (positions >= seen - window) if window else positions < sinks
    return keep & valid


def select_tokens(scores: torch.Tensor, candidates: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the ``k`` best candidate slots in one head (``scores`` [n], ``candidates`` [n])."""
    if k <= 0:
        return torch.empty(0, dtype=torch.long, device=scores.device)
    s = scores.float().masked_fill(~candidates, float("-inf"))
    return s.topk(min(k, int(candidates.sum()))).indices


def select_units(
    scores: torch.Tensor, candidates: torch.Tensor, units: torch.Tensor, k: int, pooling: str
) -> torch.Tensor:
    """Whole units filling at most ``k`` slots in one head, best pooled score first.

    Greedy knapsack by score: a unit too big for what is left is skipped and smaller ones may still fit.
    """
    if k <= 0:
        return torch.empty(0, dtype=torch.long, device=scores.device)
    idx = candidates.nonzero().squeeze(-1)
    if idx.numel() == 0:
        return idx
    unit_ids, inverse = torch.unique(units[idx], return_inverse=True)
    sizes = torch.bincount(inverse, minlength=unit_ids.numel())
    token_scores = scores[idx].float()
    if pooling == "mean":
        pooled = torch.zeros(unit_ids.numel(), dtype=torch.float32, device=scores.device)
        pooled.index_add_(0, inverse, token_scores)
        pooled = pooled / sizes.clamp_min(1)
    else:
        pooled = torch.full((unit_ids.numel(),), float("-inf"), device=scores.device)
        pooled.scatter_reduce_(0, inverse, token_scores, reduce="amax")
    order = pooled.argsort(descending=True).tolist()
    size_list = sizes.tolist()
    chosen = torch.zeros(unit_ids.numel(), dtype=torch.bool, device=scores.device)
    left = k
    for u in order:
        if size_list[u] <= left:
            chosen[u] = True
            left -= size_list[u]
            if left == 0:
                break
    return idx[chosen[inverse]]


def keep_indices(
    scores: torch.Tensor,
    valid: torch.Tensor,
    protected: torch.Tensor,
    head_budgets: list[int],
    units: torch.Tensor | None,
    unit_pooling: str,
) -> list[torch.Tensor]:
    """Sorted slot indices to keep for each KV head."""
    out = []
    for h, budget in enumerate(head_budgets):
        prot = protected[h].nonzero().squeeze(-1)
        rest = budget - prot.numel()
        candidates = valid[h] & ~protected[h]
        if units is None:
            extra = select_tokens(scores[h], candidates, rest)
        else:
            extra = select_units(scores[h], candidates, units[h], rest, unit_pooling)
        out.append(torch.cat([prot, extra]).sort().values)
    return out
