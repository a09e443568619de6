"""After eviction, transformers' generate() with the managed cache and kvpilot's loop agree."""

import pytest
import torch

from kvpilot.cache.managed import ManagedCache
from kvpilot.config import KVConfig
from kvpilot.engine.generation import greedy_decode, prefill


@pytest.mark.parametrize(
    "cfg",
    [
        {"policy": "snapkv", "budget": 24},
        {"policy": "tova", "budget": 20, "decode_interval": 1},
        {"policy": "h2o", "compression_ratio": 0.6, "decode_interval": 3},
        {"policy": "knorm", "budget": 30, "head_allocation": "adaptive"},
    ],
)
def test_generate_matches_own_loop(tiny_model, cfg):
    ids = torch.randint(3, 128, (60,), generator=torch.Generator().manual_seed(5)).tolist()
    new = 10
    config = KVConfig(**cfg)
    theirs = ManagedCache.for_model(tiny_model, config)
    with torch.inference_mode():
        out = tiny_model.generate(
            torch.tensor([ids]),
            cache=theirs,
            max_new_tokens=new,
            min_new_tokens=new,
            do_sample=False,
            eos_token_id=None,
            pad_token_id=0,
        )
    gen_tokens = out[0, len(ids) :].tolist()
    ours = ManagedCache.for_model(tiny_model, config)
    with torch.inference_mode():
        first = prefill(tiny_model, ours, ids)
        dec = greedy_decode(tiny_model, ours, first, new)
    assert dec.token_ids == gen_tokens
    assert theirs.physical_bytes < theirs.logical_bytes()
    # positions are logical: the last stored token sits at position seen - 1, not at the physical length
    for cache in (theirs, ours):
        assert cache.seen_tokens == len(ids) + new - 1
        for layer in cache.layers:
            assert int(layer.positions.max()) == cache.seen_tokens - 1
            assert layer.physical_length < cache.seen_tokens
