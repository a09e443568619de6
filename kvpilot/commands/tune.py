"""`kvpilot tune`: search KVConfigs with Optuna on a workload, and push the winner to a deployment."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kvpilot.commands.eval import add_workload_arguments, check_workload_arguments, evaluator_from_arguments
from kvpilot.errors import KVPilotError

if TYPE_CHECKING:  # the CLI imports every command module to build its parser: keep that light
    from kvpilot.config import KVConfig

DEFAULT_CONSTRAINT = "accuracy>=full"
AGENT_OBJECTIVES = ("mean_jct_s", "pinned_gib_s")
SIZE_FIELDS = ("policy", "budget", "compression_ratio")  # what `config_label` shows


MAX_STUDY_NAME = 180  # a run name (200 characters in the store) is "<study> #<trial number>"
MAX_WORKERS = 64  # local processes, each with the model loaded


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
        "The workload is split (seeded) into a search set (--samples) and a held-out set (--heldout, the same "
        "size by default) the trials never see. After the trials, the feasible Pareto front is measured again "
        "on the held-out set; the recommendation, and what --push pushes, is the front config that still "
        "meets the constraints there, or nothing, with the reason. Accuracy and top-1 agreement carry 95 % "
        "Wilson intervals; METRIC.lower>=X bounds the interval's lower end.\n\n"
        "objectives: " + "; ".join(f"{o.name} ({o.direction}: {o.description})" for o in OBJECTIVES.values()),
        epilog="example: kvpilot tune -w passkey -n 6 --trials 30 --constraint 'accuracy>=full' --push chat",
    )
    add_workload_arguments(p, samples=6, required=False)
    p.add_argument("--db", help="store URL (default: $KVPILOT_DB or the SQLite file in $KVPILOT_HOME)")
    p.add_argument("--study", default=None, help="study name (default: derived from the workload and mode)")
    p.add_argument("--trials", type=int, default=20, help="trials to run now (default 20)")
    p.add_argument("--workers", type=int, default=1, metavar="N",
                   help="local processes sharing the trials of one study in the store's database (default 1); "
                   "each loads the model, and the CPU threads are split between them")
    p.add_argument("--objective", action="append", metavar="NAME",
                   help="objective, repeatable, in order (default: accuracy, kv_bytes)")
    p.add_argument("--constraint", action="append", metavar="EXPR",
                   help=f"METRIC<=X or METRIC>=X, X a number, `full` or `full-0.05`; repeatable "
                   f"(default: {DEFAULT_CONSTRAINT}); --constraint none for no constraint")
    p.add_argument("--pick", default=None, metavar="NAME", help="objective the winner is chosen on (default: the last)")
    p.add_argument("--space", default=None, metavar="FILE", help="search-space JSON (see `kvpilot tune --show-space`)")
    p.add_argument("--show-space", action="store_true", help="print the search space (ranges as LOW .. HIGH, choices as a list) and exit; with --json, as the JSON --space reads")
    p.add_argument("--sampler", choices=("tpe", "random"), default="tpe", help="Optuna sampler (default tpe)")
    p.add_argument("--sampler-seed", type=int, default=None, help="sampler seed (default: a random one, printed)")
    p.add_argument("--heldout", type=int, default=None, metavar="N",
                   help="held-out samples the front is validated on (default: as many as --samples; 0: none)")
    p.add_argument("--split-seed", type=int, default=None,
                   help="seed of the search / held-out split (default: the workload --seed)")
    p.add_argument("--push", metavar="DEPLOYMENT", default=None, help="push the winner to this deployment")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object on stdout")
    p.add_argument("--target", choices=("kvpilot", "vllm"), default="kvpilot",
                   help="what a trial runs: kvpilot's engine (default), or a vLLM server under generated agent "
                   "sessions (see README 'With vLLM'; --programs, --seed, --model, --objective, --constraint apply)")
    agents = p.add_argument_group(
        "agent sessions (--workload agents): tune the session pool's time-to-live on a replayed trace; default "
        f"objectives {', '.join(AGENT_OBJECTIVES)} (winner: the shortest mean job time), no constraint, space: "
        "full cache, session_ttl none/fixed/cdf")
    agents.add_argument("--trace", metavar="FILE", default=None, help="agent trace JSONL (default: generated)")
    agents.add_argument("--programs", type=int, default=8, help="generated trace: programs (default 8)")
    agents.add_argument("--token-scale", type=float, default=0.1,
                        help="shrink prompts and tool outputs by this factor (default 0.1)")
    agents.add_argument("--capacity-mib", type=float, default=None, help="session pool limit in MiB (default none)")
    p.set_defaults(func=_tune)


def space_json(space: dict) -> str:
    """A search space as JSON for `--space` with one field per line: a range such as [0.5, 0.9, 0.05] stays on
    one line instead of spreading over three like a list of choices (stderr says which fields are ranges)."""
    lines = ["{"]
    items = list(space.items())
    for n, (key, value) in enumerate(items):
        comma = "," if n < len(items) - 1 else ""
        if isinstance(value, dict) and value:
            inner = ",\n".join(f"    {json.dumps(k)}: {json.dumps(v)}" for k, v in value.items())
            lines.append(f"  {json.dumps(key)}: {{\n{inner}\n  }}{comma}")
        else:
            lines.append(f"  {json.dumps(key)}: {json.dumps(value)}{comma}")
    lines.append("}")
    return "\n".join(lines)


def _tune(args: argparse.Namespace) -> int:
    from kvpilot.tuner import SearchSpace

    if not 1 <= args.workers <= MAX_WORKERS:
        raise KVPilotError(f"--workers must be a whole number from 1 to {MAX_WORKERS}, got {args.workers}")
    if args.target == "vllm":
        if args.workers > 1:
            raise KVPilotError("--workers runs local engine processes; with --target vllm each trial starts its own "
                               "server: run one tune process per GPU with the same --study instead")
        from kvpilot.commands.vllm import tune_vllm

        return tune_vllm(args)
    if args.show_space:  # the default space (or --space FILE's, or the agents space) for people; --json for a file
        shown = SearchSpace.from_file(args.space) if args.space else (
            agent_space() if args.workload == "agents" else SearchSpace())
        if args.json:
            print(space_json(shown.to_dict()))
            print("in this JSON compression_ratio is a range [low, high, step] and each params entry with two "
                  "numbers a range [low, high]; every other list is the set of choices", file=sys.stderr)
        else:
            print("\n".join(shown.describe()))
            print("as a file to edit for --space: kvpilot tune --show-space --json > space.json", file=sys.stderr)
        return 0
    if args.workload is None:
        raise KVPilotError("--workload is required (e.g. --workload passkey, or agents)")
    agents = args.workload == "agents"
    if not agents:
        check_workload_arguments(args)
    if args.trials < 0:
        raise KVPilotError(f"--trials must be >= 0, got {args.trials}")
    if args.study is not None and not 0 < len(args.study) <= MAX_STUDY_NAME:  # each trial's run is "<study> #<n>"
        raise KVPilotError(f"--study: a name of 1 to {MAX_STUDY_NAME} characters, got {len(args.study)}")
    if args.heldout is not None and args.heldout < 0:
        raise KVPilotError(f"--heldout must be >= 0, got {args.heldout}")
    if agents and args.heldout:
        raise KVPilotError("--heldout applies to question workloads; an agent trace is replayed whole")
    _goals(args)  # a bad objective, constraint or space fails before anything is opened
    from kvpilot.storage import Store

    store = Store.open(args.db)
    t0 = time.perf_counter()
    tuner, constraints = make_tuner(args, store)
    study_name = tuner.study_name
    if args.workers > 1 and args.trials > 0:
        from kvpilot.commands.tune_workers import optimize_with_workers

        result = optimize_with_workers(tuner, args, study_name)
    else:
        result = tuner.optimize(args.trials)
    chosen = result.recommended
    pushed = tuner.push(args.push, chosen) if args.push and chosen is not None else None
    elapsed = time.perf_counter() - t0
    if args.json:
        print(json.dumps(_as_json(result, pushed, store.url), sort_keys=True, default=str))
    else:
        _print(result, pushed, store.url, constraints)
        print(f"done in {elapsed:.1f} s ({result.computed_runs} runs computed, the rest reused; "
              f"sampler seed {result.seed})", file=sys.stderr)
    for note in result.notes:
        print(f"warning: {note}", file=sys.stderr)
    store.close()
    if args.push and pushed is None:
        why = result.heldout.reason if result.heldout is not None else "no trial meets the constraints"
        print(f"nothing pushed to {args.push}: {why}", file=sys.stderr)
        return 1
    return 0


def _goals(args: argparse.Namespace) -> tuple[list[str], list[Any], Any]:
    """The objectives (checked), constraints and search space the flags ask for."""
    from kvpilot.tuner import Constraint, SearchSpace
    from kvpilot.tuner.objectives import DEFAULT_OBJECTIVES, objective

    agents = args.workload == "agents"
    objectives = args.objective or list(AGENT_OBJECTIVES if agents else DEFAULT_OBJECTIVES)
    for name in objectives:
        objective(name)
    texts = args.constraint or (["none"] if agents else [DEFAULT_CONSTRAINT])
    constraints = [] if texts == ["none"] else [Constraint.parse(t) for t in texts]
    if args.space:
        space = SearchSpace.from_file(args.space)
    else:
        space = agent_space() if agents else SearchSpace()
    return objectives, constraints, space


def make_tuner(args: argparse.Namespace, store: Any, *, validate: bool = True) -> tuple[Any, list[Any]]:
    """The Tuner the flags describe, on `store` (and its constraints); `validate=False` leaves the held-out
    set out (a `--workers` process: the parent validates the front once, after every worker is done)."""
    from kvpilot.tuner import Tuner

    agents = args.workload == "agents"
    objectives, constraints, space = _goals(args)
    heldout = None
    if agents:
        evaluator = _replay_target(args)
        study_name = args.study or f"{evaluator.label}-ttl"
    else:
        if args.heldout == 0:
            evaluator = evaluator_from_arguments(args)
        else:
            evaluator, heldout = _split_evaluators(args)
        study_name = args.study or f"{evaluator.label}-{'qa' if args.query_aware else 'agnostic'}"
    pick = args.pick or ("mean_jct_s" if agents and "mean_jct_s" in objectives else None)
    tuner = Tuner(evaluator, study_name=study_name, store=store, objectives=objectives, constraints=constraints,
                  space=space, pick=pick, sampler=args.sampler, seed=args.sampler_seed,
                  deployment=args.push, progress=not args.quiet, heldout=heldout if validate else None)
    return tuner, constraints


def _split_evaluators(args: argparse.Namespace):
    """The search and held-out Evaluators the flags ask for (one workload, split with --split-seed)."""
    from kvpilot.engine import Engine
    from kvpilot.tuner.split import split_evaluators

    split_seed = args.seed if args.split_seed is None else args.split_seed
    return split_evaluators(Engine.load(args.model), args.workload, args.samples, args.heldout, args.tokens,
                            args.seed, split_seed, query_aware=args.query_aware, fidelity=not args.no_fidelity,
                            results_root=args.out, progress=not args.quiet, max_new_tokens=args.max_new_tokens)


def agent_space():
    """Agent sessions: the cache policy stays the full cache; the TTL policy and its parameter are searched."""
    from kvpilot.tuner import SearchSpace

    return SearchSpace(policy=("full",), session_ttl=("none", "fixed", "cdf"))


def _replay_target(args: argparse.Namespace):
    from kvpilot.commands.replay import agent_events
    from kvpilot.engine import Engine
    from kvpilot.tuner.replay_target import ReplayTarget
    from kvpilot.workloads import AgentWorkload

    if not 0 < args.token_scale <= 1:
        raise KVPilotError(f"--token-scale must be in (0, 1], got {args.token_scale}")
    events = agent_events(args.trace, args.programs, AgentWorkload.rate, args.seed)
    label = f"agents-{Path(args.trace).stem}" if args.trace else f"agents-{args.programs}p-seed{args.seed}"
    capacity = None if args.capacity_mib is None else int(args.capacity_mib * 2**20)
    return ReplayTarget(Engine.load(args.model), events, label=label, capacity_bytes=capacity,
                        token_scale=args.token_scale, max_response_tokens=args.max_new_tokens or 8)


def _as_json(result, pushed, url: str) -> dict:
    recommended = result.recommended
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
        "reused_trials": result.reused_trials,
        "sampler_seed": result.seed,
        "heldout": None if result.heldout is None else result.heldout.to_dict(),
        "recommended": None if recommended is None else {
            "trial": recommended.number, "config": recommended.config.to_dict()},
        "warnings": result.notes,
        "pushed_version": None if pushed is None else pushed.version,
    }


def _print(result, pushed, url: str, constraints) -> None:
    base = result.baseline
    print(f"study {result.study_name!r} in {url}: {len(result.trials)} complete trials, "
          f"{sum(t.feasible for t in result.trials)} feasible" + (f", {result.failed_trials} failed"
                                                                   if result.failed_trials else ""))
    if constraints:
        print("constraints: " + ", ".join(c.text for c in constraints))
    names = result.objectives
    print("baseline (full cache, no TTL): " + ", ".join(f"{n} {_fmt(base.get(n))}" for n in names))
    if result.best is None:
        print("\nno feasible trial yet: loosen the constraints, widen the space or run more trials")
        return
    others = [t for t in result.trials if t.feasible and t.number != result.best.number]
    pick = names.index(result.pick)
    others.sort(key=lambda t: t.values[pick], reverse=result.pick_direction == "maximize")
    print(f"\n{'trial':>5}  {'feasible configs, winner first':<52}" + "".join(f"{n:>15}" for n in names))
    for t in [result.best, *others][:10]:
        print(f"{t.number:>5}  {_label(t.config):<52}" + "".join(f"{_fmt(v):>15}" for v in t.values))
    from kvpilot.config import KVConfig

    defaults, best = KVConfig().to_dict(), result.best.config.to_dict()
    changed = {k: best[k] for k in SIZE_FIELDS if best[k] != defaults[k]} | _changes(result.best.config)
    print(f"\nwinner: trial {result.best.number}, fields that differ from the defaults: {json.dumps(changed)}")
    if result.heldout is not None:
        _print_heldout(result)
    if pushed is not None:
        print(f"pushed to deployment '{pushed.deployment}' as version {pushed.version}")


def _print_heldout(result) -> None:
    """The validated front: each config's search-set and held-out figures side by side, with intervals."""
    report = result.heldout
    names = result.objectives
    print(f"\nheld-out validation on {report.label} ({report.front_size} configs on the search set's feasible "
          f"Pareto front, {len(report.validations)} re-measured):")
    header = "".join(f"{n + ' search':>24}{n + ' held-out':>24}" for n in names)
    print(f"{'trial':>5}  {'config':<40}{header}  meets constraints")
    rows = [("full", "full cache (baseline)", result.baseline, report.baseline, None)]
    rows += [(v.number, _label(v.config), v.search, v.heldout, v.feasible) for v in report.validations]
    for number, label, search, held, ok in rows:
        cells = "".join(f"{_with_ci(n, search):>24}{_with_ci(n, held):>24}" for n in names)
        verdict = "" if ok is None else ("yes" if ok else "no")
        print(f"{number!s:>5}  {label[:40]:<40}{cells}  {verdict}")
    print(f"recommendation: {report.reason}")


