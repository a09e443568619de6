"""`kvpilot demo`: the main job on the bundled model and the embedded SQLite store.

It compares KV policies on passkey retrieval (question-agnostic: the context is compressed before the
question is asked) with the probes attached, so every run, request, per-layer attention-skew and memory
sample and eviction lands in the store; then runs a short Optuna study on the same samples (the smallest
cache that matches the full cache's accuracy, over the policies that are cheap to score) and pushes the
best config found, hand-picked or tuned, to the `demo` deployment, so every page of the dashboard and
`kvpilot configs` have something to show. Torch uses the cores that are idle when it starts (--threads).
"""

from __future__ import annotations

import argparse
import time

DEFAULT_CONFIGS = (
    ("full", None),
    ("streaming", 0.75),
    ("snapkv", 0.75),
    ("h2o", 0.75),
    ("knorm", 0.75),
    ("expected_attention", 0.75),
)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="compare KV policies on the bundled model and record the results",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--db", help="store URL (default: $KVPILOT_DB or the SQLite file in $KVPILOT_HOME)")
    p.add_argument("--samples", type=int, default=6, help="passkey samples (default 6)")
    p.add_argument("--tokens", type=int, default=600, help="context length in tokens (default 600)")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--deployment", default="demo", help="deployment the best config is pushed to")
    p.add_argument("--trials", type=int, default=4,
                   help="tuner trials after the comparison (default 4; 0 skips tuning)")
    p.add_argument("--sessions", type=int, default=4,
                   help="agent sessions replayed with the pushed config and a KV time-to-live (default 4; 0 skips)")
    p.add_argument("--model", default=None, help="local HF model directory (default: the bundled model)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads (default: $OMP_NUM_THREADS if set, else the cores the load average leaves idle, "
                        "at least one)")
    p.set_defaults(func=run)


STAGES = 5
DEMO_INSTANCE = "demo-engine"
# One demo request on a quiet 2-core CPU (two torch threads) per 1,000 context tokens, everything included
# (probes, H2O's attention mass, the tuner's bookkeeping): `kvpilot demo` at 6 x 1,500 tokens with 8 trials
# took 4 min 31 s there for 84 requests plus 4 sessions. On one thread the same work measures about 4.0 CPU
# seconds per 1,000 tokens (at 600 and at 1,000 tokens alike), i.e. two threads ran about 2x faster.
QUIET_REQUEST_S_PER_1K = 2.0
SESSION_REQUESTS = 1  # one replayed agent session (3 turns at the demo's token scale), in 1,000-token requests
QUIET_CORES = 2
STARTUP_S = 10.0  # loading the model and the first forward's one-time set-up, on the quiet machine
# The tuning stage searches the policies that score from the prefill's own attention or keys (no scoring
# prompt, no KVzip reconstruction, which costs one to three more prefills per request), at the ratios that
# can beat the hand-picked 0.75: a few trials can then find a smaller cache that still answers.
DEMO_SPACE = dict(policy=("knorm", "keydiff", "snapkv", "streaming"), compression_ratio=(0.75, 0.9, 0.05),
                  layer_allocation=("uniform", "pyramid"), head_allocation=("uniform",), window=(4, 8, 16),
                  scoring=("window",), granularity=("token",))


def run(args: argparse.Namespace) -> int:
    from kvpilot.errors import KVPilotError
    from kvpilot.storage import Store

    for name in ("samples", "tokens"):
        if getattr(args, name) < 1:
            raise KVPilotError(f"--{name} must be at least 1, got {getattr(args, name)}")
    if args.trials < 0 or args.sessions < 0:
        raise KVPilotError("--trials and --sessions must be 0 or more")
    threads = args.threads_used = _threads(args.threads)
    started, cpu0 = time.perf_counter(), time.process_time()
    store = Store.open(args.db)
    try:
        _demo(args, store)
    finally:
        store.close()
    print(f"\ndone in {_duration(time.perf_counter() - started)} ({_duration(time.process_time() - cpu0)} of CPU on "
          f"{_n(threads, 'thread')}{_load_note()}); everything is in {store.url}")
    print(f"next: `kvpilot configs --deployment {args.deployment}`, `kvpilot dashboard"
          + ("`" if args.db is None else f" --db {args.db}`"))
    return 0


