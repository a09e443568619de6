"""kvpilot's registered attention function: SDPA plus exactly the statistics the cache needs.

Selected with ``attn_implementation="kvpilot"``. For a forward that runs on a ManagedCache it receives
that layer's ``ForwardExchange`` (the cache puts it among the forward's keyword arguments), builds the
layer's own mask (every kept key is in the past, padding slots are hidden, new tokens are causal among
themselves), runs SDPA, then recomputes only what the policy asked for through the stats kernels: the
observation window at prefill, the new row at decode, or the scoring prompt's queries. Eager attention
and ``output_attentions`` are never needed. Any other cache gets plain causal SDPA.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from transformers import AttentionInterface

from kvpilot.cache.exchange import ForwardExchange, StatsRequest
from kvpilot.errors import KVPilotError
from kvpilot.kernels import attention_stats, key_mass_over_subset
from kvpilot.policies.base import RopeInfo

ATTN_IMPLEMENTATION = "kvpilot"
RESIDUAL_NORM_KWARG = "kvpilot_residual_norm"  # [b, q] ||h|| of each query's residual stream (KVzip+)


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


def unrotate(query: torch.Tensor, position_ids: torch.Tensor, rope: RopeInfo) -> torch.Tensor:
    """Pre-RoPE queries [H, q, d] from post-RoPE ones (rotate_half convention of Llama-like models)."""
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
    kvpilot_exchange: ForwardExchange | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """SDPA over the layer's kept keys; then the statistics its ``ForwardExchange`` asks for."""
    scaling = scaling if scaling is not None else query.shape[-1] ** -0.5
    ex = kvpilot_exchange
    if ex is None:
        return _plain_sdpa(query, key, value, attention_mask, scaling)
    q_len, n_keys = query.shape[2], key.shape[2]
    group = query.shape[1] // key.shape[1]
    valid = ex.key_valid()
    if valid is None and q_len == n_keys:  # a fresh prefill: SDPA's own causal path is the fast one
        out = F.scaled_dot_product_attention(query, key, value, is_causal=q_len > 1, scale=scaling,
                                             enable_gqa=group > 1)
    else:
        mask = build_mask(q_len, n_keys, valid, group, query.device)
        out = F.scaled_dot_product_attention(query, key, value, attn_mask=mask, scale=scaling,
                                             enable_gqa=group > 1)
    req = ex.stats_request
    if req is not None:
        stats_valid = ex.stats_key_valid(valid)
        weights = _residual_weights(module, value, req, kwargs.get(RESIDUAL_NORM_KWARG), group)
        if req.restrict is not None and stats_valid is not None:  # a few keys compete: score only those
            key_mass = key_mass_over_subset(query[:, :, req.q_start :], key[:, :, : req.key_stop], stats_valid,
                                            scaling=scaling, causal=req.causal, reduce=req.reduce, **weights)
        else:
            key_mass = attention_stats(
                query[:, :, req.q_start :],
                key[:, :, : req.key_stop],
                scaling=scaling,
                causal=req.causal,
                key_valid=stats_valid,
                reduce=req.reduce,
                **weights,
            ).key_mass
        ex.record_stats(key_mass[0])
    cache = ex.cache
    position_ids = kwargs.get("position_ids")
    if ex.wants_query_moments and position_ids is not None and cache.rope is not None:
        pre = unrotate(query, position_ids, cache.rope)
        pre = pre[:, position_ids[0] >= cache.config.sink_tokens]
        if pre.shape[1]:
            ex.record_query_moments(pre)
    if cache.observer is not None:
        cache.observer.on_attention(cache, ex.layer_idx, query, key, valid, scaling)
    ex.done()
    return out.transpose(1, 2).contiguous(), None


