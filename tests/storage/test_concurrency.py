"""Four engine processes and a tuner process write at once: no row is lost and no writer crashes.

The processes also open the empty database at the same moment, so the first-time migration races too.
"""

from __future__ import annotations

import importlib
import json
import multiprocessing as mp
import sys
import time
from pathlib import Path

import pytest

from kvpilot.storage import Store

# The writer processes are spawned, so their code lives in an importable helper module next to this file.
sys.path.insert(0, str(Path(__file__).parent))
store_writers = importlib.import_module("store_writers")

ENGINES = 4


def _run_writers(db_url: str, tmp_path, duration_s: float) -> tuple[list[dict], dict]:
    ctx = mp.get_context("spawn")
    start_at = time.time() + 4.0  # time for the interpreters to start and import
    procs = []
    for i in range(ENGINES):
        out = tmp_path / f"engine{i}.json"
        procs.append((out, ctx.Process(target=store_writers.engine_writer,
                                        args=(db_url, "fleet", f"engine-{i}", start_at, duration_s, str(out)))))
    tuner_out = tmp_path / "tuner.json"
    procs.append((tuner_out, ctx.Process(target=store_writers.tuner_writer,
                                         args=(db_url, "fleet", start_at, duration_s, str(tuner_out)))))
    for _, p in procs:
        p.start()
    for _, p in procs:
        p.join(timeout=duration_s + 120)
        assert p.exitcode == 0, f"writer process exit code {p.exitcode}"
    results = [json.loads(out.read_text()) for out, _ in procs]
    for r in results:
        assert "error" not in r, r["error"]
    return results[:ENGINES], results[ENGINES]


def _check(db_url: str, engines: list[dict], tuner: dict) -> None:
    with Store.open(db_url) as store:
        for e in engines:
            got = store.counts(instance_id=e["instance_id"])
            for table in ("layer_stats", "cache_events", "memory_samples", "requests"):
                assert got[table] == e[table], (table, got[table], e[table])
            assert e["layer_stats"] > 0
        runs = store.runs(study_name="study", limit=100_000)
        assert len(runs) == tuner["runs"] and all(r.status == "completed" for r in runs)
        assert sorted(r.trial_number for r in runs) == list(range(tuner["runs"]))
        run_rows = sum(store.counts(run_id=r.id)["layer_stats"] for r in runs)
        assert run_rows == tuner["layer_stats"]
        versions = store.list_versions("fleet")
        assert [v.version for v in versions] == list(range(1, tuner["pushes"] + 1))
        assert len(store.acks("fleet", limit=100_000)) == sum(e["acks"] for e in engines)
        assert len(store.instances("fleet")) == ENGINES
        total = store.counts()
        assert total["layer_stats"] == sum(e["layer_stats"] for e in engines) + tuner["layer_stats"]


def test_concurrent_writers_lose_nothing(db_url, tmp_path):
    engines, tuner = _run_writers(db_url, tmp_path, duration_s=5.0)
    _check(db_url, engines, tuner)


@pytest.mark.slow
def test_concurrent_writers_30s(db_url, tmp_path):
    engines, tuner = _run_writers(db_url, tmp_path, duration_s=30.0)
    _check(db_url, engines, tuner)
