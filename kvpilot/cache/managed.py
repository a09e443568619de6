"""ManagedCache: a transformers Cache that enforces a KVConfig.

It works with a user's own ``model.generate(..., past_key_values=cache)`` (batch size 1) and with
kvpilot's generation loop. Eviction runs inside the forward pass, right after a layer's attention has
used its keys: at the end of prefill, after each prefill block, and every ``decode_interval`` decode
steps. The registered attention function (``kvpilot.engine.attention``) builds each layer's mask from
the slots this cache reports and hands back the statistics the policy asked for.
"""

from __future__ import annotations

import contextlib
import threading
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from transformers.cache_utils import Cache

from kvpilot.cache.budgets import adaptive_head_budgets, layer_budgets
from kvpilot.cache.layer import ManagedLayer
from kvpilot.cache.policies import LayerStats, RopeInfo, ScoringInputs, make_policy
from kvpilot.cache.selection import keep_indices, protected_slots
from kvpilot.config import KVConfig

_ACTIVE = threading.local()

UNIT_SINGLETON_OFFSET = 1 << 40  # unit id of a token that belongs to no registered unit


def active_cache() -> ManagedCache | None:
    """The managed cache whose ``update`` ran last in this thread (the attention function's partner)."""
    return getattr(_ACTIVE, "cache", None)


@dataclass(frozen=True)
class StatsRequest:
    """Which attention statistics the attention function must compute for one layer and forward.

    kind: "scoring" (replace or add to the scoring mass), "accumulated" (H2O sums) or "last" (TOVA row).
    The queries are ``query[:, :, q_start:]``; the keys are ``key[:, :, :key_stop]``.
    """

    kind: str
    q_start: int
    key_stop: int
    causal: bool
    accumulate: bool = False


@dataclass(frozen=True)
class ModelShape:
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int

    @classmethod
    def of(cls, model) -> ModelShape:
        cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
        heads = cfg.num_attention_heads
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
        return cls(cfg.num_hidden_layers, heads, getattr(cfg, "num_key_value_heads", heads), head_dim)