def _residual_weights(module: torch.nn.Module, value: torch.Tensor, req: StatsRequest,
                      residual_norm: torch.Tensor | None, group: int) -> dict[str, torch.Tensor]:
    """KVzip+'s weights for a statistics request that asks for them, else none.

    key_weight [b, H, keys]: ||W_O^h v|| for each key and query head h (what the pair would write to the
    residual stream through that head), from the Gram matrix W_O^h^T W_O^h of the head's slice of the
    output projection; query_weight [b, q]: 1 / ||h|| of each scoring query's residual stream.
    """
    if not req.residual_weighted:
        return {}
    o_proj = getattr(module, "o_proj", None)
    if residual_norm is None or not isinstance(o_proj, torch.nn.Linear):
        raise KVPilotError("KVzip+ (plus=true) needs a decoder layer with an o_proj and the residual stream's "
                           "norm; load the model with kvpilot.engine.model.load_model")
    gram = _head_gram(o_proj.weight, value.shape[-1])  # [H, d, d]
    v = value[:, :, : req.key_stop].float().repeat_interleave(group, dim=1)  # [b, H, n, d]
    written = torch.einsum("bhnd,hde,bhne->bhn", v, gram, v).clamp_min_(0).sqrt_()
    return {"key_weight": written, "query_weight": 1.0 / residual_norm[:, req.q_start :].clamp_min(1e-6)}


def _head_gram(weight: torch.Tensor, head_dim: int) -> torch.Tensor:
    """[H, d, d]: W_O^h^T W_O^h per query head h, kept while the weight stays the same tensor."""
    key = (weight.data_ptr(), weight._version, head_dim)
    cached = _grams.get(id(weight))
    if cached is not None and cached[0] == key:
        return cached[1]
    w = weight.detach().float().view(weight.shape[0], -1, head_dim)  # [hidden, H, d]
    gram = torch.einsum("khd,khe->hde", w, w)
    _grams[id(weight)] = (key, gram)
    return gram


_grams: dict[int, tuple[tuple[int, int, int], torch.Tensor]] = {}


def _residual_norm_hook(module: torch.nn.Module, args: tuple, kwargs: dict[str, Any]) -> tuple[tuple, dict] | None:
    """Decoder-layer pre-hook: when the forward's cache asks for it, hand ||h|| per position of the residual
    stream entering the layer (the hidden states before its norm) to the attention, through the keyword
    arguments transformers passes on to the attention function."""
    cache = kwargs.get("cache", kwargs.get("past_key_values"))
    if not getattr(cache, "wants_residual_norms", False):
        return None
    hidden = args[0] if args else kwargs.get("hidden_states")
    if hidden is None:
        return None
    kwargs[RESIDUAL_NORM_KWARG] = hidden.detach().float().norm(dim=-1)
    return args, kwargs


def hook_residual_norms(model: torch.nn.Module) -> int:
    """Install the residual-norm pre-hook on every decoder layer (a module with a ``self_attn``); returns how
    many. It costs nothing unless a managed cache with a KVzip+ policy is in the forward."""
    layers = [m for m in model.modules() if isinstance(getattr(m, "self_attn", None), torch.nn.Module)]
    for layer in layers:
        if not getattr(layer, "_kvpilot_residual_hook", False):
            layer.register_forward_pre_hook(_residual_norm_hook, with_kwargs=True)
            setattr(layer, "_kvpilot_residual_hook", True)  # noqa: B010 (a module attribute, not a submodule)
    return len(layers)


def _plain_sdpa(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attention_mask: torch.Tensor | None, scaling: float
) -> tuple[torch.Tensor, None]:
    """Causal SDPA for caches kvpilot does not manage (or no cache)."""
    q_len, n_keys = query.shape[2], key.shape[2]
    group = query.shape[1] // key.shape[1]
    if attention_mask is not None and attention_mask.dtype == torch.bool and attention_mask.ndim == 4:
        mask = attention_mask[:, :, :, :n_keys]
    elif q_len == n_keys or q_len == 1:  # no past, or one new token that sees every key: SDPA's own path
        out = F.scaled_dot_product_attention(query, key, value, is_causal=q_len > 1, scale=scaling,
                                             enable_gqa=group > 1)
        return out.transpose(1, 2).contiguous(), None
    else:
        mask = causal_mask(q_len, n_keys, query.device)[None, None]
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
