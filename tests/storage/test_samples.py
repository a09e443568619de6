"""Sample writers and the dashboard's readers, with values checked against hand-computed aggregates."""

from __future__ import annotations

import math

import pytest

from kvpilot.storage import NotFoundError, StoreError

T0 = 1_800_000_000.0  # a fixed epoch so buckets are predictable


@pytest.fixture
def inst(store):
    return store.register_instance("chat", "engine-0", model="bundled")


def _layer_rows(n_steps: int, layers: int = 3, heads: int = 2, t0: float = T0):
    rows = []
    for step in range(n_steps):
        for layer in range(layers):
            for head in (-1, *range(heads)):
                rows.append(
                    {
                        "ts": t0 + step,
                        "step": step,
                        "layer": layer,
                        "head": head,
                        "entropy": float(layer + step),
                        "kv_bytes": 1000 * (layer + 1),
                        "kept_tokens": 10 + step,
                    }
                )
    return rows


def test_register_is_idempotent_and_heartbeat(store, inst):
    again = store.register_instance("chat", "engine-0")
    assert again.id == inst.id
    store.heartbeat(inst.id, config_version=3, ts=T0)
    [got] = store.instances("chat", now=T0 + 5, stale_after_s=30)
    assert got.alive and got.config_version == 3
    [stale] = store.instances("chat", now=T0 + 100, stale_after_s=30)
    assert not stale.alive
    assert store.instances("chat", alive_only=True, now=T0 + 100) == []
    assert [d.name for d in store.deployments()] == ["chat"]
    with pytest.raises(NotFoundError):
        store.heartbeat(999)


def test_layer_stats_latest_window_and_series(store, inst):
    assert store.add_layer_stats(_layer_rows(10), instance_id=inst.id) == 10 * 3 * 3
    latest = store.layer_stats_latest(instance_id=inst.id)
    assert [(r.layer, r.head, r.step) for r in latest] == [(0, -1, 9), (1, -1, 9), (2, -1, 9)]
    per_head = store.layer_stats_latest(deployment="chat", level="head")
    assert len(per_head) == 6 and {r.head for r in per_head} == {0, 1}

    window = store.layer_stats_window(instance_id=inst.id, since=T0 + 2, until=T0 + 4, layers=[1])
    assert [(r.step, r.layer, r.head) for r in window] == [(2, 1, -1), (3, 1, -1)]

    series = store.layer_stats_series(deployment="chat", since=T0, until=T0 + 10, bucket_s=5)
    assert len(series) == 2 * 3
    first = series[0]
    assert (first.ts, first.layer, first.head, first.samples) == (T0, 0, -1, 5)
    assert first.entropy == pytest.approx(sum(range(5)) / 5)
    assert first.kv_bytes == pytest.approx(1000)
    assert store.layer_stats_series(instance_id=inst.id + 99, since=T0, bucket_s=5) == []


def test_latest_uses_lookback(store, inst):
    store.add_layer_stats([{"ts": T0, "layer": 0}, {"ts": T0 + 1000, "layer": 1}], instance_id=inst.id)
    assert [r.layer for r in store.layer_stats_latest(instance_id=inst.id, lookback_s=60)] == [1]
    assert [r.layer for r in store.layer_stats_latest(instance_id=inst.id, lookback_s=2000)] == [0, 1]