def _demo(args: argparse.Namespace, store) -> None:
    from kvpilot.engine import Engine
    from kvpilot.evaluation import Evaluator
    from kvpilot.workloads import generate

    print(f"kvpilot demo: recording into {store.url}")
    print(_estimate(args))
    t0 = time.perf_counter()
    engine = Engine.load(args.model)
    samples = generate("passkey", args.samples, args.tokens, seed=args.seed, tokenizer=engine.tokenizer)
    print(f"[1/{STAGES}] model loaded and {_n(args.samples, 'passkey sample')} of ~{args.tokens:,} tokens made in "
          f"{time.perf_counter() - t0:.1f} s")
    # the same evaluator the tuner uses: one request per sample through the engine, question-agnostic; it
    # remembers its runs, so a tuning trial identical to a compared config (or the baseline) is not rerun
    evaluator = Evaluator(engine, samples, label="demo-passkey", results_root=None, progress=True,
                          max_new_tokens=8, fidelity=False)
    rows = _compare(args, engine, evaluator, store)
    full = next(m for c, m in rows if not c.compresses)
    feasible = [(c, m) for c, m in rows if c.compresses and m["accuracy"] >= full["accuracy"]]
    best = min(feasible, key=lambda cm: (cm[1]["kv_bytes"], -cm[1]["accuracy"])) if feasible else None
    best_source = "demo"
    tuned = _tune(args, evaluator, store) if args.trials > 0 else None
    if tuned is not None and (best is None or (tuned.metrics["kv_bytes"], -tuned.metrics["accuracy"])
                              < (best[1]["kv_bytes"], -best[1]["accuracy"])):
        best, best_source = (tuned.config, tuned.metrics), f"tuner:{_study_name(args)}/{tuned.number}"
    config = _push(args, store, full, best, best_source)
    if args.sessions > 0:
        _sessions(args, engine, store, config)
    else:
        print(f"[5/{STAGES}] agent sessions: skipped (--sessions 0)")


def _compare(args: argparse.Namespace, engine, evaluator, store) -> list:
    """Stage 2: each hand-picked config on the samples with the probes on; prints the table and the best."""
    from tqdm import tqdm

    from kvpilot.attach import attach
    from kvpilot.config import KVConfig

    rows = []
    for i, (policy, ratio) in enumerate(tqdm(DEFAULT_CONFIGS, desc=f"[2/{STAGES}] policies", unit="policy",
                                             leave=False)):
        config = KVConfig(policy=policy, compression_ratio=ratio)
        t0 = time.perf_counter()
        # the engine's config before attach: the run records it as the run's config (the Runs page)
        engine.apply_config(config)
        engine.request_boundary()
        # probes on every request: skew, memory, latency and evictions land in the store under this run;
        # no config watcher, so a config pushed meanwhile cannot change what is being compared
        handle = attach(engine, store=store, deployment=args.deployment, instance=DEMO_INSTANCE,
                        model_name=args.model or "bundled", otel=False, watch=False,
                        run_kind="eval", run_name=f"passkey {policy} {ratio or 0:.2f}")
        try:
            result = evaluator.run(config)
        finally:
            handle.detach()
        metrics = {"accuracy": result.metrics["accuracy"], "kv_bytes": result.metrics["kv_bytes"],
                   "peak_kv_bytes": result.metrics["mean_peak_kv_bytes"],
                   "compression_ratio": result.metrics["compression_ratio"]}
        if handle.run_id is not None:
            store.finish_run(handle.run_id, metrics=metrics)
        rows.append((config, metrics))
        if i == 0:  # the first policy's pace on this machine, now, says how long the rest will take
            tqdm.write(_pace(args, time.perf_counter() - t0))
    full = next(m for c, m in rows if not c.compresses)
    best_c, best_m = max(((c, m) for c, m in rows if c.compresses),
                         key=lambda cm: (cm[1]["accuracy"], -cm[1]["kv_bytes"]))
    print(f"[2/{STAGES}] compared {len(rows)} policies on {_n(args.samples, 'passkey sample')} of ~{args.tokens:,} tokens: "
          f"full cache {full['accuracy']:.0%} at {_mib(full['kv_bytes'])}; best compressed {best_c.policy} "
          f"{best_c.compression_ratio:g}, {best_m['accuracy']:.0%} at {_mib(best_m['kv_bytes'])}")
    print(f"      {'policy':<20}{'ratio':>7}{'accuracy':>10}{'KV MiB':>9}{'peak MiB':>10}")
    for config, m in rows:
        print(f"      {config.policy:<20}{config.compression_ratio or 0:>7.2f}{m['accuracy']:>10.0%}"
              f"{m['kv_bytes'] / 2**20:>9.1f}{m['peak_kv_bytes'] / 2**20:>10.1f}")
    return rows


