"""EpiCache episodes against the same config with one cache (issue 11, item 5): what the episodes add.

The same convqa samples as benchmarks/conversation_compression.py (same --samples/--tokens/--seed), one
config family, `kvzip` scored by a prompt, with `episodes` 1 (the config's own scoring prompt) and E (the
prompt patched with each episode's medoids, each question on its nearest episode). Reports accuracy with
a Wilson 95 % interval, KV held (every episode's cache), peak KV, compression time as a ratio of the
single-cache run's (measured in the same run, alternating per ratio) and the machine load.

    OMP_NUM_THREADS=1 python benchmarks/episodes_ablation.py --samples 5 --tokens 1000 --ratios 0.75 0.875

Writes benchmarks/results/episodes_ablation.json (or --out NAME).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import save  # noqa: E402
from conversation_compression import wilson  # noqa: E402

from kvpilot.config import KVConfig  # noqa: E402
from kvpilot.engine import Engine  # noqa: E402
from kvpilot.evaluation import Evaluator  # noqa: E402

BASE = {"policy": "kvzip", "scoring": "prompt"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=5, help="conversations (4 questions each)")
    ap.add_argument("--tokens", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--episodes", type=int, default=4)
    ap.add_argument("--ratios", type=float, nargs="+", default=[0.75, 0.875])
    ap.add_argument("--out", default="episodes_ablation")
    args = ap.parse_args()

    engine = Engine.load()
    ev = Evaluator.for_workload(engine, "convqa", args.samples, args.tokens, args.seed, results_root=None,
                                progress=False, fidelity=False)
    rows, loads = [], [os.getloadavg()]
    for ratio in args.ratios:
        pair = {}
        for episodes in (1, args.episodes):
            result = ev.run(KVConfig.parse({**BASE, "compression_ratio": ratio, "episodes": episodes}))
            loads.append(os.getloadavg())
            m = result.metrics
            n = m["n_questions"]
            pair[episodes] = m["context_tokens"] / m["prefill_tokens_per_s"]
            low, high = wilson(m["accuracy"] * n, n)
            rows.append({"ratio": ratio, "episodes": episodes, "config": result.config.to_dict(),
                         "accuracy": m["accuracy"], "accuracy_95": [low, high], "n_questions": n,
                         "kv_bytes": m["kv_bytes"], "peak_kv_bytes": m["peak_kv_bytes"],
                         "compression_s": pair[episodes]})
            print(f"ratio {ratio:<6g} episodes {episodes}  acc {m['accuracy']:.3f} [{low:.3f}, {high:.3f}] of {n}  "
                  f"KV {m['kv_bytes'] / 2**20:6.1f} MiB  peak {m['peak_kv_bytes'] / 2**20:6.1f} MiB", flush=True)
        rows[-1]["time_vs_one_cache"] = pair[args.episodes] / pair[1]
        print(f"  compression time with {args.episodes} episodes: x{rows[-1]['time_vs_one_cache']:.2f} of one cache")
    path = save(args.out, {"workload": "convqa", "samples": args.samples, "tokens": args.tokens, "seed": args.seed,
                           "question_agnostic": True, "load_average_1_5_15": loads, "rows": rows})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
