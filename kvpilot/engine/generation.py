"""kvpilot's own generation loop: block-wise prefill, scoring prompts, greedy decode at logical positions.

Every forward passes explicit logical ``position_ids`` (tokens seen, not tokens kept), so RoPE stays
correct after eviction. Block-wise prefill (EpiCache) feeds the prompt in blocks of C tokens and evicts
after each, so a layer never holds more than its budget plus one block.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from kvpilot.cache.managed import ManagedCache

RECONSTRUCTION_TAIL = 8  # tokens before a chunk that its reconstruction instruction quotes (KVzip)
# (chunk tokens, the tokens just before it) -> the reconstruction queries for that chunk
Reconstruction = Callable[[Sequence[int], Sequence[int]], list[int]]


@dataclass
class DecodeResult:
    """Tokens produced by a greedy decode and how long it took."""

    token_ids: list[int]
    first_token_s: float
    decode_s: float
    step_logits: list[torch.Tensor] = field(default_factory=list)


def forward(model, cache: ManagedCache, ids: Sequence[int] | torch.Tensor) -> torch.Tensor:
    """One forward of ``ids`` at their logical positions; returns the last position's logits [vocab] (fp32).

    Only the last position is projected to the vocabulary (``logits_to_keep=1``): nothing here reads the
    others, and the LM head over a whole prompt is a large share of prefill compute on a small model.
    """
    ids_t = torch.as_tensor(ids, dtype=torch.long, device=model.device).view(1, -1)
    start = cache.seen_tokens
    pos = torch.arange(start, start + ids_t.shape[1], device=model.device)[None]
    out = model(input_ids=ids_t, position_ids=pos, cache=cache, use_cache=True, logits_to_keep=1)
    return out.logits[0, -1].float()


def prefill(
    model,
    cache: ManagedCache,
    ids: Sequence[int],
    *,
    unit_ids: Sequence[int] | None = None,
    scoring_ids: Sequence[int] | None = None,
    reconstruction: Reconstruction | None = None,
    evict: bool = True,
) -> torch.Tensor:
    """Feed a prompt under the cache's config; returns the last position's logits [vocab].

    ``evict=False`` scores as configured but keeps every slot with its scores (calibration reads them).

    With ``prefill_block_size`` the prompt goes in blocks with eviction after each; with
    ``scoring='prompt'`` the scoring prompt runs after each block as queries only (never stored) and its
    attention decides what is kept. With ``scoring='reconstruct'`` each block is reproduced instead, in
    chunks of at most ``reconstruction_chunk`` tokens: ``reconstruction(piece, before)`` gives the queries
    that reproduce ``piece`` (``before``: the tokens just before it, empty at the start of the context), and
    each chunk's tokens are scored by the attention of the queries that reproduce them (KVzip). Scoring a
    block as it arrives keeps the peak at budget + block.
    """
    cfg = cache.config
    ids = list(ids)
    if not ids:
        raise ValueError("cannot prefill an empty prompt")
    block = cfg.prefill_block_size or len(ids)
    use_prompt = cfg.scoring == "prompt" and cfg.compresses and scoring_ids is not None
    use_reconstruction = cfg.scoring == "reconstruct" and cfg.compresses and reconstruction is not None
    logits: torch.Tensor | None = None
    for start in range(0, len(ids), block):
        chunk = ids[start : start + block]
        if unit_ids is not None:
            cache.set_units(cache.seen_tokens, torch.as_tensor(unit_ids[start : start + block]))
        if use_reconstruction:
            assert reconstruction is not None
            first = cache.seen_tokens
            with cache.prompt_scoring_driven():
                logits = forward(model, cache, chunk)
            step = cfg.reconstruction_chunk
            for offset in range(0, len(chunk), step):
                piece = chunk[offset : offset + step]
                at = start + offset
                queries = reconstruction(piece, ids[max(0, at - RECONSTRUCTION_TAIL) : at] if at else [])
                with cache.scoring_pass(restrict=(first + offset, first + offset + len(piece))):
                    forward(model, cache, queries)
            if evict:
                cache.evict()
        elif use_prompt:
            with cache.prompt_scoring_driven():
                logits = forward(model, cache, chunk)
            with cache.scoring_pass():
                forward(model, cache, scoring_ids)  # type: ignore[arg-type]  # checked in use_prompt
            if evict:
                cache.evict()
        elif cache.evicts_all_layers_at_once:  # a cross-layer allocator weighs every layer's scores together
            with cache.prompt_scoring_driven():
                logits = forward(model, cache, chunk)
            if evict:
                cache.evict()
        else:
            logits = forward(model, cache, chunk)
    assert logits is not None  # ids is not empty
    return logits


def extend(model, cache: ManagedCache, ids: Sequence[int]) -> torch.Tensor:
    """Append tokens (a question after a compressed context) without evicting; returns last logits."""
    with cache.no_eviction():
        return forward(model, cache, ids)


def greedy_decode(
    model,
    cache: ManagedCache,
    first_logits: torch.Tensor,
    max_new_tokens: int,
    eos_ids: Sequence[int] = (),
    *,
    keep_logits: bool = False,
    forced: Sequence[int] | None = None,
) -> DecodeResult:
    """Greedy decoding from ``first_logits``; decode-time eviction follows the cache's config.

    With ``forced`` the given tokens are fed instead of the argmax (teacher forcing) and the logits at
    each step are kept, which is how fidelity against the full cache is measured.
    """
    t0 = time.perf_counter()
    tokens: list[int] = []
    step_logits: list[torch.Tensor] = []
    logits = first_logits
    first_token_s = 0.0
    steps = len(forced) if forced is not None else max_new_tokens
    stop = set(eos_ids)
    with torch.inference_mode():
        for i in range(steps):
            if keep_logits or forced is not None:
                step_logits.append(logits)
            tok = int(forced[i]) if forced is not None else int(torch.argmax(logits))
            tokens.append(tok)
            if i == 0:
                first_token_s = time.perf_counter() - t0
            if (forced is None and tok in stop) or i == steps - 1:
                break
            logits = forward(model, cache, [tok])
    return DecodeResult(tokens, first_token_s, time.perf_counter() - t0, step_logits)