def _push(args: argparse.Namespace, store, full: dict, best, source: str):
    """Stage 4: push the smallest config that answered as well as the full cache, and only such a config.
    Returns the config the sessions run under (the pushed one, else the full cache)."""
    from kvpilot.config import KVConfig

    if full["accuracy"] <= 0:
        print(f"[4/{STAGES}] nothing pushed: the full cache itself answered 0 % at this size, so no config can "
              "show it keeps what matters (use more --tokens or --samples)")
        return KVConfig()
    if best is None:
        print(f"[4/{STAGES}] nothing pushed: no compressed config matched the full cache's {full['accuracy']:.0%} "
              "(try more --trials)")
        return KVConfig()
    config, m = best
    version = store.push(args.deployment, config, pushed_by="kvpilot demo", source=source)
    print(f"[4/{STAGES}] pushed {config.policy} at ratio {config.compression_ratio:g} ({source}) to deployment "
          f"'{args.deployment}' as version {version.version}: accuracy {m['accuracy']:.0%} >= the full cache's "
          f"{full['accuracy']:.0%}, KV {_mib(m['kv_bytes'])} instead of {_mib(full['kv_bytes'])}")
    return config


def _sessions(args: argparse.Namespace, engine, store, config) -> None:
    """Stage 5: a few agent sessions through the session pool with Continuum's TTL, so the Sessions page has data."""
    from kvpilot.commands.replay import run_replay
    from kvpilot.workloads import AgentWorkload, generate_agent_trace

    config = config.replace(session_ttl="cdf")
    events = generate_agent_trace(AgentWorkload(n_programs=args.sessions), seed=args.seed)
    # the same engine instance as the comparison: one demo process is one engine on the dashboard
    m = run_replay(engine, config, events, store=store, deployment=args.deployment, token_scale=0.05,
                   max_response_tokens=4, instance=DEMO_INSTANCE)
    ratio = "-" if m["hit_ratio"] is None else f"{m['hit_ratio']:.0%}"
    print(f"[5/{STAGES}] replayed {_n(m['programs'], 'agent session')} ({_n(m['turns'], 'turn')}) under {config.policy} with "
          f"Continuum's KV time-to-live: hit ratio {ratio}, {m['reprefilled_tokens']:,} tokens prefilled again, "
          f"mean job time {m['mean_jct_s']:.1f} s (simulated)")


def _tune(args: argparse.Namespace, evaluator, store):
    """Stage 3: a short Optuna study on the same samples, the smallest cache that answers as well as the full
    one. It lands in the store, so the dashboard's Tuning page has a study to show after the demo."""
    from kvpilot.tuner import SearchSpace, Tuner

    # the comparison's evaluator (no fidelity reference: the objectives are accuracy and bytes, and the demo
    # should stay short): the baseline and any trial identical to a config already run are not recomputed
    tuner = Tuner(evaluator, study_name=_study_name(args), store=store, constraints=["accuracy>=full"],
                  space=SearchSpace(**DEMO_SPACE),  # type: ignore[arg-type]
                  deployment=args.deployment, seed=0)  # the demo replays the same study every time
    result = tuner.optimize(args.trials)
    reused = args.trials - result.computed_runs
    head = (f"[3/{STAGES}] tuned {_n(args.trials, 'Optuna trial')} (constraint accuracy>=full, objectives accuracy and KV "
            f"bytes; {reused} reused an earlier identical run)")
    if result.best is None:
        print(f"{head}: no trial matched the full cache's accuracy")
        return None
    m = result.best.metrics
    print(f"{head}: winner trial {result.best.number}, {result.best.config.policy} at ratio "
          f"{result.best.config.compression_ratio:g}, {m['accuracy']:.0%} at {_mib(m['kv_bytes'])}")
    return result.best


