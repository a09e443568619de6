"""Question-agnostic compression of long contexts (16k+ tokens): time and memory on a GPU.

What only a GPU shows at these lengths: how much reconstruction scoring (KVzip) costs next to a plain
prefill, how much KV memory each config really holds afterwards, and whether block-wise prefill keeps
the peak at budget + block. The model has a Llama-3-8B shape with random bf16 weights (no download; the
weights do not change the cost), the contexts are real convqa conversations tokenized with the bundled
model's tokenizer (whose chat template the reconstruction queries use). Accuracy is not measured here:
random weights answer nothing (benchmarks/conversation_compression.py measures accuracy on the bundled
model).

Configs alternate within each round so that drift hits all of them alike; times are medians over rounds
and are reported as ratios of the full cache's plain prefill on the same context.

    python benchmarks/long_context_compression.py                      # CUDA: 16k and 32k tokens
    python benchmarks/long_context_compression.py --device cpu --shape tiny --tokens 2048 --rounds 1

Writes benchmarks/results/long_context_compression_<device>.json (or --out NAME).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from common import random_llama_engine, save  # noqa: E402

from kvpilot.config import KVConfig  # noqa: E402
from kvpilot.engine import Request  # noqa: E402
from kvpilot.engine.prompts import chat_parts  # noqa: E402
from kvpilot.workloads.registry import generate  # noqa: E402


def configs(ratio: float, block: int) -> dict[str, KVConfig]:
    return {
        "full": KVConfig(),
        "snapkv (window)": KVConfig(policy="snapkv", compression_ratio=ratio),
        "kvzip (reconstruction)": KVConfig(policy="kvzip", scoring="reconstruct", compression_ratio=ratio),
        "kvzip + global layers": KVConfig(
            policy="kvzip", scoring="reconstruct", layer_allocation="global", compression_ratio=ratio
        ),
        f"kvzip, block-wise {block}": KVConfig(
            policy="kvzip", scoring="reconstruct", prefill_block_size=block, compression_ratio=ratio
        ),
    }


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def measure(engine, context_ids: list[int], config: KVConfig, device: str) -> dict:
    """One question-agnostic compression of the context; wall time and the memory it held."""
    sync(device)
    base = torch.cuda.memory_allocated() if device == "cuda" else 0
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    response = engine.serve(Request(context_ids, [], 0, config=config))
    sync(device)
    seconds = time.perf_counter() - t0
    c = response.compression
    row = {
        "seconds": seconds,
        "kv_bytes": c.kv_bytes,
        "logical_kv_bytes": c.logical_kv_bytes,
        "peak_kv_bytes": c.peak_kv_bytes,
        "compression_ratio": c.compression_ratio,
        "device_peak_above_weights_bytes": (torch.cuda.max_memory_allocated() - base) if device == "cuda" else None,
    }
    del response
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", choices=("cuda", "cpu"), default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--shape", choices=("llama3-8b", "tiny"), default="llama3-8b")
    ap.add_argument("--tokens", type=int, nargs="+", default=[16384, 32768], help="context lengths")
    ap.add_argument("--ratio", type=float, default=0.875, help="compression ratio (0.875 = 8x)")
    ap.add_argument("--block", type=int, default=4096, help="block size of the block-wise config")
    ap.add_argument("--rounds", type=int, default=3, help="rounds; configs alternate within each")
    ap.add_argument("--tokenizer", default=None, help="tokenizer folder (default: the bundled model's)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: no CUDA device (use --device cpu --shape tiny for a smoke run)", file=sys.stderr)
        return 2

    from transformers import AutoTokenizer

    from kvpilot.engine.model import resolve_model_dir

    tok = AutoTokenizer.from_pretrained(args.tokenizer or resolve_model_dir(None))
    dtype = "bfloat16" if args.device == "cuda" else "float32"
    engine = random_llama_engine(args.shape, args.device, tokenizer=tok, vocab_size=len(tok), dtype=dtype)
    cfgs = configs(args.ratio, args.block)
    results: dict[str, dict] = {}
    for n in args.tokens:
        (sample,) = generate("convqa", 1, n, seed=1, tokenizer=tok)
        context = chat_parts(tok, sample.context, sample.qa[0].question).context_ids
        measure(engine, context[: min(len(context), 1024)], cfgs["full"], args.device)  # warm-up
        rows: dict[str, list[dict]] = {name: [] for name in cfgs}
        names = list(cfgs)
        for r in range(args.rounds):
            order = names[r % len(names):] + names[: r % len(names)]
            for name in order:
                rows[name].append(measure(engine, context, cfgs[name], args.device))
        full_s = statistics.median(x["seconds"] for x in rows["full"])
        per_config = {}
        for name, rs in rows.items():
            secs = statistics.median(x["seconds"] for x in rs)
            last = rs[-1]
            per_config[name] = {
                "seconds_median": secs,
                "time_vs_full_prefill": secs / full_s,
                **{k: v for k, v in last.items() if k != "seconds"},
            }
            peak = last["device_peak_above_weights_bytes"]
            print(f"{len(context):>6} tokens  {name:<28} x{secs / full_s:5.2f} prefill  "
                  f"KV {last['kv_bytes'] / 2**20:8.1f} MiB  peak KV {last['peak_kv_bytes'] / 2**20:8.1f} MiB"
                  + (f"  device peak {peak / 2**30:6.2f} GiB" if peak is not None else ""), flush=True)
        results[str(len(context))] = per_config
    out = args.out or f"long_context_compression_{args.device}"
    path = save(out, {
        "model": f"{args.shape} shape, random {dtype} weights; bundled model's tokenizer",
        "ratio": args.ratio,
        "block": args.block,
        "rounds": args.rounds,
        "results": results,
    })
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
