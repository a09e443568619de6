"""`kvpilot eval`: run a workload under a KVConfig and print accuracy, fidelity, memory and speed."""

from __future__ import annotations

import argparse
import json
import sys
import time

from kvpilot.errors import KVPilotError

WORKLOAD_HELP = (
    "passkey, niah (or niah:<variant>, e.g. niah:multikey_1), vt, cwe, convqa, or jsonl:PATH for your own "
    "file (see docs/workloads.md)"
)


def register(subparsers: argparse._SubParsersAction) -> None:
    ev = subparsers.add_parser(
        "eval",
        help="evaluate a KV-cache config on a workload (accuracy, fidelity, memory, latency)",
        description="Generate a workload (or read jsonl:PATH), run it through the engine under a KVConfig and "
        "report task accuracy, fidelity against the full cache (top-1 agreement and KL of the "
        "teacher-forced answer tokens), KV bytes, TTFT, TPOT and tokens/s. The context is compressed "
        "once without the questions (question-agnostic) unless --query-aware. Each run is stored in its "
        "own folder under --out (config.json, predictions.jsonl, metrics.json); a finished run is loaded, "
        "not recomputed.",
    )
    group = ev.add_mutually_exclusive_group()
    group.add_argument("--config", "-c", metavar="FILE", default=None, help="KVConfig JSON file")
    group.add_argument("--policy", "-p", default=None, help="eviction policy (default: full)")
    ev.add_argument("--ratio", "-r", type=float, default=None, help="fraction of the context evicted, in [0, 1)")
    add_workload_arguments(ev, samples=10)
    ev.add_argument("--recompute", action="store_true", help="recompute even if a finished run exists")
    ev.add_argument("--json", action="store_true", help="print the metrics as one JSON object on stdout")
    ev.add_argument("--db", default=None, metavar="URL",
                    help="store the run is recorded in, for the dashboard (default: $KVPILOT_DB or the SQLite "
                    "file in $KVPILOT_HOME)")
    ev.add_argument("--no-db", action="store_true", help="do not record the run in a store")
    ev.set_defaults(func=_eval)


def add_workload_arguments(p: argparse.ArgumentParser, *, samples: int, required: bool = True) -> None:
    """The flags that choose the samples and how they are run (shared by `eval` and `tune`)."""
    p.add_argument("--workload", "-w", required=required, help=WORKLOAD_HELP)
    p.add_argument("--samples", "-n", type=int, default=samples, help=f"number of samples (default {samples})")
    p.add_argument("--tokens", "-t", type=int, default=1000, help="context length in tokens (default 1000)")
    p.add_argument("--seed", "-s", type=int, default=0, help="workload seed (default 0)")
    p.add_argument("--query-aware", action="store_true", help="compress the context and question together")
    p.add_argument("--no-fidelity", action="store_true", help="skip the full-cache reference (faster)")
    p.add_argument("--max-new-tokens", type=int, default=None, help="override the workload's answer budget")
    p.add_argument("--out", "-o", default="runs", metavar="DIR", help="results root (default: ./runs)")
    p.add_argument("--model", default=None, metavar="PATH", help="local HF model directory (default: bundled)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bars")


def check_workload_arguments(args: argparse.Namespace) -> None:
    """Fail on a bad workload name or size before spending seconds loading the model."""
    from kvpilot.workloads.spec import WorkloadSpec

    check_workload_name(args.workload)
    for flag, value in (("--samples", args.samples), ("--tokens", args.tokens)):
        if value < 1 and not (flag == "--samples" and WorkloadSpec.parse(args.workload).is_jsonl):
            raise KVPilotError(f"{flag} must be at least 1, got {value}")


def evaluator_from_arguments(args: argparse.Namespace, recorder=None):
    """Load the engine and wrap the samples the flags ask for in an Evaluator (recording runs in ``recorder``)."""
    from kvpilot.engine import Engine
    from kvpilot.evaluation import Evaluator

    engine = Engine.load(args.model)
    return Evaluator.for_workload(
        engine,
        args.workload,
        args.samples,
        args.tokens,
        args.seed,
        query_aware=args.query_aware,
        fidelity=not args.no_fidelity,
        results_root=args.out,
        progress=not args.quiet,
        max_new_tokens=args.max_new_tokens,
        recorder=recorder,
    )


def build_config(args: argparse.Namespace):
    """The KVConfig the flags ask for; every problem becomes one line."""
    from kvpilot.config import KVConfig, KVConfigError
    from kvpilot.policies import POLICY_REGISTRY

    try:
        if args.config:
            if args.ratio is not None:
                raise KVPilotError("--ratio goes with --policy; put compression_ratio in the --config file instead")
            return KVConfig.from_file(args.config)
        policy = args.policy or "full"
        if policy not in POLICY_REGISTRY:
            raise KVPilotError(f"unknown policy {policy!r}; choose from {', '.join(POLICY_REGISTRY.names())}")
        if policy == "full":
            if args.ratio:
                raise KVPilotError("--policy full keeps every token; drop --ratio or choose another policy")
            return KVConfig()
        if args.ratio is None:
            raise KVPilotError(f"--policy {policy} needs --ratio R (the fraction evicted, e.g. 0.5)")
        return KVConfig.parse({"policy": policy, "compression_ratio": args.ratio})
    except KVConfigError as exc:
        raise KVPilotError("bad config: " + "; ".join(exc.problems)) from None


def check_workload_name(workload: str) -> None:
    """Fail on a bad name or an unusable JSONL file before spending seconds loading the model."""
    from kvpilot.evaluation.errors import workload_errors
    from kvpilot.workloads.registry import check_workload

    with workload_errors(workload):
        check_workload(workload)


def _eval(args: argparse.Namespace) -> int:
    config = build_config(args)
    check_workload_arguments(args)
    from kvpilot.evaluation import format_summary

    t0 = time.perf_counter()
    store = None
    if not args.no_db:
        from kvpilot.storage import Store

        store = Store.open(args.db)  # before the model loads: a bad URL fails in a second
    try:
        evaluator = evaluator_from_arguments(args, recorder=store)
        result = evaluator.run(config, recompute=args.recompute)
    finally:
        if store is not None:
            store.close()
    if args.json:
        print(json.dumps(result.as_json(), sort_keys=True, allow_nan=False))
    else:
        print(format_summary(result))
        if store is not None:
            print(f"recorded in {store.url} (see `kvpilot dashboard`)", file=sys.stderr)
        print(f"done in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    return 0