def _study_name(args: argparse.Namespace) -> str:
    """One study per sample set: a rerun of the same demo adds trials to it, a different size starts another."""
    return f"demo-passkey-{args.samples}x{args.tokens}t-seed{args.seed}"


def _threads(requested: int | None) -> int:
    """Set torch's intra-op threads for the demo (one process doing one thing): --threads, else
    $OMP_NUM_THREADS when set, else the cores this process may use that the load average leaves idle (at
    least one). On the shared 2-core machine the default demo took 10 min (5.7 min of CPU) on two threads at
    load 6-8, and 4 min (2.5 min of CPU) on one at load 5.6: threads waiting for a busy core spin and stall.
    Returns the count."""
    import os

    import torch

    if requested is None:
        env = os.environ.get("OMP_NUM_THREADS", "")
        if env.isdigit() and int(env) > 0:
            requested = int(env)
        else:
            cores = _cores()
            try:
                busy = os.getloadavg()[0]
            except OSError:  # no load average on this platform
                busy = 0.0
            requested = max(1, min(cores, int(cores - busy + 0.5)))
    if requested < 1:
        from kvpilot.errors import KVPilotError

        raise KVPilotError(f"--threads must be at least 1, got {requested}")
    torch.set_num_threads(requested)
    return requested


def _cores() -> int:
    import os

    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # no affinity on this platform
        return os.cpu_count() or 1


def _work(args: argparse.Namespace, policies: int, trials: int) -> float:
    """The demo's work in 1,000-token requests: each policy and trial runs every sample once, then sessions."""
    return (policies + trials) * args.samples * args.tokens / 1000 + args.sessions * SESSION_REQUESTS


def _estimate(args: argparse.Namespace) -> str:
    """How long the demo should take, said before it starts: the quiet-machine rate scaled by the work asked
    for, by the threads it runs on and by how busy this machine is now (its load average over its cores).
    Once the first policy has run, `_pace` says it again from this machine's measured speed."""
    import os

    # on a quiet machine the demo would use both cores, unless told otherwise
    asked = getattr(args, "threads", None)
    quiet_threads = max(1, min(asked or QUIET_CORES, QUIET_CORES))
    used = getattr(args, "threads_used", None) or quiet_threads
    quiet = STARTUP_S + _work(args, len(DEFAULT_CONFIGS), args.trials) * QUIET_REQUEST_S_PER_1K * QUIET_CORES / quiet_threads
    line = (f"estimate: about {_duration(quiet)} on a quiet 2-core machine ({_n(quiet_threads, 'torch thread')}) for "
            f"{len(DEFAULT_CONFIGS)} policies and {_n(args.trials, 'tuning trial')} on {_n(args.samples, 'sample')} of "
            f"~{args.tokens:,} tokens, then {_n(args.sessions, 'agent session')}; this run uses "
            f"{_n(used, 'torch thread')}")
    try:
        load = os.getloadavg()[0] / _cores()
    except OSError:  # no load average on this platform
        return line
    if load > 0.5:  # how much longer is not knowable from the load average; the first policy measures it
        line += (f"; this machine is busy (load {load:.1f} per core), so it will take longer: the first policy's "
                 "measured speed gives a better estimate")
    return line


def _pace(args: argparse.Namespace, first_s: float) -> str:
    """The estimate again, from the first policy's measured wall time on this machine as it is now."""
    per_1k = first_s / (args.samples * args.tokens / 1000)
    rest = _work(args, len(DEFAULT_CONFIGS) - 1, args.trials) * per_1k
    return (f"      measured: the full cache took {first_s:.0f} s for {_n(args.samples, 'request')} ({per_1k:.1f} s per "
            f"1,000 tokens here{_load_note()}); the rest should take about {_duration(rest)}")


def _load_note() -> str:
    import os

    try:
        return f", load average {os.getloadavg()[0]:.1f} on {_n(_cores(), 'core')}"
    except OSError:
        return ""


def _n(count: int, noun: str) -> str:
    return f"{count:,} {noun}{'' if count == 1 else 's'}"


def _mib(n: float) -> str:
    return f"{n / 2**20:.1f} MiB"


def _duration(seconds: float) -> str:
    seconds = max(0.0, seconds)
    return f"{seconds:.0f} s" if seconds < 90 else f"{int(seconds // 60)} min {int(seconds % 60):02d} s"
