"""`kvpilot tune`: search KVConfigs with Optuna on a workload, and push the winner to a deployment."""

from __future__ import annotations

import argparse
import json
import sys
import time

from kvpilot.commands.eval import add_workload_arguments, check_workload_arguments, evaluator_from_arguments
from kvpilot.errors import KVPilotError

DEFAULT_CONSTRAINT = "accuracy>=full"


def register(subparsers: argparse._SubParsersAction) -> None:
    from kvpilot.tuner.objectives import OBJECTIVES

    p = subparsers.add_parser(
        "tune",
        help="search KV-cache configs with Optuna on a workload and push the best one",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Measure the full cache on the workload's samples (the baseline), then run Optuna trials: "
        "each draws a KVConfig from the search space (policy, compression ratio, layer and head allocation, "
        "protected window, scoring, granularity), evaluates it on the same samples and tells Optuna the "
        "objectives and constraint violations. The study is kept in the store's database (the dashboard's "
        "Tuning page shows it); run the command again with the same --study to add trials, or start "
        "several on a PostgreSQL store to share the work. The winner is the feasible trial best on --pick.\n\n"
        "objectives: " + "; ".join(f"{o.name} ({o.direction}: {o.description})" for o in OBJECTIVES.values()),
        epilog="example: kvpilot tune -w passkey -n 6 --trials 30 --constraint 'accuracy>=full' --push chat",
    )
    add_workload_arguments(p, samples=6, required=False)
    p.add_argument("--db", help="store URL (default: $KVPILOT_DB or the SQLite file in $KVPILOT_HOME)")
    p.add_argument("--study", default=None, help="study name (default: derived from the workload and mode)")
    p.add_argument("--trials", type=int, default=20, help="trials to run now (default 20)")
    p.add_argument("--objective", action="append", metavar="NAME",
                   help="objective, repeatable, in order (default: accuracy, kv_bytes)")
    p.add_argument("--constraint", action="append", metavar="EXPR",
                   help=f"METRIC<=X or METRIC>=X, X a number, `full` or `full-0.05`; repeatable "
                   f"(default: {DEFAULT_CONSTRAINT}); --constraint none for no constraint")
    p.add_argument("--pick", default=None, metavar="NAME", help="objective the winner is chosen on (default: the last)")
    p.add_argument("--space", default=None, metavar="FILE", help="search-space JSON (see `kvpilot tune --show-space`)")
    p.add_argument("--show-space", action="store_true", help="print the default search space as JSON and exit")
    p.add_argument("--sampler", choices=("tpe", "random"), default="tpe", help="Optuna sampler (default tpe)")
    p.add_argument("--sampler-seed", type=int, default=0, help="sampler seed (default 0)")
    p.add_argument("--push", metavar="DEPLOYMENT", default=None, help="push the winner to this deployment")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object on stdout")
    p.set_defaults(func=_tune)


def _tune(args: argparse.Namespace) -> int:
    from kvpilot.tuner import Constraint, SearchSpace, Tuner
    from kvpilot.tuner.objectives import DEFAULT_OBJECTIVES, objective

    if args.show_space:
        print(json.dumps(SearchSpace().to_dict(), indent=2))
        return 0
    if args.workload is None:
        raise KVPilotError("--workload is required (e.g. --workload passkey)")
    check_workload_arguments(args)
    if args.trials < 0:
        raise KVPilotError(f"--trials must be >= 0, got {args.trials}")
    objectives = args.objective or list(DEFAULT_OBJECTIVES)
    for name in objectives:
        objective(name)
    texts = args.constraint or [DEFAULT_CONSTRAINT]
    constraints = [] if texts == ["none"] else [Constraint.parse(t) for t in texts]
    space = SearchSpace.from_file(args.space) if args.space else SearchSpace()

    from kvpilot.storage import Store

    store = Store.open(args.db)
    t0 = time.perf_counter()
    evaluator = evaluator_from_arguments(args)
    mode = "qa" if args.query_aware else "agnostic"
    study_name = args.study or f"{evaluator.label}-{mode}"
    tuner = Tuner(evaluator, study_name=study_name, store=store, objectives=objectives, constraints=constraints,
                  space=space, pick=args.pick, sampler=args.sampler, seed=args.sampler_seed,
                  deployment=args.push, progress=not args.quiet)
    result = tuner.optimize(args.trials)
    pushed = tuner.push(args.push, result.best) if args.push and result.best is not None else None
    elapsed = time.perf_counter() - t0
    if args.json:
        print(json.dumps(_as_json(result, pushed, store.url), sort_keys=True, default=str))
    else:
        _print(result, pushed, store.url, constraints)
        print(f"done in {elapsed:.1f} s ({result.computed_runs} runs computed, the rest read from {args.out})",
              file=sys.stderr)
    store.close()
    if args.push and pushed is None:
        print(f"nothing pushed to {args.push}: no trial meets the constraints", file=sys.stderr)
        return 1
    return 0


