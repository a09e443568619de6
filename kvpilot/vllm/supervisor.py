"""The supervisor: keep one vLLM server on its deployment's versioned VLLMConfig, and record its metrics.

Its KV events (blocks stored and removed, `kvpilot.vllm.events`) are recorded as cache events. It follows
the deployment with the same `ConfigWatcher` kvpilot engines use (poll, LISTEN on PostgreSQL,
acknowledgements, rollback by re-activating an older version). A new version is applied by a graceful
restart: checks that need no restart first (the KV cache must fit in the memory the machine has), then
drain in-flight requests, stop, start with the new arguments and wait for /health. A version the server
cannot start with is rejected with the reason from vLLM's log, and the previous arguments are started
again; one that fails the checks is rejected while the old server keeps serving untouched.
"""

from __future__ import annotations

import logging
import socket
import threading
from pathlib import Path
from typing import Any

import psutil

from kvpilot.engine.watcher import ConfigWatcher
from kvpilot.errors import KVPilotError
from kvpilot.storage.types import ConfigVersionInfo
from kvpilot.vllm.collector import Collector, bytes_per_token
from kvpilot.vllm.events import KVEventListener, events_config
from kvpilot.vllm.server import ServerStartError, VLLMServer, free_port
from kvpilot.vllm_config import VLLMConfig, VLLMConfigError

log = logging.getLogger(__name__)

GIB = 1 << 30
HEADROOM_GIB = 1  # the model, activations and the server itself, besides the KV cache


def check_fits(new: VLLMConfig, old: VLLMConfig | None, available_bytes: int | None = None) -> None:
    """Refuse a KV cache the machine cannot hold (VLLMConfigError), counting the memory the old server frees."""
    available = psutil.virtual_memory().available if available_bytes is None else available_bytes
    freed = old.kv_cache_gib * GIB if old is not None else 0
    need = (new.kv_cache_gib + HEADROOM_GIB) * GIB
    if need > available + freed:
        raise VLLMConfigError([
            f"kv_cache_gib={new.kv_cache_gib}: needs {need / GIB:.0f} GiB with the model, but only "
            f"{(available + freed) / GIB:.1f} GiB would be available on this machine"
        ])


def _parse_version(version: ConfigVersionInfo) -> VLLMConfig:
    return version.vllm_config()


class Supervisor:
    """Serve `deployment` with a vLLM server on `port`; `start()` returns once it is healthy."""

    def __init__(
        self,
        store: Any,
        deployment: str,
        model_dir: Path,
        *,
        instance: str | None = None,
        port: int | None = None,
        log_dir: Path,
        initial: VLLMConfig | None = None,
        scrape_s: float = 5.0,
        poll_s: float = 2.0,
        start_timeout_s: float = 600.0,
        drain_timeout_s: float = 60.0,
        telemetry: Any = None,
        python: Path | None = None,
        kv_events: bool = True,
    ):
        self.store = store
        self.deployment = deployment
        self.model_dir = Path(model_dir)
        self.port = port or free_port()
        self.instance = instance or f"vllm@{socket.gethostname()}:{self.port}"
        self.log_dir = Path(log_dir)
        self.start_timeout_s = start_timeout_s
        self.drain_timeout_s = drain_timeout_s
        self.python = python
        self.restarts = 0
        self._lock = threading.Lock()
        self.events_port = free_port() if kv_events else None  # the same port across restarts
        active = store.active_version(deployment)
        config = initial or VLLMConfig()
        if active is not None and active.is_vllm:
            try:
                config = active.vllm_config()
            except KVPilotError as exc:  # a corrupt row: the watcher rejects it; start on the fallback
                log.warning("%s: active version %s unusable (%s); starting on %s", deployment, active.version,
                            exc, "the given config" if initial else "vLLM defaults")
        self.server = self._server(config)
        self.collector = Collector(
            self.server.url, store, deployment, self.instance, interval_s=scrape_s, model_dir=self.model_dir,
            model=str(self.model_dir), telemetry=telemetry,
        )
        self.events: KVEventListener | None = None
        if self.events_port is not None:
            self.events = KVEventListener(
                f"tcp://127.0.0.1:{self.events_port}", self.collector.recorder,
                bytes_per_token=bytes_per_token(self.model_dir, {"cache_dtype": config.kv_cache_dtype}),
            )
        self.watcher = ConfigWatcher(
            store, deployment, self.instance, self.apply, poll_s=poll_s, model=str(self.model_dir),
            initial=config, parse=_parse_version,
        )

    @property
    def config(self) -> VLLMConfig:
        return self.server.config

    @property
    def url(self) -> str:
        return self.server.url

    def _server(self, config: VLLMConfig) -> VLLMServer:
        extra = ("--kv-events-config", events_config(self.events_port)) if self.events_port is not None else ()
        return VLLMServer(
            config, self.model_dir, self.port, self.log_dir / f"vllm-{self.port}.log", python=self.python,
            extra_args=extra,
        )

    # ----- lifecycle ----------------------------------------------------------------------------------

    def start(self) -> Supervisor:
        """Start the server, then the collector and the config watcher (which applies a newer version)."""
        self.server.start(self.start_timeout_s)
        self.collector.register()  # KV events may arrive before the first scrape: they need the instance
        self.collector.start()
        if self.events is not None:
            self.events.start()
        self.watcher.start()
        return self

    def stop(self) -> None:
        self.watcher.stop()
        if self.events is not None:
            self.events.stop()
        self.collector.stop()
        self.server.stop()

    def __enter__(self) -> Supervisor:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ----- applying a version (called by the watcher) ---------------------------------------------------

    def apply(self, config: VLLMConfig) -> None:
        """Restart on `config`, or raise VLLMConfigError (the watcher rejects the version with its reason)."""
        with self._lock:
            old = self.server
            if config == old.config:
                return
            check_fits(config, old.config)
            drained = old.drain(self.drain_timeout_s)
            if not drained:
                log.warning("%s: requests still in flight after %.0f s; restarting anyway", self.deployment,
                            self.drain_timeout_s)
            old.stop()
            self.collector.reset()
            new = self._server(config)
            try:
                new.start(self.start_timeout_s)
            except ServerStartError as exc:
                log.warning("%s: vLLM did not start on the new config; restarting the previous one", self.deployment)
                self.server = self._server(old.config).start(self.start_timeout_s)
                self.restarts += 2
                raise VLLMConfigError([f"vLLM did not start with it ({exc})"]) from None
            self.server = new
            self.restarts += 1


__all__ = ["HEADROOM_GIB", "Supervisor", "check_fits"]
