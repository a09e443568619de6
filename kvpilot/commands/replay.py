"""`kvpilot replay`: serve an agent-session trace through the engine and the session pool (KV TTL)."""

from __future__ import annotations

import argparse
import json
import sys
import time

from kvpilot.errors import KVPilotError


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "replay",
        help="replay agent sessions through the engine and its KV session pool (time-to-live)",
        description="Replay an agent-session trace (--trace FILE, see docs/workloads.md) or a generated one "
        "(--programs N): each turn runs on the real engine, one at a time; the agent's tools run for the "
        "trace's durations on a simulated clock; between turns the session's cache is pinned for the TTL "
        "that --ttl chooses. Reports hits, misses, re-prefilled tokens, pinned memory-time and job "
        "completion times; each turn's request row (TTFT, TPOT, sizes), its memory and skew samples, the pool's events and the run's metrics go to the store (--db, else the default store; "
        "the dashboard's Sessions page) unless --no-db.",
    )
    src = p.add_mutually_exclusive_group()
    src.add_argument("--trace", metavar="FILE", help="agent trace JSONL")
    src.add_argument("--programs", type=int, default=8, help="generate a trace of N programs (default 8)")
    p.add_argument("--rate", type=float, default=0.5, help="generated: program arrivals per second (default 0.5)")
    p.add_argument("--seed", type=int, default=0, help="generated: trace seed (default 0)")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--config", "-c", metavar="FILE", default=None, help="KVConfig JSON file")
    group.add_argument("--policy", "-p", default=None, help="eviction policy (default: full)")
    p.add_argument("--ratio", "-r", type=float, default=None, help="fraction of each context evicted")
    p.add_argument("--ttl", default=None, metavar="SPEC",
                   help="none, fixed:SECONDS or cdf[:MEMORY_PRICE] (overrides the config's session_ttl)")
    p.add_argument("--capacity-mib", type=float, default=None, help="session pool limit in MiB (default none)")
    p.add_argument("--token-scale", type=float, default=None,
                   help="shrink prompts and tool outputs by this factor (default 1 for --trace, 0.1 generated)")
    p.add_argument("--max-response-tokens", type=int, default=8, help="cap on a turn's answer (default 8)")
    p.add_argument("--db", default=None, metavar="URL",
                   help="store URL (default: $KVPILOT_DB, else the SQLite file in $KVPILOT_HOME)")
    p.add_argument("--no-db", action="store_true", help="do not record the replay in a store")
    p.add_argument("--deployment", default="replay", help="deployment the events are recorded under")
    p.add_argument("--model", default=None, metavar="PATH", help="local HF model directory (default: bundled)")
    p.add_argument("--json", action="store_true", help="print the metrics as one JSON object")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    p.set_defaults(func=_replay)


def ttl_fields(spec: str) -> dict:
    """KVConfig fields for a --ttl spec: none, fixed:SECONDS, cdf or cdf:MEMORY_PRICE."""
    kind, _, value = spec.partition(":")
    try:
        if kind == "none" and not value:
            return {"session_ttl": "none"}
        if kind == "fixed" and value:
            return {"session_ttl": "fixed", "session_ttl_s": float(value)}
        if kind == "cdf":
            return {"session_ttl": "cdf", **({"ttl_memory_price": float(value)} if value else {})}
    except ValueError:
        pass
    raise KVPilotError(f"--ttl {spec!r} not understood; use none, fixed:SECONDS (e.g. fixed:10) or cdf[:PRICE]")


def agent_events(trace: str | None, programs: int, rate: float, seed: int) -> list:
    """The turns of `trace` (a JSONL file) or of a generated trace of `programs` programs; one-line errors.
    Shared by `replay` and `tune --workload agents`."""
    from kvpilot.workloads import AgentWorkload, generate_agent_trace, read_trace

    if trace:
        try:
            events = read_trace(trace)
        except OSError as exc:
            raise KVPilotError(f"cannot read trace {trace}: {exc.strerror}") from None
        except ValueError as exc:
            raise KVPilotError(str(exc)) from None
        if not events:
            raise KVPilotError(f"{trace} holds no turns")
        return events
    if programs < 1:
        raise KVPilotError(f"--programs must be at least 1, got {programs}")
    return generate_agent_trace(AgentWorkload(n_programs=programs, rate=rate), seed=seed)