def test_latest_reads_the_rollup_and_the_raw_tail_as_raw_rows_would(store, inst):
    """layer_stats has no (instance_id, ts) index (migration 0011): the newest sample of an instance comes from
    the per-minute rollup plus the rows above its watermark, and equals the newest raw row in every case: no
    rollup yet, all rolled up, a newer tail, a late old row, per-minute rollups pruned, an instance without rows."""
    other = store.register_instance("chat", "engine-1")
    idle = store.register_instance("chat", "engine-2")
    store.add_layer_stats(_layer_rows(5), instance_id=inst.id)
    store.add_layer_stats(_layer_rows(3, t0=T0 + 500), instance_id=other.id)

    def expected() -> dict[int, float]:
        with store.engine.connect() as conn:
            return dict(conn.exec_driver_sql(
                "SELECT instance_id, MAX(ts) FROM layer_stats GROUP BY instance_id").all())

    def newest() -> dict[int, float]:
        return {r.instance_id: max(x.ts for x in store.layer_stats_latest(deployment="chat")
                                   if x.instance_id == r.instance_id)
                for r in store.layer_stats_latest(deployment="chat")}

    assert newest() == expected() == {inst.id: T0 + 4, other.id: T0 + 502}  # no rollup state: the plain scan
    store.refresh_rollups(lag_s=0)
    assert newest() == expected()  # all rolled up: from the rollup
    store.add_layer_stats(_layer_rows(2, t0=T0 + 900), instance_id=inst.id)  # a newer tail above the watermark
    store.add_layer_stats([{"ts": T0 - 50, "layer": 0}], instance_id=other.id)  # a late, old row
    assert newest() == expected() == {inst.id: T0 + 901, other.id: T0 + 502}
    store.refresh_rollups(lag_s=0)
    store.prune_rollups("1m", 0, now=T0 + 10**6)  # per-minute rollups gone: the hourly ones answer
    assert newest() == expected()
    assert store.layer_stats_latest(instance_id=idle.id) == []
    assert [r.step for r in store.layer_stats_latest(instance_id=inst.id)] == [1, 1, 1]


def test_rows_with_other_keys_found_while_sending_go_again_row_by_row(store, inst):
    """Rows of the same length whose keys differ pass the batch's up-front checks; the writer finds the missing
    key while it sends the lazy columns, rolls back (the part's claim too) and stores them row by row, once."""
    rows = [{"ts": T0 + i, "layer": 0, "entropy": float(i)} for i in range(4500)]
    rows.append({"ts": T0 + 4500, "layer": 0, "gini": 0.5})  # after the first chunks have gone
    assert store.add_layer_stats(rows, instance_id=inst.id, part_id="p-ragged") == len(rows)
    assert store.add_layer_stats(rows, instance_id=inst.id, part_id="p-ragged") == 0
    with store.engine.connect() as conn:
        got = conn.exec_driver_sql(
            "SELECT COUNT(*), COUNT(entropy), COUNT(gini), SUM(entropy) FROM layer_stats").one()
    assert tuple(got) == (4501, 4500, 1, pytest.approx(sum(range(4500))))


def test_prune_by_time_slices_deletes_every_old_layer_row(store, inst):
    """Layer stats are pruned by time slices for all owners at once: rows before the cutoff go, late rows
    (an old time under a high id) included; newer rows stay."""
    rows = _layer_rows(40, layers=2, heads=1)
    for r in rows:
        r["ts"] = T0 + 30 * r["step"]  # a sample every 30 s for 20 minutes
    store.add_layer_stats(rows, instance_id=inst.id)
    store.add_layer_stats([{"ts": T0 + 5, "layer": 7}], instance_id=inst.id)  # late: old time, newest id
    other = store.register_instance("chat", "engine-1")
    store.add_layer_stats([{"ts": T0 + 60, "layer": 0}, {"ts": T0 + 700, "layer": 0}], instance_id=other.id)
    cutoff = T0 + 600  # now - 300 s, on a minute boundary
    deleted = store.prune(300, now=T0 + 900, batch_rows=5)
    with store.engine.connect() as conn:
        left = [r[0] for r in conn.exec_driver_sql("SELECT ts FROM layer_stats ORDER BY ts").all()]
    assert left and min(left) >= cutoff
    assert deleted["layer_stats"] == 20 * 4 + 2 and len(left) == 20 * 4 + 1


