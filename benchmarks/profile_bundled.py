"""Per-layer attention skew and sensitivity profiles of the bundled model (SmolLM2-135M-Instruct).

Skew: the skew probe's metrics on the last 32 prompt rows of each calibration sample, full cache, at
the budget B = 25 % of the context (the "retained mass" column is what top-B keeps). Sensitivity: the
three profiler methods of kvpilot.evaluation.sensitivity (ablation KL with SnapKV at 75 % compression, the
EpiCache key cosine, and 1 - retained mass). Also the layer budgets the ablation profile gives under
``layer_allocation="sensitivity"`` at the same average budget.

    OMP_NUM_THREADS=1 python benchmarks/profile_bundled.py            # about 10 min on 2 busy cores

Writes benchmarks/results/profile_bundled.json (with the markdown table) and prints the table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kvpilot.config import KVConfig  # noqa: E402
from kvpilot.engine import Engine  # noqa: E402
from kvpilot.evaluation.sensitivity import (  # noqa: E402
    ablation_profile,
    calibration_samples,
    key_cosine_profile,
    retained_mass_profile,
)
from kvpilot.policies.layers import layer_budgets  # noqa: E402


def spearman(a: list[float], b: list[float]) -> float:
    def ranks(x: list[float]) -> list[float]:
        order = sorted(range(len(x)), key=lambda i: x[i])
        r = [0.0] * len(x)
        for k, i in enumerate(order):
            r[i] = float(k)
        return r

    ra, rb = torch.tensor(ranks(a)), torch.tensor(ranks(b))
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return float((ra * rb).sum() / (ra.norm() * rb.norm()))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workload", default="convqa")
    ap.add_argument("-n", "--samples", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=1024)
    ap.add_argument("--compression-ratio", type=float, default=0.75)
    ap.add_argument("--policy", default="snapkv")
    ap.add_argument("--continuation", type=int, default=16)
    ap.add_argument("--block", type=int, default=256)
    ap.add_argument("--sink", type=int, default=16)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "profile_bundled.json")
    args = ap.parse_args()

    t0 = time.time()
    engine = Engine.load()
    model = engine.model
    samples = calibration_samples(engine.tokenizer, args.workload, args.samples, args.tokens, seed=0)
    timings = {}

    t = time.time()
    rm = retained_mass_profile(model, samples, compression_ratio=args.compression_ratio, rows=32)
    timings["retained_mass_s"] = time.time() - t
    t = time.time()
    kc = key_cosine_profile(model, samples, sink=args.sink, block=args.block)
    timings["key_cosine_s"] = time.time() - t
    t = time.time()
    ab = ablation_profile(model, samples, policy=args.policy, compression_ratio=args.compression_ratio,
                          continuation=args.continuation,
                          progress=lambda d, n: print(f"\rablation {d}/{n}", end="", flush=True))
    print()
    timings["ablation_kl_s"] = time.time() - t

    n_layers = len(ab.values)
    ctx = min(len(s.context_ids) for s in samples)
    avg_cfg = KVConfig(policy=args.policy, compression_ratio=args.compression_ratio)
    alloc = layer_budgets(ab.as_config(avg_cfg), n_layers, ctx)
    uniform = layer_budgets(avg_cfg, n_layers, ctx)[0]

    header = ("| layer | entropy | retained mass @25 % | tokens for 90 % | sink mass | recent mass | Gini "
              "| ablation KL | 1 - key cos | 1 - retained | budget (sensitivity) |")
    lines = [header, "|" + "---|" * 11]
    for layer in range(n_layers):
        lines.append(
            f"| {layer} | {rm.meta['entropy'][layer]:.3f} | {1 - rm.values[layer]:.3f} "
            f"| {rm.meta['tokens_90'][layer]:.0f} | {rm.meta['sink_mass'][layer]:.3f} "
            f"| {rm.meta['recent_mass'][layer]:.3f} | {rm.meta['gini'][layer]:.3f} | {ab.values[layer]:.4f} "
            f"| {kc.values[layer]:.4f} | {rm.values[layer]:.3f} | {alloc[layer]} |"
        )
    table = "\n".join(lines)
    corr = {
        "ablation_vs_key_cosine": spearman(ab.values, kc.values),
        "ablation_vs_retained_mass": spearman(ab.values, rm.values),
        "key_cosine_vs_retained_mass": spearman(kc.values, rm.values),
    }
    import transformers

    report = {
        "benchmark": "profile_bundled",
        "environment": {
            "machine": platform.machine(), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "python": platform.python_version(),
            "torch": torch.__version__, "transformers": transformers.__version__,
            "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
            "command": " ".join([Path(sys.executable).name, *sys.argv]),
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        },
        "model": "bundled SmolLM2-135M-Instruct (30 layers, 9 query heads, 3 KV heads)",
        "calibration": {"workload": args.workload, "samples": args.samples, "tokens": args.tokens,
                        "context_tokens": [len(s.context_ids) for s in samples]},
        "profiles": {p.method: {"values": p.values, "meta": p.meta} for p in (ab, kc, rm)},
        "skew": {k: rm.meta[k] for k in ("entropy", "tokens_90", "sink_mass", "recent_mass", "gini")}
        | {"retained_mass": [1 - v for v in rm.values]},
        "sensitivity_budgets": {"average": uniform, "per_layer": alloc},
        "rank_correlation": corr,
        "timings_s": timings | {"total": time.time() - t0},
        "table_markdown": table,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(table)
    print("Spearman:", json.dumps({k: round(v, 3) for k, v in corr.items()}))
    print(f"wrote {args.out} in {time.time() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
