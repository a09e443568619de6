"""ManagedCache: a transformers Cache of ManagedLayers that enforces a KVConfig.

It works with a user's own ``model.generate(..., cache=cache)`` (batch size 1) and with
kvpilot's engine. Eviction runs inside the forward pass, right after a layer's attention has used its
keys: at the end of prefill, after each prefill block, and every ``decode_interval`` decode steps. Each
layer owns its slots and evicts itself; the cache makes the cross-layer decisions (the budget of every
layer, the units tokens belong to, the modes of a forward) and keeps the byte accounting. For each layer
and forward it hands kvpilot's attention function a ``ForwardExchange`` (kvpilot.cache.exchange).
"""

from __future__ import annotations

import contextlib
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from transformers.cache_utils import Cache

from kvpilot.cache.exchange import EXCHANGE_KWARG, ForwardExchange, StatsRequest
from kvpilot.cache.layer import ManagedLayer
from kvpilot.config import KVConfig
from kvpilot.policies.base import RopeInfo, make_policy
from kvpilot.policies.layers import average_budget, layer_budgets, make_layer_allocator

UNIT_SINGLETON_OFFSET = 1 << 40  # unit id of a token that belongs to no registered unit


@dataclass(frozen=True)
class ModelShape:
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int

    @classmethod
    def of(cls, model: Any) -> ModelShape:
        cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
        heads = cfg.num_attention_heads
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
        return cls(cfg.num_hidden_layers, heads, getattr(cfg, "num_key_value_heads", heads), head_dim)