def _with_ci(name: str, metrics: dict[str, Any]) -> str:
    """A value, with its 95 % interval when it is a proportion (`0.58 [0.32, 0.81]`)."""
    value = metrics.get(name)
    low, high = metrics.get(f"{name}_ci_low"), metrics.get(f"{name}_ci_high")
    if low is None or high is None or value is None:
        return _fmt(value)
    return f"{value:.2f} [{low:.2f}, {high:.2f}]"


def _changes(config: KVConfig) -> dict[str, Any]:
    """The config's fields, and its plug-ins' own parameters, that differ from their defaults (the size
    fields left out: `config_label` already says them)."""
    from kvpilot.config import SLOTS, KVConfig

    defaults = KVConfig().to_dict()
    params_fields = {slot.params_field for slot in SLOTS}
    out: dict[str, Any] = {}
    for key, value in config.to_dict().items():
        if key in SIZE_FIELDS or key in params_fields:
            continue
        if value != defaults.get(key):
            out[key] = value
    for slot in SLOTS:
        params = getattr(config, slot.params_field)
        for p in config.spec(slot.field).params():
            if p.name in params and params[p.name] != p.default:
                out[f"{slot.params_field}.{p.name}"] = params[p.name]
    return out


def _label(config: KVConfig) -> str:
    """One row of the trial table: the label, then what else the trial changed (e.g. `window=32`)."""
    from kvpilot.config import config_label

    changes = [f"{key.rsplit('.', 1)[-1]}={_fmt(value)}" for key, value in _changes(config).items()]
    return " ".join([config_label(config), *changes])


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float) and abs(v) >= 1e6:
        return f"{v / 2**20:.1f}Mi"
    return f"{v:.4g}" if isinstance(v, float) else str(v)
