"""The eviction lineage table on SQLite and PostgreSQL: written by `add_lineage`, listed by scope with the
shadow probe's fidelity of the same request, read back whole; bad rows refused."""

from __future__ import annotations

import time

import pytest

from kvpilot.storage import NotFoundError, Scope, StoreError

CONTEXT = "Alice lives in Paris. The code is 4417. Bob lives in Rome."
UNITS = [[0, 5, 0, 21, 1.0], [5, 11, 21, 39, 0.0], [11, 16, 39, 58, 0.75]]


def _add(store, key, *, deployment="chat", instance_id=None, ts=None, kept=0.58, units=UNITS):
    return store.add_lineage(request_key=key, kind="sentence", context=CONTEXT, context_tokens=16, kept_fraction=kept,
                             units=units, answers=[{"question": "What is the code?", "answer": "1234"}],
                             deployment=deployment, instance_id=instance_id, config={"policy": "snapkv",
                                                                                      "compression_ratio": 0.5},
                             config_version=3, ts=ts)


def test_lineage_round_trip_with_fidelity(store):
    inst = store.register_instance("chat", "e0")
    now = time.time()
    worse = _add(store, "k-worse", instance_id=inst.id, ts=now - 5)
    other = _add(store, "k-other", instance_id=inst.id, ts=now - 1, kept=0.9, units=[[0, 16, 0, 58, 0.9]])
    _add(store, "k-elsewhere", deployment="batch", ts=now)
    store.add_events([{"ts": now, "kind": "quality", "detail": {"request": "k-worse", "top1_agreement": 0.25,
                                                                "mean_kl": 1.5}},
                      {"ts": now, "kind": "quality", "detail": {"request": "k-worse", "top1_agreement": 0.75,
                                                                "mean_kl": 0.5}},
                      {"ts": now, "kind": "quality", "detail": {"top1_agreement": 1.0}}], instance_id=inst.id)

    listed = store.lineages(Scope("chat", window_s=3600))
    assert [s.id for s in listed] == [other, worse]  # newest first, the other deployment's left out
    by_id = {s.id: s for s in listed}
    assert by_id[worse].top1_agreement == pytest.approx(0.5) and by_id[worse].mean_kl == pytest.approx(1.0)
    assert by_id[other].top1_agreement is None
    s = by_id[worse]
    assert (s.deployment, s.instance_id, s.kind, s.context_tokens, s.config_version) == ("chat", inst.id, "sentence",
                                                                                          16, 3)
    assert (s.evicted_units, s.total_units, s.first_question) == (1, 3, "What is the code?")
    assert store.lineages(Scope("chat", instance_id=inst.id, window_s=3)) == [by_id[other]]  # the window

    info = store.lineage(worse)
    assert info.summary == s and info.context == CONTEXT
    assert [info.excerpt(u) for u in info.units] == ["Alice lives in Paris.", " The code is 4417.", " Bob lives in Rome."]
    assert [u.evicted for u in info.units] == [False, True, False]
    assert info.answers == [{"question": "What is the code?", "answer": "1234"}]
    assert store.lineage_for_request("k-worse").summary.id == worse
    assert store.lineage_for_request("nope") is None
    with pytest.raises(NotFoundError):
        store.lineage(10_000)


def test_bad_lineage_rows_are_refused(store):
    with pytest.raises(StoreError, match="kind"):
        store.add_lineage(request_key="k", kind="paragraph", context="x", context_tokens=1, kept_fraction=1.0,
                          units=[[0, 1, 0, 1, 1.0]])
    with pytest.raises(StoreError, match="outside the context"):
        store.add_lineage(request_key="k", kind="span", context="x", context_tokens=1, kept_fraction=1.0,
                          units=[[0, 1, 0, 5, 1.0]])
    with pytest.raises(StoreError, match="token_start"):
        store.add_lineage(request_key="k", kind="span", context="x", context_tokens=1, kept_fraction=1.0,
                          units=[[0, 1, 0]])
    assert store.lineages() == []


def test_prune_drops_old_lineage(store):
    now = time.time()
    _add(store, "old", ts=now - 7200)
    kept = _add(store, "new", ts=now - 60)
    assert store.prune(3600, now=now)["eviction_lineage"] == 1
    assert [s.id for s in store.lineages()] == [kept]
