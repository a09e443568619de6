"""kvpilot's registered attention function: SDPA plus exactly the statistics the cache needs.

Selected with ``attn_implementation="kvpilot"``. For a forward that runs on a ManagedCache it builds the
layer's own mask (every kept key is in the past, padding slots are hidden, new tokens are causal among
themselves), runs SDPA, then recomputes only what the policy asked for through the stats kernels: the
observation window at prefill, the new row at decode, or the scoring prompt's queries. Eager attention
and ``output_attentions`` are never needed. Any other cache gets plain causal SDPA.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import AttentionInterface

from kvpilot.cache.managed import ManagedCache, active_cache
from kvpilot.kernels import attention_stats

ATTN_IMPLEMENTATION = "kvpilot"


def causal_mask(q_len: int, n_keys: int, device: torch.device) -> torch.Tensor:
    """[q, n] bool: the queries are the last ``q_len`` keys (bottom-right aligned causal mask)."""
    rows = torch.arange(q_len, device=device)[:, None] + (n_keys - q_len)
    return torch.arange(n_keys, device=device)[None, :] <= rows


def build_mask(q_len: int, n_keys: int, valid: torch.Tensor | None, group: int, device) -> torch.Tensor | None:
    """[1, H|1, q, n] bool mask, or None when SDPA needs none (decode with no padding)."""
    mask = causal_mask(q_len, n_keys, device)[None, None] if q_len > 1 else None
    if valid is not None:
        v = valid.repeat_interleave(group, dim=0)[None, :, None, :]
        mask = v if mask is None else (mask & v)
    return mask


def unrotate(query: torch.Tensor, position_ids: torch.Tensor, cache: ManagedCache) -> torch.Tensor:
    """Pre-RoPE queries [H, q, d] from post-RoPE ones (rotate_half convention of Llama-like models)."""
    rope = cache.rope
    angles = position_ids[0].float()[:, None] * rope.inv_freq.to(query.device)[None, :]
    cos, sin = torch.cos(angles), torch.sin(angles)
    q = query[0].float() / rope.attention_scaling
    half = q.shape[-1] // 2
    q1, q2 = q[..., :half], q[..., half:]
    return torch.cat([q1 * cos + q2 * sin, q2 * cos - q1 * sin], dim=-1)


def kvpilot_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    layer_idx = module.layer_idx
    q_len, n_keys = query.shape[2], key.shape[2]
    group = query.shape[1] // key.shape[1]
    scaling = scaling if scaling is not None else query.shape[-1] ** -0.5
    cache = active_cache()
    if cache is None or not cache.owns_forward(layer_idx, n_keys):
        return _plain_sdpa(query, key, value, attention_mask, scaling)

    valid = cache.key_valid(layer_idx, n_keys)
    mask = build_mask(q_len, n_keys, valid, group, query.device)
    out = F.scaled_dot_product_attention(
        query, key, value, attn_mask=mask, scale=scaling, enable_gqa=group > 1
    )
    req = cache.stats_request(layer_idx, q_len, n_keys)
    if req is not None:
        kv = None if valid is None else valid[None, :, : req.key_stop]
        st = attention_stats(
            query[:, :, req.q_start :],
            key[:, :, : req.key_stop],
            scaling=scaling,
            causal=req.causal,
            key_valid=kv,
        )
        cache.record_stats(layer_idx, req, st.key_mass[0])
    if cache.wants_query_moments(layer_idx, q_len) and kwargs.get("position_ids") is not None:
        pre = unrotate(query, kwargs["position_ids"], cache)
        first = kwargs["position_ids"][0]
        pre = pre[:, first >= cache.config.sink_tokens]
        if pre.shape[1]:
            cache.record_query_moments(layer_idx, pre)
    observer = cache.observer
    if observer is not None:
        observer.on_attention(cache, layer_idx, query, key, valid, scaling)
    cache.after_attention(layer_idx, q_len)
    return out.transpose(1, 2).contiguous(), None


def _plain_sdpa(query, key, value, attention_mask, scaling):
    """Causal SDPA for caches kvpilot does not manage (or no cache)."""
    q_len, n_keys = query.shape[2], key.shape[2]
    group = query.shape[1] // key.shape[1]
    if attention_mask is not None and attention_mask.dtype == torch.bool and attention_mask.ndim == 4:
        mask = attention_mask[:, :, :, :n_keys]
    else:
        mask = causal_mask(q_len, n_keys, query.device)[None, None] if q_len > 1 else None
    out = F.scaled_dot_product_attention(query, key, value, attn_mask=mask, scale=scaling, enable_gqa=group > 1)
    return out.transpose(1, 2).contiguous(), None


_registered = False


def register_attention() -> str:
    """Register kvpilot's attention with transformers (idempotent); returns its implementation name."""
    global _registered
    if not _registered:
        AttentionInterface.register(ATTN_IMPLEMENTATION, kvpilot_attention)
        _registered = True
    return ATTN_IMPLEMENTATION
