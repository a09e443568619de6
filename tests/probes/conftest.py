"""Probe fixtures: an Engine on the tiny random model (a stub tokenizer; no EOS, so answers have a fixed
length), a store on a temporary SQLite file, and a store wrapper that can be taken down and brought back."""

from __future__ import annotations

import threading

import pytest

from kvpilot.config import KVConfig
from kvpilot.storage import DatabaseUnavailableError, Store


class StubTokenizer:
    """Just enough of a tokenizer for Engine.run on token ids."""

    eos_token_id = None
    unk_token_id = 0

    def convert_tokens_to_ids(self, token: str) -> int:
        return 0

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        return " ".join(str(i) for i in ids)


@pytest.fixture
def tiny_engine(tiny_model):
    from kvpilot.engine import Engine

    engine = Engine(tiny_model, StubTokenizer(), KVConfig(policy="snapkv", compression_ratio=0.5, decode_interval=4))
    yield engine
    engine.observer = None
    engine.request_hooks.clear()


@pytest.fixture
def sqlite_url(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'probe.db'}"


@pytest.fixture
def store(sqlite_url):
    s = Store.open(sqlite_url)
    yield s
    s.close()


class FlakyStore:
    """Forwards to a real Store; while `down` is set every call raises DatabaseUnavailableError."""

    def __init__(self, store: Store):
        self._store = store
        self.down = threading.Event()
        self.calls_while_down = 0

    def __getattr__(self, name):
        attr = getattr(self._store, name)
        if not callable(attr):
            return attr

        def call(*args, **kwargs):
            if self.down.is_set():
                self.calls_while_down += 1
                raise DatabaseUnavailableError("simulated outage: PostgreSQL is not answering")
            return attr(*args, **kwargs)

        return call

    # the sample writers, spelled out so the wrapper is a `SampleSink` on every Python (a runtime protocol
    # check on 3.12+ reads class attributes only, not __getattr__)
    def add_layer_stats(self, *a, **k):
        return self.__getattr__("add_layer_stats")(*a, **k)

    def add_requests(self, *a, **k):
        return self.__getattr__("add_requests")(*a, **k)

    def add_memory_samples(self, *a, **k):
        return self.__getattr__("add_memory_samples")(*a, **k)

    def add_events(self, *a, **k):
        return self.__getattr__("add_events")(*a, **k)

    def add_vllm_samples(self, *a, **k):
        return self.__getattr__("add_vllm_samples")(*a, **k)


@pytest.fixture
def flaky(store):
    return FlakyStore(store)


def ids(n: int, start: int = 1) -> list[int]:
    """Deterministic token ids inside the tiny model's vocabulary."""
    return [(start + 7 * i) % 120 + 1 for i in range(n)]
