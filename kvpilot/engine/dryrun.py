"""Dry run: plan a config's budgets and run its plug-ins on the engine's model before it is called applied.

A config can pass every field check and still be unable to run: a `sensitivity_profile` of the right
length holding 1e308 gives NaN budgets, a plug-in can overflow on a value its declaration allows. Once such
a config is acknowledged, every request fails. `dry_run` plans the per-layer budgets for a range of context
lengths, then fills a managed cache shaped like the model with a few dozen synthetic tokens per layer and
synthetic statistics, runs the policy's scores, the head split and the eviction itself (block prefill,
units, the global allocator), and asks the TTL rule for a decision. Last, it serves one short request
(synthetic token ids, two prefill blocks and one token when the config prefills block-wise, at most
MAX_REHEARSAL_TOKENS) on a private Engine over the same model, so no probe records it. Anything that
raises, or yields a non-finite score or an out-of-range budget, becomes a KVConfigError naming the step,
so the watcher rejects the version with that reason and the engine keeps its config.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from kvpilot.cache.managed import ManagedCache
from kvpilot.config import KVConfig, KVConfigError
from kvpilot.policies.base import LayerStats, ScoringInputs, make_policy
from kvpilot.policies.heads import head_budgets
from kvpilot.policies.layers import layer_budgets
from kvpilot.policies.ttl import TTLContext, make_ttl_policy

PLANNED_CONTEXTS = (1, 2, 17, 100, 1000, 32768, 1_000_000)  # tokens seen: budgets planned for each
SYNTHETIC_TOKENS = 48  # tokens put in each layer of the rehearsal cache
QUERY_COUNT = 8


MAX_REHEARSAL_TOKENS = 160


def dry_run(config: KVConfig, engine: Any) -> None:
    """Raise KVConfigError if ``config`` cannot serve a request on ``engine``'s model; change nothing otherwise.

    ``engine``: a `kvpilot.engine.Engine` (its model and tokenizer are used, its config and probes are not).
    """
    model = engine.model
    problems: list[str] = []
    try:
        cache = ManagedCache.for_model(model, config)  # validates the per-layer lists against the model
    except KVConfigError:
        raise
    except Exception as exc:
        raise KVConfigError([f"dry run: the managed cache cannot be built: {_what(exc)}"]) from None
    if cache.rope is not None:  # the rehearsal runs on the CPU, whatever device the model is on
        cache.rope.inv_freq = cache.rope.inv_freq.cpu()
    problems += _plan_budgets(config, cache.shape.num_layers)
    if not problems:
        problems += _rehearse(config, cache)
    problems += _ttl(config)
    if not problems:
        problems += _request(config, engine)
    if problems:
        raise KVConfigError(problems)


def _request(config: KVConfig, engine: Any) -> list[str]:
    """Serve one short request under ``config`` on a private Engine (no observer, no hooks)."""
    from kvpilot.engine.engine import Engine, Request

    block = config.prefill_block_size
    n = min(2 * block + 1, MAX_REHEARSAL_TOKENS) if block else 96
    vocab = int(getattr(engine.model.config.get_text_config(), "vocab_size", 0) or 0) if hasattr(
        engine.model.config, "get_text_config") else int(getattr(engine.model.config, "vocab_size", 0) or 0)
    span = max(2, min(vocab, 1000) - 1) if vocab else 100
    ids = [(7 * i + 3) % span + 1 for i in range(n)]
    steps = min(4, (config.decode_interval or 0) + 2)
    try:
        private = Engine(engine.model, engine.tokenizer)
        private.serve(Request(ids, [ids[:5]], max_new_tokens=steps, config=config, stop_at_eos=False))
    except Exception as exc:
        return [f"dry run: a {n}-token request failed under this config: {_what(exc)}"]
    return []


def _plan_budgets(config: KVConfig, num_layers: int) -> list[str]:
    for seen in PLANNED_CONTEXTS:
        try:
            budgets = layer_budgets(config, num_layers, seen)
        except Exception as exc:
            return [f"dry run: planning the layer budgets for {seen} tokens failed: {_what(exc)}"]
        bad = [b for b in budgets if not isinstance(b, int) or not 1 <= b <= seen]
        if len(budgets) != num_layers or bad:
            return [f"dry run: the layer budgets for {seen} tokens are {budgets[:8]}...; each must be an "
                    f"integer in [1, {seen}], one per layer ({num_layers})"]
    return []


def _rehearse(config: KVConfig, cache: ManagedCache) -> list[str]:
    """Fill every layer with synthetic tokens and statistics, score them, split the heads and evict."""
    shape = cache.shape
    gen = torch.Generator().manual_seed(0)
    n = SYNTHETIC_TOKENS
    policy = make_policy(config)
    try:
        if config.granularity != "token":
            cache.set_units(0, torch.arange(n) // 4)
        for layer in cache.layers:
            keys = torch.randn(1, shape.num_kv_heads, n, shape.head_dim, generator=gen)
            values = torch.randn(1, shape.num_kv_heads, n, shape.head_dim, generator=gen)
            layer.update(keys, values)
            layer.stats = _synthetic_stats(shape.num_kv_heads, shape.num_heads, shape.head_dim, n, gen)
    except Exception as exc:
        return [f"dry run: filling the cache failed: {_what(exc)}"]
    for layer in cache.layers:
        assert layer.positions is not None and layer.keys is not None and layer.values is not None
        valid = torch.ones(shape.num_kv_heads, n, dtype=torch.bool)
        inputs = ScoringInputs(layer_idx=layer.layer_idx, keys=layer.keys[0], values=layer.values[0],
                               positions=layer.positions, valid=valid, seen=layer.seen,
                               num_heads=shape.num_heads, config=config, stats=layer.stats, rope=cache.rope)
        try:
            scores = policy.score(inputs)
        except Exception as exc:
            return [f"dry run: policy {config.policy!r} failed to score layer {layer.layer_idx}: {_what(exc)}"]
        if tuple(scores.shape) != (shape.num_kv_heads, n) or torch.isnan(scores).any():
            return [f"dry run: policy {config.policy!r} gave layer {layer.layer_idx} scores of shape "
                    f"{tuple(scores.shape)} with NaN={bool(torch.isnan(scores).any())}"]
        try:
            split = head_budgets(config, scores, valid, torch.zeros_like(valid), n // 2)
        except Exception as exc:
            return [f"dry run: head allocation {config.head_allocation!r} failed: {_what(exc)}"]
        if len(split) != shape.num_kv_heads or any(not 0 <= k <= n for k in split):
            return [f"dry run: head allocation {config.head_allocation!r} split {n // 2} tokens as {split}"]
    try:
        cache.evict()
    except Exception as exc:
        return [f"dry run: eviction failed: {_what(exc)}"]
    return []


def _synthetic_stats(h_kv: int, h: int, d: int, n: int, gen: torch.Generator) -> LayerStats:
    """Statistics shaped like the attention function's: attention masses, query moments."""
    mass = torch.rand(h_kv, n, generator=gen)
    queries = torch.randn(h, QUERY_COUNT, d, generator=gen)
    return LayerStats(scoring_mass=mass, acc_mass=mass * n, acc_count=torch.full((h_kv, n), float(n)),
                      query_sum=queries.sum(dim=1), query_outer=torch.einsum("hqd,hqe->hde", queries, queries),
                      query_count=QUERY_COUNT)


def _ttl(config: KVConfig) -> list[str]:
    try:
        rule = make_ttl_policy(config)
        rule.observe("tool", 1.0)
        tau = rule.ttl(TTLContext(tool="tool", bytes=1 << 20, history_tokens=1000, prefill_s_per_token=1e-4))
    except Exception as exc:
        return [f"dry run: session TTL rule {config.session_ttl!r} failed: {_what(exc)}"]
    if not isinstance(tau, (int, float)) or not math.isfinite(tau) or tau < 0:
        return [f"dry run: session TTL rule {config.session_ttl!r} chose a TTL of {tau!r} s"]
    return []


def _what(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text[:200]}" if text else type(exc).__name__
