"""Recorder: batches to the store, spools while it is down, replays exactly once, counts every drop."""

from __future__ import annotations

import json
import sqlite3

from sqlalchemy import text

from kvpilot.probes.recorder import Recorder
from kvpilot.probes.spool import Spool
from kvpilot.storage import DatabaseUnavailableError, Store


def _rows(store: Store, table: str, cols: str = "*") -> list[tuple]:
    with store.engine.connect() as conn:
        return conn.execute(text(f"SELECT {cols} FROM {table} ORDER BY id")).fetchall()


def _owner(store):
    def owner():
        return store.register_instance("dep", "eng-0").id, None

    return owner


def _layer(i: int) -> dict:
    return {"ts": 1000.0 + i, "layer": i % 30, "entropy": 0.5, "step": i}


def test_writes_batches_to_the_store(store):
    rec = Recorder(store, owner=_owner(store))
    rec.submit("layer_stats", [_layer(i) for i in range(50)])
    rec.submit("requests", [{"ts": 1.0, "ttft_s": 0.1}])
    rec.submit_deferred(lambda: [("memory_samples", [{"ts": 2.0, "rss_bytes": 5}])])
    rec.event("evict", layer=3, count=2)
    assert rec.flush()
    assert store.counts()["layer_stats"] == 50
    assert store.counts()["requests"] == 1 and store.counts()["memory_samples"] == 1
    assert rec.stats()["written_rows"] == 53
    assert all(r[0] == rec.instance_id for r in _rows(store, "layer_stats", "instance_id"))


def test_outage_spools_then_replays_once(flaky, store, tmp_path):
    spool = Spool(tmp_path / "spool.jsonl")
    rec = Recorder(flaky, owner=_owner(store), spool=spool, retry_s=(0.0, 0.0))
    rec.submit("layer_stats", [_layer(i) for i in range(10)])
    rec.flush()
    flaky.down.set()
    for k in range(3):
        rec.submit("layer_stats", [_layer(100 + 10 * k + i) for i in range(10)])
        rec.flush()
    assert rec.stats()["spooled_rows"] == 30 and len(spool) == 3
    assert (tmp_path / "spool.jsonl").exists()
    assert store.counts()["layer_stats"] == 10
    flaky.down.clear()
    rec.submit("layer_stats", [_layer(200 + i) for i in range(10)])
    rec.flush()
    rec.flush()  # a second cycle must not replay anything again
    st = rec.stats()
    assert st["replayed_rows"] == 30 and st["written_rows"] == 20 and st.get("dropped_rows", 0) == 0
    ts = [r[0] for r in _rows(store, "layer_stats", "ts")]
    assert len(ts) == 50 and len(set(ts)) == 50  # all there, none twice
    assert not (tmp_path / "spool.jsonl").exists() and len(spool) == 0


