"""Queued trials are claimed once: several processes asking one study in the store's database never get the
same queued trial (the race that made `tune --workers` fail on SQLite: a trial run twice, the second
`tell` refused). Real processes, a real database file (and PostgreSQL when configured)."""

from __future__ import annotations

import multiprocessing

import optuna

from kvpilot.tuner.storage import open_storage

PROCESSES, ASKS = 3, 20


def _claim(url: str, out) -> None:
    study = optuna.load_study(study_name="claims", storage=open_storage(url))
    out.put([study.ask().number for _ in range(ASKS)])


def test_every_queued_trial_is_claimed_by_one_process(db_url):
    study = optuna.create_study(study_name="claims", storage=open_storage(db_url, create=True))
    for i in range(PROCESSES * ASKS):
        study.enqueue_trial({"x": i})
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_claim, args=(db_url, out)) for _ in range(PROCESSES)]
    for p in procs:
        p.start()
    claimed = [n for _ in procs for n in out.get(timeout=120)]
    for p in procs:
        p.join(timeout=60)
    assert sorted(claimed) == list(range(PROCESSES * ASKS))  # each queued trial once, none twice
