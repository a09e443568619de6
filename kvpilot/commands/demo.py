"""`kvpilot demo`: the main job on the bundled model and the embedded SQLite store.

It compares KV policies on passkey retrieval (question-agnostic: the context is compressed before the
question is asked) with the probes attached, so every run, request, per-layer attention-skew and memory
sample and eviction lands in the store; then runs a short Optuna study on the same samples (the smallest
cache that matches the full cache's accuracy) and pushes the best config found, hand-picked or tuned, to
the `demo` deployment, so every page of the dashboard and `kvpilot configs` have something to show.
"""

from __future__ import annotations

import argparse

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
    p.add_argument("--tokens", type=int, default=1500, help="context length in tokens (default 1500)")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--deployment", default="demo", help="deployment the best config is pushed to")
    p.add_argument("--trials", type=int, default=8,
                   help="tuner trials after the comparison (default 8; 0 skips tuning)")
    p.add_argument("--sessions", type=int, default=4,
                   help="agent sessions replayed with the pushed config and a KV time-to-live (default 4; 0 skips)")
    p.add_argument("--model", default=None, help="local HF model directory (default: the bundled model)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from kvpilot.attach import attach
    from kvpilot.config import KVConfig
    from kvpilot.engine import Engine
    from kvpilot.evaluation import Evaluator
    from kvpilot.storage import Store
    from kvpilot.workloads import generate

    store = Store.open(args.db)
    print(f"store: {store.url}")
    engine = Engine.load(args.model)
    samples = generate("passkey", args.samples, args.tokens, seed=args.seed, tokenizer=engine.tokenizer)
    # the same evaluator the tuner uses: one request per sample through the engine, question-agnostic
    evaluator = Evaluator(engine, samples, label="demo-passkey", results_root=None, progress=False,
                          max_new_tokens=8, fidelity=False)
    rows = []
    for policy, ratio in tqdm(DEFAULT_CONFIGS, desc="policies"):
        config = KVConfig(policy=policy, compression_ratio=ratio)
        # probes on every request: skew, memory, latency and evictions land in the store under this run;
        # no config watcher, so a config pushed meanwhile cannot change what is being compared
        handle = attach(engine, store=store, deployment=args.deployment, instance="demo-engine",
                        model_name=args.model or "bundled", otel=False, watch=False,
                        run_kind="eval", run_name=f"passkey {policy} {ratio or 0:.2f}")
        engine.apply_config(config)
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

    print(f"\npasskey retrieval, {args.samples} samples of ~{args.tokens} tokens, bundled model")
    print(f"{'policy':<20}{'ratio':>7}{'accuracy':>10}{'KV MiB':>9}{'peak MiB':>10}")
    for config, m in rows:
        print(f"{config.policy:<20}{config.compression_ratio or 0:>7.2f}{m['accuracy']:>10.0%}"
              f"{m['kv_bytes'] / 2**20:>9.1f}{m['peak_kv_bytes'] / 2**20:>10.1f}")
    compressed = [(c, m) for c, m in rows if c.compresses]
    best_config, best = max(compressed, key=lambda cm: (cm[1]["accuracy"], -cm[1]["kv_bytes"]))
    source = "demo"
    tuned = _tune(args, evaluator, store) if args.trials > 0 else None
    if tuned is not None and (tuned.metrics["accuracy"], -tuned.metrics["kv_bytes"]) >= (
            best["accuracy"], -best["kv_bytes"]):
        best_config, best, source = tuned.config, tuned.metrics, f"tuner:demo-passkey/{tuned.number}"
    version = store.push(args.deployment, best_config, pushed_by="kvpilot demo", source=source)
    print(f"\npushed {best_config.policy} at ratio {best_config.compression_ratio} ({source}; accuracy "
          f"{best['accuracy']:.0%}, KV {best['kv_bytes'] / 2**20:.1f} MiB) to deployment '{args.deployment}' "
          f"as version {version.version}")
    if args.sessions > 0:
        _sessions(args, engine, store, best_config)
    print("next: `kvpilot configs --deployment demo`, `kvpilot dashboard`")
    return 0


def _sessions(args: argparse.Namespace, engine, store, config) -> None:
    """A few agent sessions through the session pool with Continuum's TTL, so the Sessions page has data."""
    from kvpilot.commands.replay import print_replay, run_replay
    from kvpilot.workloads import AgentWorkload, generate_agent_trace

    config = config.replace(session_ttl="cdf")
    print(f"\nagent sessions: {args.sessions} generated programs replayed with a KV time-to-live (Continuum's rule)")
    events = generate_agent_trace(AgentWorkload(n_programs=args.sessions), seed=args.seed)
    metrics = run_replay(engine, config, events, store=store, deployment=args.deployment, token_scale=0.05,
                         max_response_tokens=4)
    print_replay(config, metrics)


def _tune(args: argparse.Namespace, evaluator, store):
    """A short Optuna study on the same samples: the smallest cache that answers as well as the full one.
    It lands in the store, so the dashboard's Tuning page has a study to show after the demo."""
    from kvpilot.tuner import Tuner

    print(f"\ntuning: {args.trials} Optuna trials, constraint accuracy>=full, objectives accuracy and KV bytes")
    # the comparison's evaluator (no fidelity reference: the objectives are accuracy and bytes, and the demo
    # should stay short); a trial identical to a compared config is not run again
    tuner = Tuner(evaluator, study_name="demo-passkey", store=store, constraints=["accuracy>=full"],
                  deployment=args.deployment, seed=0)  # the demo replays the same study every time
    result = tuner.optimize(args.trials)
    if result.best is None:
        print("tuner: no trial matched the full cache's accuracy")
        return None
    m = result.best.metrics
    print(f"tuner winner (trial {result.best.number}): {result.best.config.policy} at ratio "
          f"{result.best.config.compression_ratio}, accuracy {m['accuracy']:.0%}, KV {m['kv_bytes'] / 2**20:.1f} MiB")
    return result.best
