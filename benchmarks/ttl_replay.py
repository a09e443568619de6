"""KV time-to-live on agent sessions: hits, re-prefilled tokens, pinned memory-time and job completion.

One generated agent trace (bursty arrivals, per-tool duration distributions) is replayed through the
bundled model and the session pool under several TTL settings: never pin, a fixed TTL, and Continuum's
rule over each tool's learned duration distribution at several memory prices. Tool time is simulated,
compute is the engine's real time, so the same trace gives comparable rows.

    OMP_NUM_THREADS=2 python benchmarks/ttl_replay.py --programs 8 --token-scale 0.1

Writes benchmarks/results/ttl_replay.json.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import save  # noqa: E402
from tqdm import tqdm  # noqa: E402

from kvpilot.config import KVConfig  # noqa: E402
from kvpilot.engine import Engine  # noqa: E402
from kvpilot.evaluation.replay import Replay  # noqa: E402
from kvpilot.workloads import AgentWorkload, generate_agent_trace  # noqa: E402

# (label, KVConfig fields, session-pool limit in MiB or None)
SETTINGS = (
    ("none", {}, None),
    ("fixed 1 s", {"session_ttl": "fixed", "session_ttl_s": 1.0}, None),
    ("fixed 5 s", {"session_ttl": "fixed", "session_ttl_s": 5.0}, None),
    ("fixed 30 s", {"session_ttl": "fixed", "session_ttl_s": 30.0}, None),
    ("cdf, price 1e-9 s/(B*s)", {"session_ttl": "cdf", "ttl_memory_price": 1e-9}, None),
    ("cdf, price 1e-8 s/(B*s)", {"session_ttl": "cdf", "ttl_memory_price": 1e-8}, None),
    ("cdf, price 1e-7 s/(B*s)", {"session_ttl": "cdf", "ttl_memory_price": 1e-7}, None),
    ("fixed 30 s, pool 64 MiB", {"session_ttl": "fixed", "session_ttl_s": 30.0}, 64),
    ("cdf 1e-9, pool 64 MiB", {"session_ttl": "cdf", "ttl_memory_price": 1e-9}, 64),
    ("snapkv 0.75 + fixed 30 s, pool 64 MiB",
     {"policy": "snapkv", "compression_ratio": 0.75, "session_ttl": "fixed", "session_ttl_s": 30.0}, 64),
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--programs", type=int, default=8)
    ap.add_argument("--rate", type=float, default=0.5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--token-scale", type=float, default=0.1)
    ap.add_argument("--max-response-tokens", type=int, default=8)
    args = ap.parse_args()

    t0 = time.perf_counter()
    engine = Engine.load()
    trace = generate_agent_trace(AgentWorkload(n_programs=args.programs, rate=args.rate), seed=args.seed)
    rows = []
    for name, fields, pool_mib in tqdm(SETTINGS, desc="TTL settings"):
        capacity = None if pool_mib is None else pool_mib * 2**20
        result = Replay(engine, KVConfig(**fields), capacity_bytes=capacity, token_scale=args.token_scale,
                        max_response_tokens=args.max_response_tokens).run(trace)
        rows.append({"ttl": name, "config": fields, "pool_mib": pool_mib, **result.metrics()})
    lines = [
        f"{rows[0]['programs']} programs, {rows[0]['turns']} turns (seed {args.seed}, token scale {args.token_scale}), "
        "bundled model, full cache unless stated",
        "",
        "| TTL | hit ratio | history re-prefilled (tokens) | tokens prefilled | pinned GiB*s | peak pool MiB | "
        "mean JCT s | p95 JCT s | engine s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        hit = "-" if r["hit_ratio"] is None else f"{r['hit_ratio']:.0%}"
        lines.append(f"| {r['ttl']} | {hit} | {r['reprefilled_tokens']:,} | {r['prefilled_tokens']:,} | "
                     f"{r['pinned_gib_s']:.2f} | {r['peak_pool_bytes'] / 2**20:.1f} | {r['mean_jct_s']:.1f} | "
                     f"{r['p95_jct_s']:.1f} | {r['compute_s']:.1f} |")
    markdown = "\n".join(lines)
    print(markdown)
    path = save("ttl_replay", {"setup": vars(args), "wall_s": time.perf_counter() - t0, "rows": rows,
                               "markdown": markdown})
    print(f"saved {path}")


if __name__ == "__main__":
    main()
