"""Tuning efficiency: evaluations the tuner needs to come within 2 % of an exhaustive grid's best.

vLLM's auto_tune sweeps a grid of flags; kvpilot's tuner searches the same kind of space with Optuna. Both
run here over one declared space (`--space`, default below) on one workload: the grid evaluates every
distinct config (its best is only known once all are measured); the tuner then runs studies with several
sampler seeds over the same space, and for each we count the distinct configs it evaluated until one was
within 2 % of the grid's best. "Best" is the smallest KV cache whose accuracy meets `accuracy>=full` (the
tuner's default objectives and constraint). The tuner's evaluations reuse the grid's measurements (one
Evaluator, identical configs are not recomputed), which changes no count: each distinct config the tuner
proposes is one evaluation. Target: at most a fifth of the grid's evaluations.

    OMP_NUM_THREADS=1 python benchmarks/tuner_efficiency.py --samples 3 --tokens 500 --seeds 5

Writes benchmarks/results/tuner_efficiency.json.
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import save  # noqa: E402
from optuna.trial import FixedTrial  # noqa: E402

from kvpilot.config import KVConfig, config_hash  # noqa: E402
from kvpilot.engine import Engine  # noqa: E402
from kvpilot.evaluation import Evaluator  # noqa: E402
from kvpilot.tuner import SearchSpace, Tuner  # noqa: E402
from kvpilot.tuner.study import REUSED_ATTR  # noqa: E402

DEFAULT_SPACE = SearchSpace(policy=("snapkv", "tova", "knorm", "streaming"), compression_ratio=(0.5, 0.9, 0.1),
                            layer_allocation=("uniform",), head_allocation=("uniform",), window=(32,),
                            scoring=("window", "prompt"), granularity=("token", "sentence"))
TOLERANCE = 0.02


def grid(space: SearchSpace) -> list[KVConfig]:
    """Every distinct config of a space with no plug-in parameter ranges (fields a policy ignores collapse)."""
    if space.params:
        raise SystemExit(f"the grid needs a space without plug-in parameter ranges, got {sorted(space.params)}")
    lo, hi, step = space.compression_ratio
    ratios = [round(lo + i * step, 6) for i in range(int(round((hi - lo) / step)) + 1)]
    fields = {"policy": space.policy, "compression_ratio": ratios, "layer_allocation": space.layer_allocation,
              "head_allocation": space.head_allocation, "window": space.window, "sink_tokens": space.sink_tokens,
              "scoring": space.scoring, "granularity": space.granularity}
    seen: dict[str, KVConfig] = {}
    for values in itertools.product(*fields.values()):
        config = space.suggest(FixedTrial(dict(zip(fields, values, strict=True))))
        seen.setdefault(config_hash(config), config)
    return list(seen.values())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workload", default="passkey")
    ap.add_argument("--samples", type=int, default=3)
    ap.add_argument("--tokens", type=int, default=500)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--space", default=None, help="search-space JSON (default: the space in this file)")
    ap.add_argument("--sampler", default="tpe", choices=("tpe", "random"))
    args = ap.parse_args()

    t0 = time.perf_counter()
    load_before = os.getloadavg()
    uptime_before = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    space = SearchSpace.from_file(args.space) if args.space else DEFAULT_SPACE
    engine = Engine.load()
    evaluator = Evaluator.for_workload(engine, args.workload, args.samples, args.tokens, 0, results_root=None,
                                       fidelity=False, progress=False)
    full = evaluator.run(KVConfig()).metrics
    configs = grid(space)
    measured = {config_hash(c): evaluator.run(c).metrics for c in configs}
    feasible = {h: m for h, m in measured.items() if m["accuracy"] >= full["accuracy"]}
    if not feasible:
        raise SystemExit("no grid config meets accuracy>=full: choose an easier space or workload")
    best = min(m["kv_bytes"] for m in feasible.values())
    good = {h for h, m in feasible.items() if m["kv_bytes"] <= (1 + TOLERANCE) * best}
    grid_s = time.perf_counter() - t0

    studies = []
    for seed in range(args.seeds):
        tuner = Tuner(evaluator, study_name=f"eff-{seed}", space=space, constraints=["accuracy>=full"],
                      sampler=args.sampler, seed=seed, progress=False)
        distinct: set[str] = set()
        needed = None
        while needed is None and len(distinct) < len(configs) and len(tuner.study.trials) < 10 * len(configs):
            tuner.optimize(1)
            last = tuner.study.trials[-1]
            if REUSED_ATTR in last.user_attrs or "config" not in last.user_attrs:
                continue
            h = config_hash(KVConfig.parse(last.user_attrs["config"]))
            distinct.add(h)
            if h in good:
                needed = len(distinct)
        studies.append({"seed": seed, "evaluations": needed, "trials": len(tuner.study.trials)})
    counts = [s["evaluations"] for s in studies if s["evaluations"] is not None]
    result = {
        "setup": vars(args), "space": space.to_dict(), "grid_evaluations": len(configs),
        "grid_feasible": len(feasible), "grid_best_kv_bytes": best, "within_2pct": len(good),
        "full_cache": {"accuracy": full["accuracy"], "kv_bytes": full["kv_bytes"]},
        "tuner": studies, "tuner_median_evaluations": statistics.median(counts) if counts else None,
        "tuner_max_evaluations": max(counts) if counts else None,
        "target_evaluations": len(configs) / 5, "grid_s": grid_s, "wall_s": time.perf_counter() - t0,
        "load_before": load_before, "load_after": os.getloadavg(), "uptime_before": uptime_before,
        "uptime_after": subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip(),
    }
    print(f"grid: {len(configs)} evaluations ({len(feasible)} feasible, {len(good)} within 2 % of the best, "
          f"{best / 2**20:.2f} MiB); tuner ({args.sampler}, {args.seeds} seeds): evaluations to within 2 %: "
          f"{[s['evaluations'] for s in studies]}, median {result['tuner_median_evaluations']} "
          f"(target <= {len(configs) / 5:.0f})")
    print(f"saved {save('tuner_efficiency', result)}")


if __name__ == "__main__":
    main()
