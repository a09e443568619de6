"""`kvpilot.attach`: put the probes, the recorder and the config watcher on a model or an Engine.

    import kvpilot
    handle = kvpilot.attach(engine, store="postgresql+psycopg://kv@db/kv", deployment="chat")
    ...serve with engine.answer(...) / engine.run(...) as usual...
    handle.detach()

Nothing here may stop inference: an unreachable database at attach time, during serving or at detach
only means samples are spooled to a local file and replayed later (see `kvpilot.probes.recorder`).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from kvpilot.errors import KVPilotError
from kvpilot.paths import kvpilot_home
from kvpilot.probes.base import SERVING_VERSION, SamplingPolicy

if TYPE_CHECKING:  # loaded by attach() itself, so `import kvpilot` stays light (no torch, SQLAlchemy, OpenTelemetry)
    from typing import Protocol

    from kvpilot.engine import Engine
    from kvpilot.engine.watcher import ConfigWatcher
    from kvpilot.probes.observer import ProbeSet
    from kvpilot.probes.otel import Telemetry
    from kvpilot.probes.recorder import Recorder
    from kvpilot.storage.protocols import ConfigSource, RunRecorder, SampleSink

    class AttachStore(SampleSink, ConfigSource, RunRecorder, Protocol):
        """What attach uses of a store: the recorder's sink, the watcher's config source, runs, and close."""

        def close(self) -> None: ...

log = logging.getLogger(__name__)

# what this process has already reported unavailable, as (store URL, deployment, probe, reason): a missing GPU
# is one `probe_unavailable` event per process, store and deployment, not one per attach (the demo attaches
# once per compared policy, and a CPU-only engine's reason is the same every time)
_SAID_UNAVAILABLE: set[tuple[str, str, str, str]] = set()
_SAID_LOCK = threading.Lock()


def _first_time_unavailable(store: Any, deployment: str, probe: str, reason: str) -> bool:
    """True the first time this process reports `probe` unavailable for `reason` to `store` and `deployment`."""
    where = "" if store is None else str(getattr(store, "url", None) or id(store))
    key = (where, deployment, probe, reason)
    with _SAID_LOCK:
        if key in _SAID_UNAVAILABLE:
            return False
        _SAID_UNAVAILABLE.add(key)
        return True


class LazyStore:
    """A Store opened on first use and re-tried every ``retry_s`` while the database is unreachable.

    Every call made while it is closed raises DatabaseUnavailableError, which the recorder (spool) and
    the config watcher (retry) already handle, so an engine can start while its database is down.
    """

    def __init__(self, url: Any, retry_s: float = 5.0):
        from kvpilot.storage.url import describe, resolve_url

        self.url = url
        self.shown = describe(resolve_url(url))  # password hidden
        self.retry_s = retry_s
        self._store: Any = None
        self._next_try = 0.0
        self._lock = threading.Lock()
        self.last_error: Exception | None = None

    def _get(self) -> Any:
        from kvpilot.storage import DatabaseUnavailableError, Store

        with self._lock:
            if self._store is not None:
                return self._store
            if time.monotonic() < self._next_try:
                raise DatabaseUnavailableError(f"database {self.shown} unreachable ({self.last_error}); will retry")
            try:
                self._store = Store.open(self.url)
            except DatabaseUnavailableError as exc:
                self.last_error = exc
                self._next_try = time.monotonic() + self.retry_s
                raise
            return self._store

    def __getattr__(self, name: str) -> Any:
        return getattr(self._get(), name)

    def close(self) -> None:
        if self._store is not None:
            self._store.close()


def _open_store(store: Any) -> tuple[AttachStore | None, bool]:
    """(store, owned): a store passes through; a URL is opened now, or lazily if the database is down."""
    # LazyStore before the protocol check, which reads attributes (and so would try the database now)
    if store is None or isinstance(store, LazyStore):
        return store, False
    from kvpilot.storage.protocols import SampleSink

    if isinstance(store, SampleSink):  # a Store, or a stand-in with the sink's methods
        return cast("AttachStore", store), False
    from kvpilot.storage import DatabaseUnavailableError, Store

    url = os.fspath(store) if isinstance(store, os.PathLike) else store
    try:
        return Store.open(url), True
    except DatabaseUnavailableError as exc:
        log.warning("kvpilot: database unreachable at attach (%s); spooling samples until it answers", exc)
        lazy = LazyStore(url)
        lazy.last_error = exc
        lazy._next_try = time.monotonic() + lazy.retry_s
        return lazy, True


def _as_engine(model_or_engine: Any, tokenizer: Any) -> Engine:
    from kvpilot.engine import Engine

    if isinstance(model_or_engine, Engine):
        return model_or_engine
    from kvpilot.engine.attention import ATTN_IMPLEMENTATION, hook_residual_norms, register_attention

    register_attention()
    model = model_or_engine
    if getattr(model.config, "_attn_implementation", None) != ATTN_IMPLEMENTATION:
        model.set_attn_implementation(ATTN_IMPLEMENTATION)
    hook_residual_norms(model)
    return Engine(model, tokenizer)


def _owner(
    store: AttachStore, engine: Engine, deployment: str, instance_name: str, model_name: str | None,
    run_kind: str | None, run_name: str | None, sampling: SamplingPolicy,
) -> Callable[[], tuple[int | None, int | None]]:
    """What the recorder calls once the database answers: register the instance (and open the run)."""
    started_at = time.time()

    def owner() -> tuple[int | None, int | None]:
        info = store.register_instance(deployment, instance_name, model=model_name)
        run_id = None
        if run_kind is not None:
            run_id = store.start_run(run_kind, deployment=deployment, instance_id=info.id, name=run_name,
                                     config=engine.config, params={"sampling": vars(sampling)},
                                     started_at=started_at)
        return info.id, run_id

    return owner



class ProbeHandle:
    """What `attach` returns: the running probes, recorder and watcher, and `detach()`."""

    def __init__(
        self,
        engine: Engine,
        store: AttachStore | None,
        owns_store: bool,
        probes: ProbeSet,
        recorder: Recorder,
        telemetry: Telemetry | None,
        owns_telemetry: bool,
        watcher: ConfigWatcher | None,
        deployment: str,
        instance_name: str,
        model_name: str | None,
    ):
        self.engine = engine
        self.store = store
        self.probes = probes
        self.recorder = recorder
        self.telemetry = telemetry
        self.watcher = watcher
        self.deployment = deployment
        self.instance_name = instance_name
        self.model_name = model_name
        self._owns_store = owns_store
        self._owns_telemetry = owns_telemetry
        self._detached = False
        self.shadow: Any = None  # kvpilot.evaluation.shadow.ShadowFidelity when attach(shadow_fidelity=rate)
        self.lineage: Any = None  # kvpilot.probes.lineage.LineageWriter when attach(lineage=rate)

    @property
    def instance_id(self) -> int | None:
        return self.recorder.instance_id

    @property
    def run_id(self) -> int | None:
        return self.recorder.run_id

    def new_cache(self, config: Any = None) -> Any:
        """A ManagedCache with the probes on, for callers that run ``model.generate`` themselves.

        Without ``config`` it takes the engine's config, applying a pushed one first (a request boundary).
        """
        if config is None:
            config = self.engine.request_boundary()  # this call is the request boundary
        return self.engine.new_cache(config)

    def serve(self, request: Any) -> Any:
        """`Engine.serve`, with the outcome told to the config watcher: `max_failures` failures in a row
        under a newly applied deployment config roll the engine back to the last good one. A request that
        carries its own config is not the deployment's doing and is not counted."""
        counted = self.watcher is not None and getattr(request, "config", None) is None
        version: int | None = None
        if counted:  # while a canary runs, the watcher picks the version for this request
            assert self.watcher is not None
            version, canary = self.watcher.choose()
            if canary is not None:
                request = dataclasses.replace(request, config=canary)
        shadowed = self.shadow is not None and self.shadow.sample(request)
        if shadowed:  # the shadow probe compares this answer's logits with the full cache's, later
            request = dataclasses.replace(request, keep_logits=True)
        # eviction lineage: sampled at its own rate, and for every shadowed request (fidelity next to it)
        traced = self.lineage is not None and (shadowed or self.lineage.sample())
        if traced:
            request = dataclasses.replace(request, lineage=True)
        key = uuid.uuid4().hex if traced or shadowed else None
        token = SERVING_VERSION.set((version,))  # the request rows say which version served them (None: its own)
        try:
            response = self.engine.serve(request)
        except Exception as exc:
            if counted:
                assert self.watcher is not None
                self.recorder.submit("requests", [{"ts": time.time(), "error": f"{type(exc).__name__}: {exc}",
                                                   "config_version": version}])
                self.watcher.request_failed(exc, version)
            raise
        finally:
            SERVING_VERSION.reset(token)
        if counted:
            assert self.watcher is not None
            self.watcher.request_succeeded(version)
        if traced and response.lineage is not None:
            assert self.lineage is not None and key is not None
            answers = response.answers
            self.lineage.submit(key, response.lineage, [list(q) for q in request.questions], [a.text for a in answers],
                                answers[0].config if answers else None, version)
        if shadowed:
            assert self.shadow is not None
            self.shadow.submit(request, response, version, tagged=True, key=key)
        return response

    def record_request(self, result: Any, cache: Any) -> None:
        """Record a request served outside `Engine.run` (``result`` shaped like GenerationResult)."""
        self.probes.on_request(result, cache)

    def event(self, kind: str, **fields: Any) -> bool:
        """Record a cache event (e.g. ``hit``/``miss`` from a session pool); never blocks."""
        return self.recorder.event(kind, **fields)

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until everything recorded so far is in the store, the spool, or counted as dropped."""
        return self.recorder.flush(timeout)

    def stats(self) -> dict[str, int]:
        out = self.recorder.stats()
        out["sampled_forwards"] = self.probes.sampled_forwards
        out["probe_errors"] = self.probes.errors
        return out

    def _apply(self, config: Any) -> None:
        """The watcher's apply: a dry run, then the engine's, counted for OpenTelemetry (the store gets events)."""
        from kvpilot.engine.dryrun import dry_run  # torch: only once an engine runs

        try:
            dry_run(config, self.engine)  # a config that cannot serve is rejected, never "applied"
            self.engine.apply_config(config)
        except Exception:
            self._count_config("rejected")
            raise
        self._count_config("applied")

    def _prepare(self, config: Any) -> None:
        """The watcher's rehearsal of a canary's config: the dry run only (the engine keeps its own config)."""
        from kvpilot.engine.dryrun import dry_run

        dry_run(config, self.engine)

    def _count_config(self, status: str) -> None:
        if self.telemetry is not None:
            try:
                self.telemetry.export("cache_events", [{"kind": f"config_{status}", "count": 1}])
            except Exception:
                log.exception("OpenTelemetry export of a config change failed")

    def detach(self, timeout: float = 10.0) -> dict[str, int]:
        """Stop the watcher, unhook the probes, flush the recorder; returns the final counters."""
        if self._detached:
            return self.stats()
        self._detached = True
        if self.watcher is not None:
            self.watcher.stop()
        if self.shadow is not None:
            self.shadow.close(timeout)
        if self.lineage is not None:
            self.lineage.close(timeout)
        if self.engine.observer is self.probes:
            self.engine.observer = None
        self.engine.request_hooks[:] = [h for h in self.engine.request_hooks if h != self.probes.on_request]
        self.recorder.stop(timeout)
        stats = self.stats()
        if self.store is not None and self.recorder.run_id is not None:
            try:
                self.store.finish_run(self.recorder.run_id, metrics={"recorder": stats})
            except Exception as exc:  # the run stays "running"; the samples are safe in the spool
                log.warning("kvpilot: cannot close run %s: %s", self.recorder.run_id, exc)
        self.probes.close()
        if self.telemetry is not None and self._owns_telemetry:
            self.telemetry.shutdown()
        if self._owns_store and self.store is not None:
            self.store.close()
        return stats

    def __enter__(self) -> ProbeHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.detach()


def attach(
    model_or_engine: Any,
    store: Any = None,
    deployment: str = "default",
    *,
    sample_rate: float = 1.0,
    decode_every: int | None = None,
    sampling: SamplingPolicy | None = None,
    otel: Any = True,
    probes: Iterable[str] | None = None,
    instance: str | None = None,
    model_name: str | None = None,
    tokenizer: Any = None,
    watch: bool = True,
    poll_s: float = 2.0,
    run_kind: str | None = None,
    run_name: str | None = None,
    spool_dir: str | os.PathLike[str] | None = None,
    flush_interval_s: float = 1.0,
    proxy_budget: int | None = None,
    shadow_fidelity: float = 0.0,
    lineage: float = 0.0,
) -> ProbeHandle:
    """Start probes, recorder and config watcher on an Engine (or a transformers model); see module doc.

    store: a Store, a database URL (opened here; spooling until it answers if it is down), or None
        (OpenTelemetry only, no watcher).
    sample_rate: fraction of requests whose attention is sampled; ``decode_every``: one decode step in N
        (default `SamplingPolicy`), or pass a whole ``sampling`` policy.
    otel: True (the application's global OpenTelemetry providers), False, "console", "otlp", "memory",
        or a `Telemetry`.
    probes: names from `kvpilot.probes.registry.PROBES` (default: all of skew, latency, memory, evictions).
    run_kind: also open a run ("serving", "eval", "probe", ...) that tags every sample.
    shadow_fidelity: the fraction of requests served through `handle.serve` whose answers are compared
        with the full cache's, off the request path (`kvpilot.evaluation.shadow`; 0: off, 0.05 suggested).
    lineage: the fraction of requests served through `handle.serve` whose eviction lineage (which units of
        the context the cache forgot) is stored, plus every shadowed request (`kvpilot.probes.lineage`;
        0: off, 0.01 suggested; needs a store).
    """
    from kvpilot.probes.observer import ProbeSet
    from kvpilot.probes.otel import Telemetry
    from kvpilot.probes.recorder import Recorder
    from kvpilot.probes.registry import build_probes, default_probes
    from kvpilot.probes.spool import Spool, spool_path

    if lineage and store is None:
        raise KVPilotError("attach(lineage=...) stores eviction lineage: pass a store (or a database URL)")
    engine = _as_engine(model_or_engine, tokenizer)
    if engine.observer is not None:
        raise KVPilotError("this engine already has probes attached; detach() the first handle before attaching again")
    if sampling is None:
        sampling = SamplingPolicy(request_rate=sample_rate)
        if decode_every is not None:
            sampling.decode_every = decode_every
    if model_name is None:
        path = str(getattr(engine.model.config, "name_or_path", "") or "")
        model_name = Path(path).name or None
    instance_name = instance or f"{socket.gethostname()}-{os.getpid()}"
    opened, owns_store = _open_store(store)
    owns_tel = not isinstance(otel, Telemetry)
    attributes = {"kvpilot.deployment": deployment}
    if model_name:
        attributes["gen_ai.request.model"] = model_name
    telemetry = Telemetry.from_spec(otel, attributes=attributes)

    spool = owner = None
    if opened is not None:
        folder = Path(spool_dir) if spool_dir is not None else kvpilot_home() / "spool"
        spool = Spool(spool_path(folder, deployment, instance_name))
        owner = _owner(opened, engine, deployment, instance_name, model_name, run_kind, run_name, sampling)

    recorder = Recorder(opened, telemetry=telemetry, spool=spool, owner=owner, flush_interval_s=flush_interval_s,
                        adopt_orphans=True)
    if telemetry is not None:
        telemetry.bind_recorder(recorder)
    device = next(engine.model.parameters()).device
    chosen = build_probes(default_probes() if probes is None else probes, policy=sampling, model_name=model_name,
                          device=device, proxy_budget=proxy_budget)
    probe_set = ProbeSet(chosen, recorder, sampling)

    handle = ProbeHandle(engine, opened, owns_store, probe_set, recorder, telemetry, owns_tel, None,
                         deployment, instance_name, model_name)
    for probe_name, reason in probe_set.unavailable().items():
        if _first_time_unavailable(opened, deployment, probe_name, reason):
            recorder.event("probe_unavailable", detail={"probe": probe_name, "reason": reason})
    engine.observer = probe_set
    engine.request_hooks.append(probe_set.on_request)
    recorder.start()
    if shadow_fidelity:
        from kvpilot.evaluation.shadow import ShadowFidelity

        handle.shadow = ShadowFidelity(engine, rate=shadow_fidelity, recorder=recorder, telemetry=telemetry,
                                       version=lambda: handle.watcher.version if handle.watcher else None)
    if lineage and opened is not None:
        from kvpilot.probes.lineage import LineageWriter

        store_ = opened

        def lineage_owner() -> tuple[int | None, int | None]:
            """The recorder's instance and run; the instance registered here when the recorder has not yet."""
            if recorder.instance_id is None:  # an upsert: the recorder's registration finds the same row
                return store_.register_instance(deployment, instance_name, model=model_name).id, recorder.run_id
            return recorder.instance_id, recorder.run_id

        handle.lineage = LineageWriter(opened, deployment, rate=lineage, tokenizer=engine.tokenizer,
                                       owner=lineage_owner)
    if opened is not None and watch:
        from kvpilot.engine.watcher import ConfigWatcher

        handle.watcher = ConfigWatcher(opened, deployment, instance_name, handle._apply, poll_s=poll_s,
                                       model=model_name, initial=engine.config, prepare=handle._prepare)
        probe_set.version_source = lambda: handle.watcher.version if handle.watcher else None
        handle.watcher.start()
    return handle
