"""Control-plane commands: `kvpilot push` (also as a canary), `kvpilot configs`, `kvpilot activate`, `kvpilot rollback`."""

from __future__ import annotations

import argparse
import getpass
import json
import math
import sys
import time

from kvpilot.commands.db import add_db_option


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no login name (containers): still record something
        return "unknown"


def register(subparsers: argparse._SubParsersAction) -> None:
    push = subparsers.add_parser(
        "push",
        help="validate a KVConfig file and push it to a deployment as a new version",
        description="Validate a KVConfig (JSON file, or - for stdin) and store it as the deployment's next "
        "version. It becomes active at once unless --no-activate; engines with a config watcher apply it at "
        "their next request boundary and acknowledge or reject it (see `kvpilot configs --acks`). "
        "An invalid config is refused and nothing is stored.",
    )
    push.add_argument("--deployment", "-d", required=True, help="deployment name (created on first push)")
    push.add_argument("--config", "-c", required=True, metavar="FILE", help="KVConfig JSON file, or - for stdin")
    push.add_argument("--by", default=None, help="who pushes it (default: the login name)")
    push.add_argument("--source", default=None, help="what produced it (default: user:NAME)")
    push.add_argument("--no-activate", action="store_true", help="store the version without making it active")
    push.add_argument("--canary", metavar="F", default=None,
                      help="start the version as a canary on a fraction F of requests (0 < F < 1) next to the active "
                      "version; `kvpilot canary watch` promotes it or rolls it back on shadow fidelity, errors and "
                      "latency (README: Canary rollouts)")
    push.add_argument("--canary-seed", metavar="N", type=int, default=None,
                      help="seed of the engines' per-request canary choice (default: random, stored with the canary)")
    add_db_option(push)
    push.set_defaults(func=_push)

    cfgs = subparsers.add_parser(
        "configs",
        help="list deployments, config versions, show one, diff two, or list acknowledgements",
        description="Without --deployment: deployments and their active versions. With --deployment: its "
        "versions (* marks the active one), or one version with --show, a field diff with --diff, or the "
        "engines' acknowledgements with --acks.",
    )
    cfgs.add_argument("--deployment", "-d", default=None, help="deployment name")
    group = cfgs.add_mutually_exclusive_group()
    group.add_argument("--show", metavar="V", default=None, help="print version V as JSON ('active' for the active one)")
    group.add_argument("--diff", nargs=2, type=int, metavar=("A", "B"), help="fields that differ from version A to B")
    group.add_argument("--acks", action="store_true", help="engine acknowledgements and rejections, newest first")
    add_db_option(cfgs)
    cfgs.set_defaults(func=_configs)

    act = subparsers.add_parser(
        "activate", help="make an existing config version active", description="Make version V the active one."
    )
    act.add_argument("--deployment", "-d", required=True)
    act.add_argument("--version", "-v", required=True, type=int, metavar="V")
    act.add_argument("--by", default=None, help="who does it (default: the login name)")
    add_db_option(act)
    act.set_defaults(func=_activate)

    rb = subparsers.add_parser(
        "rollback",
        help="re-activate the config version that was active before the current one",
        description="Undo the last activation of a deployment: the version active before it becomes active "
        "again. Repeat to go further back.",
    )
    rb.add_argument("--deployment", "-d", required=True)
    rb.add_argument("--by", default=None, help="who does it (default: the login name)")
    add_db_option(rb)
    rb.set_defaults(func=_rollback)


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def _fraction(text: str) -> float:
    from kvpilot.errors import KVPilotError

    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0.0 < value < 1.0:  # nan fails too
        raise KVPilotError(f"--canary takes the fraction of requests the new version serves, between 0 and 1 "
                           f"(exclusive), e.g. --canary 0.1; got {text!r}")
    return value


