"""The vLLM integration suite's server: one supervised vLLM server on the bundled model per session.

Skipped, with the reason, when the vLLM environment (`make vllm-env`) is absent. The server's store is a
SQLite file; the registry's PostgreSQL side is covered by test_config_and_metrics.py.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from kvpilot.storage import Store


def vllm_or_skip() -> Any:
    from kvpilot.vllm.server import VLLMUnavailableError, vllm_python

    try:
        return vllm_python()
    except VLLMUnavailableError as exc:
        pytest.skip(f"vLLM integration suite skipped: {exc}")


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, step: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


@pytest.fixture(scope="session")
def model_dir() -> Any:
    from kvpilot.engine.model import converted_bundled_dir

    return converted_bundled_dir()


@pytest.fixture(scope="session")
def supervised(tmp_path_factory, model_dir) -> Iterator[Any]:
    """(supervisor, store): deployment `chat-vllm`, first version vLLM's defaults with a 1 GiB KV cache."""
    python = vllm_or_skip()
    from kvpilot.vllm.supervisor import Supervisor
    from kvpilot.vllm_config import VLLMConfig

    root = tmp_path_factory.mktemp("vllm")
    store = Store.open(f"sqlite:///{root / 'kvpilot.db'}")
    store.push("chat-vllm", VLLMConfig(kv_cache_gib=1), pushed_by="test", source="test")
    sup = Supervisor(store, "chat-vllm", model_dir, log_dir=root / "logs", scrape_s=1.0, poll_s=0.5,
                     python=python, drain_timeout_s=30)
    sup.start()
    try:
        yield sup, store
    finally:
        sup.stop()
        store.close()