class ManagedCache(Cache):
    """A KV cache that keeps what its KVConfig allows, and reports honestly what it holds."""

    layers: list[ManagedLayer]  # type: ignore[assignment]

    def __init__(self, config: KVConfig, shape: ModelShape, rope: RopeInfo | None = None):
        config.validate_for_model(shape.num_layers, shape.num_kv_heads, shape.num_heads, shape.head_dim)
        super().__init__(layers=[ManagedLayer(i) for i in range(shape.num_layers)])
        for layer in self.layers:
            layer.on_resize = self._add_bytes
        self.shape = shape
        self.group_size = shape.num_heads // shape.num_kv_heads
        self.rope = rope
        self._config = config
        self.policy = make_policy(config)
        self._compresses = config.compresses  # read on every layer of every forward: computed once
        self._auto_evict = True
        self._defer_prompt_scoring = False
        self._scoring_pass = False
        self._restrict: tuple[int, int] | None = None
        self._units = torch.full((0,), -1, dtype=torch.long)
        self._bytes = 0
        self.peak_bytes = 0
        self.eviction_count = 0
        self.observer: Any = None  # optional probe (kvpilot.probes): on_attention(...) and on_evict(...)
        self._warned_prompt_fallback = False

    @classmethod
    def for_model(cls, model: Any, config: KVConfig | None = None) -> ManagedCache:
        """A managed cache shaped for ``model`` (its rotary embedding is used by Expected Attention)."""
        rope = None
        rotary = getattr(getattr(model, "model", model), "rotary_emb", None)
        if rotary is not None and hasattr(rotary, "inv_freq"):
            rope = RopeInfo(rotary.inv_freq.detach().float(), float(getattr(rotary, "attention_scaling", 1.0)))
        return cls(config or KVConfig(), ModelShape.of(model), rope)

    # ----- configuration ---------------------------------------------------------------------------

    @property
    def config(self) -> KVConfig:
        return self._config

    def set_config(self, config: KVConfig) -> None:
        """Apply a new config; a config that does not fit the model raises and changes nothing."""
        config.validate_for_model(self.shape.num_layers, self.shape.num_kv_heads, self.shape.num_heads,
                                  self.shape.head_dim)
        policy = make_policy(config)
        self._config, self.policy, self._compresses = config, policy, config.compresses

    # ----- transformers' Cache ---------------------------------------------------------------------

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args: Any,
               **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """Store the new keys and values; hand this forward's exchange to the attention function.

        transformers passes the attention layer's keyword arguments as ``kwargs=`` and unpacks the same
        dict into the attention function, which is how the exchange reaches it.
        """
        layer = self.layers[layer_idx]
        keys, values = layer.update(key_states, value_states)
        forward_kwargs = kwargs.get("kwargs")
        if isinstance(forward_kwargs, dict):
            forward_kwargs[EXCHANGE_KWARG] = ForwardExchange(self, layer, key_states.shape[-2], keys.shape[-2])
        return keys, values

    @property
    def seen_tokens(self) -> int:
        return self.layers[0].seen

    # ----- modes --------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def no_eviction(self) -> Iterator[None]:
        """Append without evicting (questions asked of an already compressed context)."""
        previous, self._auto_evict = self._auto_evict, False
        try:
            yield
        finally:
            self._auto_evict = previous

    @contextlib.contextmanager
    def prompt_scoring_driven(self) -> Iterator[None]:
        """The caller runs the scoring prompt and calls ``evict()`` itself after each block."""
        previous, self._defer_prompt_scoring = self._defer_prompt_scoring, True
        try:
            yield
        finally:
            self._defer_prompt_scoring = previous

    @contextlib.contextmanager
    def scoring_pass(self, restrict: tuple[int, int] | None = None) -> Iterator[None]:
        """Run a forward whose tokens act only as scoring queries and leave no trace in the cache.

        ``restrict`` (a reconstruction pass): only the sinks and the slots at logical positions
        [start, stop) compete with the queries' own keys, and what they get combines with earlier passes.
        """
        self._scoring_pass = True
        self._restrict = restrict
        for layer in self.layers:
            layer.scoring_past = 0
        try:
            yield
        finally:
            self._scoring_pass = False
            self._restrict = None
            for layer in self.layers:
                layer.scoring_past = -1
            self.settle()

    @property
    def in_scoring_pass(self) -> bool:
        return self._scoring_pass

    # ----- units ------------------------------------------------------------------------------------

    def set_units(self, start: int, unit_ids: torch.Tensor) -> None:
        """Declare the unit (sentence, turn) of logical positions [start, start + len(unit_ids))."""
        end = start + unit_ids.numel()
        if self._units.numel() < end:
            grown = torch.full((max(end, 2 * self._units.numel()),), -1, dtype=torch.long)
            grown[: self._units.numel()] = self._units
            self._units = grown
        self._units[start:end] = unit_ids.to(torch.long).cpu()

    def units_of(self, positions: torch.Tensor) -> torch.Tensor | None:
        """The unit of each slot (None at token granularity); a token outside any unit is its own unit."""
        gran = self._config.granularity
        if gran == "token":
            return None
        if gran == "chunk":
            return positions // self._config.chunk_size
        pos = positions.cpu()
        units = torch.full_like(pos, -1)
        inside = pos < self._units.numel()
        units[inside] = self._units[pos[inside]]
        units = torch.where(units >= 0, units, pos + UNIT_SINGLETON_OFFSET)
        return units.to(positions.device)

    # ----- what a forward's exchange asks ----------------------------------------------------------

    def stats_request(self, layer: ManagedLayer, q_len: int, key_len: int) -> StatsRequest | None:
        needs = self.policy.stats
        if not self._compresses or needs in ("none", "queries"):
            return None
        reduce, weighted = self.policy.reduce, self.policy.residual_weighted
        if layer.scoring_past >= 0:
            if self._restrict is not None:
                return StatsRequest("scoring", 0, key_len, causal=True, accumulate=True, reduce=reduce,
                                    restrict=self._restrict, record_stop=layer.scoring_past,
                                    residual_weighted=weighted)
            return StatsRequest("scoring", 0, layer.scoring_past, causal=False, reduce=reduce,
                                residual_weighted=weighted)
        if q_len == 1 and not self._config.decode_interval and not self._defer_prompt_scoring:
            return None  # nothing will ever be evicted during decode: skip the work (a 1-token prefill block is
            # not decode: the prefill evicts after it and needs its scores)
        if q_len > 1 and self._config.scoring != "window" and self._defer_prompt_scoring:
            return None  # the scoring prompt or the reconstruction will provide the scores
        if needs == "accumulated" and self._config.scoring == "window":
            return StatsRequest("accumulated", 0, key_len, causal=True, accumulate=True)
        if self.policy.last_query_only:
            return StatsRequest("scoring", q_len - 1, key_len, causal=True, residual_weighted=weighted)
        window = min(self.policy.observation_window, q_len)
        return StatsRequest("scoring", q_len - window, key_len, causal=True, accumulate=q_len == 1, reduce=reduce,
                            residual_weighted=weighted)

    @property
    def wants_residual_norms(self) -> bool:
        """Whether forwards must hand the attention the residual stream's norm per query (KVzip+)."""
        return self._compresses and self.policy.residual_weighted

    def wants_query_moments(self, layer: ManagedLayer, q_len: int) -> bool:
        return (
            self.policy.stats == "queries"
            and self._compresses
            and q_len > 1
            and layer.scoring_past < 0
        )

    def after_attention(self, layer: ManagedLayer, q_len: int) -> None:
        """Called once the layer's attention output exists: evict now if this forward calls for it, then let
        a layer with ragged heads go back to holding only its valid slots."""
        self._evict_after_attention(layer, q_len)
        layer.settle(self._config.kv_storage)

    def settle(self) -> None:
        """Every layer with ragged heads back to holding only its valid slots (after a pass that unpacked
        them all: a cross-layer eviction, a scoring pass)."""
        for layer in self.layers:
            layer.settle(self._config.kv_storage)

    def _evict_after_attention(self, layer: ManagedLayer, q_len: int) -> None:
        if layer.scoring_past >= 0 or not self._auto_evict or not self._compresses:
            return
        if q_len > 1:
            if self._defer_prompt_scoring:
                return  # the caller evicts every layer once its scoring queries have run
            if self._config.scoring != "window":
                if not self._warned_prompt_fallback:
                    warnings.warn(
                        f"scoring={self._config.scoring!r} needs kvpilot's prefill (kvpilot.engine.prefill) to run "
                        "its scoring queries; this forward was scored by its own last window instead",
                        stacklevel=2,
                    )
                    self._warned_prompt_fallback = True
            self.evict_layer(layer.layer_idx)
        else:
            layer.decode_steps += 1
            interval = self._config.decode_interval
            if interval and layer.decode_steps % interval == 0:
                self.evict_layer(layer.layer_idx)

    # ----- eviction: the cross-layer decisions ------------------------------------------------------

    def budgets(self) -> list[int]:
        """Tokens each layer keeps per KV head under the config in force, for what has been seen."""
        return layer_budgets(self._config, self.shape.num_layers, max(1, self.seen_tokens))

    def evict(self) -> int:
        """Evict every layer down to its budget now; returns the number of slots evicted.

        With an allocator that needs scores (``layer_allocation="global"``) the layers' budgets are decided
        here, together, from every layer's scores."""
        head_budgets: list[list[int] | None] = [None] * len(self.layers)
        allocator = make_layer_allocator(self._config)
        if allocator.needs_scores and self._compresses and self.layers[0].positions is not None:
            head_budgets = list(self._scored_budgets(allocator))
        per_head = bool(getattr(allocator, "heads", False))  # else the layer's head allocation splits its budget
        evicted = sum(
            self.evict_layer(i, budget=None if b is None else max(b), per_head=b if per_head else None)
            for i, b in enumerate(head_budgets)
        )
        self.settle()
        return evicted

    @property
    def evicts_all_layers_at_once(self) -> bool:
        """True when eviction must wait for every layer's scores (the prefill then calls `evict()`)."""
        return self._compresses and make_layer_allocator(self._config).needs_scores

    def _scored_budgets(self, allocator: Any) -> list[list[int]]:
        seen = self.seen_tokens
        avg = average_budget(self._config, seen)
        candidates, protected, available = [], [], []
        for layer in self.layers:
            scores, n_protected, n_valid = layer.candidate_scores(
                avg, self._config, self.policy, num_heads=self.shape.num_heads, rope=self.rope)
            candidates.append(scores)
            protected.append(n_protected)
            available.append(n_valid)
        return allocator.from_scores(avg, candidates, protected, available)

    def evict_layer(self, layer_idx: int, budget: int | None = None, per_head: list[int] | None = None) -> int:
        """Evict one layer down to its budget (the allocator's, unless given; ``per_head``: each KV head's own
        budget, decided across layers); an observer hears the cost."""
        layer = self.layers[layer_idx]
        if layer.positions is None or not self._compresses:
            return 0
        t0 = time.perf_counter()
        if budget is None:
            budget = layer_budgets(self._config, self.shape.num_layers, layer.seen)[layer_idx]
        evicted = layer.evict(budget, self._config, self.policy, num_heads=self.shape.num_heads,
                              rope=self.rope, units_of=self.units_of, per_head=per_head)
        if evicted:
            self.eviction_count += 1
            if self.observer is not None:
                self.observer.on_evict(self, layer_idx, evicted, time.perf_counter() - t0)
        return evicted

    # ----- snapshots and accounting ---------------------------------------------------------------

    def snapshot(self) -> list[dict[str, Any]]:
        """A cheap copy of the cache state (tensors are replaced, never mutated, so references suffice)."""
        return [layer.snapshot() for layer in self.layers]

    def restore(self, state: list[dict[str, Any]]) -> None:
        for layer, saved in zip(self.layers, state, strict=True):
            layer.on_resize = None  # the layers change one by one: the total is taken once they all have
            layer.restore(saved)
            layer.on_resize = self._add_bytes
        self._bytes = sum(layer.nbytes for layer in self.layers)
        self.peak_bytes = max(self.peak_bytes, self._bytes)

    @property
    def physical_bytes(self) -> int:
        """Bytes the keys and values occupy now, padding included."""
        return self._bytes

    @property
    def layer_peak_bytes(self) -> list[int]:
        return [layer.peak_nbytes for layer in self.layers]

    def peaks(self) -> tuple[int, list[int]]:
        """The peak counters, to put back after work that must not count (a teacher-forced replay)."""
        return self.peak_bytes, self.layer_peak_bytes

    def set_peaks(self, peaks: tuple[int, list[int]]) -> None:
        self.peak_bytes = peaks[0]
        for layer, peak in zip(self.layers, peaks[1], strict=True):
            layer.peak_nbytes = peak

    def logical_bytes(self) -> int:
        """Bytes an uncompressed cache would occupy for the tokens seen."""
        layer = self.layers[0]
        return self.shape.num_kv_heads * layer.slot_bytes * layer.seen * len(self.layers)

    def compression_ratio(self) -> float:
        logical = self.logical_bytes()
        return 0.0 if logical == 0 else 1.0 - self.physical_bytes / logical

    def kept_tokens(self) -> list[list[int]]:
        """Valid tokens per layer and KV head."""
        return [layer.kept_per_head() for layer in self.layers]

    def reset_peak(self) -> None:
        self.peak_bytes = self.physical_bytes
        for layer in self.layers:
            layer.peak_nbytes = layer.nbytes

    def _add_bytes(self, delta: int) -> None:
        self._bytes += delta
        if self._bytes > self.peak_bytes:
            self.peak_bytes = self._bytes
