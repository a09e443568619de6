"""The policy contract: a policy scores the slots of one layer; selection and budgets are shared.

A policy is one file: a `Policy` dataclass whose `param(...)` fields are its own knobs (kvpress's
dataclass-per-press), decorated with `@POLICY_REGISTRY.register`, plus one import line in
`kvpilot/policies/__init__.py`. The class is the spec (name, statistics it needs, parameters, description),
read torch-free by KVConfig, the tuner and the docs; it imports torch only inside `score`, which the managed
cache calls. `LayerStats`, `ScoringInputs` and `RopeInfo` are what the cache hands a policy.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol

from kvpilot.plugins import Plugin, Registry

if TYPE_CHECKING:
    import torch

Stats = Literal["none", "scoring", "accumulated", "queries"]
DEFAULT_OBSERVATION_WINDOW = 32  # scoring queries for a policy that does not choose its own window
_SLOT_ALIGNED = ("scoring_mass", "acc_mass", "acc_count")


class ConfigView(Protocol):
    """What plug-ins read of a KVConfig: the shared fields and each slot's plug-in name and parameters.

    A Protocol rather than KVConfig itself, so this package (which KVConfig imports to validate) does not
    import the config module back.
    """

    @property
    def policy(self) -> str: ...
    @property
    def policy_params(self) -> dict[str, Any]: ...
    @property
    def layer_allocation(self) -> str: ...
    @property
    def layer_allocation_params(self) -> dict[str, Any]: ...
    @property
    def head_allocation(self) -> str: ...
    @property
    def head_allocation_params(self) -> dict[str, Any]: ...
    @property
    def session_ttl(self) -> str: ...
    @property
    def session_ttl_params(self) -> dict[str, Any]: ...
    @property
    def budget(self) -> int | None: ...
    @property
    def compression_ratio(self) -> float | None: ...
    @property
    def compresses(self) -> bool: ...
    @property
    def sink_tokens(self) -> int: ...
    @property
    def window(self) -> int: ...
    @property
    def scoring(self) -> str: ...


@dataclass
class LayerStats:
    """Attention statistics gathered for one layer since its last eviction, aligned with its slots.

    scoring_mass [H_kv, n]: mass from the scoring queries (the observation window, the last query, or a
    scoring prompt), summed over queries and the GQA group. acc_mass/acc_count [H_kv, n]: mass accumulated
    over every query that saw each slot, and how many queries did (H2O). query_sum/query_outer/query_count:
    running moments of pre-RoPE queries per query head (Expected Attention).
    """

    scoring_mass: torch.Tensor | None = None
    acc_mass: torch.Tensor | None = None
    acc_count: torch.Tensor | None = None
    query_sum: torch.Tensor | None = None
    query_outer: torch.Tensor | None = None
    query_count: int = 0

    def gather(self, index: torch.Tensor) -> None:
        """Keep the statistics of kept slots only (``index`` [H_kv, k]); evicted scores are dropped."""
        for name in _SLOT_ALIGNED:
            t = getattr(self, name)
            if t is not None:
                setattr(self, name, t.gather(1, index))

    def pad_to(self, n: int) -> None:
        """Extend slot-aligned statistics with zeros for newly appended slots."""
        for name in _SLOT_ALIGNED:
            t = getattr(self, name)
            if t is not None and t.shape[1] < n:
                # torch only when the cache runs: this module is imported torch-free
                from torch.nn.functional import pad

                setattr(self, name, pad(t, (0, n - t.shape[1])))


@dataclass
class RopeInfo:
    """The rotary embedding of the model, for policies that reason about future query positions."""

    inv_freq: torch.Tensor  # [d/2]
    attention_scaling: float = 1.0
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class ScoringInputs:
    """Everything a policy may look at for one layer (batch dimension removed)."""

    layer_idx: int
    keys: torch.Tensor  # [H_kv, n, d]
    values: torch.Tensor  # [H_kv, n, d]
    positions: torch.Tensor  # [H_kv, n] logical positions
    valid: torch.Tensor  # [H_kv, n] False for padding
    seen: int
    num_heads: int
    config: ConfigView
    stats: LayerStats
    rope: RopeInfo | None = None


class Policy(Plugin):
    """Scores slots; higher means more worth keeping.

    stats: which attention statistics the attention function must gather: "none", "scoring" (observation
    window / last query / scoring prompt), "accumulated" (every query, H2O) or "queries" (query moments,
    Expected Attention). last_query_only: score with the last query alone (TOVA). evicts: False for the
    uncompressed baseline. observation_window: how many last queries score the cache (a policy that owns the
    knob declares it as a parameter). reduce: "sum" (attention mass, SnapKV/H2O), "mean" or "max" (the
    largest weight any one query and query head gave a key: KVzip, EpiCache); a policy that lets users choose
    declares it as a parameter. residual_weighted: weigh each scoring weight by what the pair writes to the
    residual stream relative to its size (KVzip+: ||W_O v|| / ||h||); a policy that offers it declares a
    parameter and overrides the property. needs_profile: it scores with data fitted per model (a file its parameters
    name), so it runs only on a model it was fitted for; generic test matrices and default searches skip it.
    """

    stats: ClassVar[Stats] = "none"
    last_query_only: ClassVar[bool] = False
    evicts: ClassVar[bool] = True
    needs_profile: ClassVar[bool] = False
    observation_window: int = DEFAULT_OBSERVATION_WINDOW
    reduce: str = "sum"  # how a key's weights from many scoring queries combine: sum, mean or max

    @property
    def residual_weighted(self) -> bool:
        return False

    def score(self, inp: ScoringInputs) -> torch.Tensor:
        raise NotImplementedError


POLICY_REGISTRY: Registry[type[Policy]] = Registry("policy", Policy)


def make_policy(config: ConfigView) -> Policy:
    """The policy a config names, built with its own parameters (already validated by KVConfig)."""
    return POLICY_REGISTRY.get(config.policy)(**config.policy_params)


def scoring_mass_or_raise(inp: ScoringInputs) -> torch.Tensor:
    """The scoring-query mass; a policy that needs it cannot run before any attention was observed."""
    mass = inp.stats.scoring_mass
    if mass is None:
        raise RuntimeError(
            f"layer {inp.layer_idx}: no attention statistics were gathered before eviction; "
            "was the model loaded with kvpilot's attention (kvpilot.load_model / kvpilot.attach)?"
        )
    return mass


def odd_kernel(k: int) -> str | None:
    """Parameter check of a pooling width: centred windows need an odd one."""
    return None if k % 2 else "must be odd (1, 3, 5, ...)"


def pool_over_neighbours(scores: torch.Tensor, valid: torch.Tensor, pooling: str, kernel: int) -> torch.Tensor:
    """[H, n] scores smoothed over ``kernel`` neighbouring slots (SnapKV's clustering), padding left out.

    "max" lifts a slot to its best neighbour's score, so a span whose one token scores high is kept whole
    (works on log scores too); "avg" is SnapKV's mean (for non-negative masses); "none" returns the scores.
    """
    import torch
    import torch.nn.functional as F

    if pooling == "none" or kernel <= 1:
        return scores
    if pooling == "max":
        x = scores.masked_fill(~valid, float("-inf"))[None]
        pooled = F.max_pool1d(x, kernel_size=kernel, stride=1, padding=kernel // 2)[0]
        return torch.where(valid, pooled, scores)
    x = scores.masked_fill(~valid, 0.0)[None]
    return F.avg_pool1d(x, kernel_size=kernel, stride=1, padding=kernel // 2, count_include_pad=False)[0]
