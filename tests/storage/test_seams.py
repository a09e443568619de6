"""The store's seams: Store satisfies the Protocols, backends come from a registry with metadata, each sample
table is one declaration from which the SQL table, writers, readers and the OpenTelemetry mapping derive."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest

from kvpilot.storage import (
    BACKENDS,
    SAMPLES,
    BackendSpec,
    BadDatabaseURLError,
    ConfigSource,
    RunRecorder,
    SampleSink,
    Scope,
    Store,
    StoreError,
    register_backend,
)
from kvpilot.storage.backends.sqlite import SQLiteBackend
from kvpilot.storage.protocols import SINK_WRITERS
from kvpilot.storage.schema import LAYER_STATS, REQUESTS


def test_store_satisfies_every_seam(store):
    assert isinstance(store, SampleSink) and isinstance(store, ConfigSource) and isinstance(store, RunRecorder)
    run = store.start_run("eval", name="seam")
    store.finish_run(run, metrics={"accuracy": 1.0})
    assert store.get_run(run).metrics == {"accuracy": 1.0}


def test_a_test_double_needs_only_its_seam():
    class Sink:
        def add_layer_stats(self, rows, **kw): return 0
        def add_requests(self, rows, **kw): return 0
        def add_memory_samples(self, rows, **kw): return 0
        def add_events(self, rows, **kw): return 0
        def add_vllm_samples(self, rows, **kw): return 0

    assert isinstance(Sink(), SampleSink) and not isinstance(Sink(), RunRecorder)
    assert not isinstance(object(), SampleSink)


def test_every_sample_table_has_a_sink_writer_in_order():
    assert list(SINK_WRITERS) == list(SAMPLES)


def test_protocols_import_no_sqlalchemy():
    code = ("import sys, kvpilot.storage.protocols; "
            "assert 'sqlalchemy' not in sys.modules and 'torch' not in sys.modules, sorted(sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_backends_carry_metadata_and_open_dispatches_on_the_scheme(tmp_path):
    assert {"sqlite", "postgresql"} <= set(BACKENDS)
    assert BACKENDS["postgresql"].schemes == ("postgresql", "postgres")
    assert all(b.description and b.url_form and b.load() for b in BACKENDS.values())
    with Store.open(f"sqlite:///{tmp_path / 'a.db'}") as s:
        assert s.backend_name == "sqlite"
    with pytest.raises(ValueError, match="already"):
        register_backend(BACKENDS["sqlite"])


class ThrowawayBackend(SQLiteBackend):
    """SQLite under another URL scheme: what a new backend module looks like, minus a new database."""

    name = "throwaway"

    @classmethod
    def check_url(cls, url):
        return super().check_url(url).set(drivername="throwaway")

    def create_engine(self, url, **kw):
        return super().create_engine(url.set(drivername="sqlite"), **kw)


def test_a_new_backend_is_one_class_and_one_registry_line(tmp_path):
    register_backend(BackendSpec("throwaway", ("throwaway",), "throwaway:///PATH", "a test backend",
                                 f"{__name__}:ThrowawayBackend"))
    try:
        with Store.open(f"throwaway:///{tmp_path / 't.db'}") as s:
            inst = s.register_instance("d", "e")
            assert s.add_layer_stats([{"layer": 0, "entropy": 0.5}], instance_id=inst.id) == 1
            assert s.backend_name == "throwaway" and s.counts(deployment="d")["layer_stats"] == 1
    finally:
        del BACKENDS["throwaway"]
    with pytest.raises(BadDatabaseURLError, match="unsupported database URL scheme"):
        Store.open(f"throwaway:///{tmp_path / 't.db'}")


def test_one_declaration_per_sample_table():
    for name, spec in SAMPLES.items():
        fields = [f.name for f in dataclasses.fields(spec.record)]
        assert [c.name for c in spec.table.columns] == fields  # the SQL table is the record's fields
        assert spec.writable == tuple(fields[1:])  # writers take every column but the id
        assert spec.table.name == name
    assert LAYER_STATS.names(group="skew") == ("entropy", "retained_mass", "tokens_90", "sink_mass", "recent_mass",
                                               "gini")
    assert set(LAYER_STATS.names(metric=True)) == {*LAYER_STATS.names(group="skew"), "kv_bytes", "kept_tokens",
                                                   "seen_tokens"}
    otel = dict(REQUESTS.instruments())
    assert otel["ttft_s"].name == "gen_ai.server.time_to_first_token" and otel["ttft_s"].unit == "s"
    assert dict(otel["output_tokens"].attributes) == {"gen_ai.token.type": "output"}
    assert not otel["tpot_s"].when({"output_tokens": 1}) and otel["tpot_s"].when({"output_tokens": 2})


def test_readers_take_one_scope_or_its_fields(store):
    inst = store.register_instance("chat", "e0")
    store.add_requests([{"ts": 1000.0 + i, "ttft_s": 0.1} for i in range(4)], instance_id=inst.id)
    by_scope = store.requests_series(Scope("chat", window_s=None, since=1001.0), bucket_s=10)
    by_fields = store.requests_series(deployment="chat", since=1001.0, bucket_s=10)
    assert by_scope == by_fields and by_scope[0].requests == 3
    assert store.request_totals(Scope("chat", window_s=None)).requests == 4
    assert store.request_totals(Scope(None, window_s=None)).requests == 0  # aggregates need an owner
    with pytest.raises(StoreError, match="not both"):
        store.requests_series(Scope("chat"), deployment="chat")


def test_package_exports_resolve():
    import kvpilot.storage as storage

    assert set(storage.__all__) == set(storage._EXPORTS)
    assert all(getattr(storage, name) is not None for name in storage.__all__)
