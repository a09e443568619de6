"""Helpers shared by engine tests."""

from __future__ import annotations

import torch

from kvpilot.cache.managed import ManagedCache
from kvpilot.config import KVConfig
from kvpilot.engine.generation import greedy_decode, prefill


def reference_logits(model, ids: list[int], cont: list[int]) -> torch.Tensor:
    """Uncompressed logits that predict each continuation token (no kvpilot cache)."""
    with torch.inference_mode():
        out = model(input_ids=torch.tensor([ids + cont]), use_cache=False)
    return out.logits[0, len(ids) - 1 : -1].float()


def managed_logits(model, config: KVConfig, ids: list[int], cont: list[int], scoring_ids=None, reconstruction=None):
    """Logits through the managed cache: prefill (blocks, scoring prompt, reconstruction) then teacher-forced decode."""
    cache = ManagedCache.for_model(model, config)
    with torch.inference_mode():
        first = prefill(model, cache, ids, scoring_ids=scoring_ids, reconstruction=reconstruction)
        dec = greedy_decode(model, cache, first, len(cont), forced=cont)
    return torch.stack(dec.step_logits), cache
