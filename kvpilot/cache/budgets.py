"""Layer and head budget allocation.

Budgets count tokens kept per KV head, sinks and the protected window included. Layer allocation turns
an average budget into one budget per layer (uniform, PyramidKV, EpiCache sensitivity, explicit);
head allocation splits a layer's total over its KV heads (uniform, or Ada-KV's global top-k with a floor).
"""

from __future__ import annotations

import math

import torch

from kvpilot.config import KVConfig


def average_budget(config: KVConfig, seen: int) -> int:
    """Average tokens per KV head per layer for a cache that has seen ``seen`` tokens."""
    if not config.compresses:
        return seen
    if config.budget is not None:
        return min(seen, config.budget)
    if config.compression_ratio is not None:
        return max(1, min(seen, math.ceil(seen * (1.0 - config.compression_ratio) - 1e-9)))
    return seen


def layer_budgets(config: KVConfig, num_layers: int, seen: int) -> list[int]:
    """Tokens kept per KV head in each layer, each clamped to [1, seen]."""
    if config.policy == "full":
        return [seen] * num_layers
    if config.layer_allocation == "explicit" and config.layer_budgets:
        return [max(1, min(seen, b)) for b in config.layer_budgets]
    avg = average_budget(config, seen)
    if avg >= seen:
        return [seen] * num_layers
    if config.layer_allocation == "pyramid":
        raw = pyramid_schedule(avg, num_layers, seen, config.window, config.pyramid_beta)
    elif config.layer_allocation == "sensitivity" and config.sensitivity_profile:
        raw = sensitivity_schedule(
            avg, config.sensitivity_profile, config.sensitivity_alpha, config.sensitivity_floor
        )
    else:
        raw = [avg] * num_layers
    return cap_and_redistribute(raw, seen)


def cap_and_redistribute(budgets: list[int], cap: int) -> list[int]:
    """Clamp budgets to ``cap`` (tokens seen) and hand what the clamped layers cannot use to the others.

    A spiky sensitivity profile can give one layer more than it has tokens; without this the excess
    would simply be lost and the cache would keep less than its total budget.
    """
    out = [max(1, min(cap, b)) for b in budgets]
    excess = sum(max(0, b - cap) for b in budgets)
    while excess > 0:
        open_layers = [i for i, b in enumerate(out) if b < cap]
        if not open_layers:
            break
        weight = sum(out[i] for i in open_layers)
        given = 0
        for i in open_layers:
            share = min(cap - out[i], max(1, excess * out[i] // weight))
            share = min(share, excess - given)
            out[i] += share
            given += share
            if given >= excess:
                break
        if given == 0:
            break
        excess -= given
    return out


def pyramid_schedule(avg: int, num_layers: int, seen: int, window: int, beta: float) -> list[int]:
    """PyramidKV (Cai et al., 2024): budgets fall linearly with depth, mean kept equal to ``avg``."""
    if num_layers == 1:
        return [avg]
    window = min(window, max(avg - 1, 0))
    past = avg - window
    b_min = past / beta
    b_max = 2 * past - b_min
    if b_max > seen - window:  # prompt too short for the top of the pyramid
        b_max = seen - window
        b_min = 2 * past - b_max
    step = (b_max - b_min) / (num_layers - 1)
    budgets = [b_max - layer * step + window for layer in range(num_layers)]
    return _round_preserving_total(budgets, avg * num_layers)


def sensitivity_schedule(avg: int, profile: list[float], alpha: float, floor: float) -> list[int]:
    """EpiCache (Kim et al., 2025) allocation: w_l = s_hat_l ** alpha, budgets proportional to w_l.

    ``profile`` holds sensitivities (higher = more perturbed by eviction = needs more budget);
    EpiCache's key cosine similarity ``sim`` maps to ``1 - sim``. Each layer gets at least ``floor * M``.
    """
    n = len(profile)
    lo, hi = min(profile), max(profile)
    if alpha == 0 or hi - lo < 1e-12:
        return [avg] * n
    weights = [((s - lo) / (hi - lo)) ** alpha for s in profile]
    total = sum(weights)
    if total <= 0:
        return [avg] * n
    # EpiCache floors each layer after allocating, which lets the total exceed L*M; here every layer first
    # gets the floor and the weights share the rest, so the floor holds and the total stays L*M.
    min_budget = max(1, int(avg * floor))
    spare = max(0, avg * n - min_budget * n)
    return _round_preserving_total([min_budget + w / total * spare for w in weights], avg * n)


def _round_preserving_total(values: list[float], total: int) -> list[int]:
    """Integer budgets whose sum equals ``total`` (largest remainders get the leftover tokens)."""
    floors = [max(1, int(math.floor(v))) for v in values]
    short = total - sum(floors)
    order = sorted(range(len(values)), key=lambda i: values[i] - math.floor(values[i]), reverse=True)
    for i in order[: max(short, 0)]:
        floors[i] += 1
    return floors


def adaptive_head_budgets(
    scores: torch.Tensor, candidates: torch.Tensor, per_head: int, alpha: float
) -> list[int]:
    """Ada-KV (Feng et al., 2025): split ``H_kv * per_head`` picks over heads by a global top-k.

    ``scores`` [H_kv, n] are normalised within each head so heads compare fairly; ``candidates`` [H_kv, n]
    marks selectable slots. Each head then gets at least ``alpha * per_head`` (the safeguard), and the
    total stays exactly ``H_kv * per_head`` (no head gets more than it has candidates).
    """
    h_kv = scores.shape[0]
    available = candidates.sum(dim=-1).tolist()
    total = min(h_kv * per_head, int(sum(available)))
    if total <= 0:
        return [0] * h_kv
    probs = normalise_per_head(scores, candidates)
    flat = probs.masked_fill(~candidates, float("-inf")).reshape(-1)
    winners = flat.topk(total).indices // scores.shape[1]
    counts = torch.bincount(winners, minlength=h_kv).tolist()
    wanted = [c * (1 - alpha) + alpha * per_head for c in counts]
    budgets = [min(int(round(w)), a) for w, a in zip(wanted, available, strict=True)]
    # Fix rounding so the layer's total is exact: add to / take from the heads with most room / most kept.
    diff = total - sum(budgets)
    while diff != 0:
        if diff > 0:
            i = max(range(h_kv), key=lambda j: (available[j] - budgets[j], wanted[j] - budgets[j]))
            budgets[i] += 1
            diff -= 1
        else:
            i = max(range(h_kv), key=lambda j: (budgets[j] - wanted[j], budgets[j]))
            budgets[i] -= 1
            diff += 1
    return budgets


def normalise_per_head(scores: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """Scores as a distribution over each head's candidates, so they are comparable across heads."""
    s = scores.float().masked_fill(~candidates, float("-inf"))
    finite = torch.isfinite(s)
    nonneg = bool(((s >= 0) | ~finite).all())
    if nonneg:
        s = s.masked_fill(~finite, 0.0)
        return s / s.sum(dim=-1, keepdim=True).clamp_min(1e-30)
    mean = s.masked_fill(~finite, 0.0).sum(-1, keepdim=True) / finite.sum(-1, keepdim=True).clamp_min(1)
    return torch.softmax(s - mean, dim=-1)
