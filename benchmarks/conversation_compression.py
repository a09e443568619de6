"""Question-agnostic compression of long conversations (issue 11): accuracy with 95 % intervals per config.

convqa on the bundled model: each conversation is compressed once, before any question, then every
question is asked on its own copy of the compressed cache. For each config and ratio the script reports
accuracy with a Wilson 95 % interval, the KV bytes held after compression, the peak KV bytes, and the
prefill (plus scoring) time as a ratio of the full cache's plain prefill time on the same samples.

    python benchmarks/conversation_compression.py --samples 5 --tokens 1000 --ratios 0.75 0.875
    python benchmarks/conversation_compression.py --samples 20 --tokens 2000        # the issue's size

Writes benchmarks/results/conversation_compression.json (or --out NAME).
Not built yet (see the issue): the kvpress side-by-side run, episodes, the cheap surrogate score.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import save  # noqa: E402
from tqdm import tqdm  # noqa: E402

from kvpilot.config import KVConfig  # noqa: E402
from kvpilot.engine import Engine  # noqa: E402
from kvpilot.evaluation import Evaluator  # noqa: E402

# config families: name -> the fields every ratio shares
FAMILIES: dict[str, dict] = {
    "previous best (snapkv, scoring prompt, turns)": {"policy": "snapkv", "scoring": "prompt", "granularity": "turn"},
    "kvzip (reconstruction, max)": {"policy": "kvzip", "scoring": "reconstruct"},
    "kvzip + global layers": {"policy": "kvzip", "scoring": "reconstruct", "layer_allocation": "global"},
    "kvzip + adaptive heads": {"policy": "kvzip", "scoring": "reconstruct", "head_allocation": "adaptive"},
    "keydiff": {"policy": "keydiff"},
    "snapkv (window)": {"policy": "snapkv"},
    "episodes (EpiCache)": {"policy": "kvzip", "scoring": "prompt", "episodes": 4},
}


def wilson(successes: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a proportion (scores in [0, 1] summed as successes)."""
    if n == 0:
        return (0.0, 1.0)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=5, help="conversations (4 questions each)")
    ap.add_argument("--tokens", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--ratios", type=float, nargs="+", default=[0.5, 0.75, 0.875, 0.9375])
    ap.add_argument("--families", nargs="+", default=list(FAMILIES), choices=list(FAMILIES))
    ap.add_argument("--out", default="conversation_compression")
    args = ap.parse_args()

    engine = Engine.load()
    ev = Evaluator.for_workload(engine, "convqa", args.samples, args.tokens, args.seed, results_root=None,
                                progress=False, fidelity=False)
    full = ev.run(KVConfig())
    base_prefill = full.metrics["context_tokens"] / full.metrics["prefill_tokens_per_s"]
    rows = []

    def record(family: str, ratio: float, result) -> None:
        m = result.metrics
        n = m["n_questions"]
        low, high = wilson(m["accuracy"] * n, n)
        prefill_s = m["context_tokens"] / m["prefill_tokens_per_s"]
        rows.append({"family": family, "ratio": ratio, "config": result.config.to_dict(), "accuracy": m["accuracy"],
                     "accuracy_95": [low, high], "n_questions": n, "kv_bytes": m["kv_bytes"],
                     "peak_kv_bytes": m["peak_kv_bytes"], "prefill_time_ratio": prefill_s / base_prefill})
        print(f"{family:48s} {ratio:>6.4g}  acc {m['accuracy']:.3f} [{low:.3f}, {high:.3f}] of {n}  "
              f"KV {m['kv_bytes'] / 2**20:6.1f} MiB  peak {m['peak_kv_bytes'] / 2**20:6.1f} MiB  "
              f"prefill x{prefill_s / base_prefill:.2f}", flush=True)

    record("full cache", 0.0, full)
    for family in tqdm(args.families, desc="families"):
        for ratio in args.ratios:
            record(family, ratio, ev.run(KVConfig.parse({**FAMILIES[family], "compression_ratio": ratio})))
    path = save(args.out, {"workload": "convqa", "samples": args.samples, "tokens": args.tokens, "seed": args.seed,
                           "question_agnostic": True, "rows": rows})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
