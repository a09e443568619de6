"""Attention with statistics, chunked torch reference (runs on any device).

For a block of queries this returns what eviction policies and probes need, without ever holding the
whole [q, n] attention matrix for all queries at once: the attention output (optional), the attention
mass each key received (summed over the queries; per query head and reduced over the GQA group), and
the mean row entropy per head. Softmax and accumulation are done in fp32.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class AttentionStats:
    """Statistics of one attention call.

    head_mass: [b, H, n] fp32, attention mass each key got from the queries of each query head.
    key_mass: [b, H_kv, n] fp32, head_mass summed over the query heads that share a KV head.
    row_entropy: [b, H] fp32, mean over queries of the entropy (nats) of each attention row.
    output: [b, H, q, d] in the query dtype, or None when not requested.
    num_queries: number of queries that contributed (each row sums to 1, so head_mass sums to this).
    """

    head_mass: torch.Tensor
    key_mass: torch.Tensor
    row_entropy: torch.Tensor
    output: torch.Tensor | None
    num_queries: int


def attention_bias(
    q_len: int,
    n_keys: int,
    *,
    causal: bool,
    key_valid: torch.Tensor | None,
    device: torch.device,
    q_start: int = 0,
    q_stop: int | None = None,
) -> torch.Tensor | None:
    """Boolean mask [b|1, H_kv|1, rows, n] of allowed keys for query rows [q_start, q_stop).

    With ``causal`` the queries are the last ``q_len`` positions of the key sequence (bottom-right
    aligned): query i may see keys up to index n - q_len + i. ``key_valid`` marks padding slots (False).
    """
    q_stop = q_len if q_stop is None else q_stop
    allowed = None
    if causal:
        rows = torch.arange(q_start, q_stop, device=device)[:, None] + (n_keys - q_len)
        cols = torch.arange(n_keys, device=device)[None, :]
        allowed = (cols <= rows)[None, None]
    if key_valid is not None:
        kv = key_valid[:, :, None, :]
        allowed = kv if allowed is None else (allowed & kv)
    return allowed


def attention_stats_reference(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor | None = None,
    *,
    scaling: float,
    causal: bool = True,
    key_valid: torch.Tensor | None = None,
    need_output: bool = False,
    query_chunk: int = 256,
) -> AttentionStats:
    """Attention statistics for ``query`` [b, H, q, d] over ``key``/``value`` [b, H_kv, n, d].

    ``key_valid`` [b, H_kv, n] bool excludes padding slots. Every query row must see at least one key.
    """
    b, h, q_len, d = query.shape
    h_kv, n = key.shape[1], key.shape[2]
    group = h // h_kv
    head_mass = torch.zeros(b, h, n, dtype=torch.float32, device=query.device)
    entropy = torch.zeros(b, h, dtype=torch.float32, device=query.device)
    out = torch.empty(b, h, q_len, value.shape[-1], dtype=query.dtype, device=query.device) if need_output else None
    k32 = key.float().repeat_interleave(group, dim=1)
    v32 = value.float().repeat_interleave(group, dim=1) if need_output else None
    valid = key_valid.repeat_interleave(group, dim=1) if key_valid is not None else None
    for start in range(0, q_len, query_chunk):
        stop = min(q_len, start + query_chunk)
        logits = torch.matmul(query[:, :, start:stop].float(), k32.transpose(-1, -2)) * scaling
        allowed = attention_bias(
            q_len, n, causal=causal, key_valid=valid, device=query.device, q_start=start, q_stop=stop
        )
        if allowed is not None:
            logits = logits.masked_fill(~allowed, float("-inf"))
        logp = torch.log_softmax(logits, dim=-1)
        p = logp.exp()
        head_mass += p.sum(dim=2)
        entropy -= torch.where(p > 0, p * logp, torch.zeros_like(p)).sum(dim=(-1, -2))
        if need_output:
            out[:, :, start:stop] = torch.matmul(p, v32).to(query.dtype)
    key_mass = head_mass.view(b, h_kv, group, n).sum(dim=2)
    return AttentionStats(head_mass, key_mass, entropy / max(q_len, 1), out, q_len)