def _replay(args: argparse.Namespace) -> int:
    from kvpilot.commands.eval import build_config

    config = build_config(args)
    if args.ttl:
        config = config.replace(**ttl_fields(args.ttl))
    events = agent_events(args.trace, args.programs, args.rate, args.seed)
    capacity = None if args.capacity_mib is None else int(args.capacity_mib * 2**20)
    if args.token_scale is not None and not 0 < args.token_scale <= 1:
        raise KVPilotError(f"--token-scale must be in (0, 1], got {args.token_scale}")
    if args.max_response_tokens < 1:
        raise KVPilotError(f"--max-response-tokens must be at least 1, got {args.max_response_tokens}")

    from kvpilot.engine import Engine
    from kvpilot.storage import Store

    store = None if args.no_db else Store.open(args.db)  # before the model loads: a bad URL fails in a second
    engine = Engine.load(args.model)
    t0 = time.perf_counter()
    try:
        metrics = _run(args, engine, config, events, store, capacity)
    finally:
        if store is not None:
            store.close()
    if args.json:
        print(json.dumps({"config": config.to_dict(), **metrics}, sort_keys=True))
    else:
        print_replay(config, metrics)
        if store is not None:
            print(f"recorded in {store.url} under deployment '{args.deployment}'")
        print(f"done in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    return 0


def _run(args: argparse.Namespace, engine, config, events, store, capacity: int | None) -> dict:
    scale = args.token_scale if args.token_scale is not None else (1.0 if args.trace else 0.1)
    return run_replay(engine, config, events, store=store, deployment=args.deployment, capacity_bytes=capacity,
                      token_scale=scale, max_response_tokens=args.max_response_tokens, progress=not args.quiet)


def run_replay(engine, config, events, *, store=None, deployment: str = "replay", capacity_bytes: int | None = None,
               token_scale: float = 1.0, max_response_tokens: int = 8, progress: bool = True,
               instance: str | None = None) -> dict:
    """Replay `events` under `config`; with a store (URL or Store) every turn's request (through the probes
    `kvpilot.attach` puts on any served engine), the pool's events and the run's metrics are recorded there
    under `deployment`, as engine `instance` (default: a name for this process). Returns the replay's metrics."""
    from tqdm import tqdm

    from kvpilot.evaluation.replay import Replay

    handle = None
    if store is not None:
        from kvpilot.attach import attach

        # the engine runs under the replayed config from here on, so the run is recorded with it, not with
        # whatever the engine was loaded with
        engine.apply_config(config)
        engine.request_boundary()

        # the serving path's probes, so each replayed turn is a request row (TTFT, TPOT, sizes) with its
        # memory, skew and eviction samples, recorded exactly as `Engine.serve` records any served request
        handle = attach(engine, store=store, deployment=deployment, otel=False, watch=False, instance=instance,
                        run_kind="eval", run_name=f"replay {config.policy} ttl={config.session_ttl}")
    bar = tqdm(total=len(events), desc="turns", unit="turn", disable=not progress)
    try:
        replay = Replay(engine, config, capacity_bytes=capacity_bytes, token_scale=token_scale,
                        max_response_tokens=max_response_tokens, on_event=handle.event if handle else None,
                        progress=lambda done, total: bar.update(done - bar.n))
        metrics = replay.run(events).metrics()
        if handle is not None and handle.flush() and handle.run_id is not None and handle.store is not None:
            handle.store.finish_run(handle.run_id, metrics=metrics)
    finally:
        bar.close()
        if handle is not None:
            handle.detach()
    return metrics


def print_replay(config, m: dict) -> None:
    ratio = "-" if m["hit_ratio"] is None else f"{m['hit_ratio']:.0%}"
    ttl = f"{config.session_ttl_params['ttl_s']:g} s" if config.session_ttl == "fixed" else ""
    print(f"{m['programs']} programs, {m['turns']} turns; cache {config.policy}"
          f"{'' if config.compression_ratio is None else f' at {config.compression_ratio:g}'}, "
          f"TTL {config.session_ttl} {ttl}".rstrip())
    print(f"hits {m['hits']}, misses {m['misses']} (hit ratio {ratio}), expiries {m['expiries']}")
    print(f"prefilled {m['prefilled_tokens']:,} tokens, of which {m['reprefilled_tokens']:,} history again after "
          f"misses; decoded {m['decoded_tokens']:,}")
    print(f"pinned memory-time {m['pinned_gib_s']:.3f} GiB*s, peak pool {m['peak_pool_bytes'] / 2**20:.1f} MiB")
    print(f"job completion mean {m['mean_jct_s']:.1f} s, p95 {m['p95_jct_s']:.1f} s; engine compute "
          f"{m['compute_s']:.1f} s; makespan {m['makespan_s']:.1f} s (simulated)")
