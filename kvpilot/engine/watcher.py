"""ConfigWatcher: the engine side of the control plane.

It polls the store for the deployment's active config version (and on PostgreSQL also LISTENs, so a push
arrives within milliseconds), hands a new version to the engine's `apply` callable, and records an
acknowledgement, or a rejection with the reason. The engine's config only changes through `apply`, so a
rejected or corrupt version leaves the last good config in force. A version already applied or already
rejected is never handed over again. Store outages are logged and retried; they never stop the engine.

A version can also validate, be applied, and then make every request fail. Whoever serves reports each
request's outcome (`request_succeeded()` / `request_failed()`, which `kvpilot.attach`'s `ProbeHandle.serve`
does); after `max_failures` failures in a row under a version other than the last good one (the last
version that served a request, or the engine's initial config), the watcher hands the last good config
back to `apply`, records the bad version as rejected (an ack and a `config_rejected` event whose detail
says `rolled_back`, the version restored, the failure count and the last error), and never applies it
again; a newer push is applied as usual.

A deployment can also run a canary (`kvpilot push --canary F`, `kvpilot.storage.canary`): a version served
to a fraction F of requests next to the active one (the incumbent). Each poll also reads the running
canary; the watcher rehearses its config with `prepare` (the engine's dry run) and then `choose()` picks,
per request, the canary with probability F (a random stream seeded by the canary's seed and the instance
name, so a run is reproducible) or the incumbent, and says which version serves it. The canary's config
is never handed to `apply`: the caller serves that request with it (`ProbeHandle.serve`). A canary that
fails to prepare, or fails `max_failures` requests in a row, is dropped here and recorded as rejected
(ack and `config_rejected` event with `canary`); the control plane (`kvpilot.evaluation.canary`) promotes
or rolls it back for every engine. A canary is served only while the engine runs its incumbent.

No torch here: the watcher only knows `apply(KVConfig)`, which raises KVConfigError to reject. A process
that applies another kind of versioned document (the vLLM supervisor's VLLMConfig) passes `parse`, which
reads its kind from a stored version.
"""

from __future__ import annotations

import logging
import random
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
    status: str  # applied | rejected | rolled_back
    reason: str | None = None