def test_requests_memory_events(store, inst):
    store.add_requests(
        [
            {"ts": T0 + i, "prompt_tokens": 100, "output_tokens": 10, "ttft_s": 0.1 * (i + 1), "tpot_s": 0.01}
            for i in range(4)
        ]
        + [{"ts": T0 + 5, "error": "oom"}],
        instance_id=inst.id,
    )
    buckets = store.requests_series(instance_id=inst.id, since=T0, bucket_s=10)
    [b] = buckets
    assert (b.requests, b.errors, b.prompt_tokens, b.output_tokens) == (5, 1, 400, 40)
    assert b.ttft_mean == pytest.approx(0.25) and b.ttft_max == pytest.approx(0.4)
    assert [r.ts for r in store.requests_window(deployment="chat", limit=2)] == [T0 + 5, T0 + 3]

    store.add_memory_samples(
        [{"ts": T0 + i, "kv_bytes_physical": 100 * i, "kv_bytes_peak": 100 * i, "nvml_util": 50.0} for i in range(6)],
        instance_id=inst.id,
    )
    mem = store.memory_window(instance_id=inst.id, since=T0, until=T0 + 6, bucket_s=3)
    assert [(m.ts, m.samples) for m in mem] == [(T0, 3), (T0 + 3, 3)]
    assert mem[1].kv_bytes_physical == pytest.approx(400) and mem[1].kv_bytes_peak == 500

    store.add_events(
        [
            {"ts": T0, "kind": "evict", "layer": 3, "count": 7, "bytes": 700, "detail": {"policy": "snapkv"}},
            {"ts": T0 + 1, "kind": "hit"},
            {"ts": T0 + 2, "kind": "evict", "count": 3, "bytes": 300},
        ],
        instance_id=inst.id,
    )
    evs = store.events(deployment="chat", kinds=["evict"])
    assert [e.count for e in evs] == [3, 7] and evs[1].detail == {"policy": "snapkv"}
    series = store.event_series(instance_id=inst.id, since=T0, bucket_s=60)
    assert {(e.kind, e.events, e.count, e.bytes) for e in series} == {("evict", 2, 10, 1000), ("hit", 1, 1, 0)}


def test_bad_rows_are_refused_and_nothing_stored(store, inst):
    with pytest.raises(StoreError, match="unknown field"):
        store.add_layer_stats([{"layer": 0, "entropyy": 1.0}], instance_id=inst.id)
    with pytest.raises(StoreError, match="missing 'layer'"):
        store.add_layer_stats([{"entropy": 1.0}], instance_id=inst.id)
    with pytest.raises(StoreError, match="kind 'boom' unknown"):
        store.add_events([{"kind": "boom"}], instance_id=inst.id)
    with pytest.raises(StoreError, match="no engine instance and no run"):
        store.add_requests([{"ttft_s": 0.1}])
    with pytest.raises(StoreError, match="refused"):
        store.add_layer_stats([{"layer": 0}], instance_id=inst.id + 1000)  # unknown instance (foreign key)
    assert store.counts() == {"layer_stats": 0, "requests": 0, "memory_samples": 0, "cache_events": 0, "vllm_samples": 0}
    assert store.add_layer_stats([]) == 0


def test_values_that_do_not_fit_their_column_are_never_stored_wrong(store, inst):
    """Binary COPY packs integers to the column's width: PostgreSQL's `integer` step refuses 2**40 instead of
    storing it wrapped; SQLite's integers are 64-bit, so it keeps the value exactly."""
    big = {"ts": T0, "layer": 0, "step": 2**40}
    if store.backend_name == "postgresql":
        with pytest.raises(StoreError, match="step 1099511627776 is out of range"):
            store.add_layer_stats([big], instance_id=inst.id)
        assert store.counts()["layer_stats"] == 0
    else:
        store.add_layer_stats([big], instance_id=inst.id)
        assert [r.step for r in store.layer_stats_window(instance_id=inst.id, since=T0)] == [2**40]
    store.add_layer_stats([{"ts": T0 + 1, "layer": 0, "step": 2**31 - 1, "kv_bytes": 2**40}], instance_id=inst.id)
    row = store.layer_stats_window(instance_id=inst.id, since=T0 + 1)[0]
    assert (row.step, row.kv_bytes) == (2**31 - 1, 2**40)
    if store.backend_name == "postgresql":
        with pytest.raises(StoreError, match="does not fit the column types"):
            store.add_layer_stats([{"ts": T0, "layer": 0, "step": 1.5}], instance_id=inst.id)


