"""Accuracy and fidelity against compression ratio for every policy, on passkey and conversational QA.

Question-agnostic (the EpiCache setting): each context is compressed once, before any question, and all
questions are asked on the same compressed cache. `--query-aware` compresses each context together with
its question instead (once per question), the setting most eviction papers report. Fidelity is measured against the full cache fed the full
cache's own greedy answer: top-1 agreement and mean KL(full || compressed) over those answer tokens.

Ratio 0 is the full cache for every policy (tests/engine/test_exactness.py shows every eviction path at
0 % reproduces the uncompressed logits exactly), so it is run once and shared by every row.

Runs are stored under --runs (one folder per task and config), so an interrupted suite resumes where it
stopped and a rerun only prints the table.

    OMP_NUM_THREADS=2 python benchmarks/eval_suite.py                 # defaults below, about 15-20 min
    python benchmarks/eval_suite.py --tasks passkey --samples 4       # quicker look
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import RESULTS, environment  # noqa: E402

from kvpilot.config import KVConfig  # noqa: E402
from kvpilot.engine import Engine  # noqa: E402
from kvpilot.evaluation import Evaluator, RunResult  # noqa: E402
from kvpilot.policies import POLICY_REGISTRY  # noqa: E402

RATIOS = (0.0, 0.5, 0.75, 0.875)
# samples and context tokens per task: sized to finish in about 20 min on 2 cores
DEFAULT_TASKS = {"passkey": (6, 1000), "convqa": (3, 1000)}


def row(task: str, policy: str, ratio: float, run: RunResult) -> dict:
    m = run.metrics
    return {
        "task": task,
        "policy": policy,
        "ratio": ratio,
        "accuracy": m["accuracy"],
        "n_questions": m["n_questions"],
        "n_correct": sum(1 for p in run.predictions if p["score"] == 1.0),
        "top1_agreement": m["top1_agreement"],
        "mean_kl": m["mean_kl"],
        "fidelity_tokens": m["fidelity_tokens"],
        "achieved_compression": m["compression_ratio"],
        "kv_bytes": m["kv_bytes"],
        "logical_kv_bytes": m["logical_kv_bytes"],
        "peak_kv_bytes": m["peak_kv_bytes"],
        "context_tokens": m["context_tokens"],
        "ttft_s": m["ttft_s"],
        "tpot_s": m["tpot_s"],
        "prefill_tokens_per_s": m["prefill_tokens_per_s"],
        "decode_tokens_per_s": m["decode_tokens_per_s"],
        "run_dir": str(run.path) if run.path else None,
        "loaded_from_previous_run": run.cached,
        "run_wall_s": m["wall_s"],
    }


def cell(r: dict) -> str:
    return f"{100 * r['accuracy']:.0f} % · {r['top1_agreement']:.2f} · {r['mean_kl']:.2f}"


def markdown(rows: list[dict], tasks: dict[str, tuple[int, int]]) -> str:
    out = []
    for task, (n, _tokens) in tasks.items():
        mine = [r for r in rows if r["task"] == task]
        if not mine:
            continue
        q = mine[0]["n_questions"]
        ctx = mine[0]["context_tokens"]
        out.append(
            f"**{task}**, {n} samples / {q} questions, {ctx:.0f} context tokens; "
            "cell = accuracy · top-1 agreement · mean KL (nats) vs the full cache\n"
        )
        ratios = sorted({r["ratio"] for r in mine})
        out.append("| policy | " + " | ".join(f"{x:g}" for x in ratios) + " |")
        out.append("| --- |" + " --- |" * len(ratios))
        for policy in dict.fromkeys(r["policy"] for r in mine):
            by_ratio = {r["ratio"]: r for r in mine if r["policy"] == policy}
            out.append(f"| {policy} | " + " | ".join(cell(by_ratio[x]) if x in by_ratio else "" for x in ratios) + " |")
        out.append("")
    return "\n".join(out)


def parse_tasks(args: argparse.Namespace) -> dict[str, tuple[int, int]]:
    tasks = {}
    for name in args.tasks:
        n, tokens = DEFAULT_TASKS.get(name, (4, 1000))
        tasks[name] = (args.samples or n, args.tokens or tokens)
    return tasks


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", nargs="+", default=list(DEFAULT_TASKS), help="workloads (default: passkey convqa)")
    ap.add_argument("--samples", type=int, default=None, help="samples per task (default: 6 passkey, 3 convqa)")
    ap.add_argument("--tokens", type=int, default=None, help="context tokens (default 1000)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--policies", nargs="+", default=[p for p in POLICY_REGISTRY.names() if p != "full"])
    ap.add_argument("--ratios", nargs="+", type=float, default=[r for r in RATIOS if r > 0])
    ap.add_argument("--runs", default="runs/eval_suite", help="run folders (resume and cache)")
    ap.add_argument("--query-aware", action="store_true", help="compress each context with its question")
    ap.add_argument("--out", default=None, help="default: results/eval_suite.json (_query_aware with the flag)")
    args = ap.parse_args(argv)
    if args.out is None:
        args.out = str(RESULTS / ("eval_suite_query_aware.json" if args.query_aware else "eval_suite.json"))

    tasks = parse_tasks(args)
    started = time.perf_counter()
    load_start = os.getloadavg()
    engine = Engine.load()
    rows: list[dict] = []
    timings = {}
    for task, (n, tokens) in tasks.items():
        t0 = time.perf_counter()
        ev = Evaluator.for_workload(
            engine, task, n, tokens, args.seed, results_root=args.runs, query_aware=args.query_aware
        )
        full = ev.run(KVConfig())
        for policy in args.policies:
            rows.append(row(task, policy, 0.0, full))
        for policy in args.policies:
            for ratio in args.ratios:
                run = ev.run(KVConfig(policy=policy, compression_ratio=ratio))
                rows.append(row(task, policy, ratio, run))
                r = rows[-1]
                print(f"{task:8} {policy:18} {ratio:5.3f}  {cell(r)}", file=sys.stderr, flush=True)
        timings[task] = time.perf_counter() - t0
        ev.clear_references()

    table = markdown(rows, tasks)
    payload = {
        "environment": {**environment(), "loadavg_start": load_start, "loadavg_end": os.getloadavg()},
        "setup": {
            "tasks": {t: {"samples": n, "target_tokens": tok} for t, (n, tok) in tasks.items()},
            "seed": args.seed,
            "mode": "query-aware" if args.query_aware else "question-agnostic",
            "ratios": [0.0, *args.ratios],
            "policies": args.policies,
            "note": "ratio 0 is the full cache, run once and shared by every policy",
        },
        "wall_s": time.perf_counter() - started,
        "note_wall": "wall_s is this invocation; runs_compute_s sums the compute time stored in every run "
        "folder used (runs loaded from an earlier, interrupted invocation count with their original time)",
        "runs_compute_s": sum({r["run_dir"]: r.get("run_wall_s") or 0.0 for r in rows}.values()),
        "task_wall_s": timings,
        "rows": rows,
        "markdown": table,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(payload, indent=2) + "\n")
    print(table)
    print(f"wrote {args.out} in {payload['wall_s']:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
