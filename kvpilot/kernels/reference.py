"""Attention with statistics, chunked torch reference (runs on any device).

For a block of queries this returns what eviction policies and probes need, without ever holding the
whole [q, n] attention matrix for all queries at once: the attention output (optional), the attention
mass each key received (summed over the queries; per query head and reduced over the GQA group), and
the mean row entropy per head. Softmax and accumulation are done in fp32.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

Reduce = Literal["sum", "mean", "max"]


@dataclass
class AttentionStats:
    """Statistics of one attention call.

    head_mass: [b, H, n] fp32, attention mass each key got from the queries of each query head.
    key_mass: [b, H_kv, n] fp32, head_mass summed over the query heads that share a KV head.
    row_entropy: [b, H] fp32, mean over queries of the entropy (nats) of each attention row.
    output: [b, H, q, d] in the query dtype, or None when not requested.
    num_queries: number of queries that contributed (each row sums to 1, so head_mass sums to this).
    backend: the implementation that computed them, for probes that record where numbers came from.
    """

    head_mass: torch.Tensor
    key_mass: torch.Tensor
    row_entropy: torch.Tensor
    output: torch.Tensor | None
    num_queries: int
    backend: str = "reference"  # which implementation produced these numbers ("reference" | "triton")


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


def group_key_mass(head_mass: torch.Tensor, h_kv: int, q_len: int, reduce: Reduce) -> torch.Tensor:
    """[b, H_kv, n] mass per KV head from ``head_mass`` [b, H, n]: summed over the GQA group, or its maximum
    with "max"; with "mean" ``head_mass`` is divided by the query count in place first (shared by backends)."""
    b, h, n = head_mass.shape
    grouped = head_mass.view(b, h_kv, h // h_kv, n)
    if reduce == "max":
        return grouped.amax(dim=2)
    if reduce == "mean":
        head_mass /= max(q_len, 1)
        return grouped.sum(dim=2) / (h // h_kv)
    return grouped.sum(dim=2)


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
    reduce: Reduce = "sum",
    query_weight: torch.Tensor | None = None,
    key_weight: torch.Tensor | None = None,
) -> AttentionStats:
    """Attention statistics for ``query`` [b, H, q, d] over ``key``/``value`` [b, H_kv, n, d].

    ``reduce`` says how a key's attention from many queries becomes one number: "sum" (the mass),
    "mean" (the mass over the number of queries) or "max" (the largest weight any one query, and any
    query head of the GQA group, gave it: KVzip's and EpiCache's score, one query that needs a pair is
    enough to keep it).

    ``query_weight`` [b, q] scales each query's weights and ``key_weight`` [b, H, n] each query head's weights
    of each key before they are reduced (KVzip+: 1 / ||h|| of the query's residual stream and ||W_O v||, what
    the pair writes to it); entropy and output use the plain weights.

    ``key_valid`` [b, H_kv, n] bool excludes padding slots. Every query row must see at least one key.
    Per chunk of ``query_chunk`` queries it holds one [H, chunk, n] fp32 block (and a few
    temporaries of that size). Keys are never repeated for GQA: the query heads of a group are
    stacked as extra rows against their KV head. With ``causal`` a chunk only reads the keys its
    last row can see.
    """
    b, h, q_len, d = query.shape
    h_kv, n = key.shape[1], key.shape[2]
    group = h // h_kv
    dev = query.device
    head_mass = torch.zeros(b, h, n, dtype=torch.float32, device=dev)
    entropy = torch.zeros(b, h, dtype=torch.float32, device=dev)
    out: torch.Tensor | None = None
    v32: torch.Tensor | None = None
    if need_output:
        if value is None:
            raise ValueError("need_output=True requires value")
        out = torch.empty(b, h, q_len, value.shape[-1], dtype=query.dtype, device=dev)
        v32 = value.float()
    k32 = key.float()
    valid = key_valid[:, :, None, None, :] if key_valid is not None else None  # [b, H_kv, 1, 1, n]
    for start in range(0, q_len, query_chunk):
        stop = min(q_len, start + query_chunk)
        rows = stop - start
        # Keys after the chunk's last visible key get no mass from any of its rows: skip them.
        n_vis = min(n, n - q_len + stop) if causal else n
        # Scale the (small) queries rather than the [rows, n] logits: one full pass fewer.
        q_c = (query[:, :, start:stop].float() * scaling).reshape(b, h_kv, group * rows, d)
        logits = torch.matmul(q_c, k32[:, :, :n_vis].transpose(-1, -2)).view(b, h_kv, group, rows, n_vis)
        if causal and n_vis >= rows:  # only the trailing [rows, rows] block has keys some rows cannot see
            future = torch.ones(rows, rows, dtype=torch.bool, device=dev).triu_(1)
            logits[..., n_vis - rows :].masked_fill_(future, float("-inf"))
        elif causal:  # more queries than keys: the first rows see nothing (their mass is NaN)
            mask = attention_bias(
                q_len, n, causal=True, key_valid=None, device=dev, q_start=start, q_stop=stop
            )
            assert mask is not None  # causal: there is always a mask
            logits.masked_fill_(~mask[..., :n_vis], float("-inf"))
        if valid is not None:
            logits.masked_fill_(~valid[..., :n_vis], float("-inf"))
        p = torch.softmax(logits, dim=-1)
        entropy += torch.special.entr(p).sum(dim=(-1, -2)).view(b, h)  # entr(p) = -p log p, 0 at p = 0
        w = p if query_weight is None else p * query_weight[:, None, None, start:stop, None].float()
        if reduce == "max":
            torch.maximum(head_mass[..., :n_vis], w.amax(dim=3).view(b, h, n_vis), out=head_mass[..., :n_vis])
        else:
            head_mass[..., :n_vis] += w.sum(dim=3).view(b, h, n_vis)
        if out is not None and v32 is not None:
            o = torch.matmul(p.view(b, h_kv, group * rows, n_vis), v32[:, :, :n_vis])
            out[:, :, start:stop] = o.view(b, h, rows, -1).to(query.dtype)
    if key_weight is not None:
        head_mass *= key_weight.float()
    key_mass = group_key_mass(head_mass, h_kv, q_len, reduce)  # (normalises head_mass in place for mean)
    return AttentionStats(head_mass, key_mass, entropy / max(q_len, 1), out, q_len)
