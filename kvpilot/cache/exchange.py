"""The attention-statistics exchange: what one layer's attention and the managed cache tell each other.

transformers' attention layers hand their keyword arguments to ``Cache.update(..., kwargs=kwargs)`` and
then unpack the same dict into the attention function. The managed cache puts one small
``ForwardExchange`` into that dict for the forward in flight, so kvpilot's attention function receives it
as an ordinary argument: it says which keys are valid and which statistics the policy needs, and takes the
statistics back. It lives exactly as long as that forward; nothing global refers to a cache afterwards.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import torch

from kvpilot.config import KVConfig
from kvpilot.policies.base import RopeInfo

EXCHANGE_KWARG = "kvpilot_exchange"


@dataclass(frozen=True)
class StatsRequest:
    """Which attention statistics the attention function must compute for one layer and forward.

    kind: "scoring" (replace or combine with the scoring mass) or "accumulated" (H2O sums).
    The queries are ``query[:, :, q_start:]``; the keys are ``key[:, :, :key_stop]``. reduce: how each key's
    weights from those queries combine ("sum", "mean", "max"); accumulate: combine with what earlier
    forwards recorded (added, or the maximum for "max"). restrict: only the past slots whose logical
    positions fall in [start, stop) (plus the sinks) compete in the softmax, the scoring queries' own keys
    too (a reconstruction pass); record_stop: how many leading keys are cached slots whose scores are kept.
    residual_weighted: KVzip+ weights (||W_O v|| per key and query head, 1 / ||h|| per query).
    """

    kind: str
    q_start: int
    key_stop: int
    causal: bool
    accumulate: bool = False
    reduce: str = "sum"
    restrict: tuple[int, int] | None = None
    record_stop: int | None = None
    residual_weighted: bool = False


class LayerSide(Protocol):
    """What the exchange needs of a cache layer (``kvpilot.cache.layer.ManagedLayer``)."""

    layer_idx: int

    def key_valid(self, key_len: int) -> torch.Tensor | None: ...
    def record_stats(self, req: StatsRequest, key_mass: torch.Tensor, group: int, q_len: int) -> None: ...
    def record_query_moments(self, queries_pre_rope: torch.Tensor) -> None: ...
    def restrict_mask(self, positions: tuple[int, int], sinks: int) -> torch.Tensor: ...


class CacheSide(Protocol):
    """What the exchange needs of the cache (``kvpilot.cache.managed.ManagedCache``)."""

    group_size: int
    observer: Any
    rope: RopeInfo | None

    @property
    def config(self) -> KVConfig: ...

    def stats_request(self, layer: Any, q_len: int, key_len: int) -> StatsRequest | None: ...
    def wants_query_moments(self, layer: Any, q_len: int) -> bool: ...
    def after_attention(self, layer: Any, q_len: int) -> None: ...


class ForwardExchange:
    """One layer's side of one forward: the cache's view for the attention function, and its callbacks."""

    __slots__ = ("cache", "layer", "q_len", "n_keys", "stats_request")

    def __init__(self, cache: CacheSide, layer: LayerSide, q_len: int, n_keys: int) -> None:
        self.cache = cache
        self.layer = layer
        self.q_len = q_len
        self.n_keys = n_keys
        self.stats_request: StatsRequest | None = cache.stats_request(layer, q_len, n_keys)

    @property
    def layer_idx(self) -> int:
        return self.layer.layer_idx

    def key_valid(self) -> torch.Tensor | None:
        """[H_kv, n_keys] validity of the keys the attention sees (None: all valid)."""
        return self.layer.key_valid(self.n_keys)

    def stats_key_valid(self, valid: torch.Tensor | None) -> torch.Tensor | None:
        """[1, H_kv, key_stop] keys that compete in the statistics' softmax (None: all of them)."""
        req = self.stats_request
        assert req is not None
        if req.restrict is None:
            return None if valid is None else valid[None, :, : req.key_stop]
        past = self.layer.restrict_mask(req.restrict, self.cache.config.sink_tokens)  # [H_kv, n_past]
        own = past.new_ones(past.shape[0], req.key_stop - past.shape[1])
        mask = torch.cat([past, own], dim=-1)
        if valid is not None:
            mask &= valid[:, : req.key_stop]
        return mask[None]

    def record_stats(self, key_mass: torch.Tensor) -> None:
        """``key_mass`` [H_kv, n]: attention mass per key, summed over the requested queries and GQA group."""
        assert self.stats_request is not None
        self.layer.record_stats(self.stats_request, key_mass, self.cache.group_size, self.q_len)

    @property
    def wants_query_moments(self) -> bool:
        return self.cache.wants_query_moments(self.layer, self.q_len)

    def record_query_moments(self, queries_pre_rope: torch.Tensor) -> None:
        self.layer.record_query_moments(queries_pre_rope)

    def done(self) -> None:
        """The layer's attention output exists: the cache may evict this layer now."""
        self.cache.after_attention(self.layer, self.q_len)
