"""KVzip+ (`kvzip` with plus=true): reconstruction weights scaled by what a pair writes to the residual stream."""

from __future__ import annotations

import pytest
import torch

from kvpilot.cache.exchange import StatsRequest
from kvpilot.cache.managed import ManagedCache
from kvpilot.config import KVConfig
from kvpilot.engine.attention import _residual_weights
from kvpilot.engine.generation import prefill
from kvpilot.errors import KVPilotError
from tests.engine.exactness import assert_zero_compression_exact, toy_reconstruction


def test_written_norms_are_each_heads_output_projection_of_the_value(tiny_model):
    attn = tiny_model.model.layers[1].self_attn
    heads, kv_heads, d = 4, 2, 16
    value = torch.randn(1, kv_heads, 30, d)
    residual = torch.rand(1, 12) + 1.0
    req = StatsRequest("scoring", q_start=4, key_stop=25, causal=True, residual_weighted=True)
    w = _residual_weights(attn, value, req, residual, heads // kv_heads)
    o = attn.o_proj.weight.detach()  # [hidden, H * d]
    for h in range(heads):
        written = value[0, h // (heads // kv_heads), :25] @ o[:, h * d : (h + 1) * d].T  # [n, hidden]
        torch.testing.assert_close(w["key_weight"][0, h], written.norm(dim=-1), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(w["query_weight"], 1.0 / residual[:, 4:])
    assert _residual_weights(attn, value, StatsRequest("scoring", 0, 25, True), residual, 2) == {}


def test_plus_is_exact_at_zero_compression(tiny_model):
    """Block-wise reconstruction scoring with KVzip+ weights changes no logit when nothing is evicted."""
    assert_zero_compression_exact(tiny_model, "kvzip", "reconstruct-blocks", {"plus": True})


def _kept(model, plus: bool, ids: list[int]) -> tuple[list[torch.Tensor], ManagedCache]:
    cfg = KVConfig(policy="kvzip", policy_params={"plus": plus}, compression_ratio=0.5, scoring="reconstruct", window=4,
                   reconstruction_chunk=16, layer_allocation="global", layer_allocation_params={"heads": True})
    cache = ManagedCache.for_model(model, cfg)
    with torch.inference_mode():
        prefill(model, cache, ids, reconstruction=toy_reconstruction)
    return [layer.positions.clone() for layer in cache.layers], cache


def test_plus_changes_what_is_kept_within_the_same_total(tiny_model):
    ids = torch.randint(3, 128, (96,), generator=torch.Generator().manual_seed(4)).tolist()
    plain, plain_cache = _kept(tiny_model, False, ids)
    plus, plus_cache = _kept(tiny_model, True, ids)
    assert plus_cache.seen_tokens == plain_cache.seen_tokens == len(ids)  # the queries left no slot behind
    assert plus_cache.physical_bytes == plain_cache.physical_bytes  # one global total, split by other scores
    assert any(not torch.equal(a, b) for a, b in zip(plain, plus, strict=True))


def test_plus_on_a_model_without_the_residual_hook_says_what_to_do():
    from transformers import LlamaConfig, LlamaForCausalLM

    from kvpilot.engine.attention import ATTN_IMPLEMENTATION, register_attention

    register_attention()
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, head_dim=16,
                      attn_implementation=ATTN_IMPLEMENTATION)
    model = LlamaForCausalLM(cfg).eval()  # not loaded through kvpilot: no residual-norm hook
    with pytest.raises(KVPilotError, match="load_model"):
        _kept(model, True, list(range(3, 40)))


def test_plus_answers_on_the_bundled_model(bundled_engine):
    """KVzip+ through the one request path on the real model: a passkey survives 4x."""
    from kvpilot.engine import Request
    from kvpilot.engine.prompts import chat_parts
    from kvpilot.workloads.registry import generate

    tok = bundled_engine.tokenizer
    (sample,) = generate("passkey", 1, 300, seed=3, tokenizer=tok)
    qa = sample.qa[0]
    parts = chat_parts(tok, sample.context, qa.question, qa.answer_prefix)
    cfg = KVConfig(policy="kvzip", policy_params={"plus": True}, compression_ratio=0.75, scoring="reconstruct")
    resp = bundled_engine.serve(Request(parts.context_ids, [parts.question_ids], 12, config=cfg))
    assert qa.answers[0] in resp.answers[0].text
    assert resp.compression.kv_bytes < resp.compression.logical_kv_bytes / 3
