"""`kvpilot probe`: serve a workload with the probes attached and write what they measure to the store.

Every request's latency, KV memory and evictions are recorded; attention skew is sampled as
--sample-rate and --decode-every say. The samples are tagged with a run of kind "probe", so the
dashboard and `kvpilot db status` show them; if the database is unreachable they are spooled locally
and replayed by the next attach of the same --instance.
"""

from __future__ import annotations

import argparse

from kvpilot.commands.db import add_db_option


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "probe",
        help="run a workload with the probes on, writing samples to the store",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_db_option(p)
    p.add_argument("--model", default=None, help="local HF model directory (default: the bundled model)")
    p.add_argument("--workload", default="passkey", help="workload name or jsonl:PATH (default passkey)")
    p.add_argument("-n", "--samples", type=int, default=4, help="samples (default 4)")
    p.add_argument("--tokens", type=int, default=1000, help="context length in tokens (default 1000)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-new-tokens", type=int, default=None, help="answer budget (default: the workload's)")
    p.add_argument("--config", metavar="FILE", help="KVConfig JSON file to serve under (default: full cache)")
    p.add_argument("--deployment", default="probe", help="deployment name (default probe)")
    p.add_argument("--instance", default=None, help="instance name (default HOST-PID)")
    p.add_argument("--sample-rate", type=float, default=1.0, help="fraction of requests sampled (default 1)")
    p.add_argument("--decode-every", type=int, default=None, help="sample one decode step in N (default 32)")
    p.add_argument("--otel", choices=("none", "console", "otlp"), default="none",
                   help="also export OpenTelemetry metrics and spans (default none)")
    p.add_argument("--no-watch", action="store_true", help="do not follow the deployment's pushed configs")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from kvpilot.attach import attach
    from kvpilot.config import KVConfig
    from kvpilot.engine import Engine
    from kvpilot.storage.url import resolve_url
    from kvpilot.workloads import check_workload, load_workload

    spec = check_workload(args.workload)  # a bad name or file fails before the model loads
    config = KVConfig.from_file(args.config) if args.config else None
    engine = Engine.load(args.model, config=config)
    samples = load_workload(spec, args.samples, args.tokens, args.seed, engine.tokenizer)
    url = resolve_url(args.db)
    handle = attach(
        engine, store=url, deployment=args.deployment, sample_rate=args.sample_rate,
        decode_every=args.decode_every, otel=False if args.otel == "none" else args.otel,
        instance=args.instance, model_name=args.model or "bundled", watch=not args.no_watch,
        run_kind="probe", run_name=f"probe {spec.label(len(samples), args.tokens, args.seed)}",
    )
    requests = 0
    try:
        bar = tqdm(samples, desc="probe", unit="sample", disable=args.quiet)
        for s in bar:
            budget = args.max_new_tokens or s.max_new_tokens
            results = engine.answer(s.context, [(q.question, q.answer_prefix) for q in s.qa], budget)
            requests += len(results)
            st = handle.stats()
            bar.set_postfix(req=requests, rows=st.get("rows", 0), spooled=st.get("spooled_pending_rows", 0),
                            dropped=st.get("dropped_rows", 0))
    finally:
        stats = handle.detach()
    where = f"run {handle.run_id}" if handle.run_id is not None else "the spool (database unreachable)"
    print(f"{requests} requests on {engine.config.policy}; {stats.get('rows', 0)} rows recorded to {where}: "
          f"{stats.get('written_rows', 0) + stats.get('replayed_rows', 0)} stored, "
          f"{stats.get('spooled_pending_rows', 0)} spooled, {stats.get('dropped_rows', 0)} dropped; "
          f"{stats.get('sampled_forwards', 0)} forwards sampled")
    return 0
