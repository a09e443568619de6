"""`kvpilot watch --vllm URL` and `kvpilot vllm serve|push`: kvpilot on a vLLM server.

`watch` records a running server's /metrics into the store under a deployment and an instance (KV usage
and bytes, prefix-cache hits, preemptions, rates, TTFT/TPOT/latency quantiles, the cache config).
`vllm serve` supervises a server on the deployment's versioned VLLMConfig: a pushed version is applied by
a graceful restart and acknowledged, or rejected with the reason while the previous arguments keep
serving; `kvpilot rollback` and `kvpilot activate` work as for kvpilot engines. `vllm push` stores a new
VLLMConfig version (from a file, or the active one with --set changes).
"""

from __future__ import annotations

import argparse
import getpass
import json
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any

from kvpilot.commands.db import add_db_option
from kvpilot.errors import KVPilotError


def register(sub: argparse._SubParsersAction) -> None:
    w = sub.add_parser(
        "watch",
        help="record a running vLLM server's /metrics into the store (kvpilot watch --vllm URL)",
        description="Scrape a vLLM server's /metrics every --interval seconds and record KV usage, prefix-cache "
        "hits, preemptions, throughput and latency quantiles under --deployment and --instance; the dashboard "
        "shows them. Runs until interrupted, or for --duration seconds.",
    )
    w.add_argument("--vllm", required=True, metavar="URL", help="the server's base URL, e.g. http://127.0.0.1:8000")
    w.add_argument("--deployment", "-d", required=True, help="deployment name (created on first use)")
    w.add_argument("--instance", default=None, help="instance name (default vllm@HOST:PORT of the URL)")
    w.add_argument("--interval", type=float, default=5.0, help="seconds between scrapes (default 5)")
    w.add_argument("--duration", type=float, default=None, help="stop after this many seconds (default: never)")
    w.add_argument("--model", default=None, help="the served model's local directory (KV bytes per token when "
                   "the server does not state its cache size)")
    w.add_argument("--kv-events", default=None, metavar="ENDPOINT",
                   help="also record the server's KV events from its ZMQ publisher, e.g. tcp://127.0.0.1:5557 (the "
                   "server needs --kv-events-config '{\"enable_kv_cache_events\": true, \"publisher\": \"zmq\"}')")
    _add_otel(w)
    add_db_option(w)
    w.set_defaults(func=_watch)

    v = sub.add_parser("vllm", help="supervise a vLLM server on a deployment's versioned config (serve, push)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    vsub = v.add_subparsers(dest="vllm_command", metavar="SUBCOMMAND", required=True)
    s = vsub.add_parser(
        "serve", help="start and supervise a vLLM server that follows --deployment's config",
        description="Start a vLLM server (from the environment `make vllm-env` creates) on the deployment's "
        "active VLLMConfig (the first time: vLLM's defaults with --set changes, pushed as version 1), record "
        "its metrics, and apply every new version by a graceful restart. Runs until interrupted.",
    )
    s.add_argument("--deployment", "-d", required=True)
    s.add_argument("--port", type=int, default=8000, help="port the server listens on (default 8000)")
    s.add_argument("--instance", default=None, help="instance name (default vllm@HOST:PORT)")
    s.add_argument("--model", default=None, help="local HF model directory (default: the bundled model)")
    s.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="config field for the first version, e.g. kv_cache_gib=2 (repeatable)")
    s.add_argument("--scrape-interval", type=float, default=5.0, help="seconds between /metrics scrapes")
    s.add_argument("--log-dir", default=None, help="server logs (default $KVPILOT_HOME/vllm-logs)")
    _add_otel(s)
    add_db_option(s)
    s.set_defaults(func=_serve)

    p = vsub.add_parser(
        "push", help="validate and push a VLLMConfig version",
        description="Push a new VLLMConfig version: from --config FILE, or the active version with --set "
        "changes. An invalid one is refused and nothing is stored.",
    )
    p.add_argument("--deployment", "-d", required=True)
    p.add_argument("--config", "-c", default=None, metavar="FILE", help="VLLMConfig JSON file")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="change one field (repeatable)")
    p.add_argument("--source", default=None, help="what produced it (default user:NAME)")
    add_db_option(p)
    p.set_defaults(func=_push)


def _add_otel(p: argparse.ArgumentParser) -> None:
    p.add_argument("--otel", choices=("none", "console", "otlp"), default="none",
                   help="also export the figures as OpenTelemetry metrics (default none)")


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:
        return "unknown"