class ManagedCache(Cache):
    """A KV cache that keeps what its KVConfig allows, and reports honestly what it holds."""

    def __init__(self, config: KVConfig, shape: ModelShape, rope: RopeInfo | None = None):
        config.validate_for_model(shape.num_layers, shape.num_kv_heads, shape.num_heads)
        super().__init__(layers=[ManagedLayer(i) for i in range(shape.num_layers)])
        self.shape = shape
        self.rope = rope
        self._config = config
        self.policy = make_policy(config)
        self._auto_evict = True
        self._defer_prompt_scoring = False
        self._units = torch.full((0,), -1, dtype=torch.long)
        self.peak_bytes = 0
        self.layer_peak_bytes = [0] * shape.num_layers
        self.eviction_count = 0
        self.observer = None  # optional probe (kvpilot.probes): on_attention(...) and on_evict(...)
        self._warned_prompt_fallback = False

    @classmethod
    def for_model(cls, model, config: KVConfig | None = None) -> ManagedCache:
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
        config.validate_for_model(self.shape.num_layers, self.shape.num_kv_heads, self.shape.num_heads)
        policy = make_policy(config)
        self._config, self.policy = config, policy

    # ----- transformers' Cache ---------------------------------------------------------------------

    def update(self, key_states, value_states, layer_idx: int, *args, **kwargs):
        _ACTIVE.cache = self
        out = self.layers[layer_idx].update(key_states, value_states)
        self._track_bytes(layer_idx)
        return out

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
    def scoring_pass(self) -> Iterator[None]:
        """Run a forward whose tokens act only as scoring queries and leave no trace in the cache."""
        for layer in self.layers:
            layer.scoring_past = 0
        try:
            yield
        finally:
            for layer in self.layers:
                layer.scoring_past = -1
                layer.pending_queries = 0

    # ----- units ------------------------------------------------------------------------------------

    def set_units(self, start: int, unit_ids: torch.Tensor) -> None:
        """Declare the unit (sentence, turn) of logical positions [start, start + len(unit_ids))."""
        end = start + unit_ids.numel()
        if self._units.numel() < end:
            grown = torch.full((max(end, 2 * self._units.numel()),), -1, dtype=torch.long)
            grown[: self._units.numel()] = self._units
            self._units = grown
        self._units[start:end] = unit_ids.to(torch.long).cpu()

    def _slot_units(self, positions: torch.Tensor) -> torch.Tensor | None:
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

    # ----- what the attention function asks ---------------------------------------------------------

    def owns_forward(self, layer_idx: int, key_len: int) -> bool:
        layer = self.layers[layer_idx]
        return layer.pending_queries > 0 and key_len == layer.physical_length + (
            layer.pending_queries if layer.scoring_past >= 0 else 0
        )

    def key_valid(self, layer_idx: int, key_len: int) -> torch.Tensor | None:
        """[H_kv, key_len] validity of the keys the attention sees (None: all valid)."""
        layer = self.layers[layer_idx]
        if layer.valid is None:
            return None
        extra = key_len - layer.valid.shape[-1]
        if extra:
            return torch.cat([layer.valid, layer.valid.new_ones(layer.valid.shape[0], extra)], dim=-1)
        return layer.valid

    def stats_request(self, layer_idx: int, q_len: int, key_len: int) -> StatsRequest | None:
        layer = self.layers[layer_idx]
        needs = self.policy.stats
        if not self._config.compresses or needs in ("none", "queries"):
            return None
        if layer.scoring_past >= 0:
            return StatsRequest("scoring", 0, layer.scoring_past, causal=False)
        if q_len == 1 and not self._config.decode_interval:
            return None  # nothing will ever be evicted during decode: skip the work
        if q_len > 1 and self._config.scoring == "prompt" and self._defer_prompt_scoring:
            return None  # the scoring prompt will provide the scores
        if needs == "accumulated" and self._config.scoring == "window":
            return StatsRequest("accumulated", 0, key_len, causal=True, accumulate=True)
        if self.policy.last_query_only:
            return StatsRequest("scoring", q_len - 1, key_len, causal=True)
        window = min(self._config.observation_window, q_len)
        return StatsRequest("scoring", q_len - window, key_len, causal=True, accumulate=q_len == 1)

    def record_stats(self, layer_idx: int, req: StatsRequest, key_mass: torch.Tensor) -> None:
        """Store ``key_mass`` [H_kv, n] (summed over queries and the GQA group) for the policy."""
        st: LayerStats = self.layers[layer_idx].stats
        n = key_mass.shape[-1]
        if req.kind == "accumulated":
            q = self.layers[layer_idx].pending_queries
            group = self.shape.num_heads // self.shape.num_kv_heads
            first_new = n - q
            seen_by = torch.full((n,), float(q), device=key_mass.device)
            seen_by[first_new:] = torch.arange(q, 0, -1, device=key_mass.device, dtype=torch.float32)
            count = (seen_by * group).expand_as(key_mass)
            st.pad_to(n)
            st.acc_mass = key_mass if st.acc_mass is None else st.acc_mass[:, :n] + key_mass
            st.acc_count = count.clone() if st.acc_count is None else st.acc_count[:, :n] + count
            return
        if req.accumulate and st.scoring_mass is not None:
            prev = torch.nn.functional.pad(st.scoring_mass, (0, max(0, n - st.scoring_mass.shape[-1])))
            st.scoring_mass = prev[:, :n] + key_mass
        else:
            st.scoring_mass = key_mass

    def wants_query_moments(self, layer_idx: int, q_len: int) -> bool:
        return (
            self.policy.stats == "queries"
            and self._config.compresses
            and q_len > 1
            and self.layers[layer_idx].scoring_past < 0
        )

    def record_query_moments(self, layer_idx: int, queries_pre_rope: torch.Tensor) -> None:
        """Accumulate first and second moments of pre-RoPE queries [H, q, d] (Expected Attention)."""
        st = self.layers[layer_idx].stats
        q = queries_pre_rope.float()
        s, outer = q.sum(dim=1), torch.einsum("hqd,hqe->hde", q, q)
        st.query_sum = s if st.query_sum is None else st.query_sum + s
        st.query_outer = outer if st.query_outer is None else st.query_outer + outer
        st.query_count += q.shape[1]

    def after_attention(self, layer_idx: int, q_len: int) -> None:
        """Called once the layer's attention output exists: evict now if this forward calls for it."""
        layer = self.layers[layer_idx]
        layer.pending_queries = 0
        if layer.scoring_past >= 0 or not self._auto_evict or not self._config.compresses:
            return
        if q_len > 1:
            if self._config.scoring == "prompt":
                if self._defer_prompt_scoring:
                    return
                if not self._warned_prompt_fallback:
                    warnings.warn(
                        "scoring='prompt' needs kvpilot's prefill (kvpilot.engine.prefill) to run the scoring "
                        "prompt; this forward was scored by its own last window instead",
                        stacklevel=2,
                    )
                    self._warned_prompt_fallback = True
            self.evict_layer(layer_idx)
        else:
            layer.decode_steps += 1
            interval = self._config.decode_interval
            if interval and layer.decode_steps % interval == 0:
                self.evict_layer(layer_idx)

    # ----- eviction --------------------------------------------------------------------------------------

    def budgets(self) -> list[int]:
        """Tokens each layer keeps per KV head under the config in force, for what has been seen."""
        return layer_budgets(self._config, self.shape.num_layers, max(1, self.seen_tokens))

    def evict(self) -> int:
        """Evict every layer down to its budget now; returns the number of slots evicted."""
        return sum(self.evict_layer(i) for i in range(len(self.layers)))

    def evict_layer(self, layer_idx: int) -> int:
        """Evict one layer down to its budget; an attached observer is told what it cost."""
        observer = self.observer
        if observer is None:
            return self._evict_layer(layer_idx)
        t0 = time.perf_counter()
        evicted = self._evict_layer(layer_idx)
        if evicted:
            observer.on_evict(self, layer_idx, evicted, time.perf_counter() - t0)
        return evicted

    def _evict_layer(self, layer_idx: int) -> int:
        layer = self.layers[layer_idx]
        if layer.positions is None or not self._config.compresses:
            return 0
        budget = layer_budgets(self._config, self.shape.num_layers, layer.seen)[layer_idx]
        valid = layer.valid_mask()
        kept_now = valid.sum(dim=-1)
        adaptive = self._config.head_allocation == "adaptive"
        if (int(kept_now.sum()) if adaptive else int(kept_now.max())) <= budget * (len(kept_now) if adaptive else 1):
            return 0
        inputs = ScoringInputs(
            layer_idx=layer_idx,
            keys=layer.keys[0],
            values=layer.values[0],
            positions=layer.positions,
            valid=valid,
            seen=layer.seen,
            num_heads=self.shape.num_heads,
            config=self._config,
            stats=layer.stats,
            rope=self.rope,
        )
        scores = self.policy.score(inputs)
        protected = protected_slots(
            layer.positions, valid, layer.seen, self._config.sink_tokens, self._config.window, budget
        )
        n_protected = protected.sum(dim=-1).tolist()
        available = kept_now.tolist()
        if adaptive:
            rest = budget - max(n_protected)
            extra = adaptive_head_budgets(scores, valid & ~protected, rest, self._config.adaptive_alpha)
            head_budgets = [min(p + e, a) for p, e, a in zip(n_protected, extra, available, strict=True)]
        else:
            head_budgets = [min(budget, a) for a in available]
        if head_budgets == available:
            return 0
        keep = keep_indices(
            scores, valid, protected, head_budgets, self._slot_units(layer.positions), self._config.unit_pooling
        )
        evicted = layer.compact(keep)
        self.eviction_count += 1
        self._track_bytes(layer_idx)
        return evicted

    # ----- snapshots and accounting ---------------------------------------------------------------

    def snapshot(self) -> list[dict]:
        """A cheap copy of the cache state (tensors are replaced, never mutated, so references suffice)."""
        return [
            {k: getattr(layer, k) for k in ("keys", "values", "positions", "valid", "seen", "decode_steps")}
            | {"stats": LayerStats(**vars(layer.stats))}
            for layer in self.layers
        ]

    def restore(self, state: list[dict]) -> None:
        for layer, saved in zip(self.layers, state, strict=True):
            for k, v in saved.items():
                setattr(layer, k, LayerStats(**vars(v)) if k == "stats" else v)
            layer.is_initialized = layer.keys is not None
            layer.pending_queries = 0
        for i in range(len(self.layers)):
            self._track_bytes(i)

    @property
    def physical_bytes(self) -> int:
        """Bytes the keys and values occupy now, padding included."""
        return sum(layer.nbytes for layer in self.layers)

    def logical_bytes(self) -> int:
        """Bytes an uncompressed cache would occupy for the tokens seen."""
        layer = self.layers[0]
        if layer.keys is None:
            return 0
        per_token = 2 * self.shape.num_kv_heads * self.shape.head_dim * layer.keys.element_size()
        return per_token * layer.seen * len(self.layers)

    def compression_ratio(self) -> float:
        logical = self.logical_bytes()
        return 0.0 if logical == 0 else 1.0 - self.physical_bytes / logical

    def kept_tokens(self) -> list[list[int]]:
        """Valid tokens per layer and KV head."""
        return [layer.kept_per_head() for layer in self.layers]

    def reset_peak(self) -> None:
        self.peak_bytes = self.physical_bytes
        self.layer_peak_bytes = [layer.nbytes for layer in self.layers]

    def _track_bytes(self, layer_idx: int) -> None:
        nbytes = self.layers[layer_idx].nbytes
        if nbytes > self.layer_peak_bytes[layer_idx]:
            self.layer_peak_bytes[layer_idx] = nbytes
        total = self.physical_bytes
        if total > self.peak_bytes:
            self.peak_bytes = total
