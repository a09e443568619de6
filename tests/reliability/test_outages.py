"""Findings 4 and 5 of issue 13: no outage, partition or restart loses a sample.

4. An engine restarted under its default instance name (``<host>-<pid>``) after spooling during an outage
   used to open a new spool file and never replay the old one. Two engines are killed with SIGKILL while
   the database is unreachable; a third process of the deployment, with yet another name, stores every row
   both spooled, exactly once.
5. A frozen network (a proxy that keeps the sockets open and moves nothing) used to block the recorder and
   the watcher forever. Through a real TCP proxy in front of PostgreSQL: frozen, then cut, every row
   recorded is stored exactly once and nothing waits longer than the operation deadline plus a reconnect.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from kvpilot.attach import attach
from kvpilot.engine.watcher import ConfigWatcher
from kvpilot.probes.recorder import Recorder
from kvpilot.probes.spool import Spool
from kvpilot.storage import Store
from tests.reliability.proxy import TcpProxy

ROOT = Path(__file__).resolve().parents[2]
CHILD = Path(__file__).with_name("spooling_engine.py")


def _stored(store: Store) -> int:
    return sum(store.counts().values())


def _spool_while_down(url: str, spool_dir: Path, deployment: str, requests: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, str(CHILD), url, str(spool_dir), deployment, str(requests)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == -9, proc.stderr[-2000:]  # it died by SIGKILL, after spooling
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_restart_mid_outage_replays_what_dead_instances_spooled(tiny_engine, tmp_path, record_figures):
    db_file = tmp_path / "kvpilot.db"
    db_file.mkdir()  # a directory where the file should be: SQLite cannot open it, an outage
    url = f"sqlite:///{db_file}"
    spool_dir = tmp_path / "spool"
    first = _spool_while_down(url, spool_dir, "chat", 6)
    second = _spool_while_down(url, spool_dir, "chat", 4)
    spooled = first["spooled_rows"] + second["spooled_rows"]
    assert first["spooled_rows"] > 0 and second["spooled_rows"] > 0
    assert first.get("dropped_rows", 0) == second.get("dropped_rows", 0) == 0
    assert len(list((spool_dir / "chat").glob("*.jsonl"))) == 2  # one per dead process, by its pid

    db_file.rmdir()  # the database is back; a third process of the deployment starts, under its own name
    handle = attach(tiny_engine, store=url, deployment="chat", otel=False, spool_dir=spool_dir, watch=False)
    tiny_engine.run(list(range(1, 41)), [], 2)
    handle.flush(30)
    stats = handle.detach()
    with Store.open(url) as store:
        stored = _stored(store)
        assert stored == spooled + stats["written_rows"]
        assert stats["replayed_rows"] == spooled
    record_figures("restart_mid_outage", {"processes_killed": 2, "rows_spooled": spooled,
                                          "rows_recorded_after": stats["written_rows"], "rows_stored": stored})
    assert not list((spool_dir / "chat").glob("*"))  # spools and their locks gone: nothing left to replay

    # a fourth process replays nothing again
    handle = attach(tiny_engine, store=url, deployment="chat", otel=False, spool_dir=spool_dir, watch=False)
    handle.flush(30)
    assert handle.detach().get("replayed_rows", 0) == 0


def test_a_live_instance_spool_is_not_adopted(tmp_path, sqlite_store):
    """Two live processes of one deployment: neither replays the other's spool (each holds its lock)."""
    folder = tmp_path / "chat"
    mine = Spool(folder / "a.jsonl")
    theirs_path = folder / "b.jsonl"
    other = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; sys.path.insert(0, sys.argv[1]);"
        "from kvpilot.probes.spool import Spool, Part;"
        "s = Spool(sys.argv[2]); s.append(Part('x-0-requests', 'requests', [{'ts': 1.0}]));"
        "print('ready', flush=True); time.sleep(60)"), str(ROOT), str(theirs_path)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert other.stdout is not None and other.stdout.readline().strip() == "ready"
        rec = Recorder(sqlite_store, spool=mine, adopt_orphans=True,
                       owner=lambda: (sqlite_store.register_instance("chat", "a").id, None))
        rec.flush()
        assert rec.stats().get("replayed_rows", 0) == 0 and theirs_path.exists()
    finally:
        other.kill()
        other.wait()
    rec._next_adopt = 0.0  # its writer is dead now: the next cycle adopts it
    rec.submit("requests", [{"ts": 2.0}])
    rec.flush()
    assert rec.stats()["replayed_rows"] == 1 and not theirs_path.exists()
    assert sqlite_store.counts()["requests"] == 2


@pytest.fixture
def sqlite_store(tmp_path):
    s = Store.open(f"sqlite:///{tmp_path / 'k.db'}")
    yield s
    s.close()


def _layer(i: int) -> dict:
    return {"ts": 1000.0 + i, "layer": i % 4, "entropy": 0.5, "step": i}


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
@pytest.mark.postgres
def test_frozen_and_cut_network_rows_are_spooled_and_stored_once(db_url, tmp_path, monkeypatch, record_figures):
    monkeypatch.setenv("KVPILOT_DB_TIMEOUT_S", "2")
    base = make_url(db_url)
    proxy = TcpProxy(base.host or "127.0.0.1", base.port or 5432)
    store = Store.open(proxy.url(base))
    rec = Recorder(store, owner=lambda: (store.register_instance("net", "e0").id, None),
                   spool=Spool(tmp_path / "net" / "e0.jsonl"), retry_s=(0.2, 0.5), flush_interval_s=0.2).start()
    watcher = ConfigWatcher(store, "net", "e0", lambda cfg: None, listen=False)
    recorded = 0
    waits: dict[str, float] = {}
    try:
        for phase in ("up", "frozen", "cut", "back"):
            if phase == "frozen":
                proxy.freeze()
            elif phase == "cut":
                proxy.cut()
            elif phase == "back":
                proxy.restore()
                rec.retry_now()
            t0 = time.monotonic()
            for k in range(5):
                rec.submit("layer_stats", [_layer(recorded + k * 20 + i) for i in range(20)])
            recorded += 100
            assert rec.flush(timeout=30), f"{phase}: the recorder is blocked"
            waits[phase] = round(time.monotonic() - t0, 1)
            if phase in ("frozen", "cut"):
                errors = watcher.store_errors
                assert watcher.check_once() is None and watcher.store_errors == errors + 1
                assert time.monotonic() - t0 < 30
        st = rec.stats()
        assert st["spooled_rows"] == 200 and st["spooled_pending_rows"] == 0, st
        assert st.get("dropped_rows", 0) == 0
    finally:
        rec.stop()
        proxy.close()
        store.close()
    with Store.open(db_url) as direct:
        stored = direct.counts()["layer_stats"]
        assert stored == recorded == 400
    record_figures("postgresql_frozen_then_cut", {
        "rows_recorded": recorded, "rows_spooled": st["spooled_rows"], "rows_replayed": st["replayed_rows"],
        "rows_stored": stored, "rows_dropped": st.get("dropped_rows", 0), "operation_deadline_s": 2,
        "seconds_to_spool_100_rows": waits})
