"""Engine: a loaded model, a KVConfig in force, and requests served through a managed cache.

A new config is validated against the model when it arrives and takes effect at the next request
boundary; a rejected config raises and leaves the config in force untouched.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from kvpilot.cache.managed import ManagedCache, ModelShape
from kvpilot.config import KVConfig
from kvpilot.engine.episodes import EpisodeError, Episodes
from kvpilot.engine.episodes import build as build_episodes
from kvpilot.engine.generation import DecodeResult, extend, greedy_decode, prefill
from kvpilot.engine.lineage import Lineage
from kvpilot.engine.lineage import compute as compute_lineage
from kvpilot.engine.model import load_model
from kvpilot.engine.prompts import chat_parts
from kvpilot.engine.units import unit_ids


@dataclass
class Request:
    """One request on the one serving path: a context compressed under a config, then each question.

    Every question is answered on its own copy of the compressed context (snapshot and restore), so
    questions never see each other. With no questions the answer follows the context itself.
    config: None takes the engine's config in force (this call is a request boundary).
    cache: a cache to continue (a session's next turn) instead of a new one; the context is appended.
    max_new_tokens: 0 decodes nothing freely (prefill only, or only the teacher tokens below).
    teacher_tokens: per question, tokens to feed teacher-forced from the point the question is in; their
        logits come back as ``teacher_logits`` (fidelity against a reference answer). The free decode's
        own logits are reused when its tokens start with these; such a replay is neither timed nor counted
        in the peak.
    on_prefilled: called with (cache, prefill seconds) once the context is in, before any decoding.
    lineage: also say which units of the context the compressed cache forgot (`Response.lineage`, see
        `kvpilot.engine.lineage`; None with episodes).
    """

    context_ids: Sequence[int]
    questions: Sequence[Sequence[int]] = ()
    max_new_tokens: int = 32
    config: KVConfig | None = None
    cache: ManagedCache | None = None
    keep_logits: bool = False
    teacher_tokens: Sequence[Sequence[int]] | None = None
    stop_at_eos: bool = True
    on_prefilled: Callable[[ManagedCache, float], None] | None = None
    lineage: bool = False


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
    raw_token_ids: list[int] = field(default_factory=list)  # as decoded, end-of-sequence included
    decode_after_first_s: float = 0.0
    step_logits: list[torch.Tensor] = field(default_factory=list, repr=False)
    teacher_logits: list[torch.Tensor] | None = field(default=None, repr=False)


@dataclass
class Compression:
    """What compressing one request's context kept and cost, read before any question was appended."""

    context_tokens: int
    prefill_s: float
    kv_bytes: int
    logical_kv_bytes: int
    compression_ratio: float
    peak_kv_bytes: int  # over the whole request: context, questions and answers


@dataclass
class Response:
    answers: list[GenerationResult]
    compression: Compression
    cache: ManagedCache
    lineage: Lineage | None = None  # when the request asked for it (`Request.lineage`)


class Engine:
    """Serve prompts with a KVConfig-managed cache on a Hugging Face causal LM (batch size 1).

    ``tokenizer`` may be None for work on token ids alone (the profiler): answers then carry no text.
    """

    def __init__(self, model: Any, tokenizer: Any, config: KVConfig | None = None):
        self.model = model
        self.tokenizer = tokenizer
        self.shape = ModelShape.of(model)
        self._config = config or KVConfig()
        self.validate(self._config)
        self._pending: KVConfig | None = None
        self._lock = threading.Lock()
        self.observer: Any = None  # a probe attached by kvpilot.attach (on_attention, on_evict)
        self.request_hooks: list = []
        self._turn_ends: dict[str, list[int]] = {}  # callables(result) run after each request

    @classmethod
    def load(cls, model: str | None = None, config: KVConfig | None = None, **kwargs) -> Engine:
        lm, tok = load_model(model, **kwargs)
        return cls(lm, tok, config)

    # ----- configuration ------------------------------------------------------------------------------

    @property
    def config(self) -> KVConfig:
        return self._config

    def validate(self, config: KVConfig) -> None:
        config.validate_for_model(self.shape.num_layers, self.shape.num_kv_heads, self.shape.num_heads,
                                  self.shape.head_dim)

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
        if self.tokenizer is None:  # a bare model (token ids in, token ids out)
            return []
        eos = self.tokenizer.eos_token_id
        ids = eos if isinstance(eos, list) else [eos]
        im_end = self.tokenizer.convert_tokens_to_ids("<|im_end|>")
        if isinstance(im_end, int) and im_end >= 0 and im_end != self.tokenizer.unk_token_id:
            ids.append(im_end)
        return [i for i in ids if i is not None]

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def compress(self, cache: ManagedCache, context_ids: Sequence[int],
                 scoring_ids: Sequence[int] | None = None) -> torch.Tensor:
        """Prefill a context under the cache's config (blocks, units, scoring prompt).

        ``scoring_ids`` replaces the config's scoring prompt with ``scoring="prompt"`` (an episode's patched one).
        """
        cfg = cache.config
        units = unit_ids(self.tokenizer, context_ids, cfg.granularity, first_unit=cache.seen_tokens)
        scoring = None
        if cfg.scoring == "prompt":
            scoring = list(scoring_ids) if scoring_ids is not None else self.encode(cfg.scoring_prompt)
        reconstruction = self.reconstruction_queries if cfg.scoring == "reconstruct" else None
        with torch.inference_mode():
            return prefill(self.model, cache, context_ids, unit_ids=units, scoring_ids=scoring,
                           reconstruction=reconstruction)

    def reconstruction_queries(self, piece: Sequence[int], before: Sequence[int]) -> list[int]:
        """KVzip's reconstruction input for ``piece``: an instruction to repeat the context (quoting the
        tokens just ``before`` it, if any), the chat template's end of the user turn and start of the
        assistant's, then ``piece`` itself: the model reproducing it reads what it needs from the cache."""
        if self.tokenizer is None:
            raise ValueError("scoring='reconstruct' needs the engine's tokenizer (the chat template's turn markers)")
        if before:
            quoted = self.tokenizer.decode(list(before), skip_special_tokens=True)
            instruction = f"Repeat the part of the previous context exactly, starting with {quoted}"
        else:
            instruction = "Repeat the previous context exactly."
        return self._turn_end(instruction) + list(piece)

    def _turn_end(self, instruction: str) -> list[int]:
        """Tokens of ``instruction`` closing the user's turn and opening the assistant's (cached per text)."""
        cached = self._turn_ends.get(instruction)
        if cached is None:
            cached = chat_parts(self.tokenizer, "x", instruction).question_ids
            if len(self._turn_ends) < 4096:
                self._turn_ends[instruction] = cached
        return list(cached)

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
        return self.serve(Request(context_ids, questions, max_new_tokens)).answers

    def serve(self, request: Request) -> Response:
        """The one request path: compress the context, answer each question in isolation, run the hooks.

        Everything that serves a request (the evaluator, the demo, replays, the profiler, a server) comes
        through here, so probes see every request and every answer is measured the same way.
        """
        config = request.config or self.request_boundary()
        episodes: Episodes | None = None
        t0 = time.perf_counter()
        if config.episodes > 1:  # EpiCache: one cache per episode, each question on its nearest
            if request.cache is not None:
                raise EpisodeError(f"episodes={config.episodes} compress a whole conversation into new caches; "
                                   "a request that continues a cache cannot use them")
            episodes, cache = build_episodes(self, config, request.context_ids)
            start_tokens, logits = 0, episodes.episodes[episodes.last_episode].logits
        else:
            cache = request.cache if request.cache is not None else self.new_cache(config)
            begin = getattr(cache.observer, "begin_request", None)
            if begin is not None:  # the probes time the request from here, also on a kept cache (a session's
                begin(cache)  # next turn), not from when that cache was first filled
            start_tokens = cache.seen_tokens
            logits = self.compress(cache, request.context_ids)
        prefill_s = time.perf_counter() - t0
        compression = Compression(
            context_tokens=cache.seen_tokens - start_tokens,
            prefill_s=prefill_s,
            kv_bytes=cache.physical_bytes,
            logical_kv_bytes=cache.logical_bytes(),
            compression_ratio=cache.compression_ratio(),
            peak_kv_bytes=cache.peak_bytes,
        )
        if episodes is not None:
            episodes.account_compression(compression)
        lineage = None
        if request.lineage and episodes is None:  # what the questions will read, before any is asked
            lineage = compute_lineage(self.tokenizer, cache, request.context_ids, start_tokens)
        if request.on_prefilled is not None:
            request.on_prefilled(cache, prefill_s)
        questions: list[Sequence[int] | None] = list(request.questions) or [None]
        base = cache.snapshot() if len(questions) > 1 and episodes is None else None
        answers = []
        for qi, question in enumerate(questions):
            if base is not None:
                cache.restore(base)
            if episodes is not None:
                episode, logits = episodes.select(cache, question)
            teacher = request.teacher_tokens[qi] if request.teacher_tokens is not None else None
            answer = self._answer(request, config, cache, logits, question, teacher, prefill_s)
            if episodes is not None:
                episodes.account(answer, episode)
            for hook in self.request_hooks:
                hook(answer, cache)
            answers.append(answer)
        compression.peak_kv_bytes = cache.peak_bytes if episodes is None else episodes.peak(cache)
        return Response(answers, compression, cache, lineage)

    def _answer(
        self,
        request: Request,
        config: KVConfig,
        cache: ManagedCache,
        context_logits: torch.Tensor,
        question: Sequence[int] | None,
        teacher: Sequence[int] | None,
        prefill_s: float,
    ) -> GenerationResult:
        t1 = time.perf_counter()
        with torch.inference_mode():
            first = extend(self.model, cache, question) if question else context_logits
        ask_s = time.perf_counter() - t1
        prompt_tokens = cache.seen_tokens
        ready = cache.snapshot() if teacher is not None else None
        eos = self.eos_ids
        dec = greedy_decode(self.model, cache, first, request.max_new_tokens, eos if request.stop_at_eos else (),
                            keep_logits=request.keep_logits or teacher is not None)
        tokens = [t for t in dec.token_ids if t not in eos]
        later = max(len(dec.token_ids) - 1, 0)
        after_first = dec.decode_s - dec.first_token_s if later else 0.0
        result = GenerationResult(
            text=self.tokenizer.decode(tokens, skip_special_tokens=True) if self.tokenizer is not None else "",
            token_ids=tokens,
            prompt_tokens=prompt_tokens,
            ttft_s=prefill_s + ask_s + dec.first_token_s,
            tpot_s=after_first / max(later, 1),
            prefill_s=prefill_s,
            kv_bytes=cache.physical_bytes,
            peak_kv_bytes=cache.peak_bytes,
            logical_kv_bytes=cache.logical_bytes(),
            compression_ratio=cache.compression_ratio(),
            config=config,
            extra={"peak_layer_kv_bytes": max(cache.layer_peak_bytes)},
            raw_token_ids=list(dec.token_ids),
            decode_after_first_s=after_first,
            step_logits=dec.step_logits if request.keep_logits else [],
        )
        if teacher is not None and ready is not None:
            result.teacher_logits = self._teacher_logits(cache, ready, first, dec, list(teacher))
        return result

    def _teacher_logits(self, cache: ManagedCache, ready: list[dict], first: torch.Tensor, dec: DecodeResult,
                        teacher: list[int]) -> list[torch.Tensor]:
        """Logits at each teacher token: the free decode's own when it produced them, else a forced replay."""
        n = len(teacher)
        if list(dec.token_ids[:n]) == teacher:
            return dec.step_logits[:n]
        peaks = cache.peaks()
        cache.restore(ready)
        forced = greedy_decode(self.model, cache, first, n, forced=teacher)
        cache.set_peaks(peaks)
        return forced.step_logits
