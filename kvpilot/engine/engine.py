"""Engine: a loaded model, a KVConfig in force, and requests served through a managed cache.

A new config is validated against the model when it arrives and takes effect at the next request
boundary; a rejected config raises and leaves the config in force untouched.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from kvpilot.cache.managed import ManagedCache, ModelShape
from kvpilot.config import KVConfig
from kvpilot.engine.generation import extend, greedy_decode, prefill
from kvpilot.engine.model import load_model
from kvpilot.engine.prompts import chat_parts
from kvpilot.engine.units import unit_ids


@dataclass
class GenerationResult:
    """One answer and what it cost."""

    text: str
    token_ids: list[int]
    prompt_tokens: int
    ttft_s: float
    tpot_s: float
    prefill_s: float
    kv_bytes: int
    peak_kv_bytes: int
    logical_kv_bytes: int
    compression_ratio: float
    config: KVConfig
    extra: dict = field(default_factory=dict)


class Engine:
    """Serve prompts with a KVConfig-managed cache on a Hugging Face causal LM (batch size 1)."""

    def __init__(self, model, tokenizer, config: KVConfig | None = None):
        self.model = model
        self.tokenizer = tokenizer
        self.shape = ModelShape.of(model)
        self._config = config or KVConfig()
        self._config.validate_for_model(self.shape.num_layers, self.shape.num_kv_heads, self.shape.num_heads)
        self._pending: KVConfig | None = None
        self._lock = threading.Lock()
        self.observer = None  # a probe attached by kvpilot.attach
        self.request_hooks: list = []  # callables(result) run after each request

    @classmethod
    def load(cls, model: str | None = None, config: KVConfig | None = None, **kwargs) -> Engine:
        lm, tok = load_model(model, **kwargs)
        return cls(lm, tok, config)

    # ----- configuration ------------------------------------------------------------------------------

    @property
    def config(self) -> KVConfig:
        return self._config

    def validate(self, config: KVConfig) -> None:
        config.validate_for_model(self.shape.num_layers, self.shape.num_kv_heads, self.shape.num_heads)

    def apply_config(self, config: KVConfig) -> None:
        """Validate now, apply at the next request boundary. Raises KVConfigError if it does not fit."""
        self.validate(config)
        with self._lock:
            self._pending = config

    def request_boundary(self) -> KVConfig:
        """Mark the start of a request: a config pushed since the last one takes effect now; returns it."""
        with self._lock:
            if self._pending is not None:
                self._config, self._pending = self._pending, None
            return self._config

    # ----- serving ------------------------------------------------------------------------------------------

    def new_cache(self, config: KVConfig | None = None) -> ManagedCache:
        cache = ManagedCache.for_model(self.model, config or self._config)
        cache.observer = self.observer
        return cache

    @property
    def eos_ids(self) -> list[int]:
        eos = self.tokenizer.eos_token_id
        ids = eos if isinstance(eos, list) else [eos]
        im_end = self.tokenizer.convert_tokens_to_ids("<|im_end|>")
        if isinstance(im_end, int) and im_end >= 0 and im_end != self.tokenizer.unk_token_id:
            ids.append(im_end)
        return [i for i in ids if i is not None]

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def compress(self, cache: ManagedCache, context_ids: Sequence[int]) -> torch.Tensor:
        """Prefill a context under the cache's config (blocks, units, scoring prompt)."""
        cfg = cache.config
        units = unit_ids(self.tokenizer, context_ids, cfg.granularity, first_unit=cache.seen_tokens)
        scoring = self.encode(cfg.scoring_prompt) if cfg.scoring == "prompt" else None
        with torch.inference_mode():
            return prefill(self.model, cache, context_ids, unit_ids=units, scoring_ids=scoring)

    def generate(self, prompt: str, max_new_tokens: int = 32, chat: bool = True) -> GenerationResult:
        """Answer one prompt (compressing it as a whole, i.e. query-aware)."""
        if chat:
            parts = chat_parts(self.tokenizer, prompt, "")
            ids = parts.context_ids + parts.question_ids
        else:
            ids = self.encode(prompt)
        return self.run(ids, [], max_new_tokens)[0]

    def answer(
        self, context: str, questions: Sequence[tuple[str, str]], max_new_tokens: int = 32
    ) -> list[GenerationResult]:
        """Compress ``context`` once, then answer every (question, answer_prefix) on that same cache."""
        parts = [chat_parts(self.tokenizer, context, q, prefix) for q, prefix in questions]
        return self.run(parts[0].context_ids, [p.question_ids for p in parts], max_new_tokens)

    def run(
        self, context_ids: Sequence[int], questions: Sequence[Sequence[int]], max_new_tokens: int
    ) -> list[GenerationResult]:
        """Compress the context, then decode after each question (or once, after the context alone)."""
        config = self.request_boundary()
        cache = self.new_cache(config)
        t0 = time.perf_counter()
        logits = self.compress(cache, context_ids)
        prefill_s = time.perf_counter() - t0
        base = cache.snapshot()
        results = []
        for question in questions or [None]:
            cache.restore(base)
            t1 = time.perf_counter()
            with torch.inference_mode():
                first = extend(self.model, cache, question) if question else logits
            ask_s = time.perf_counter() - t1
            dec = greedy_decode(self.model, cache, first, max_new_tokens, self.eos_ids)
            tokens = [t for t in dec.token_ids if t not in self.eos_ids]
            n = max(len(dec.token_ids) - 1, 1)
            result = GenerationResult(
                text=self.tokenizer.decode(tokens, skip_special_tokens=True),
                token_ids=tokens,
                prompt_tokens=len(context_ids) + len(question or []),
                ttft_s=prefill_s + ask_s + dec.first_token_s,
                tpot_s=(dec.decode_s - dec.first_token_s) / n,
                prefill_s=prefill_s,
                kv_bytes=cache.physical_bytes,
                peak_kv_bytes=cache.peak_bytes,
                logical_kv_bytes=cache.logical_bytes(),
                compression_ratio=cache.compression_ratio(),
                config=config,
                extra={"peak_layer_kv_bytes": max(cache.layer_peak_bytes)},
            )
            for hook in self.request_hooks:
                hook(result, cache)
            results.append(result)
        return results
