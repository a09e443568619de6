"""Layer sensitivity to eviction: an offline profiler, and the cheap online proxy measured offline.

Three measures, one value per layer, higher = more sensitive (so any of them can be used as
``KVConfig(layer_allocation="sensitivity", sensitivity_profile=values)``):

- ``ablation_kl`` (algorithms.md 13.1): compress *only* layer l to budget B with a policy, all other
  layers full, and measure KL(p_full || p_compressed) of the next-token distributions over a teacher-forced
  continuation (the full cache's own greedy answer). The direct measure; costs L + 1 runs per sample.
- ``key_cosine`` (EpiCache, algorithms.md 8.3): run the prompt with the full causal mask and with a
  block-prefill mask (sinks + own block + half of the previous block), compare each layer's post-RoPE keys
  over windows of 100 tokens; sensitivity = 1 - mean cosine. Two forwards per sample.
- ``retained_mass``: 1 - the attention mass the top-B keys hold for the last prompt rows (the same number
  the online skew probe records as ``retained_mass``). One forward per sample.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from kvpilot.config import KVConfig
from kvpilot.engine.engine import Engine, Request
from kvpilot.probes.base import SamplingPolicy
from kvpilot.probes.observer import ProbeSet
from kvpilot.probes.skew import SkewProbe

METHODS = ("ablation_kl", "key_cosine", "retained_mass")
_UNCOMPRESSED = 1 << 30  # an explicit layer budget no prompt reaches


@dataclass
class CalibrationSample:
    """A context (what gets compressed) and an optional question appended after compression."""

    context_ids: list[int]
    question_ids: list[int] = field(default_factory=list)


@dataclass
class LayerProfile:
    """One value per layer (higher = more sensitive) and how it was measured."""

    method: str
    values: list[float]
    meta: dict[str, Any] = field(default_factory=dict)

    def as_config(self, base: KVConfig | None = None, **changes: Any) -> KVConfig:
        """A KVConfig that allocates layer budgets by this profile."""
        base = base or KVConfig()
        return base.replace(layer_allocation="sensitivity", sensitivity_profile=list(self.values), **changes)


def _budget(n: int, budget: int | None, compression_ratio: float | None) -> int:
    if budget is not None:
        return max(1, min(n, budget))
    ratio = 0.75 if compression_ratio is None else compression_ratio
    return max(1, math.ceil(n * (1.0 - ratio)))


def _num_layers(model: Any) -> int:
    cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    return int(cfg.num_hidden_layers)


def _run(engine: Engine, config: KVConfig, sample: CalibrationSample, steps: int,
         forced: Sequence[int] | None = None) -> tuple[list[int], torch.Tensor]:
    """Prefill (compressing as ``config`` says), append the question, then decode ``steps`` tokens
    greedily, or feed ``forced`` teacher-forced; returns the tokens and the logits that predicted them."""
    questions = [sample.question_ids] if sample.question_ids else []
    request = Request(sample.context_ids, questions, 0 if forced is not None else steps, config=config,
                      keep_logits=True, stop_at_eos=False,
                      teacher_tokens=[list(forced)] if forced is not None else None)
    answer = engine.serve(request).answers[0]
    if forced is not None:
        assert answer.teacher_logits is not None
        return list(forced), torch.stack(answer.teacher_logits).float()
    return answer.raw_token_ids, torch.stack(answer.step_logits).float()


def kl_divergence(p_logits: torch.Tensor, q_logits: torch.Tensor) -> float:
    """Mean over rows of KL(softmax(p) || softmax(q)) in nats, fp32."""
    logp = torch.log_softmax(p_logits.float(), dim=-1)
    logq = torch.log_softmax(q_logits.float(), dim=-1)
    return float((logp.exp() * (logp - logq)).sum(-1).mean())


def ablation_profile(
    model: Any,
    samples: Sequence[CalibrationSample],
    *,
    policy: str = "snapkv",
    budget: int | None = None,
    compression_ratio: float | None = 0.75,
    continuation: int = 16,
    base: KVConfig | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> LayerProfile:
    """Single-layer ablation: logit KL when only layer l is compressed to B (see module doc)."""
    n_layers = _num_layers(model)
    engine = Engine(model, None)
    base = base or KVConfig()
    totals = [0.0] * n_layers
    done, total = 0, len(samples) * (n_layers + 1)
    for sample in samples:
        cont, full = _run(engine, KVConfig(), sample, continuation)
        done += 1
        if progress:
            progress(done, total)
        b = _budget(len(sample.context_ids), budget, compression_ratio)
        for layer in range(n_layers):
            budgets = [_UNCOMPRESSED] * n_layers
            budgets[layer] = b
            cfg = base.replace(policy=policy, budget=None, compression_ratio=None, layer_allocation="explicit",
                               layer_budgets=budgets, decode_interval=None, prefill_block_size=None)
            _, comp = _run(engine, cfg, sample, len(cont), forced=cont)
            totals[layer] += kl_divergence(full, comp)
            done += 1
            if progress:
                progress(done, total)
    values = [t / max(len(samples), 1) for t in totals]
    meta = {"policy": policy, "budget": budget, "compression_ratio": None if budget else compression_ratio,
            "continuation": continuation, "samples": len(samples),
            "context_tokens": [len(s.context_ids) for s in samples]}
    return LayerProfile("ablation_kl", values, meta)


def block_mask(n: int, *, sink: int, block: int, overlap: int, device: Any = None) -> torch.Tensor:
    """[n, n] bool: causal, and token i sees the sinks, its own block and the last ``overlap`` tokens of
    the previous block (EpiCache's block-prefill-emulating mask)."""
    i = torch.arange(n, device=device)
    rows, cols = i[:, None], i[None, :]
    blk_r, blk_c = rows // block, cols // block
    prev_tail = (blk_c == blk_r - 1) & (cols >= blk_r * block - overlap)
    return (cols <= rows) & ((cols < sink) | (blk_c == blk_r) | prev_tail)


def _keys(model: Any, ids: torch.Tensor, mask: torch.Tensor | None) -> list[torch.Tensor]:
    with torch.inference_mode():
        kwargs = {"attention_mask": mask[None, None]} if mask is not None else {}
        out = model(input_ids=ids, use_cache=True, **kwargs)
    return [layer.keys[0].float() for layer in out.past_key_values.layers]  # [H_kv, n, d] post-RoPE


def key_cosine_profile(
    model: Any,
    samples: Sequence[CalibrationSample],
    *,
    sink: int = 32,
    block: int = 512,
    overlap: int | None = None,
    window: int = 100,
    progress: Callable[[int, int], None] | None = None,
) -> LayerProfile:
    """EpiCache key-state cosine under a block mask; value = 1 - similarity (see module doc)."""
    n_layers = _num_layers(model)
    overlap = block // 2 if overlap is None else overlap
    sims = [0.0] * n_layers
    used = 0
    for k, sample in enumerate(samples):
        ids_list = sample.context_ids + sample.question_ids
        if len(ids_list) <= block:
            raise ValueError(f"calibration sample {k} has {len(ids_list)} tokens; key_cosine needs more than "
                             f"block={block} (lower --block or use longer samples)")
        device = next(model.parameters()).device
        ids = torch.tensor([ids_list], device=device)
        full = _keys(model, ids, None)
        masked = _keys(model, ids, block_mask(len(ids_list), sink=sink, block=block, overlap=overlap, device=device))
        n = len(ids_list)
        starts = range(0, n - window + 1, window)
        for layer in range(n_layers):
            a, b = full[layer], masked[layer]
            cos = [torch.nn.functional.cosine_similarity(a[:, s : s + window].flatten(1), b[:, s : s + window].flatten(1),
                                                         dim=-1).mean() for s in starts]
            sims[layer] += float(torch.stack(cos).mean())
        used += 1
        if progress:
            progress(k + 1, len(samples))
    sim = [s / max(used, 1) for s in sims]
    meta = {"sink": sink, "block": block, "overlap": overlap, "window": window, "samples": used,
            "similarity": sim}
    return LayerProfile("key_cosine", [max(0.0, 1.0 - s) for s in sim], meta)


class _Collect:
    """A recorder stand-in that keeps rows in memory (offline profiling has no store to feed)."""

    def __init__(self) -> None:
        self.rows: dict[str, list[dict]] = {}

    def submit(self, table: str, rows: list[dict]) -> bool:
        self.rows.setdefault(table, []).extend(rows)
        return True

    def submit_deferred(self, fn: Callable[[], Any], rows_hint: int = 1) -> bool:
        for table, rows in fn():
            self.submit(table, rows)
        return True


def retained_mass_profile(
    model: Any,
    samples: Sequence[CalibrationSample],
    *,
    budget: int | None = None,
    compression_ratio: float | None = 0.75,
    rows: int = 32,
    progress: Callable[[int, int], None] | None = None,
) -> LayerProfile:
    """1 - top-B attention mass of the last ``rows`` prompt rows, per layer (the online proxy, offline)."""
    n_layers = _num_layers(model)
    loss = [0.0] * n_layers
    skew: dict[str, list[float]] = {"entropy": [0.0] * n_layers, "tokens_90": [0.0] * n_layers,
                                    "sink_mass": [0.0] * n_layers, "recent_mass": [0.0] * n_layers,
                                    "gini": [0.0] * n_layers}
    for k, sample in enumerate(samples):
        ids = sample.context_ids + sample.question_ids
        b = _budget(len(ids), budget, compression_ratio)
        out = _Collect()
        policy = SamplingPolicy(decode_every=0, prefill_rows=rows, per_head=False)
        probes = ProbeSet([SkewProbe(proxy_budget=b, per_head=False, prefill_rows=rows)], out, policy)
        engine = Engine(model, None)
        engine.observer = probes
        engine.serve(Request(ids, (), 0, config=KVConfig()))
        for r in out.rows.get("layer_stats", []):
            loss[r["layer"]] += 1.0 - r["retained_mass"]
            for f in skew:
                skew[f][r["layer"]] += r[f]
        if progress:
            progress(k + 1, len(samples))
    m = max(len(samples), 1)
    meta = {"budget": budget, "compression_ratio": None if budget else compression_ratio, "rows": rows,
            "samples": len(samples), **{f: [v / m for v in vals] for f, vals in skew.items()}}
    return LayerProfile("retained_mass", [v / m for v in loss], meta)


def profile_layers(model: Any, samples: Sequence[CalibrationSample], methods: Sequence[str] = METHODS,
                   **options: Any) -> dict[str, LayerProfile]:
    """Run several methods; ``options`` go to the methods that take them."""
    import inspect

    fns: dict[str, Callable[..., LayerProfile]] = {"ablation_kl": ablation_profile, "key_cosine": key_cosine_profile,
           "retained_mass": retained_mass_profile}
    out = {}
    for m in methods:
        if m not in fns:
            raise ValueError(f"unknown sensitivity method {m!r}; choose from {', '.join(METHODS)}")
        accepted = inspect.signature(fns[m]).parameters
        out[m] = fns[m](model, samples, **{k: v for k, v in options.items() if k in accepted})
    return out


def save_profile(store: Any, model_name: str, profile: LayerProfile, run_id: int | None = None) -> int:
    """Store a profile (``store.save_profile``); returns its id."""
    return store.save_profile(model_name, profile.method, profile.values, meta=profile.meta, run_id=run_id)


def calibration_samples(tokenizer: Any, workload: str = "convqa", n: int = 2, tokens: int = 1024,
                        seed: int = 0) -> list[CalibrationSample]:
    """Chat-formatted samples from a bundled workload: the context, then the first question."""
    from kvpilot.engine.prompts import chat_parts
    from kvpilot.workloads import load_workload

    out = []
    for s in load_workload(workload, n, tokens, seed, tokenizer):
        qa = s.qa[0] if s.qa else None
        parts = chat_parts(tokenizer, s.context, qa.question if qa else "", qa.answer_prefix if qa else "")
        out.append(CalibrationSample(parts.context_ids, parts.question_ids))
    return out
