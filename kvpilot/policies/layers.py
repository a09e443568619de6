"""Layer allocators: how an average budget becomes one budget per layer (`ConfigView.layer_allocation`).

Budgets count tokens kept per KV head, sinks and the protected window included. Each allocator is a
dataclass whose `param(...)` fields are its own knobs, registered in `LAYER_ALLOCATORS`; a new one is a class
plus a registry line. Torch-free, so the dashboard can show the budgets a config gives.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from kvpilot.plugins import Plugin, Registry, param

if TYPE_CHECKING:
    from kvpilot.policies.base import ConfigView


class LayerAllocator(Plugin):
    """Turns the config's average budget into per-layer budgets.

    absolute: the allocator's own parameters give the budgets (``budget``/``compression_ratio`` unused).
    """

    absolute: ClassVar[bool] = False
    needs_scores: ClassVar[bool] = False  # budgets come from the policy's scores (`from_scores`), at eviction

    def allocate(self, config: ConfigView, num_layers: int, seen: int) -> list[int]:
        """Tokens kept per KV head in each layer, each in [1, seen]."""
        avg = average_budget(config, seen)
        if avg >= seen:
            return [seen] * num_layers
        return cap_and_redistribute(self.schedule(avg, num_layers, seen, config), seen)

    def schedule(self, avg: int, num_layers: int, seen: int, config: ConfigView) -> list[int]:
        """Raw per-layer budgets averaging ``avg`` (capped and redistributed by `allocate`)."""
        return [avg] * num_layers


LAYER_ALLOCATORS: Registry[type[LayerAllocator]] = Registry("layer allocation", LayerAllocator)


@LAYER_ALLOCATORS.register
@dataclass(frozen=True)
class UniformLayers(LayerAllocator):
    name = "uniform"
    description = "every layer keeps the average budget"


@LAYER_ALLOCATORS.register
@dataclass(frozen=True)
class PyramidLayers(LayerAllocator):
    name = "pyramid"
    description = "PyramidKV: budgets fall linearly with depth, the average kept"

    beta: float = param(20.0, low=1.0, search=(2.0, 20.0), log=True, legacy="pyramid_beta",
                        description="steepness: the last layer keeps about 1/beta of the first's past")

    def schedule(self, avg: int, num_layers: int, seen: int, config: ConfigView) -> list[int]:
        return pyramid_schedule(avg, num_layers, seen, config.window, self.beta)


@LAYER_ALLOCATORS.register
@dataclass(frozen=True)
class SensitivityLayers(LayerAllocator):
    name = "sensitivity"
    description = "EpiCache: budgets proportional to each layer's measured sensitivity to eviction"

    profile: list[float] = param(per_layer=True, legacy="sensitivity_profile",
                                 description="per-layer sensitivity, higher = needs more budget "
                                 "(measure one with `kvpilot profile`)")
    alpha: float = param(1.1, low=0.0, high=8.0, legacy="sensitivity_alpha", description="sharpness")
    floor: float = param(0.25, low=0.0, high=1.0, legacy="sensitivity_floor",
                         description="smallest budget, as a fraction of the average")

    def schedule(self, avg: int, num_layers: int, seen: int, config: ConfigView) -> list[int]:
        return sensitivity_schedule(avg, self.profile, self.alpha, self.floor)


@LAYER_ALLOCATORS.register
@dataclass(frozen=True)
class ExplicitLayers(LayerAllocator):
    name = "explicit"
    description = "the budgets are given, one per layer"
    absolute = True

    budgets: list[int] = param(per_layer=True, low=1, legacy="layer_budgets",
                               description="tokens kept per KV head in each layer")

    def allocate(self, config: ConfigView, num_layers: int, seen: int) -> list[int]:
        return [max(1, min(seen, b)) for b in self.budgets]


@LAYER_ALLOCATORS.register
@dataclass(frozen=True)
class GlobalLayers(LayerAllocator):
    """KVzip's non-uniform budgets: the layers (and, with ``heads``, the KV heads) compete for one total.

    The cache evicts every layer at once (after the scoring queries of a block have run) and asks
    `from_scores` how the total splits. By default the KV heads of a layer keep the same number of tokens,
    so no head is padded and every byte saved is freed; with ``heads`` every (layer, head) pair competes,
    as in KVzip's own selection, and the heads of a layer end with different lengths. Without scores (the
    dashboard's budget view) it is uniform.
    """

    name = "global"
    description = "KVzip: one top-k over every layer's scores decides how many tokens each layer keeps"
    needs_scores = True

    floor: float = param(0.0, low=0.0, high=1.0, description="smallest budget of a layer, as a fraction of "
                         "the average (0: a layer may keep only its sinks and window)")
    heads: bool = param(False, search=(False, True), description="also let the KV heads compete (KVzip's "
                        "pair-level top-k): a layer's heads keep different numbers of tokens, held packed "
                        "without padding between forwards")

    def from_scores(
        self, avg: int, candidates: list[Any], protected: list[list[int]], available: list[list[int]]
    ) -> list[list[int]]:
        """Tokens each KV head of each layer keeps, summing to ``avg`` x heads x layers where slots allow.

        ``candidates[l]`` [H_kv, n_l]: layer l's scores, -inf where a slot is protected or padding;
        ``protected[l][h]``: slots head h of layer l keeps anyway; ``available[l][h]``: its valid slots.
        Layer mode: the k-th extra slot of a layer is worth the mean over its heads of their k-th best
        score, one top-k over those values, heads kept equal within a layer. Head mode: one top-k over
        every candidate slot of every head.
        """
        if self.heads:
            return self._per_head(avg, candidates, protected, available)
        layer_budgets = self._per_layer(
            avg, candidates, [max(p) for p in protected], [min(a) for a in available]
        )
        return [[min(b, a) for a in avail] for b, avail in zip(layer_budgets, available, strict=True)]

    def _per_layer(self, avg: int, candidates: list[Any], protected: list[int], available: list[int]) -> list[int]:
        import torch

        budgets = [min(a, max(p, math.ceil(avg * self.floor))) for p, a in zip(protected, available, strict=True)]
        left = avg * len(candidates) - sum(budgets)
        if left <= 0:
            return budgets
        values, owners = [], []
        for layer, (scores, b, p) in enumerate(zip(candidates, budgets, protected, strict=True)):
            ranked = scores.float().sort(dim=-1, descending=True).values.mean(dim=0)  # [n_l]
            extra = ranked[b - p :]
            extra = extra[torch.isfinite(extra)]
            values.append(extra)
            owners.append(torch.full((extra.numel(),), layer, dtype=torch.long, device=extra.device))
        pooled, who = torch.cat(values), torch.cat(owners)
        won = who[pooled.topk(min(left, pooled.numel())).indices]
        for layer, count in enumerate(torch.bincount(won, minlength=len(candidates)).tolist()):
            budgets[layer] = min(available[layer], budgets[layer] + count)
        return budgets

    def _per_head(
        self, avg: int, candidates: list[Any], protected: list[list[int]], available: list[list[int]]
    ) -> list[list[int]]:
        import torch

        floor = math.ceil(avg * self.floor)
        budgets = [[min(a, max(p, floor)) for p, a in zip(ps, avs, strict=True)]
                   for ps, avs in zip(protected, available, strict=True)]
        heads = [len(b) for b in budgets]
        left = avg * sum(heads) - sum(map(sum, budgets))
        if left <= 0:
            return budgets
        values, owners, base = [], [], 0
        for scores, bs, ps in zip(candidates, budgets, protected, strict=True):
            ranked = scores.float().sort(dim=-1, descending=True).values  # [H_kv, n_l], candidates first
            for h, (b, p) in enumerate(zip(bs, ps, strict=True)):
                extra = ranked[h, b - p :]  # the floor already took this head's best b - p candidates
                extra = extra[torch.isfinite(extra)]
                values.append(extra)
                owners.append(torch.full((extra.numel(),), base + h, dtype=torch.long, device=extra.device))
            base += len(bs)
        pooled, who = torch.cat(values), torch.cat(owners)
        won = torch.bincount(who[pooled.topk(min(left, pooled.numel())).indices], minlength=base).tolist()
        out, i = [], 0
        for bs, avs in zip(budgets, available, strict=True):
            out.append([min(a, b + won[i + h]) for h, (b, a) in enumerate(zip(bs, avs, strict=True))])
            i += len(bs)
        return out


def make_layer_allocator(config: ConfigView) -> LayerAllocator:
    return LAYER_ALLOCATORS.get(config.layer_allocation)(**config.layer_allocation_params)


def average_budget(config: ConfigView, seen: int) -> int:
    """Average tokens per KV head per layer for a cache that has seen ``seen`` tokens."""
    if not config.compresses:
        return seen
    if config.budget is not None:
        return min(seen, config.budget)
    if config.compression_ratio is not None:
        return max(1, min(seen, math.ceil(seen * (1.0 - config.compression_ratio) - 1e-9)))
    return seen


def layer_budgets(config: ConfigView, num_layers: int, seen: int) -> list[int]:
    """Tokens kept per KV head in each layer, each clamped to [1, seen]; everything for a policy that never evicts."""
    if not config.compresses:
        return [seen] * num_layers
    return make_layer_allocator(config).allocate(config, num_layers, seen)


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