def parse_sets(pairs: list[str]) -> dict[str, Any]:
    """`["kv_cache_gib=2", "enable_prefix_caching=false"]` -> fields; values are read as JSON when they parse."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise KVPilotError(f"--set takes FIELD=VALUE, not {pair!r}")
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = value
    return out


def _telemetry(name: str) -> Any:
    if name == "none":
        return None
    from kvpilot.probes.otel import Telemetry

    return Telemetry.from_spec(name, attributes={"gen_ai.provider.name": "vllm"})


def _until_interrupted(duration: float | None) -> None:
    """Block until SIGINT/SIGTERM or `duration` seconds."""
    stop = {"now": False}

    def handler(signum: int, frame: Any) -> None:
        stop["now"] = True

    signal.signal(signal.SIGTERM, handler)
    deadline = None if duration is None else time.monotonic() + duration
    try:
        while not stop["now"] and (deadline is None or time.monotonic() < deadline):
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass


def _watch(args: argparse.Namespace) -> int:
    from urllib.parse import urlparse

    from kvpilot.storage import Store
    from kvpilot.vllm.collector import Collector, fetch_text

    url = urlparse(args.vllm)
    if url.scheme not in ("http", "https") or not url.netloc:
        raise KVPilotError(f"--vllm takes the server's base URL such as http://127.0.0.1:8000, not {args.vllm!r}")
    if args.interval <= 0:
        raise KVPilotError(f"--interval must be positive, not {args.interval}")
    fetch_text(f"{args.vllm.rstrip('/')}/metrics")  # fail now, with the reason, if nothing answers there
    instance = args.instance or f"vllm@{url.hostname}:{url.port or 80}"
    telemetry = _telemetry(args.otel)
    with Store.open(args.db) as store:
        collector = Collector(args.vllm, store, args.deployment, instance, interval_s=args.interval,
                              model_dir=args.model, model=args.model, telemetry=telemetry)
        collector.register()
        collector.start()
        events = None
        if args.kv_events:
            from kvpilot.vllm.collector import bytes_per_token
            from kvpilot.vllm.events import KVEventListener

            events = KVEventListener(args.kv_events, collector.recorder,
                                     bytes_per_token=bytes_per_token(args.model, {})).start()
        print(f"recording {args.vllm}/metrics every {args.interval:g} s as {args.deployment}/{instance} "
              f"into {store.url}", flush=True)
        try:
            _until_interrupted(args.duration)
        finally:
            if events is not None:
                events.stop()
            collector.stop()
            if telemetry is not None:
                telemetry.shutdown()
    extra = f", {events.batches} KV-event batches" if events is not None else ""
    print(f"{collector.scrapes} scrapes recorded, {collector.errors} failed{extra}")
    return 0


def _push(args: argparse.Namespace) -> int:
    from kvpilot.storage import Store
    from kvpilot.vllm_config import VLLMConfig

    with Store.open(args.db) as store:
        if args.config:
            try:
                base = VLLMConfig.parse(Path(args.config).read_text())
            except OSError as exc:
                raise KVPilotError(f"cannot read {args.config}: {exc.strerror}") from None
        else:
            active = store.active_version(args.deployment)
            base = active.vllm_config() if active is not None and active.is_vllm else VLLMConfig()
        cfg = VLLMConfig.parse({**base.to_dict(), **parse_sets(args.set)})
        by = _user()
        v = store.push(args.deployment, cfg, pushed_by=by, source=args.source or f"user:{by}")
    print(f"pushed {args.deployment} version {v.version} (active); previous active: {v.parent_version}")
    return 0


def _serve(args: argparse.Namespace) -> int:
    from kvpilot.engine.model import resolve_model_dir
    from kvpilot.paths import kvpilot_home
    from kvpilot.storage import Store
    from kvpilot.vllm.server import vllm_python
    from kvpilot.vllm.supervisor import Supervisor
    from kvpilot.vllm_config import VLLMConfig

    vllm_python()  # no vLLM environment: say how to make one before anything starts
    with socket.socket() as sock:
        if sock.connect_ex(("127.0.0.1", args.port)) == 0:
            raise KVPilotError(f"port {args.port} is already in use; pick another with --port")
    model_dir = resolve_model_dir(args.model)
    telemetry = _telemetry(args.otel)
    with Store.open(args.db) as store:
        active = store.active_version(args.deployment)
        if active is None or not active.is_vllm:
            if active is not None:
                raise KVPilotError(
                    f"deployment {args.deployment!r} runs KVConfigs (kvpilot engines); serve vLLM under another name")
            cfg = VLLMConfig.parse(parse_sets(args.set))
            store.push(args.deployment, cfg, pushed_by=_user(), source="kvpilot vllm serve")
        elif args.set:
            raise KVPilotError("--set only shapes a new deployment's first version; use `kvpilot vllm push --set`")
        log_dir = Path(args.log_dir) if args.log_dir else kvpilot_home() / "vllm-logs"
        sup = Supervisor(store, args.deployment, model_dir, instance=args.instance, port=args.port,
                         log_dir=log_dir, scrape_s=args.scrape_interval, telemetry=telemetry)
        print(f"starting vLLM for {args.deployment} on {sup.url} (log: {sup.server.log_path})", flush=True)
        sup.start()
        print(f"serving {args.deployment} version {sup.watcher.version} on {sup.url}/v1 as {sup.instance}",
              flush=True)
        try:
            _until_interrupted(None)
        finally:
            sup.stop()
            if telemetry is not None:
                telemetry.shutdown()
    print(f"stopped; {sup.restarts} restart(s) for new configs", file=sys.stderr)
    return 0


def tune_vllm(args: argparse.Namespace) -> int:
    """`kvpilot tune --target vllm`: an Optuna study whose trials are vLLM servers (kvpilot.vllm.target)."""
    from kvpilot.engine.model import resolve_model_dir
    from kvpilot.storage import Store
    from kvpilot.vllm.load import LoadSpec
    from kvpilot.vllm.server import vllm_python
    from kvpilot.vllm.target import Bound, VLLMSpace, VLLMTarget, VLLMTuner
    from kvpilot.vllm_config import VLLMConfig

    if args.trials < 0:
        raise KVPilotError(f"--trials must be >= 0, got {args.trials}")
    if args.programs < 1:
        raise KVPilotError(f"--programs must be at least 1, got {args.programs}")
    constraints = [] if (args.constraint or ["none"]) == ["none"] else [Bound.parse(t) for t in args.constraint]
    space = VLLMSpace()
    if args.space:
        try:
            raw = json.loads(Path(args.space).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise KVPilotError(f"cannot read the vLLM space {args.space}: {exc}") from None
        if not isinstance(raw, dict) or not all(isinstance(v, list) and v for v in raw.get("choices", {}).values()):
            raise KVPilotError(f"{args.space}: expected {{\"base\": {{...}}, \"choices\": {{\"field\": [values]}}}}")
        space = VLLMSpace(VLLMConfig.parse(raw.get("base", {})), {k: tuple(v) for k, v in raw["choices"].items()})
    if args.show_space:
        print(json.dumps({"base": space.base.to_dict(), "choices": space.choices}, indent=2))
        return 0
    python = vllm_python()
    load = LoadSpec(programs=args.programs, seed=args.seed)
    with Store.open(args.db) as store:
        target = VLLMTarget(resolve_model_dir(args.model), load, store=store, python=python)
        study = args.study or f"vllm-{args.programs}p-seed{args.seed}"
        tuner = VLLMTuner(target, study_name=study, store=store, objectives=args.objective,
                          constraints=constraints, space=space, pick=args.pick, seed=args.sampler_seed)
        result = tuner.optimize(args.trials)
        pushed = tuner.push(args.push, result) if args.push else None
        best = result.best
        out = {
            "study": study, "store": store.url, "objectives": result.objectives, "trials": len(result.trials),
            "grid_size": len(space.grid()),
            "best": None if best is None else {"trial": best.number, "config": best.user_attrs["config"],
                                               "metrics": best.user_attrs["metrics"]},
            "pushed_version": pushed,
        }
    if args.json:
        print(json.dumps(out, sort_keys=True, default=str))
    else:
        print(f"study {study!r} in {out['store']}: {out['trials']} complete trials "
              f"(the space holds {out['grid_size']} configs)")
        for t in result.trials:
            m = t.user_attrs.get("metrics", {})
            print(f"  trial {t.number:>3}  " + "  ".join(f"{o}={m.get(o)!s:.8}" for o in result.objectives)
                  + "  " + json.dumps({k: t.params[k] for k in sorted(t.params)}))
        if best is None:
            print("no trial meets the constraints")
        else:
            print(f"winner: trial {best.number}: {json.dumps(best.params)}")
        if pushed is not None:
            print(f"pushed to deployment '{args.push}' as version {pushed}")
    if args.push and pushed is None:
        return 1
    return 0