def _as_json(result, pushed, url: str) -> dict:
    return {
        "study": result.study_name,
        "store": url,
        "objectives": result.objectives,
        "baseline": result.baseline,
        "best": None if result.best is None else {
            "trial": result.best.number, "config": result.best.config.to_dict(), "metrics": result.best.metrics},
        "trials": len(result.trials),
        "feasible": sum(t.feasible for t in result.trials),
        "failed_trials": result.failed_trials,
        "pushed_version": None if pushed is None else pushed.version,
    }


def _print(result, pushed, url: str, constraints) -> None:
    from kvpilot.config import KVConfig

    base = result.baseline
    print(f"study {result.study_name!r} in {url}: {len(result.trials)} complete trials, "
          f"{sum(t.feasible for t in result.trials)} feasible" + (f", {result.failed_trials} failed"
                                                                   if result.failed_trials else ""))
    if constraints:
        print("constraints: " + ", ".join(c.text for c in constraints))
    print(f"full cache: accuracy {_fmt(base.get('accuracy'), '%')}, KV {_mib(base.get('kv_bytes'))}")
    if result.best is not None:
        others = [t for t in result.trials if t.feasible and t.number != result.best.number]
        pick = result.objectives.index(result.pick)
        others.sort(key=lambda t: t.values[pick], reverse=result.pick_direction == "maximize")
        print(f"\n{'trial':>5}  {'feasible configs, winner first':<58}{'accuracy':>9}{'top-1':>7}{'KV MiB':>8}")
        for t in [result.best, *others][:10]:
            m = t.metrics
            print(f"{t.number:>5}  {_label(t.config):<58}{_fmt(m.get('accuracy'), '%'):>9}"
                  f"{_fmt(m.get('top1_agreement')):>7}{_mib(m.get('kv_bytes'), unit=False):>8}")
    if result.best is None:
        print("\nno feasible trial yet: loosen the constraints, widen the space or run more trials")
        return
    defaults = KVConfig().to_dict()
    changed = {k: v for k, v in result.best.config.to_dict().items() if v != defaults[k]}
    print(f"\nwinner: trial {result.best.number}, fields that differ from the defaults: {json.dumps(changed)}")
    if pushed is not None:
        print(f"pushed to deployment '{pushed.deployment}' as version {pushed.version}")


def _label(config) -> str:
    parts = [config.policy, f"r={config.compression_ratio:g}", config.layer_allocation, config.head_allocation,
             f"w={config.window}"]
    if config.scoring == "prompt":
        parts.append("prompt")
    if config.granularity != "token":
        parts.append(config.granularity)
    return " ".join(parts)


def _fmt(v, kind: str = "") -> str:
    if v is None:
        return "-"
    return f"{v:.0%}" if kind == "%" else f"{v:.2f}"


def _mib(v, unit: bool = True) -> str:
    return "-" if v is None else f"{v / 2**20:.1f}" + (" MiB" if unit else "")