def test_non_finite_floats_become_null(store, inst):
    store.add_layer_stats([{"ts": T0, "layer": 0, "entropy": math.nan, "gini": math.inf}], instance_id=inst.id)
    store.add_layer_stats([{"ts": T0, "layer": 0, "entropy": 2.0}], instance_id=inst.id)
    [b] = store.layer_stats_series(instance_id=inst.id, since=T0, bucket_s=10)
    assert b.entropy == pytest.approx(2.0)  # a NaN never poisons the average


def test_runs_and_summary(store, inst):
    run = store.start_run(
        "tuning_trial", deployment="chat", instance_id=inst.id, study_name="st", trial_number=4,
        config={"policy": "h2o"}, params={"ratio": 0.5},
    )
    store.add_layer_stats(_layer_rows(4), instance_id=inst.id, run_id=run)
    store.add_requests([{"ts": T0, "prompt_tokens": 5, "output_tokens": 2, "ttft_s": 0.2}], run_id=run)
    store.add_memory_samples([{"ts": T0, "kv_bytes_peak": 4096, "device_peak": 8192}], run_id=run)
    store.add_events([{"ts": T0 + 9, "kind": "evict", "count": 5}], run_id=run)
    store.finish_run(run, metrics={"accuracy": 0.8, "bad": math.nan})
    s = store.run_summary(run)
    assert s.run.status == "completed" and s.run.metrics == {"accuracy": 0.8, "bad": None}
    assert s.run.study_name == "st" and s.run.trial_number == 4 and s.run.deployment == "chat"
    assert (s.requests, s.prompt_tokens, s.output_tokens) == (1, 5, 2)
    assert s.kv_bytes_peak == 4096 and s.device_peak == 8192 and s.events == {"evict": 5}
    assert (s.first_ts, s.last_ts) == (T0, T0 + 9)
    assert [lay.layer for lay in s.layers] == [0, 1, 2] and s.layers[0].samples == 4
    assert [r.id for r in store.runs(study_name="st")] == [run]
    with pytest.raises(StoreError, match="run kind"):
        store.start_run("nope")


def test_profiles(store):
    first = store.save_profile("bundled", "kl", [0.1, 0.2])
    second = store.save_profile("bundled", "kl", [0.3, 0.4], meta={"prompts": 8})
    assert store.latest_profile("bundled").id == second
    assert [p.id for p in store.profiles("bundled")] == [second, first]
    assert store.latest_profile("other") is None


def test_prune(store, inst):
    rows = _layer_rows(10)
    for r in rows:
        r["ts"] = T0 + 30 * r["step"]  # a sample every 30 s
    store.add_layer_stats(rows, instance_id=inst.id)
    store.add_events([{"ts": T0 + 30 * i, "kind": "hit"} for i in range(10)], instance_id=inst.id)
    # 100 s before T0 + 250 is T0 + 150; prune cuts at the start of that minute (T0 + 120), so every minute's
    # rows are either all raw or all in the rollups only; several batches
    deleted = store.prune(100, now=T0 + 250, batch_rows=7)
    assert deleted["layer_stats"] == 4 * 9 and deleted["cache_events"] == 4
    assert store.counts(instance_id=inst.id)["layer_stats"] == 6 * 9
    assert len(store.instances()) == 1  # metadata stays


