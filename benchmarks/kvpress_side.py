"""kvpress's side of the conversation benchmark; runs inside benchmarks/.venv-kvpress, never with kvpilot.

kvpress 0.5.5 pins transformers < 5.3 while kvpilot needs a newer one, so `conversation_compression.py`
creates that virtual environment and runs this script there. It imports nothing from kvpilot: it reads
kvpilot's samples as JSONL, one conversation a line,

    {"id": ..., "context": ..., "max_new_tokens": 16, "questions": [{"question": ..., "answer_prefix": ...}]}

and for each press and compression ratio compresses every context once through kvpress's own text
generation pipeline, question-agnostic (the questions are separate inputs, so the press only ever sees
the context), then answers every question on that cache as the pipeline does (greedy, the answer removed
from the cache between questions). Each question is "\\n\\n" + question, which makes the prompt the same
text kvpilot builds (`kvpilot.engine.prompts.chat_parts`). One JSONL line per answer:

    {"kind": "answer", "press", "ratio", "sample_id", "question_index", "prediction",
     "kv_bytes", "logical_kv_bytes", "peak_kv_bytes", "context_tokens"}

`kv_bytes` is what the cache's tensors hold after compression; `logical_kv_bytes` leaves out pairs that a
press only masks (kvpress's KVzip and AdaKV-style presses keep every pair and mask the evicted ones);
`peak_kv_bytes` is the largest total seen by a hook before each attention layer's own press hook. Then one
line per (press, ratio): {"kind": "timing", "time_ratio": median over samples of (prefill with the
press, including its scoring) / (plain prefill of the same context), measured in alternating pairs}.
Scoring is left to the main process (kvpilot's scorer), so both sides are scored the same way.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time

import torch
from kvpress import KeyDiffPress, KVzipPress, SnapKVPress
from transformers import AutoModelForCausalLM, AutoTokenizer, DynamicCache, pipeline

PRESSES = {"kvzip": KVzipPress, "snapkv": SnapKVPress, "keydiff": KeyDiffPress}


def cache_layers(cache) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(keys, values) per layer that holds any, across transformers' cache layouts."""
    if hasattr(cache, "layers"):
        return [(layer.keys, layer.values) for layer in cache.layers
                if getattr(layer, "keys", None) is not None and layer.keys.numel()]
    return [(k, v) for k, v in zip(cache.key_cache, cache.value_cache, strict=False) if k.numel()]


def held_bytes(cache) -> int:
    return sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in cache_layers(cache))


def masked_bytes(model, cache) -> int:
    """Bytes of pairs a press masked instead of removing (`masked_key_indices` on attention modules)."""
    total = 0
    layers = cache_layers(cache)
    for i, layer in enumerate(model.model.layers):
        idx = getattr(layer.self_attn, "masked_key_indices", None)
        if idx is None or i >= len(layers):
            continue
        k, v = layers[i]
        per_pair = (k.shape[-1] * k.element_size()) + (v.shape[-1] * v.element_size())
        total += int(idx[0].numel()) * per_pair
    return total


class PeakWatch:
    """Largest cache total seen before each attention layer's press hook runs (hooks run in order)."""

    def __init__(self, model) -> None:
        self.cache = None
        self.peak = 0
        self.handles = [layer.self_attn.register_forward_hook(self._hook) for layer in model.model.layers]

    def _hook(self, *_args) -> None:
        if self.cache is not None:
            self.peak = max(self.peak, held_bytes(self.cache))

    def start(self, cache) -> None:
        self.cache, self.peak = cache, 0


def prefill_s(model, ids: torch.Tensor, press) -> float:
    """The pipeline's own prefill step (the press's scoring and compression included), timed."""
    cache = DynamicCache()
    t0 = time.perf_counter()
    with torch.no_grad(), press(model) if press is not None else contextlib.nullcontext():
        model.model(input_ids=ids, past_key_values=cache)
    return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="a transformers model folder (kvpilot's converted bundled model)")
    ap.add_argument("--samples", required=True, help="JSONL written by conversation_compression.py")
    ap.add_argument("--out", required=True)
    ap.add_argument("--presses", nargs="+", default=list(PRESSES), choices=list(PRESSES))
    ap.add_argument("--ratios", nargs="+", type=float, required=True)
    ap.add_argument("--full", action="store_true", help="also answer with no press (a check that prompts match)")
    ap.add_argument("--timing-samples", type=int, default=2)
    args = ap.parse_args()

    tok = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32).eval()
    pipe = pipeline("kv-press-text-generation", model=model, tokenizer=tok, device="cpu")
    samples = [json.loads(line) for line in open(args.samples) if line.strip()]
    inputs = []
    for s in samples:  # kvpress's own preprocessing: chat template, split after the context, tokenise
        parts = [pipe.preprocess(s["context"], questions=["\n\n" + q["question"]], answer_prefix=q["answer_prefix"],
                                 max_context_length=int(1e10)) for q in s["questions"]]
        inputs.append({"context_ids": parts[0]["context_ids"], "questions_ids": [p["questions_ids"][0] for p in parts]})
    watch = PeakWatch(model)
    jobs = ([("full", 0.0)] if args.full else []) + [(p, r) for p in args.presses for r in args.ratios]
    with open(args.out, "w") as out:
        for name, ratio in jobs:
            press = PRESSES[name](compression_ratio=ratio) if name != "full" else None
            for s, x in zip(samples, inputs, strict=True):
                cache = DynamicCache()
                watch.start(cache)
                with torch.no_grad():
                    answers = pipe._forward(x, max_new_tokens=s["max_new_tokens"], press=press, cache=cache)
                watch.cache = None
                held = held_bytes(cache)
                for qi, text in enumerate(answers):
                    out.write(json.dumps({
                        "kind": "answer", "press": name, "ratio": ratio, "sample_id": s["id"], "question_index": qi,
                        "prediction": text, "kv_bytes": held, "logical_kv_bytes": held - masked_bytes(model, cache),
                        "peak_kv_bytes": watch.peak, "context_tokens": int(x["context_ids"].shape[1]),
                    }) + "\n")
                out.flush()
            if press is None:
                continue
            ratios = []
            for k, x in enumerate(inputs[: args.timing_samples]):
                ids = x["context_ids"]
                first_plain = k % 2 == 0  # alternate the order, so drift in load hits both sides alike
                plain = prefill_s(model, ids, None) if first_plain else None
                pressed = prefill_s(model, ids, press)
                if plain is None:
                    plain = prefill_s(model, ids, None)
                ratios.append(pressed / plain)
            out.write(json.dumps({"kind": "timing", "press": name, "ratio": ratio,
                                  "time_ratio": statistics.median(ratios) if ratios else None,
                                  "pairs": ratios}) + "\n")
            out.flush()
            print(f"kvpress {name} {ratio}: done", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
