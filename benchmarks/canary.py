"""Canary rollout on the bundled model: a config that loses answers is rolled back, a good one is promoted.

One engine (SmolLM2-135M on the CPU) serves a conversational workload (convqa, small contexts, every
question of a conversation in one request) under `kvpilot.attach` with the config watcher and the shadow
fidelity probe (rate `--shadow`, default 1.0 so the run stays short), on deployment `canary-bench` whose
active version (the incumbent) is snapkv at compression 0.3, as a deployment that already compresses.
Two canaries are pushed in turn with `Store.start_canary` (what `kvpilot push --canary` does), each on
`--fraction` of requests:

1. a lossy one (streaming, compression 0.9: keeps the first and last tokens of the conversation);
2. a gentler one (snapkv, compression 0.1).

(Against a full-cache incumbent, no compressed config of this 135M model meets the default 2 % tolerance
on these conversations: snapkv 0.1, snapkv 0.2 with a scoring prompt and knorm 0.1 each measured about
95.5 % top-1 agreement with the full cache on 20 answers, so such a canary stays undecided and is rolled
back at the cap; `--incumbent full` shows it.)

After every request the control plane's `CanaryJudge.check_once()` (what `kvpilot canary watch` runs)
decides; a canary still running after `--max-requests` requests is left undecided in the figures. Per
canary: the decision and its reason, requests each arm took, shadow agreement with its Wilson interval,
KL, latency, the answers' accuracy per arm (convqa's own scorer, for the reader: the decision does not
use it), the judge's undecided events; and the machine load (uptime) before and after.

    OMP_NUM_THREADS=1 python benchmarks/canary.py

Writes benchmarks/results/canary.json.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import save  # noqa: E402

from kvpilot.attach import attach  # noqa: E402
from kvpilot.config import KVConfig, config_label  # noqa: E402
from kvpilot.engine import Engine  # noqa: E402
from kvpilot.engine.engine import Request  # noqa: E402
from kvpilot.engine.prompts import chat_parts  # noqa: E402
from kvpilot.evaluation import load_samples  # noqa: E402
from kvpilot.evaluation.canary import CanaryJudge, CanaryRule  # noqa: E402
from kvpilot.storage import Store  # noqa: E402
from kvpilot.workloads.scoring import metric_for  # noqa: E402

DEPLOYMENT = "canary-bench"
INCUMBENTS = {"snapkv-0.3": KVConfig(policy="snapkv", compression_ratio=0.3), "full": KVConfig()}
CANARIES = [
    ("lossy", KVConfig(policy="streaming", compression_ratio=0.9)),
    ("gentle", KVConfig(policy="snapkv", compression_ratio=0.1)),
]


def uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, timeout=5).stdout.strip()
    except Exception:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fraction", type=float, default=0.5, help="canary's share of requests")
    ap.add_argument("--shadow", type=float, default=1.0, help="shadow fidelity sampling rate")
    ap.add_argument("--samples", type=int, default=24, help="convqa conversations (cycled)")
    ap.add_argument("--tokens", type=int, default=400, help="target context tokens")
    ap.add_argument("--max-requests", type=int, default=80, help="requests per canary before giving up")
    ap.add_argument("--new-tokens", type=int, default=12)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--incumbent", choices=list(INCUMBENTS), default="snapkv-0.3")
    ap.add_argument("--out", default="canary")
    args = ap.parse_args()

    load_before, t_start = uptime(), time.time()
    engine = Engine.load()
    samples = load_samples(engine.tokenizer, "convqa", args.samples, args.tokens, args.seed)
    metric = metric_for(samples[0].task)
    work = []
    for s in samples:
        parts = [chat_parts(engine.tokenizer, s.context, qa.question, qa.answer_prefix) for qa in s.qa]
        work.append((Request(parts[0].context_ids, [p.question_ids for p in parts], args.new_tokens),
                     [qa.answers for qa in s.qa], len(parts[0].context_ids)))
    results = []
    with tempfile.TemporaryDirectory() as tmp, Store.open(f"sqlite:///{tmp}/canary.db") as store:
        incumbent = INCUMBENTS[args.incumbent]
        store.push(DEPLOYMENT, incumbent, pushed_by="bench", source="benchmarks/canary.py")
        engine.apply_config(incumbent)
        engine.request_boundary()  # in force now: the watcher starts on it
        handle = attach(engine, store, DEPLOYMENT, probes=["latency"], otel=False, poll_s=0.5, spool_dir=tmp,
                        shadow_fidelity=args.shadow, instance="bench-0", flush_interval_s=0.2)
        assert handle.watcher is not None and handle.shadow is not None
        handle.shadow._random.seed(args.seed)
        judge = CanaryJudge(store, DEPLOYMENT, CanaryRule())
        served = 0
        try:
            for name, config in CANARIES:
                canary = store.start_canary(DEPLOYMENT, config, args.fraction, seed=args.seed + served,
                                            pushed_by="bench", source=f"benchmarks/canary.py:{name}")
                handle.watcher.check_once()  # the engine picks it up (its thread would within poll_s)
                incumbent_now = handle.watcher.config
                correct: dict[int, list[float]] = {}
                t0, n = time.time(), 0
                info = canary
                while n < args.max_requests:
                    request, refs, _ = work[served % len(work)]
                    served += 1
                    n += 1
                    response = handle.serve(request)  # the watcher picks the arm; rows carry its version
                    arm = canary.version if response.answers[0].config == config else canary.baseline_version
                    if arm == canary.baseline_version and response.answers[0].config != incumbent_now:
                        raise RuntimeError("an answer was served by neither arm's config")
                    for answer, ref in zip(response.answers, refs, strict=True):
                        correct.setdefault(arm, []).append(metric(answer.text, ref))
                    handle.shadow.join(300)
                    handle.flush(30)
                    judge.check_once()
                    info = next(c for c in store.canaries(DEPLOYMENT) if c.id == canary.id)
                    if not info.running:
                        break
                handle.watcher.check_once()  # a promotion becomes the engine's config
                events = [e for e in store.canary_events(DEPLOYMENT) if e["run_id"] == canary.run_id]
                figures = info.figures or (events[0]["detail"] if events else {})
                results.append({
                    "name": name, "config": config_label(config), "version": canary.version,
                    "baseline_version": canary.baseline_version, "fraction": args.fraction,
                    "decision": info.status, "reason": info.reason, "requests_served": n,
                    "seconds": round(time.time() - t0, 1),
                    "arms": {k: figures.get(k) for k in ("canary", "incumbent")},
                    "fidelity_llr": figures.get("fidelity_llr"), "thresholds": figures.get("thresholds"),
                    "latency_p": figures.get("latency_p"),
                    "accuracy": {str(v): {"answers": len(x), "accuracy": sum(x) / len(x)} for v, x in correct.items()},
                    "undecided_events": sum(e["kind"] == "canary_undecided" for e in events),
                })
                print(f"{name} ({config_label(config)}): {info.status} after {n} requests: {info.reason}", flush=True)
        finally:
            handle.detach()
        active = store.active_version(DEPLOYMENT)
        final = {"active_version": active.version if active else None,
                 "active_config": config_label(active.config()) if active else None}
    payload = {
        "what": "canary rollout on the bundled model: convqa on one CPU engine, shadow fidelity, CanaryJudge",
        "command": "OMP_NUM_THREADS=1 python benchmarks/canary.py " + " ".join(sys.argv[1:]),
        "model": "SmolLM2-135M-Instruct (bundled), CPU",
        "workload": {"name": "convqa", "samples": args.samples, "target_tokens": args.tokens,
                     "context_tokens_mean": round(sum(w[2] for w in work) / len(work)),
                     "questions_per_request": round(sum(len(w[1]) for w in work) / len(work), 1),
                     "max_new_tokens": args.new_tokens},
        "incumbent": config_label(INCUMBENTS[args.incumbent]), "shadow_rate": args.shadow, "rule": asdict(CanaryRule()),
        "canaries": results, "final": final, "wall_s": round(time.time() - t_start, 1),
        "load_before": load_before, "load_after": uptime(), "omp_threads": os.environ.get("OMP_NUM_THREADS"),
    }
    print(f"saved {save(args.out, payload)}")


if __name__ == "__main__":
    main()
