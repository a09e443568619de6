"""Engine overhead: kvpilot's managed cache and registered attention vs transformers' SDPA + DynamicCache.

Both sides run the bundled SmolLM2-135M with the same weights (two model objects loaded from the same
folder: one with ``attn_implementation="sdpa"``, one with kvpilot's), the same prompt and the same
number of greedy tokens. The baseline is transformers' own forward with a ``DynamicCache``; the kvpilot
side is ``Engine.serve`` (the one request path) with the full (no-eviction) config, and with snapkv at
0.75 for reference. Sides alternate in pairs (A B, then B A, ...) so a shared machine's drift hits both
alike; each figure is the median over pairs of the per-pair ratio kvpilot / baseline for prefill time and
for the time per decoded token after the first. Target (issue 10): at most 1.03 with the full config.

    python benchmarks/engine_overhead.py                       # 1,000-token prompts, 12 pairs
    python benchmarks/engine_overhead.py --pairs 20 --new-tokens 48
    python benchmarks/engine_overhead.py --config 'int8-8x={"policy": "surrogate", "compression_ratio": 0.7647,
        "layer_allocation": "global", "layer_allocation_params": {"heads": true}, "kv_storage": "int8"}'

``--config NAME=JSON`` (repeatable) times other configs against the same baseline instead of the two defaults.

Writes benchmarks/results/engine_overhead.json.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from common import save  # noqa: E402

from kvpilot.config import KVConfig, KVConfigError  # noqa: E402
from kvpilot.engine import Engine, Request  # noqa: E402
from kvpilot.engine.model import resolve_model_dir  # noqa: E402


def baseline(model, ids: list[int], new_tokens: int) -> tuple[float, float]:
    """transformers' own path: SDPA attention, DynamicCache, greedy. Returns (prefill s, decode s/token)."""
    from transformers import DynamicCache

    cache = DynamicCache(config=model.config)
    with torch.inference_mode():
        t0 = time.perf_counter()
        out = model(input_ids=torch.tensor([ids]), position_ids=torch.arange(len(ids))[None], cache=cache,
                    use_cache=True, logits_to_keep=1)
        prefill_s = time.perf_counter() - t0
        tok = int(out.logits[0, -1].argmax())
        pos = len(ids)
        t1 = time.perf_counter()
        for _ in range(new_tokens - 1):
            out = model(input_ids=torch.tensor([[tok]]), position_ids=torch.tensor([[pos]]), cache=cache,
                        use_cache=True, logits_to_keep=1)
            tok = int(out.logits[0, -1].argmax())
            pos += 1
        decode_s = (time.perf_counter() - t1) / max(new_tokens - 1, 1)
    return prefill_s, decode_s


def managed(engine: Engine, config: KVConfig, ids: list[int], new_tokens: int) -> tuple[float, float]:
    """kvpilot's request path with ``config``. Returns (prefill s, decode s/token after the first)."""
    response = engine.serve(Request(ids, (), new_tokens, config=config, stop_at_eos=False))
    answer = response.answers[0]
    return response.compression.prefill_s, answer.tpot_s


def parse_named_config(text: str) -> tuple[str, KVConfig]:
    """``NAME=JSON`` -> (NAME, the config); ValueError with one line saying what is wrong."""
    name, sep, body = text.partition("=")
    if not sep or not name:
        raise ValueError(f"expected NAME=JSON, got {text!r}")
    try:
        return name, KVConfig.parse(body)
    except KVConfigError as exc:
        raise ValueError(f"{name}: {exc}") from None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, default=12, help="alternating pairs per config (default 12)")
    ap.add_argument("--prompt-tokens", type=int, default=1000)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--config", action="append", default=[], metavar="NAME=JSON",
                    help="a config to time (repeatable; default: the full config and snapkv at 0.75)")
    ap.add_argument("--out", default="engine_overhead")
    args = ap.parse_args()
    try:
        configs = dict(parse_named_config(text) for text in args.config) or {
            "full": KVConfig(), "snapkv-0.75": KVConfig(policy="snapkv", compression_ratio=0.75)}
    except ValueError as exc:
        sys.exit(f"error: --config: {exc}")

    from transformers import AutoModelForCausalLM

    engine = Engine.load()
    path = resolve_model_dir(None)
    sdpa = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="sdpa").eval()
    vocab = int(sdpa.config.vocab_size)
    rng = random.Random(0)
    prompts = [[rng.randrange(1000, min(20000, vocab)) for _ in range(args.prompt_tokens)] for _ in range(4)]
    for ids in prompts[:1]:  # warm both paths up
        baseline(sdpa, ids, 4)
        for config in configs.values():
            managed(engine, config, ids, 4)

    results = {}
    for name, config in configs.items():
        prefill_ratios, decode_ratios, raw = [], [], []
        for i in range(args.pairs):
            ids = prompts[i % len(prompts)]
            first_base = i % 2 == 0
            if first_base:
                b = baseline(sdpa, ids, args.new_tokens)
                k = managed(engine, config, ids, args.new_tokens)
            else:
                k = managed(engine, config, ids, args.new_tokens)
                b = baseline(sdpa, ids, args.new_tokens)
            prefill_ratios.append(k[0] / b[0])
            decode_ratios.append(k[1] / b[1])
            raw.append({"baseline_prefill_s": b[0], "baseline_decode_s_per_token": b[1],
                        "kvpilot_prefill_s": k[0], "kvpilot_decode_s_per_token": k[1],
                        "order": "baseline first" if first_base else "kvpilot first"})
            print(f"{name} pair {i + 1}/{args.pairs}: prefill x{prefill_ratios[-1]:.3f}  "
                  f"decode x{decode_ratios[-1]:.3f}", flush=True)
        results[name] = {
            "config": config.to_dict(),
            "prefill_ratio_median": statistics.median(prefill_ratios),
            "decode_ratio_median": statistics.median(decode_ratios),
            "prefill_ratios": prefill_ratios,
            "decode_ratios": decode_ratios,
            "pairs": raw,
        }
        print(f"{name}: prefill x{results[name]['prefill_ratio_median']:.3f}, "
              f"decode x{results[name]['decode_ratio_median']:.3f} (median of {args.pairs} pairs)")
    load = os.getloadavg()
    path_out = save(args.out, {
        "prompt_tokens": args.prompt_tokens,
        "new_tokens": args.new_tokens,
        "pairs": args.pairs,
        "loadavg_after": load,
        "target": "kvpilot/baseline <= 1.03 for prefill and decode with the full config",
        "results": results,
    })
    print(f"wrote {path_out}")


if __name__ == "__main__":
    main()
