"""`kvpilot tune --workers N`: N local processes share one study's trials, in the store's own database.

The parent creates the study, measures the full cache (the baseline every worker reads from the study)
and queues the first trials, so no worker races to create anything; then it starts N processes (spawned:
a fresh interpreter each, no forked torch state), each running its share of `--trials` on the same study
with its own sampler seed (the given one + its index) and `OMP_NUM_THREADS` set to its share of the cores
(unless set already). Optuna's distributed mode coordinates them through the database: PostgreSQL, or the
store's SQLite file (WAL, writes waiting on a busy timeout; one machine). The parent's progress bar counts
the study's finished trials; once every worker is done, it validates the front on the held-out set and
returns a `TuneResult` shaped as one process's (trials run, failed, reused and computed summed over the
workers). The path for many machines is unchanged: several `kvpilot tune` processes with one --study on a
PostgreSQL store.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import queue
import sys
from typing import Any

from optuna.trial import TrialState
from tqdm.auto import tqdm

from kvpilot.errors import KVPilotError

FINISHED = (TrialState.COMPLETE, TrialState.FAIL)
POLL_S = 1.0


def shares(trials: int, workers: int) -> list[int]:
    """Trials per worker: as even as possible, no worker with none."""
    n = min(trials, workers)
    return [trials // n + (i < trials % n) for i in range(n)] if n else []


def _worker(settings: dict[str, Any], index: int, trials: int, seed: int, threads: int, out: Any) -> None:
    """One worker process: the same tuner on the same study, its share of the trials, no held-out set."""
    if threads:
        os.environ["OMP_NUM_THREADS"] = str(threads)
    report: dict[str, Any] = {"index": index}
    try:
        from kvpilot.commands.tune import make_tuner
        from kvpilot.storage import Store

        args = argparse.Namespace(**{**settings, "sampler_seed": seed, "quiet": True})
        with Store.open(args.db) as store:
            tuner, _ = make_tuner(args, store, validate=False)
            tuner.progress = False
            result = tuner.optimize(trials)
        report.update(ok=True, failed=result.failed_trials, reused=result.reused_trials,
                      computed=result.computed_runs)
    except BaseException as exc:  # reported to the parent, which says which worker failed and why
        report.update(ok=False, error=f"{type(exc).__name__}: {exc}")
    out.put(report)


def optimize_with_workers(tuner: Any, args: argparse.Namespace, study_name: str) -> Any:
    """Run `args.trials` trials of `tuner`'s study in `args.workers` processes; the parent's TuneResult."""
    study = tuner.study  # created here, before any worker could race to create it
    tuner._requeue_stale_trials(study)
    computed_before = tuner.evaluator.computed_runs
    tuner.baseline()
    tuner._seed_policies(study, args.trials)
    computed = tuner.evaluator.computed_runs - computed_before
    plan = shares(args.trials, args.workers)
    threads = 0 if os.environ.get("OMP_NUM_THREADS") else max(1, (os.cpu_count() or 1) // len(plan))
    settings = {k: v for k, v in vars(args).items() if k != "func"}
    settings.update(study=study_name, workers=1, push=None)
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(settings, i, n, tuner.seed + i, threads, out),
                         name=f"kvpilot-tune-worker-{i}", daemon=False) for i, n in enumerate(plan)]
    before = len(study.get_trials(deepcopy=False, states=FINISHED))
    reports: dict[int, dict[str, Any]] = {}
    bar = tqdm(total=args.trials, desc=f"tuning {study_name} ({len(plan)} workers)", disable=not tuner.progress,
               unit="trial")
    try:
        for p in procs:
            p.start()
        while len(reports) < len(procs):
            try:
                report = out.get(timeout=POLL_S)
                reports[report["index"]] = report
            except queue.Empty:
                if not any(p.is_alive() for p in procs) and out.empty():
                    break  # a worker died without a word (killed): say so below
            done = min(len(study.get_trials(deepcopy=False, states=FINISHED)) - before, args.trials)
            if done > bar.n:  # the bar moves when a trial finishes, in whichever worker
                best = tuner.best()
                if best is not None:
                    bar.set_postfix_str(tuner._describe(best), refresh=False)
                bar.update(done - bar.n)
        for p in procs:
            p.join()
    except BaseException:
        for p in procs:
            if p.is_alive():
                p.terminate()
        raise
    finally:
        bar.close()
    problems = [f"worker {i}: {reports[i]['error']}" if i in reports else f"worker {i}: exited with code {p.exitcode}"
                for i, p in enumerate(procs) if not reports.get(i, {}).get("ok")]
    if problems:
        raise KVPilotError(f"{len(problems)} of {len(procs)} tune workers failed ({'; '.join(problems)}); the "
                           f"study {study_name!r} keeps every finished trial: run again to add more")
    tuner.progress = False
    result = tuner.optimize(0)  # the study as the workers left it, validated on the held-out set once
    result.new_trials = args.trials
    result.failed_trials = sum(r["failed"] for r in reports.values())
    result.reused_trials = sum(r["reused"] for r in reports.values())
    result.computed_runs += computed + sum(r["computed"] for r in reports.values())
    if not args.quiet:
        print(f"{len(plan)} worker processes ran {plan} trials (sampler seeds {tuner.seed} to "
              f"{tuner.seed + len(plan) - 1})", file=sys.stderr)
    return result


__all__ = ["optimize_with_workers", "shares"]
