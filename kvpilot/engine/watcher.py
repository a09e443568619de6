"""ConfigWatcher: the engine side of the control plane.

It polls the store for the deployment's active config version (and on PostgreSQL also LISTENs, so a push
arrives within milliseconds), hands a new version to the engine's `apply` callable, and records an
acknowledgement, or a rejection with the reason. The engine's config only changes through `apply`, so a
rejected or corrupt version leaves the last good config in force. A version already applied or already
rejected is never handed over again. Store outages are logged and retried; they never stop the engine.

No torch here: the watcher only knows `apply(KVConfig)`, which raises KVConfigError to reject. A process
that applies another kind of versioned document (the vLLM supervisor's VLLMConfig) passes `parse`, which
reads its kind from a stored version.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from kvpilot.config import KVConfigError
from kvpilot.errors import KVPilotError

if TYPE_CHECKING:
    from kvpilot.storage.protocols import ConfigSource
    from kvpilot.storage.types import ConfigVersionInfo

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CheckResult:
    """What one check did with a new version."""

    version: int
    status: str  # applied | rejected
    reason: str | None = None


class ConfigWatcher:
    """Keep one engine instance on its deployment's active config.

    Use `start()` for a background thread, or call `check_once()` at request boundaries, or both.
    """

    def __init__(
        self,
        store: ConfigSource,
        deployment: str,
        instance_name: str,
        apply: Callable[[Any], None],
        *,
        poll_s: float = 2.0,
        heartbeat_s: float | None = None,
        listen: bool = True,
        model: str | None = None,
        initial: Any = None,
        parse: Callable[[ConfigVersionInfo], Any] | None = None,
    ):
        self.store = store
        self.deployment = deployment
        self.instance_name = instance_name
        self.poll_s = poll_s
        self.heartbeat_s = poll_s if heartbeat_s is None else heartbeat_s
        self.model = model
        self._apply = apply
        self._parse: Callable[[ConfigVersionInfo], Any] = parse or (lambda v: v.config())
        self._listen = listen
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._instance_id: int | None = None
        self._applied_version: int | None = None
        self._config: Any = initial
        self._rejected: dict[int, str] = {}
        self._pending: list[tuple[int, str, str | None]] = []  # acks the store could not take yet
        self._last_heartbeat = 0.0
        self.store_errors = 0
        self.last_result: CheckResult | None = None

    # ----- state ---------------------------------------------------------------------------------------

    @property
    def instance_id(self) -> int | None:
        return self._instance_id

    @property
    def version(self) -> int | None:
        """The version in force (last applied), or None before the first."""
        return self._applied_version

    @property
    def config(self) -> Any:
        """The last config handed to `apply` successfully (or `initial`): a KVConfig unless `parse` says."""
        return self._config

    @property
    def rejected(self) -> dict[int, str]:
        """Versions refused so far, with the reasons."""
        return dict(self._rejected)

    # ----- the check -----------------------------------------------------------------------------------

    def check_once(self) -> CheckResult | None:
        """Look for a new active version and apply it; None when there is nothing new (or the store is down)."""
        with self._lock:
            try:
                self._ensure_registered()
                self._flush_pending()
                active = self.store.active_version(self.deployment)
            except KVPilotError as exc:
                self._store_failed("read the active config", exc)
                return None
            if active is None or active.version == self._applied_version or active.version in self._rejected:
                return None
            try:
                cfg = self._parse(active)
            except KVPilotError as exc:  # CorruptConfigError: a stored row that no longer parses
                return self._finish(active.version, "rejected", str(exc))
            if cfg == self._config:
                return self._finish(active.version, "applied", None, cfg)  # same content: nothing to rebuild
            try:
                self._apply(cfg)
            except KVConfigError as exc:
                return self._finish(active.version, "rejected", "; ".join(exc.problems))
            except Exception as exc:  # the engine failed; it must keep serving on the old config
                log.exception("apply() failed for %s version %s", self.deployment, active.version)
                return self._finish(active.version, "rejected", f"{type(exc).__name__}: {exc}")
            return self._finish(active.version, "applied", None, cfg)

    def _finish(self, version: int, status: str, reason: str | None, cfg: Any = None) -> CheckResult:
        if status == "applied":
            self._applied_version, self._config = version, cfg
            log.info("%s/%s: applied config version %s", self.deployment, self.instance_name, version)
        else:
            self._rejected[version] = reason or ""
            log.warning("%s/%s: rejected config version %s: %s", self.deployment, self.instance_name, version, reason)
        self._pending.append((version, status, reason))
        try:
            self._flush_pending()
        except KVPilotError as exc:
            self._store_failed("record the acknowledgement", exc)
        self.last_result = CheckResult(version, status, reason)
        return self.last_result

    def _flush_pending(self) -> None:
        while self._pending and self._instance_id is not None:
            version, status, reason = self._pending[0]
            self.store.ack(self._instance_id, version, status, reason)
            kind = "config_applied" if status == "applied" else "config_rejected"
            detail = {"version": version, "deployment": self.deployment, "reason": reason}
            self.store.add_events([{"kind": kind, "detail": detail}], instance_id=self._instance_id)
            self._pending.pop(0)

    def _ensure_registered(self) -> None:
        if self._instance_id is None:
            info = self.store.register_instance(self.deployment, self.instance_name, model=self.model)
            self._instance_id = info.id
            self._last_heartbeat = time.time()

    def _store_failed(self, what: str, exc: Exception) -> None:
        self.store_errors += 1
        log.warning("%s/%s: cannot %s: %s", self.deployment, self.instance_name, what, exc)

    def heartbeat(self) -> None:
        """Tell the store this instance is alive and which version it runs."""
        with self._lock:
            try:
                self._ensure_registered()
                assert self._instance_id is not None
                self.store.heartbeat(self._instance_id, config_version=self._applied_version)
                self._last_heartbeat = time.time()
            except KVPilotError as exc:
                self._store_failed("send a heartbeat", exc)

    # ----- the background thread ---------------------------------------------------------------------

    def start(self) -> ConfigWatcher:
        """Check once now, then keep checking every `poll_s` seconds in a daemon thread."""
        if self._thread is not None:
            return self
        self._stop.clear()
        self.check_once()
        self._thread = threading.Thread(target=self._run, name=f"kvpilot-watcher-{self.instance_name}", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def __enter__(self) -> ConfigWatcher:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self) -> None:
        listener = self._open_listener()
        try:
            while not self._stop.is_set():
                self._wait(listener)
                if self._stop.is_set():
                    break
                self.check_once()
                if time.time() - self._last_heartbeat >= self.heartbeat_s:
                    self.heartbeat()
        except Exception:  # never let the thread die silently; the engine keeps its config
            log.exception("config watcher for %s/%s stopped", self.deployment, self.instance_name)
        finally:
            if listener is not None:
                listener.close()

    def _open_listener(self):
        if not self._listen:
            return None
        try:
            return self.store.config_listener()
        except Exception as exc:  # LISTEN is an optimisation; polling still works
            log.info("config watcher: no LISTEN/NOTIFY (%s); polling every %s s", exc, self.poll_s)
            return None

    def _wait(self, listener) -> None:
        if listener is None:
            self._stop.wait(self.poll_s)
            return
        deadline = time.monotonic() + self.poll_s
        while not self._stop.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return
            try:
                if listener.wait(min(left, 0.5)):
                    return
            except Exception as exc:
                log.info("config watcher: LISTEN connection lost (%s); polling", exc)
                self._stop.wait(left)
                return
