"""The config registry: validated pushes, versions, diff, activate, undo-stack rollback, acks, corrupt rows."""

from __future__ import annotations

import threading
import time

import pytest

from kvpilot.config import KVConfig, KVConfigError
from kvpilot.storage import CorruptConfigError, NotFoundError, RegistryError

A = {"policy": "snapkv", "compression_ratio": 0.5}
B = {"policy": "h2o", "budget": 128, "window": 32}
C = {"policy": "streaming", "budget": 64}


def test_push_validates_before_storing(store):
    with pytest.raises(KVConfigError, match="pooling_kernel"):
        store.push("chat", {"policy": "snapkv", "pooling_kernel": 4})
    with pytest.raises(KVConfigError, match="not valid JSON"):
        store.push("chat", "{oops")
    assert store.active_version("chat") is None
    v = store.push("chat", KVConfig.parse(A), pushed_by="alice", source="user:alice")
    assert (v.version, v.active, v.pushed_by, v.source, v.parent_version) == (1, True, "alice", "user:alice", None)
    assert store.list_versions("chat")[0].config() == KVConfig.parse(A)


def test_versions_show_diff(store):
    store.push("chat", A)
    store.push("chat", B, source="tuner:study/7")
    staged = store.push("chat", C, activate=False)
    assert staged.version == 3 and not staged.active and staged.parent_version == 2
    assert [(v.version, v.active) for v in store.list_versions("chat")] == [(1, False), (2, True), (3, False)]
    assert store.get_version("chat").version == 2
    assert store.get_version("chat", 1).config().policy == "snapkv"
    changes = {c.field: (c.old, c.new) for c in store.diff("chat", 1, 2)}
    assert changes == {
        "policy": ("snapkv", "h2o"),
        "budget": (None, 128),
        "compression_ratio": (0.5, None),
        "window": (16, 32),
    }
    assert store.diff("chat", 2, 2) == []
    with pytest.raises(NotFoundError, match="no config version 9"):
        store.get_version("chat", 9)
    with pytest.raises(NotFoundError, match="no deployment named 'nope'"):
        store.list_versions("nope")


def test_rollback_walks_the_activation_history(store):
    for cfg in (A, B, C):
        store.push("chat", cfg)
    assert store.rollback("chat", by="bob").version == 2
    assert store.rollback("chat").version == 1
    with pytest.raises(RegistryError, match="no earlier active version"):
        store.rollback("chat")
    store.activate("chat", 3)
    store.activate("chat", 1)
    assert store.rollback("chat").version == 3  # undo the last activation
    assert store.active_version("chat").version == 3
    assert [a.action for a in store.activations("chat")][-3:] == ["activate", "activate", "rollback"]
    store.activate("chat", 3)  # already active: no new history entry
    assert len(store.activations("chat")) == 8


def test_acks_mark_the_version_in_force(store):
    inst = store.register_instance("chat", "e0")
    store.push("chat", A)
    store.push("chat", B)
    store.ack(inst.id, 1, "applied")
    store.ack(inst.id, 2, "rejected", "layer_budgets has 3 entries; the model has 30 layers")
    acks = store.acks("chat")
    assert [(a.version, a.status, a.instance) for a in acks] == [(2, "rejected", "e0"), (1, "applied", "e0")]
    assert "30 layers" in acks[0].reason
    assert store.instance(inst.id).config_version == 1
    assert [a.version for a in store.acks("chat", version=1)] == [1]


def _corrupt(store, deployment: str, version: int, text: str) -> None:
    with store.engine.begin() as conn:
        conn.exec_driver_sql(
            "UPDATE config_versions SET config = '" + text.replace("'", "''") + "' WHERE version = " + str(version)
            + " AND deployment_id = (SELECT id FROM deployments WHERE name = '" + deployment + "')"
        )


@pytest.mark.parametrize("text", ["{not json", '{"policy": "bogus"}', "[1, 2]"])
def test_corrupt_row_gives_a_clear_error(store, text):
    store.push("chat", A)
    store.push("chat", B)
    _corrupt(store, "chat", 1, text)
    v = store.get_version("chat", 1)  # reading the row itself works
    with pytest.raises(CorruptConfigError) as err:
        v.config()
    assert "version 1" in str(err.value) and "kvpilot push" in str(err.value)
    if not text.startswith("{\""):  # not a JSON object at all: nothing to compare
        with pytest.raises(CorruptConfigError):
            store.diff("chat", 1, 2)
    else:  # a JSON object with a bad value: the diff still shows it
        assert {c.field for c in store.diff("chat", 1, 2)} >= {"policy"}
    with pytest.raises(CorruptConfigError):
        store.rollback("chat")
    assert store.active_version("chat").version == 2


@pytest.mark.postgres
def test_listen_notify_wakes_a_listener(store):
    listener = store.config_listener()
    if listener is None:
        pytest.skip("this backend has no notifications")
    try:
        assert listener.wait(0.05) is False
        t = threading.Timer(0.2, lambda: store.push("chat", A))
        t.start()
        start = time.monotonic()
        assert listener.wait(5.0) is True
        assert time.monotonic() - start < 3.0
        t.join()
    finally:
        listener.close()
