"""`kvpilot canary watch` (the control plane's canary decisions) and `kvpilot canary status`."""

from __future__ import annotations

import argparse
import time

from kvpilot.commands.db import add_db_option


def register(subparsers: argparse._SubParsersAction) -> None:
    canary = subparsers.add_parser(
        "canary",
        help="decide canary rollouts (watch) or show them (status)",
        description="A canary is a config version pushed with `kvpilot push --canary F`: engines serve a fraction F "
        "of requests with it next to the active version. `watch` compares both on shadow fidelity (a sequential "
        "probability ratio test on top-1 agreement), errors and latency, and promotes or rolls back each running "
        "canary on its own; `status` lists canaries and their decisions.",
    )
    sub = canary.add_subparsers(dest="canary_command", metavar="ACTION", required=True)
    watch = sub.add_parser("watch", help="decide running canaries until interrupted (or once with --once)")
    watch.add_argument("--deployment", "-d", default=None, help="only this deployment's canaries (default: all)")
    watch.add_argument("--poll", type=float, default=5.0, metavar="S", help="seconds between checks (default 5)")
    watch.add_argument("--once", action="store_true", help="check once and exit")
    watch.add_argument("--tolerance", type=float, default=None,
                       help="top-1 agreement a canary may lose and stay acceptable (default 0.02)")
    watch.add_argument("--harm", type=float, default=None, help="agreement loss that is harmful (default 0.10)")
    watch.add_argument("--max-measurements", type=int, default=None,
                       help="canary answers measured after which an undecided canary is rolled back (default 200)")
    add_db_option(watch)
    watch.set_defaults(func=_watch)
    status = sub.add_parser("status", help="canaries of a deployment, newest first, with their decisions")
    status.add_argument("--deployment", "-d", required=True)
    add_db_option(status)
    status.set_defaults(func=_status)


def _rule(args: argparse.Namespace):
    from kvpilot.errors import KVPilotError
    from kvpilot.evaluation.canary import CanaryRule

    given = {k: v for k, v in (("tolerance", args.tolerance), ("harm", args.harm),
                               ("max_measurements", args.max_measurements)) if v is not None}
    try:
        return CanaryRule(**given)
    except ValueError as exc:
        raise KVPilotError(f"canary rule: {exc}") from None


def _watch(args: argparse.Namespace) -> int:
    rule = _rule(args)
    if args.poll <= 0:
        from kvpilot.errors import KVPilotError

        raise KVPilotError(f"--poll must be positive, got {args.poll}")
    from kvpilot.evaluation.canary import CanaryJudge
    from kvpilot.storage import Store

    def show(canary, d) -> None:
        if d.outcome != "continue":
            print(f"{time.strftime('%H:%M:%S')}  {canary.deployment} v{canary.version}: "
                  f"{'promoted' if d.outcome == 'promote' else 'rolled back'}: {d.reason}", flush=True)

    with Store.open(args.db) as store:
        judge = CanaryJudge(store, args.deployment, rule)
        if args.once:
            for canary, d in judge.check_once():
                show(canary, d)
                if d.outcome == "continue":
                    print(f"{canary.deployment} v{canary.version}: {d.reason}")
            return 0
        print(f"kvpilot canary watch: checking {'every deployment' if args.deployment is None else args.deployment}"
              f" every {args.poll:g} s (Ctrl-C stops)", flush=True)
        judge.watch(args.poll, on_decision=show)
    return 0


def _status(args: argparse.Namespace) -> int:
    from kvpilot.storage import Store

    with Store.open(args.db, create=False) as store:
        store.deployment(args.deployment)  # NotFoundError with the known names
        canaries = store.canaries(args.deployment)
        if not canaries:
            print(f"{args.deployment} has no canary yet; push one with `kvpilot push -d {args.deployment} -c FILE "
                  "--canary 0.1`")
        for c in canaries:
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(c.started_at))
            line = f"{when}  v{c.version} vs v{c.baseline_version}  {c.fraction:.0%} of requests  {c.status}"
            if c.reason:
                line += f": {c.reason}"
            print(line)
    return 0