def test_a_part_is_stored_at_most_once(store, inst):
    """The recorder's part id is claimed in the rows' own transaction: a replayed part adds nothing."""
    rows = _layer_rows(3)
    assert store.add_layer_stats(rows, instance_id=inst.id, part_id="s1-7-layer_stats") == len(rows)
    assert store.add_layer_stats(rows, instance_id=inst.id, part_id="s1-7-layer_stats") == 0
    assert store.add_events([{"ts": T0, "kind": "hit"}], instance_id=inst.id, part_id="s1-7-cache_events") == 1
    assert store.add_events([{"ts": T0, "kind": "hit"}], instance_id=inst.id, part_id="s1-7-cache_events") == 0
    counts = store.counts(instance_id=inst.id)
    assert counts["layer_stats"] == len(rows) and counts["cache_events"] == 1
    # a refused part claims nothing: its id stays free for a corrected write
    with pytest.raises(StoreError):
        store.add_events([{"ts": T0, "kind": "bogus"}], instance_id=inst.id, part_id="s1-8-cache_events")
    assert store.add_events([{"ts": T0, "kind": "miss"}], instance_id=inst.id, part_id="s1-8-cache_events") == 1
    assert store.prune(3600)["ingested_parts"] == 0  # ids are kept as long as samples of their age


def test_reader_dataclasses_follow_column_order():
    # Readers build rows positionally (fast); this keeps the dataclasses and the tables in step.
    from dataclasses import fields

    from kvpilot.storage.schema import SAMPLE_TABLES
    from kvpilot.storage.types import Event, LayerStat, Request

    for cls, table in ((LayerStat, "layer_stats"), (Request, "requests"), (Event, "cache_events")):
        assert [f.name for f in fields(cls)] == [c.name for c in SAMPLE_TABLES[table].columns]


def test_a_uniform_batch_is_built_column_wise_like_row_by_row():
    """`batch` checks same-key rows a column at a time; its values equal the row-by-row `tuples`, and its
    errors are the same ones."""
    from kvpilot.storage.schema import CACHE_EVENTS, LAYER_STATS

    rows = _layer_rows(4)
    batch = LAYER_STATS.batch(rows, 7, None)
    full = LAYER_STATS.tuples(rows, 7, None)
    assert batch.instance_ids == {7} and batch.run_ids == frozenset()
    for got, want in zip(batch.rows, full, strict=True):
        as_dict = dict(zip(batch.columns, got, strict=True))
        assert all(as_dict.get(c) == v for c, v in zip(LAYER_STATS.writable, want, strict=True) if c != "ts")
    owned = [dict(r, run_id=3) for r in rows[:2]] + [dict(r, run_id=None) for r in rows[2:4]]
    b2 = LAYER_STATS.batch(owned, 7, None)
    assert b2.run_ids == {3} and b2.instance_ids == {7}
    with pytest.raises(StoreError, match="missing 'layer'"):
        LAYER_STATS.batch([{"ts": T0, "layer": 0}, {"ts": T0, "layer": None}], 7, None)
    with pytest.raises(StoreError, match="no engine instance and no run"):
        LAYER_STATS.batch([{"ts": T0, "layer": 0}, {"ts": T0, "layer": 1}], None, None)
    with pytest.raises(StoreError, match="no engine instance and no run"):
        LAYER_STATS.batch([{"layer": 0, "run_id": 1}, {"layer": 1, "run_id": None}], None, None)
    with pytest.raises(StoreError, match="unknown field"):
        LAYER_STATS.batch([{"layer": 0, "entropyy": 1.0}, {"layer": 1, "entropyy": 1.0}], 7, None)
    with pytest.raises(StoreError, match="kind 'boom' unknown"):
        CACHE_EVENTS.batch([{"ts": T0, "kind": "hit"}, {"ts": T0, "kind": "boom"}], 7, None)
    mixed = LAYER_STATS.batch([{"layer": 0}, {"layer": 1, "entropy": 2.0}], 7, None)  # keys differ: row by row
    assert mixed.columns == LAYER_STATS.writable and len(mixed.rows) == 2


def test_owners_are_checked_per_batch(store, inst):
    """No per-row foreign key (migration 0010): a batch naming an unknown instance or run is refused whole."""
    run = store.start_run("eval", deployment="chat", instance_id=inst.id)
    rows = _layer_rows(2)
    with pytest.raises(StoreError, match="refused: no engine instance with id 999"):
        store.add_layer_stats(rows[:3] + [dict(r, instance_id=999) for r in rows[3:]], instance_id=inst.id)
    with pytest.raises(StoreError, match="refused: no run with id 998"):
        store.add_layer_stats(rows, instance_id=inst.id, run_id=998)
    assert store.counts()["layer_stats"] == 0
    assert store.add_layer_stats(rows, instance_id=inst.id, run_id=run) == len(rows)