@dataclass
class CanaryArm:
    """The canary this engine serves: its id and version, parsed config, share of requests and random stream."""

    id: int
    version: int
    config: Any
    fraction: float
    rng: random.Random
    failures: int = 0


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
        max_failures: int = 3,
        prepare: Callable[[Any], None] | None = None,
    ):
        if max_failures < 1:
            raise ValueError(f"max_failures must be at least 1, got {max_failures}")
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
        self._pending: list[tuple[int, str, str | None, dict | None]] = []  # acks the store could not take yet
        self.max_failures = max_failures
        self._failures = 0  # requests failed in a row under the version in force
        self._good: tuple[int | None, Any] = (None, initial)  # the last version that served
        self._last_heartbeat = 0.0
        self.store_errors = 0
        self.last_result: CheckResult | None = None
        self._prepare = prepare  # rehearses a canary's config (raises to refuse it); None: parse only
        self._canary: CanaryArm | None = None
        self._refused_canaries: set[int] = set()

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

    @property
    def canary(self) -> CanaryArm | None:
        """The canary served next to the version in force, or None."""
        return self._canary

    def check_once(self) -> CheckResult | None:
        """Look for a new active version and apply it; None when there is nothing new (or the store is down).
        Then pick up, keep or drop the deployment's canary."""
        with self._lock:
            errors = self.store_errors
            result = self._check_active()
            if self.store_errors == errors:  # the store answered: one failure per check, one wait on a dead one
                self._check_canary()
            return result

    def _check_active(self) -> CheckResult | None:
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

    # ----- canary ---------------------------------------------------------------------------------------

    def _check_canary(self) -> None:
        try:  # a lazily opened store reaches the database to look the method up
            reader = getattr(self.store, "active_canary", None)  # None: a store without canaries (stand-ins)
            if reader is None:
                return
            info = reader(self.deployment)
        except KVPilotError as exc:
            self._store_failed("read the canary", exc)
            return
        if info is None or info.baseline_version != self._applied_version or info.config is None:
            if self._canary is not None:
                log.info("%s/%s: no longer serving canary version %s", self.deployment, self.instance_name,
                         self._canary.version)
                self._canary = None
            return
        if (self._canary is not None and self._canary.id == info.id) or info.id in self._refused_canaries:
            return
        reason = None
        try:
            cfg = self._parse(info.config)
            if self._prepare is not None:
                self._prepare(cfg)
        except KVConfigError as exc:
            reason = "; ".join(exc.problems)
        except Exception as exc:  # CorruptConfigError, or the dry run failed: the engine keeps serving
            reason = f"{type(exc).__name__}: {exc}"
        detail = {"canary": True, "fraction": info.fraction, "baseline_version": info.baseline_version}
        if reason is not None:
            self._refused_canaries.add(info.id)
            log.warning("%s/%s: refused canary version %s: %s", self.deployment, self.instance_name, info.version,
                        reason)
            self._pending.append((info.version, "rejected", f"canary: {reason}", detail))
        else:
            rng = random.Random(f"{info.seed}:{self.instance_name}")
            self._canary = CanaryArm(info.id, info.version, cfg, info.fraction, rng)
            log.info("%s/%s: serving canary version %s on %.0f%% of requests", self.deployment, self.instance_name,
                     info.version, 100 * info.fraction)
            self._pending.append((info.version, "canary", None, detail))
        try:
            self._flush_pending()
        except KVPilotError as exc:
            self._store_failed("record the canary", exc)

    def choose(self) -> tuple[int | None, Any]:
        """Which version serves the next request: (canary version, canary config) for a `fraction` of
        requests while a canary runs, else (version in force, None: the engine's own config)."""
        with self._lock:
            c = self._canary
            if c is not None and c.rng.random() < c.fraction:
                return c.version, c.config
            return self._applied_version, None

    # ----- request outcomes and rollback ----------------------------------------------------------------

    def request_succeeded(self, version: int | None = None) -> None:
        """A request served under the config in force (or under the canary, when `version` is the canary's):
        that version is now the last good one."""
        with self._lock:
            if self._is_canary(version):
                assert self._canary is not None
                self._canary.failures = 0
                return
            self._failures = 0
            self._good = (self._applied_version, self._config)

    def _is_canary(self, version: int | None) -> bool:
        return version is not None and self._canary is not None and version == self._canary.version \
            and version != self._applied_version

    def request_failed(self, error: BaseException | str, version: int | None = None) -> CheckResult | None:
        """A request failed under the config in force; the `max_failures`-th in a row under a version that
        never served rolls it back to the last good config (returns that result, else None). With the
        canary's `version`, the `max_failures`-th failure in a row drops the canary on this engine."""
        with self._lock:
            if self._is_canary(version):
                return self._canary_failed(error)
            self._failures += 1
            bad = self._applied_version
            good_version, good = self._good
            if self._failures < self.max_failures or bad is None or bad == good_version or good is None:
                return None
            last = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
            target = "the initial config" if good_version is None else f"version {good_version}"
            reason = f"rolled back to {target}: {self._failures} requests failed in a row; last error: {last}"
            try:
                self._apply(good)
            except Exception:  # the last good config no longer applies: keep the bad one and say so
                log.exception("%s/%s: cannot roll back to %s", self.deployment, self.instance_name, target)
                return None
            detail = {"rolled_back": True, "to_version": good_version, "failures": self._failures, "error": last}
            self._applied_version, self._config = good_version, good
            self._failures = 0
            self._rejected[bad] = reason
            log.warning("%s/%s: version %s %s", self.deployment, self.instance_name, bad, reason)
            self._pending.append((bad, "rejected", reason, detail))
            if good_version is not None:
                self._pending.append((good_version, "applied", None, {"restored": True, "from_version": bad}))
            try:
                self._flush_pending()
            except KVPilotError as exc:
                self._store_failed("record the rollback", exc)
            self.last_result = CheckResult(bad, "rolled_back", reason)
            return self.last_result

    def _canary_failed(self, error: BaseException | str) -> CheckResult | None:
        c = self._canary
        assert c is not None
        c.failures += 1
        if c.failures < self.max_failures:
            return None
        last = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
        reason = f"canary dropped: {c.failures} requests failed in a row; last error: {last}"
        self._canary = None
        self._refused_canaries.add(c.id)
        self._rejected[c.version] = reason
        log.warning("%s/%s: canary version %s %s", self.deployment, self.instance_name, c.version, reason)
        self._pending.append((c.version, "rejected", reason, {"canary": True, "rolled_back": True,
                                                              "failures": c.failures, "error": last}))
        try:
            self._flush_pending()
        except KVPilotError as exc:
            self._store_failed("record the canary's rejection", exc)
        self.last_result = CheckResult(c.version, "rolled_back", reason)
        return self.last_result

    def _finish(self, version: int, status: str, reason: str | None, cfg: Any = None) -> CheckResult:
        if status == "applied":
            self._applied_version, self._config = version, cfg
            self._failures = 0
            log.info("%s/%s: applied config version %s", self.deployment, self.instance_name, version)
        else:
            self._rejected[version] = reason or ""
            log.warning("%s/%s: rejected config version %s: %s", self.deployment, self.instance_name, version, reason)
        self._pending.append((version, status, reason, None))
        try:
            self._flush_pending()
        except KVPilotError as exc:
            self._store_failed("record the acknowledgement", exc)
        self.last_result = CheckResult(version, status, reason)
        return self.last_result

    def _flush_pending(self) -> None:
        while self._pending and self._instance_id is not None:
            version, status, reason, extra = self._pending[0]
            if status != "canary":  # a canary taken up is an event only: the instance's version is unchanged
                self.store.ack(self._instance_id, version, status, reason)
            kind = "config_rejected" if status == "rejected" else "config_applied"
            detail = {"version": version, "deployment": self.deployment, "reason": reason, **(extra or {})}
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