class LostCommitAnswer:
    """Forwards to a real Store, but the first layer_stats write commits and then reports an outage, as when
    PostgreSQL's answer to COMMIT is lost: the recorder must spool the part and its replay add nothing."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self.lost = 0

    def __getattr__(self, name):
        return getattr(self._store, name)

    def add_layer_stats(self, rows, **kwargs):
        written = self._store.add_layer_stats(rows, **kwargs)
        if not self.lost:
            self.lost += 1
            raise DatabaseUnavailableError("server closed the connection unexpectedly (after COMMIT)")
        return written


def test_a_part_committed_but_reported_failed_is_not_stored_twice(store, tmp_path):
    lossy = LostCommitAnswer(store)
    rec = Recorder(lossy, owner=_owner(store), spool=Spool(tmp_path / "spool.jsonl"), retry_s=(0.0, 0.0))
    rec.submit("layer_stats", [_layer(i) for i in range(10)])
    rec.flush()
    assert rec.stats()["spooled_rows"] == 10 and lossy.lost == 1  # the recorder believes it failed
    rec.submit("layer_stats", [_layer(100 + i) for i in range(5)])
    rec.flush()
    rec.flush()
    ts = [r[0] for r in _rows(store, "layer_stats", "ts")]
    assert len(ts) == 15 and len(set(ts)) == 15  # the replayed part was recognised, not inserted again
    assert not (tmp_path / "spool.jsonl").exists()


def test_spool_survives_a_restart_and_honours_acks(flaky, store, tmp_path):
    path = tmp_path / "spool.jsonl"
    flaky.down.set()
    rec = Recorder(flaky, owner=_owner(store), spool=Spool(path))
    for k in range(3):
        rec.submit("requests", [{"ts": 10.0 + k, "ttft_s": 0.1}])
        rec.flush()
        rec.retry_now()
    rec.stop()
    # simulate a previous process that stored the first part and acked it before dying
    first = json.loads(path.read_text().splitlines()[0])
    store.add_requests(first["rows"], instance_id=store.register_instance("dep", "eng-0").id)
    with path.open("a") as fh:
        fh.write(json.dumps({"t": "ack", "id": first["id"]}) + "\n")
        fh.write('{"t": "part", "id": "torn-li')  # a torn line from a crash mid-write
    flaky.down.clear()
    spool = Spool(path)
    assert len(spool) == 2 and spool.corrupt_lines == 1
    rec2 = Recorder(flaky, owner=_owner(store), spool=spool)
    rec2.flush()
    assert rec2.stats()["replayed_rows"] == 2
    assert sorted(r[0] for r in _rows(store, "requests", "ts")) == [10.0, 11.0, 12.0]
    assert not path.exists()


def test_full_queue_drops_are_counted_and_reported(store):
    rec = Recorder(store, owner=_owner(store), max_items=4)
    accepted = [rec.submit("layer_stats", [_layer(i)]) for i in range(10)]
    assert accepted.count(False) == 6
    rec.flush()
    st = rec.stats()
    assert st["dropped_rows"] == 6 and st["written_rows"] == 5  # 4 rows + the drop report
    (kind, count, detail), = _rows(store, "cache_events", "kind, count, detail")
    assert kind == "recorder_drop" and count == 6 and json.loads(detail)["reasons"] == {"queue_full": 6}


def test_refused_rows_are_dropped_not_retried(store, tmp_path):
    spool = Spool(tmp_path / "s.jsonl")
    rec = Recorder(store, owner=_owner(store), spool=spool)
    rec.submit("layer_stats", [{"ts": 1.0, "layer": 0, "no_such_column": 1}])
    rec.submit("requests", [{"ts": 1.0, "ttft_s": 0.2}])
    rec.flush()
    rec.flush()
    st = rec.stats()
    assert st["dropped_rows"] == 1 and st["written_rows"] == 2  # the request and the drop report
    assert len(spool) == 0 and store.counts()["layer_stats"] == 0


def test_no_store_means_telemetry_only():
    seen = []

    class Tel:
        def export(self, table, rows):
            seen.append((table, len(rows)))

    rec = Recorder(None, telemetry=Tel())
    rec.submit("requests", [{"ts": 1.0}, {"ts": 2.0}])
    rec.flush()
    assert seen == [("requests", 2)] and rec.stats()["exported_only_rows"] == 2


def test_a_locked_sqlite_database_is_an_outage(sqlite_url, tmp_path):
    """A real failure: another connection holds SQLite's write lock; samples spool, then replay."""
    store = Store.open(sqlite_url, busy_timeout_s=0.05)
    try:
        rec = Recorder(store, owner=_owner(store), spool=Spool(tmp_path / "s.jsonl"), retry_s=(0.0, 0.0))
        rec.submit("requests", [{"ts": 1.0}])
        rec.flush()
        blocker = sqlite3.connect(sqlite_url.removeprefix("sqlite:///"))
        blocker.execute("BEGIN EXCLUSIVE")
        rec.submit("requests", [{"ts": 2.0}])
        rec.flush()
        assert rec.stats()["spooled_rows"] == 1
        blocker.rollback()
        blocker.close()
        rec.submit("requests", [{"ts": 3.0}])
        rec.flush()
        assert sorted(r[0] for r in _rows(store, "requests", "ts")) == [1.0, 2.0, 3.0]
    finally:
        store.close()
