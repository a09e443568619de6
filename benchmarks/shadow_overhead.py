"""Shadow fidelity probe overhead: what serving pays when a fraction of answers is replayed on the full cache.

The bundled SmolLM2-135M on the CPU, a compressed config (snapkv 0.5) on ~500-token passkey contexts, one
question, 8 answer tokens. Requests alternate in pairs (A B, B A, ...) on one engine with the latency probe
attached: A through `Engine.serve`, B through `handle.serve` with the shadow probe at `--rate` (default
0.05, the suggested rate). Per pair, the ratio of B's to A's end-to-end time; the figure is the median and
the mean of those ratios (the mean carries the sampled pairs, whose replay competes for the CPU with the
next request). The worker's own replay time is also accounted directly (`busy_s`), giving the expected
cost per request: rate x replay time / request time. Records the machine load (uptime).

    OMP_NUM_THREADS=1 python benchmarks/shadow_overhead.py --pairs 60

Writes benchmarks/results/shadow_overhead.json.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import save  # noqa: E402

from kvpilot.attach import attach  # noqa: E402
from kvpilot.config import KVConfig  # noqa: E402
from kvpilot.engine import Engine  # noqa: E402
from kvpilot.engine.engine import Request  # noqa: E402
from kvpilot.engine.prompts import chat_parts  # noqa: E402
from kvpilot.evaluation import load_samples  # noqa: E402
from kvpilot.storage import Store  # noqa: E402


def _uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, default=60)
    ap.add_argument("--rate", type=float, default=0.05)
    ap.add_argument("--tokens", type=int, default=500)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    engine = Engine.load()
    config = KVConfig(policy="snapkv", compression_ratio=0.5)
    samples = load_samples(engine.tokenizer, "passkey", 8, args.tokens, args.seed)
    requests = []
    for s in samples:
        part = chat_parts(engine.tokenizer, s.context, s.qa[0].question, s.qa[0].answer_prefix)
        requests.append(Request(part.context_ids, [part.question_ids], 8, config=config))
    load_before = os.getloadavg()
    uptime_before = _uptime()
    with tempfile.TemporaryDirectory() as tmp, Store.open(f"sqlite:///{tmp}/shadow.db") as store:
        handle = attach(engine, store, "bench", probes=["latency"], otel=False, watch=False, spool_dir=tmp,
                        shadow_fidelity=args.rate)
        shadow = handle.shadow
        shadow._random.seed(args.seed)
        engine.serve(requests[0])  # warm-up
        ratios, base_s, probed_s = [], [], []
        for i in range(args.pairs):
            request = requests[i % len(requests)]
            sides = ("base", "probed") if i % 2 == 0 else ("probed", "base")
            took = {}
            for side in sides:
                t0 = time.perf_counter()
                (engine.serve if side == "base" else handle.serve)(request)
                took[side] = time.perf_counter() - t0
            ratios.append(took["probed"] / took["base"])
            base_s.append(took["base"])
            probed_s.append(took["probed"])
        shadow.join(600)
        sampled, busy = shadow.sampled, shadow.busy_s
        measurements = [(m.top1_agreement, m.mean_kl) for m in shadow.measurements]
        handle.detach()
    load_after = os.getloadavg()
    request_s = statistics.median(base_s)
    replay_s = busy / sampled if sampled else None
    result = {
        "setup": vars(args) | {"config": config.to_dict()},
        "load_before": load_before, "load_after": load_after, "uptime_before": uptime_before,
        "uptime_after": _uptime(),
        "median_ratio": statistics.median(ratios), "mean_ratio": statistics.fmean(ratios),
        "median_request_s": request_s, "sampled": sampled, "replay_s_per_sampled": replay_s,
        "expected_overhead": None if replay_s is None else args.rate * replay_s / request_s,
        "measurements": measurements,
    }
    print(f"pairs {args.pairs}, rate {args.rate}: sampled {sampled}; end-to-end probed/base median "
          f"{result['median_ratio']:.3f}, mean {result['mean_ratio']:.3f}; replay {replay_s or 0:.3f} s per sampled "
          f"request vs {request_s:.3f} s per request -> expected overhead "
          f"{(result['expected_overhead'] or 0):.1%} (load {load_before[0]:.1f} -> {load_after[0]:.1f})")
    print(f"saved {save('shadow_overhead', result)}")


if __name__ == "__main__":
    main()