def test_packed_copy_stores_what_the_row_path_stores(store, inst):
    """PostgreSQL: a batch of numbers goes as one numpy-packed binary COPY stream; it stores exactly what the
    row-by-row COPY stores, and batches it cannot pack (NULLs mixed with values, NaN) take that path."""
    if store.backend_name != "postgresql":
        pytest.skip("binary COPY is PostgreSQL's")
    from kvpilot.storage.backends.pgcopy import copy_plan, pack_columns
    from kvpilot.storage.schema import LAYER_STATS

    rows = [dict(r, kv_bytes=2**40 + i, seen_tokens=-5) for i, r in enumerate(_layer_rows(3))]
    batch = LAYER_STATS.batch(rows, inst.id, None)
    plan = copy_plan(LAYER_STATS.table, batch.columns)
    assert pack_columns(plan, "layer_stats", list(zip(*batch.rows, strict=True))) is not None
    from sqlalchemy import select

    def stored(since: float) -> list:
        t = LAYER_STATS.table
        with store.engine.connect() as conn:
            q = select(*t.c).where(t.c.ts >= since, t.c.ts < since + 100).order_by(t.c.id)
            return [LAYER_STATS.record_of(r) for r in conn.execute(q)]

    store.add_layer_stats(rows, instance_id=inst.id)
    packed = stored(T0)
    mixed = [dict(r, ts=r["ts"] + 100, entropy=None if i % 2 else r["entropy"]) for i, r in enumerate(rows)]
    b2 = LAYER_STATS.batch(mixed, inst.id, None)
    assert pack_columns(copy_plan(LAYER_STATS.table, b2.columns), "layer_stats", list(zip(*b2.rows, strict=True))) is None
    store.add_layer_stats(mixed, instance_id=inst.id)
    by_row = stored(T0 + 100)
    assert len(packed) == len(by_row) == len(rows)
    for a, b, i in zip(packed, by_row, range(len(rows)), strict=True):
        assert (a.ts + 100, a.step, a.layer, a.head, a.kv_bytes, a.kept_tokens, a.seen_tokens, a.instance_id) == (
            b.ts, b.step, b.layer, b.head, b.kv_bytes, b.kept_tokens, b.seen_tokens, b.instance_id)
        assert a.entropy == rows[i]["entropy"] and a.run_id is None and a.gini is None


def test_a_copy_mixes_packed_and_row_by_row_chunks(store, inst, monkeypatch):
    """PostgreSQL sends a batch in chunks: packed ones and row-by-row ones (here a NaN) share one COPY stream,
    and an out-of-range value in a later chunk fails the whole batch."""
    if store.backend_name != "postgresql":
        pytest.skip("binary COPY is PostgreSQL's")
    from kvpilot.storage.backends import pgcopy

    monkeypatch.setattr(pgcopy, "CHUNK_ROWS", 4)
    rows = _layer_rows(3)  # 18 rows: chunks of 4
    rows[9] = dict(rows[9], entropy=math.nan)
    assert store.add_layer_stats(rows, instance_id=inst.id) == len(rows)
    stored = store.layer_stats_window(instance_id=inst.id, since=T0, level="all")
    assert sorted((r.step, r.layer, r.head) for r in stored) == sorted((r["step"], r["layer"], r["head"]) for r in rows)
    assert sum(r.entropy is None for r in stored) == 1
    bad = [dict(r, ts=T0 + 50) for r in rows]
    bad[-1] = dict(bad[-1], step=2**40)
    with pytest.raises(StoreError, match="out of range"):
        store.add_layer_stats(bad, instance_id=inst.id)
    assert store.counts()["layer_stats"] == len(rows)