def _push(args: argparse.Namespace) -> int:
    from kvpilot.config import KVConfig
    from kvpilot.errors import KVPilotError
    from kvpilot.storage import Store

    fraction = None
    if args.canary is not None:
        fraction = _fraction(args.canary)
        if args.no_activate:
            raise KVPilotError("--canary and --no-activate exclude each other: a canary is served at once, to a "
                               "fraction of requests")
    cfg = KVConfig.parse(sys.stdin.buffer.read()) if args.config == "-" else KVConfig.from_file(args.config)
    by = args.by or _user()
    if fraction is not None:
        with Store.open(args.db) as store:
            c = store.start_canary(args.deployment, cfg, fraction, seed=args.canary_seed, pushed_by=by,
                                   source=args.source or f"user:{by}")
        print(f"pushed {args.deployment} version {c.version} as a canary on {fraction:.0%} of requests next to "
              f"version {c.baseline_version} (seed {c.seed}); `kvpilot canary watch -d {args.deployment}` decides it")
        return 0
    with Store.open(args.db) as store:
        v = store.push(args.deployment, cfg, pushed_by=by, source=args.source or f"user:{by}",
                       activate=not args.no_activate)
    state = "active" if v.active else "stored, not active"
    print(f"pushed {args.deployment} version {v.version} ({state}); previous active: {v.parent_version}")
    return 0


def _configs(args: argparse.Namespace) -> int:
    from kvpilot.errors import KVPilotError
    from kvpilot.storage import Store

    with Store.open(args.db, create=False) as store:  # a read: never creates or migrates a schema
        if args.deployment is None:
            if args.show or args.diff or args.acks:
                raise KVPilotError("--show, --diff and --acks need --deployment NAME")
            deps = store.deployments()
            if not deps:
                print(f"no deployments in {store.url}; create one with `kvpilot push --deployment NAME --config FILE`")
            for d in deps:
                alive = sum(i.alive for i in store.instances(d.name))
                print(f"{d.name:24} active version {d.active_version!s:>5}   {alive} engine(s) alive")
            return 0
        name = args.deployment
        if args.show is not None:
            version = None if args.show == "active" else _int(args.show)
            print(json.dumps(store.get_version(name, version).config_dict(), indent=2))
        elif args.diff:
            a, b = args.diff
            changes = store.diff(name, a, b)
            if not changes:
                print(f"versions {a} and {b} of {name} are identical")
            for c in changes:
                print(f"{c.field}: {json.dumps(c.old)} -> {json.dumps(c.new)}")
        elif args.acks:
            acks = store.acks(name)
            if not acks:
                print(f"no engine has acknowledged or rejected a version of {name} yet (engines with a config "
                      "watcher do, at their next request boundary)")
            for ack in acks:
                reason = f": {ack.reason}" if ack.reason else ""
                print(f"{_when(ack.ts)}  {ack.instance:20} version {ack.version:>4} {ack.status}{reason}")
        else:
            print(f"{'':2}{'version':>7}  {'created':19}  {'by':12}  source")
            for v in store.list_versions(name):
                mark = "*" if v.active else " "
                print(f"{mark} {v.version:>7}  {_when(v.created_at)}  {v.pushed_by or '-':12}  {v.source or '-'}")
    return 0


def _int(text: str) -> int:
    from kvpilot.errors import KVPilotError

    try:
        return int(text)
    except ValueError:
        raise KVPilotError(f"--show takes a version number or 'active', not {text!r}") from None


def _activate(args: argparse.Namespace) -> int:
    from kvpilot.storage import Store

    with Store.open(args.db) as store:
        v = store.activate(args.deployment, args.version, by=args.by or _user())
    print(f"{args.deployment}: version {v.version} is active")
    return 0


def _rollback(args: argparse.Namespace) -> int:
    from kvpilot.storage import Store

    with Store.open(args.db) as store:
        before = store.deployment(args.deployment).active_version
        v = store.rollback(args.deployment, by=args.by or _user())
    print(f"{args.deployment}: rolled back from version {before} to version {v.version}")
    return 0
