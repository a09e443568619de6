"""The policy contract: a policy scores the slots of one layer; selection and budgets are shared.

Adding a policy is one file with a `Policy` subclass decorated with `@register` plus one import line in
`kvpilot/cache/policies/__init__.py`; the shared test matrix then covers it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch

from kvpilot.config import KVConfig


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
        for name in ("scoring_mass", "acc_mass", "acc_count"):
            t = getattr(self, name)
            if t is not None:
                setattr(self, name, t.gather(1, index))

    def pad_to(self, n: int) -> None:
        """Extend slot-aligned statistics with zeros for newly appended slots."""
        for name in ("scoring_mass", "acc_mass", "acc_count"):
            t = getattr(self, name)
            if t is not None and t.shape[1] < n:
                setattr(self, name, torch.nn.functional.pad(t, (0, n - t.shape[1])))


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
    config: KVConfig
    stats: LayerStats
    rope: RopeInfo | None = None


@dataclass
class RopeInfo:
    """The rotary embedding of the model, for policies that reason about future query positions."""

    inv_freq: torch.Tensor  # [d/2]
    attention_scaling: float = 1.0
    extra: dict = field(default_factory=dict)


class Policy:
    """Scores slots; higher means more worth keeping. Subclasses set ``name`` and ``stats``.

    ``stats`` says which attention statistics the registered attention function must gather:
    "none", "scoring" (observation window / last query / scoring prompt), "accumulated" (every query,
    H2O) or "queries" (query moments, Expected Attention).
    """

    name: ClassVar[str] = ""
    stats: ClassVar[str] = "none"
    last_query_only: ClassVar[bool] = False

    def __init__(self, config: KVConfig):
        self.config = config

    def score(self, inp: ScoringInputs) -> torch.Tensor:
        raise NotImplementedError


POLICY_REGISTRY: dict[str, type[Policy]] = {}


def register(cls: type[Policy]) -> type[Policy]:
    POLICY_REGISTRY[cls.name] = cls
    return cls


def make_policy(config: KVConfig) -> Policy:
    return POLICY_REGISTRY[config.policy](config)


def scoring_mass_or_raise(inp: ScoringInputs) -> torch.Tensor:
    """The scoring-query mass; a policy that needs it cannot run before any attention was observed."""
    mass = inp.stats.scoring_mass
    if mass is None:
        raise RuntimeError(
            f"layer {inp.layer_idx}: no attention statistics were gathered before eviction; "
            "was the model loaded with kvpilot's attention (kvpilot.load_model / kvpilot.attach)?"
        )
    return mass
