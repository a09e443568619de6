"""Does the tuner beat hand-picked configs? Tune on one set of samples, check on held-out samples.

The tuner searches the default space (`kvpilot tune --show-space`) for the smallest KV cache whose
accuracy matches the full cache on the tuning samples (objectives accuracy and kv_bytes, constraint
accuracy>=full). The winner and the hand-picked configs of `kvpilot demo` (each policy at 75 % eviction,
default settings) are then evaluated on held-out samples of the same workload (another seed) that the
tuner never saw. Question-agnostic throughout: the context is compressed before the question is asked.

    OMP_NUM_THREADS=2 python benchmarks/tuner_gain.py --workload passkey --samples 6 --tokens 1500 --trials 30

Writes benchmarks/results/tuner_gain_<workload>.json.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import save  # noqa: E402

from kvpilot.commands.demo import DEFAULT_CONFIGS  # noqa: E402
from kvpilot.config import KVConfig  # noqa: E402
from kvpilot.engine import Engine  # noqa: E402
from kvpilot.evaluation import Evaluator  # noqa: E402
from kvpilot.storage import Store  # noqa: E402
from kvpilot.tuner import SearchSpace, Tuner  # noqa: E402


def row(name: str, config: KVConfig, tune: dict, held: dict) -> dict:
    return {
        "name": name,
        "config": config.to_dict(),
        "tune_accuracy": tune["accuracy"],
        "tune_kv_bytes": tune["kv_bytes"],
        "heldout_accuracy": held["accuracy"],
        "heldout_top1_agreement": held.get("top1_agreement"),
        "heldout_mean_kl": held.get("mean_kl"),
        "heldout_kv_bytes": held["kv_bytes"],
        "heldout_compression_ratio": held["compression_ratio"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workload", default="passkey")
    ap.add_argument("--samples", type=int, default=6)
    ap.add_argument("--tokens", type=int, default=1500)
    ap.add_argument("--trials", type=int, default=30)
    ap.add_argument("--tune-seed", type=int, default=0)
    ap.add_argument("--heldout-seed", type=int, default=1)
    ap.add_argument("--runs", default=None, help="results root for run folders (default: a temporary folder)")
    ap.add_argument("--space", default=None, help="search-space JSON (default: `kvpilot tune --show-space`)")
    ap.add_argument("--objective", action="append", default=None, help="as in kvpilot tune (default accuracy, kv_bytes)")
    ap.add_argument("--constraint", action="append", default=None, help="as in kvpilot tune (default accuracy>=full)")
    ap.add_argument("--tag", default="", help="suffix of the result file name")
    args = ap.parse_args()

    t0 = time.perf_counter()
    engine = Engine.load()
    root = Path(args.runs) if args.runs else Path(tempfile.mkdtemp(prefix="kvpilot-tuner-gain-"))
    root.mkdir(parents=True, exist_ok=True)

    def evaluator(seed: int) -> Evaluator:
        return Evaluator.for_workload(engine, args.workload, args.samples, args.tokens, seed, results_root=root)

    tune_set, held_set = evaluator(args.tune_seed), evaluator(args.heldout_seed)
    with Store.open(f"sqlite:///{root / 'tuner.db'}") as store:
        space = SearchSpace.from_file(args.space) if args.space else SearchSpace()
        tuner = Tuner(tune_set, study_name=f"{args.workload}-gain", store=store, space=space,
                      objectives=args.objective or ["accuracy", "kv_bytes"],
                      constraints=args.constraint or ["accuracy>=full"], seed=0)  # as the README's figures
        result = tuner.optimize(args.trials)
    rows = [row("full cache", KVConfig(), result.baseline, held_set.run(KVConfig()).metrics)]
    for policy, ratio in DEFAULT_CONFIGS:
        if ratio:
            config = KVConfig(policy=policy, compression_ratio=ratio)
            rows.append(row(f"hand-picked {policy} {ratio}", config, tune_set.run(config).metrics,
                            held_set.run(config).metrics))
    if result.best is not None:
        best = result.best
        rows.append(row(f"tuner winner (trial {best.number})", best.config, best.metrics,
                        held_set.run(best.config).metrics))

    lines = [
        f"**{args.workload}**, {args.samples} samples x ~{args.tokens} tokens per set; tuned on seed "
        f"{args.tune_seed} ({args.trials} trials, {len(result.trials)} complete, objectives "
        f"{', '.join(result.objectives)}, constraints {', '.join(c.text for c in tuner.constraints) or 'none'}; "
        f"{sum(t.feasible for t in result.trials)} feasible), checked on held-out seed {args.heldout_seed}",
        "",
        "| config | tuning acc | tuning KV MiB | held-out acc | held-out top-1 | held-out KV MiB |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        top1 = r["heldout_top1_agreement"]
        lines.append(
            f"| {r['name']} | {r['tune_accuracy']:.0%} | {r['tune_kv_bytes'] / 2**20:.1f} | "
            f"{r['heldout_accuracy']:.0%} | {'-' if top1 is None else f'{top1:.2f}'} | "
            f"{r['heldout_kv_bytes'] / 2**20:.1f} |"
        )
    if result.best is not None:
        defaults = KVConfig().to_dict()
        changed = {k: v for k, v in result.best.config.to_dict().items() if v != defaults[k]}
        lines += ["", f"winner's fields that differ from the defaults: `{changed}`"]
    markdown = "\n".join(lines)
    print(markdown)
    path = save(f"tuner_gain_{args.workload.replace(':', '_')}{args.tag}", {
        "setup": vars(args), "space": space.to_dict(), "wall_s": time.perf_counter() - t0, "rows": rows, "markdown": markdown,
        "trials": [{"number": t.number, "feasible": t.feasible, "config": t.config.to_dict(), "metrics": t.metrics}
                   for t in result.trials],
    })
    print(f"saved {path}")


if __name__ == "__main__":
    main()
