"""The shared exactness matrix: at 0 % compression every eviction path reproduces the uncompressed logits.

`assert_zero_compression_exact(model, policy, mode)` runs one cell (fp32, < 1e-4). tests/engine/
test_exactness.py parametrises it over the policy registry at collection; a policy registered later (the
throwaway policy of tests/test_plugins.py) calls `assert_exact_in_every_mode` and is covered the same way.
"""

from __future__ import annotations

from typing import Any

import torch

from kvpilot.config import KVConfig
from tests.engine.helpers import managed_logits, reference_logits

MODES: dict[str, dict[str, Any]] = {
    "one-shot": {},
    "block-wise": {"prefill_block_size": 16},
    "decode-evict": {"decode_interval": 1},
    "scoring-prompt": {"scoring": "prompt", "scoring_prompt": "Summarise the facts."},
    "reconstruct-blocks": {"scoring": "reconstruct", "prefill_block_size": 32, "reconstruction_chunk": 16},
    "adaptive-heads": {"head_allocation": "adaptive"},
    "turn-units": {"granularity": "chunk", "chunk_size": 5},
}


def toy_reconstruction(piece, before) -> list[int]:
    """A reconstruction input for a model without a tokenizer: two instruction tokens, the quote, the piece."""
    return [9, 10, *before, *piece]


def assert_zero_compression_exact(model, policy: str, mode: str, policy_params: dict[str, Any] | None = None) -> None:
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(3, 128, (70,), generator=gen).tolist()
    cont = torch.randint(3, 128, (6,), generator=gen).tolist()
    cfg = KVConfig(policy=policy, policy_params=policy_params or {}, budget=100_000, **MODES[mode])
    scoring = [5, 6, 7, 8] if cfg.scoring == "prompt" else None
    got, cache = managed_logits(model, cfg, ids, cont, scoring, reconstruction=toy_reconstruction)
    ref = reference_logits(model, ids, cont)
    assert (got - ref).abs().max().item() < 1e-4, (policy, mode)
    assert cache.seen_tokens == len(ids) + len(cont) - 1
    assert cache.compression_ratio() == 0.0


def assert_exact_in_every_mode(model, policy: str, policy_params: dict[str, Any] | None = None) -> None:
    for mode in MODES:
        assert_zero_compression_exact(model, policy, mode, policy_params)
