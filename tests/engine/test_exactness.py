"""Every eviction code path at 0 % compression reproduces the uncompressed logits (fp32, < 1e-4)."""

import pytest
import torch

from kvpilot.config import KVConfig
from kvpilot.policies import POLICY_REGISTRY
from tests.engine.exactness import MODES, assert_zero_compression_exact
from tests.engine.helpers import managed_logits, reference_logits

POLICIES = sorted(POLICY_REGISTRY)


@pytest.mark.parametrize("mode", sorted(MODES))
@pytest.mark.parametrize("policy", POLICIES)
def test_zero_compression_is_exact_tiny(tiny_model, policy, mode):
    assert_zero_compression_exact(tiny_model, policy, mode)


def test_compaction_that_keeps_everything_is_exact(tiny_model):
    """The gather/compaction path itself (not just the no-op shortcut) leaves logits unchanged."""
    from kvpilot.cache.managed import ManagedCache
    from kvpilot.engine.generation import greedy_decode, prefill

    ids = list(range(3, 60))
    cont = [9, 10, 11]
    cache = ManagedCache.for_model(tiny_model, KVConfig())
    with torch.inference_mode():
        prefill(tiny_model, cache, ids)
        for layer in cache.layers:
            n = layer.physical_length
            layer.compact([torch.arange(n) for _ in range(layer.keys.shape[1])])
        first = prefill(tiny_model, cache, [cont[0]])
        dec = greedy_decode(tiny_model, cache, first, 2, forced=cont[1:])
    ref = reference_logits(tiny_model, ids + [cont[0]], cont[1:])
    assert (torch.stack(dec.step_logits) - ref).abs().max().item() < 1e-4


@pytest.mark.parametrize("policy", POLICIES)
def test_zero_compression_is_exact_bundled(bundled_engine, policy):
    model, tok = bundled_engine.model, bundled_engine.tokenizer
    text = "Ana lives in Porto. Her dog is called Biscuit. " * 12 + "What is the dog called?"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    cont = tok(" The dog is called Biscuit.", add_special_tokens=False)["input_ids"]
    for extra in ({}, {"prefill_block_size": 64}):
        cfg = KVConfig(policy=policy, budget=100_000, **extra)
        got, _ = managed_logits(model, cfg, ids, cont)
        ref = reference_logits(model, ids, cont)
        assert (got - ref).abs().max().item() < 1e-4, (policy, extra)
