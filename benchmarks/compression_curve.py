"""Accuracy, KV bytes and speed of every policy at several compression ratios on the bundled model.

Passkey retrieval (question-agnostic: the context is compressed before the question is asked).
    python benchmarks/compression_curve.py --samples 10 --tokens 1500
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import save  # noqa: E402
from tqdm import tqdm  # noqa: E402

from kvpilot.config import KVConfig  # noqa: E402
from kvpilot.engine import Engine  # noqa: E402
from kvpilot.policies import POLICY_REGISTRY  # noqa: E402
from kvpilot.workloads import generate, passkey_match  # noqa: E402

RATIOS = (0.0, 0.5, 0.75, 0.875)
# A generic scoring prompt (it never names the question): EpiCache's "patched prompt" idea.
GENERIC_PROMPT = "\n\nRemember the important information hidden in the text above: numbers, names and keys."


def measure(engine: Engine, samples, config: KVConfig, max_new: int) -> dict:
    engine.apply_config(config)
    rows = []
    for s in samples:
        qa = s.qa[0]
        r = engine.answer(s.context, [(qa.question, qa.answer_prefix)], max_new_tokens=max_new)[0]
        rows.append((passkey_match(r.text, qa.answers), r))
    n = len(rows)
    res = [r for _, r in rows]
    return {
        "policy": config.policy + (" + scoring prompt" if config.scoring == "prompt" else ""),
        "ratio": config.compression_ratio or 0.0,
        "accuracy": sum(ok for ok, _ in rows) / n,
        "kv_bytes": sum(r.kv_bytes for r in res) / n,
        "peak_kv_bytes": sum(r.peak_kv_bytes for r in res) / n,
        "peak_layer_kv_bytes": sum(r.extra.get("peak_layer_kv_bytes", 0) for r in res) / n,
        "logical_kv_bytes": sum(r.logical_kv_bytes for r in res) / n,
        "measured_compression": sum(r.compression_ratio for r in res) / n,
        "prefill_tok_s": sum(r.prompt_tokens for r in res) / sum(r.prefill_s for r in res),
        "decode_tok_s": 1.0 / (sum(r.tpot_s for r in res) / n),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=10)
    ap.add_argument("--tokens", type=int, default=1500)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--max-new-tokens", type=int, default=12)
    ap.add_argument("--policies", default=",".join(sorted(POLICY_REGISTRY)))
    args = ap.parse_args()
    engine = Engine.load()
    samples = generate("passkey", args.samples, args.tokens, seed=args.seed, tokenizer=engine.tokenizer)
    policies = [p for p in args.policies.split(",") if p]
    jobs = [KVConfig()] + [
        KVConfig(policy=p, compression_ratio=r) for p in policies if p != "full" for r in RATIOS if r > 0
    ]
    jobs += [KVConfig(policy="snapkv", compression_ratio=r, scoring="prompt", scoring_prompt=GENERIC_PROMPT)
             for r in RATIOS if r > 0]
    results = []
    for cfg in tqdm(jobs, desc="configs"):
        results.append(measure(engine, samples, cfg, args.max_new_tokens))
    print("| policy | ratio | passkey acc | KV MiB | peak KV MiB | peak layer KiB | prefill tok/s | decode tok/s |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        print(
            f"| {r['policy']} | {r['ratio']:.3f} | {r['accuracy']:.0%} | {r['kv_bytes'] / 2**20:.1f} | "
            f"{r['peak_kv_bytes'] / 2**20:.1f} | {r['peak_layer_kv_bytes'] / 2**10:.0f} | "
            f"{r['prefill_tok_s']:.0f} | {r['decode_tok_s']:.1f} |"
        )
    path = save("compression_curve", {"workload": "passkey", "samples": args.samples, "tokens": args.tokens,
                                      "results": results})
    print(f"saved {path}")


if __name__ == "__main__":
    main()
