"""The recorder: probes hand it samples; a background thread writes them to the store and to OpenTelemetry.

Inference threads only append to a bounded in-memory queue (`submit`), which never blocks and never
raises: when the queue is full the sample is dropped and counted. Every ``flush_interval_s`` the thread
drains the queue, exports the rows to OpenTelemetry once, and writes each table's rows to the store in
one bulk insert (a *part*). When the store is unreachable, parts go to a local JSONL spool
(`kvpilot.probes.spool`) and are replayed, oldest first and exactly once each, when it answers again.
Drops (queue full, spool full, rows the store refuses) are counted and reported as a ``recorder_drop``
event, so nothing is lost silently.
"""

from __future__ import annotations

import collections
import itertools
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from kvpilot.probes.spool import Part, Spool, orphans
from kvpilot.storage.protocols import SINK_WRITERS, SampleSink, sink_writer

log = logging.getLogger(__name__)

TABLES = tuple(SINK_WRITERS)  # the stored sample tables, each written by its SampleSink method
ADOPT_EVERY_S = 30.0  # how often the spool folder is searched for spools of dead processes
EXPORT_ONLY = ("spans",)  # rows for OpenTelemetry only (request spans), never stored
OWNER_KEYS = ("instance_id", "run_id")

Rows = list[dict[str, Any]]
Deferred = Callable[[], Iterable[tuple[str, Rows]]]  # built off the inference thread (e.g. GPU copies)


def is_outage(exc: BaseException) -> bool:
    """True when the store is unreachable or busy (retry later), False when it refused the rows (a bug)."""
    from sqlalchemy.exc import DataError, DBAPIError, IntegrityError, InterfaceError, OperationalError

    from kvpilot.storage.errors import DatabaseUnavailableError, StoreError

    if isinstance(exc, DatabaseUnavailableError):
        return True
    if isinstance(exc, StoreError):  # lock timeouts carry their DBAPI error as the cause
        cause = exc.__cause__
        return isinstance(cause, DBAPIError) and not isinstance(cause, (IntegrityError, DataError))
    return isinstance(exc, (OperationalError, InterfaceError, OSError, ConnectionError, TimeoutError))


class Exporter(Protocol):
    """Where the recorder thread also sends every batch (`kvpilot.probes.otel.Telemetry`)."""

    def export(self, table: str, rows: Rows) -> None: ...


class Recorder:
    """Bounded queue + background writer. Safe to call `submit` from any thread."""

    def __init__(
        self,
        store: SampleSink | None = None,
        *,
        telemetry: Exporter | None = None,
        spool: Spool | str | None = None,
        owner: Callable[[], tuple[int | None, int | None]] | None = None,
        max_items: int = 10_000,
        flush_interval_s: float = 1.0,
        part_rows: int = 5_000,
        retry_s: tuple[float, float] = (1.0, 30.0),
        adopt_orphans: bool = False,
    ):
        self.store = store
        self.telemetry = telemetry
        self.spool = Spool(spool) if isinstance(spool, str) else spool
        # spools left by dead processes of the same deployment (a restart), replayed after our own
        self._adopt = adopt_orphans and self.spool is not None
        self._adopted: list[Spool] = []
        self._next_adopt = 0.0
        self._owner = owner
        self.instance_id: int | None = None
        self.run_id: int | None = None
        self.max_items = max_items
        self.flush_interval_s = flush_interval_s
        self.part_rows = part_rows
        self._retry_min, self._retry_max = retry_s
        self._retry = self._retry_min
        self._down_until = 0.0
        self._queue: collections.deque[tuple[str, Any]] = collections.deque()
        self._session = uuid.uuid4().hex[:12]
        self._seq = itertools.count()
        self._lock = threading.Lock()
        self._drop_lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._cond = threading.Condition()
        self._submitted_gen = 0  # items accepted so far (for flush)
        self._done_gen = 0  # items fully processed so far
        self._thread: threading.Thread | None = None
        self._ticks: list[Callable[[], None]] = []
        self.counters: collections.Counter[str] = collections.Counter()
        self._drops: collections.Counter[str] = collections.Counter()  # not yet reported, by reason

    # ----- inference side -----------------------------------------------------------------------------

    def submit(self, table: str, rows: Rows) -> bool:
        """Queue rows of one table; False (and counted) when the queue is full."""
        return self._put(table, rows, len(rows))

    def submit_deferred(self, fn: Deferred, rows_hint: int = 1) -> bool:
        """Queue a callable that builds ``(table, rows)`` pairs in the recorder thread."""
        return self._put("", fn, rows_hint)

    def event(self, kind: str, **fields: Any) -> bool:
        """Queue one cache event (``kind`` from the store's EVENT_KINDS)."""
        return self.submit("cache_events", [{"ts": time.time(), "kind": kind, **fields}])

    def _put(self, table: str, payload: Any, n_rows: int) -> bool:
        with self._lock:
            if len(self._queue) >= self.max_items:
                self._drop("queue_full", n_rows)
                return False
            self._queue.append((table, payload))
            self._submitted_gen += 1
        if len(self._queue) >= self.max_items // 2:
            self._wake.set()
        return True

    def _drop(self, reason: str, n_rows: int) -> None:
        with self._drop_lock:
            self.counters["dropped_rows"] += n_rows
            self._drops[reason] += n_rows

    # ----- lifecycle ----------------------------------------------------------------------------------

    def start(self) -> Recorder:
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="kvpilot-recorder", daemon=True)
            self._thread.start()
        return self

    def add_tick(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` in the recorder thread once per cycle (cheap periodic work off the hot path)."""
        self._ticks.append(fn)

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until everything queued so far is written or spooled; False on timeout."""
        with self._lock:
            target = self._submitted_gen
        if self._thread is None:
            self._cycle()
            return True
        self._wake.set()
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._done_gen < target:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.1))
                self._wake.set()
        return True

    def stop(self, timeout: float = 10.0) -> bool:
        """Write or spool what is queued, then stop the thread; False if it did not finish in time."""
        if self._thread is None:
            self._cycle()
            return True
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout)
        finished = not self._thread.is_alive()
        if not finished:
            log.warning("recorder did not stop within %.1f s; %d item(s) still queued", timeout, len(self._queue))
        self._thread = None
        if finished:  # let the next process adopt what is still pending
            for spool in [*self._adopted, *([self.spool] if self.spool is not None else [])]:
                spool.close()
            self._adopted = []
        return finished

    def retry_now(self) -> None:
        """Forget the back-off so the next cycle tries the store again (tests, `kvpilot probe` at exit)."""
        self._down_until = 0.0
        self._retry = self._retry_min

    def stats(self) -> dict[str, int]:
        out = {k: int(v) for k, v in self.counters.items()}
        out["queued_items"] = len(self._queue)
        spools = [self.spool, *self._adopted] if self.spool is not None else []
        out["spooled_pending_rows"] = sum(s.pending_rows for s in spools)
        return out

    # ----- recorder thread ------------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            self._wake.wait(self.flush_interval_s)
            self._wake.clear()
            stopping = self._stop.is_set()
            try:
                self._cycle()
            except Exception:  # the thread must outlive any bug in a sample or an exporter
                log.exception("recorder cycle failed")
            if stopping:
                try:
                    self._cycle()  # whatever arrived while the last cycle ran
                except Exception:
                    log.exception("recorder final cycle failed")
                return

    def _cycle(self) -> None:
        for tick in self._ticks:
            try:
                tick()
            except Exception:
                log.exception("recorder tick failed")
        with self._lock:
            items = list(self._queue)
            self._queue.clear()
            gen = self._submitted_gen
        by_table: dict[str, Rows] = {t: [] for t in TABLES + EXPORT_ONLY}
        for table, payload in items:
            if table:
                by_table[table].extend(payload)
                continue
            try:
                for t, rows in payload():
                    by_table[t].extend(rows)
            except Exception:
                log.exception("a deferred probe sample failed to build; dropped")
                self._drop("build_failed", 1)
        report = self._drop_report()
        if report:
            by_table["cache_events"].append(report)
        for table, rows in by_table.items():
            if rows:
                if table in TABLES:
                    self.counters["rows"] += len(rows)
                self._export(table, rows)
        parts = self._parts(by_table)
        if self.store is not None:
            self._deliver(parts)
        elif parts:
            self.counters["exported_only_rows"] += sum(len(p.rows) for p in parts)
        with self._cond:
            self._done_gen = max(self._done_gen, gen)
            self._cond.notify_all()

    def _drop_report(self) -> dict[str, Any] | None:
        with self._drop_lock:
            if not self._drops:
                return None
            reasons = dict(self._drops)
            self._drops.clear()
        self.counters["drop_reports"] += 1
        total = sum(reasons.values())
        log.warning("recorder dropped %d row(s): %s", total, reasons)
        return {"ts": time.time(), "kind": "recorder_drop", "count": total, "detail": {"reasons": reasons}}

    def _export(self, table: str, rows: Rows) -> None:
        if self.telemetry is None:
            return
        try:
            self.telemetry.export(table, rows)
        except Exception:
            log.exception("OpenTelemetry export of %s failed", table)

    def _parts(self, by_table: dict[str, Rows]) -> list[Part]:
        parts = []
        for table in TABLES:
            rows = by_table[table]
            for start in range(0, len(rows), self.part_rows):
                chunk = rows[start : start + self.part_rows]
                parts.append(Part(f"{self._session}-{next(self._seq)}-{table}", table, chunk))
        return parts

    # ----- delivery ---------------------------------------------------------------------------------------

    def _deliver(self, parts: list[Part]) -> None:
        up = time.monotonic() >= self._down_until and self._replay()
        for i, part in enumerate(parts):
            if not up:
                for rest in parts[i:]:
                    self._spool(rest)
                return
            status = self._write(part)
            if status == "ok":
                self.counters["written_rows"] += len(part.rows)
            elif status == "refused":
                self._drop("refused", len(part.rows))
            else:
                up = False
                self._spool(part)

    def _replay(self) -> bool:
        """Write spooled parts oldest first; False (stop) as soon as the store fails again."""
        if self.spool is None:
            return True
        if self._adopt and time.monotonic() >= self._next_adopt:
            self._next_adopt = time.monotonic() + ADOPT_EVERY_S
            self._adopted += orphans(self.spool)
        for spool in [self.spool, *self._adopted]:
            for part in spool.pending():
                status = self._write(part)
                if status == "down":
                    return False
                if status == "ok":
                    self.counters["replayed_rows"] += len(part.rows)
                else:
                    self._drop("refused", len(part.rows))
                spool.ack(part.id)
        for spool in [s for s in self._adopted if not len(s)]:
            spool.close()
            self._adopted.remove(spool)
        return True

    def _spool(self, part: Part) -> None:
        if self.spool is not None and self.spool.append(part):
            self.counters["spooled_rows"] += len(part.rows)
        else:
            self._drop("spool_full" if self.spool is not None else "store_down_no_spool", len(part.rows))

    def _write(self, part: Part) -> str:
        """One part to the store: "ok", "down" (retry later) or "refused" (drop it)."""
        assert self.store is not None
        try:
            if self._owner is not None and self.instance_id is None:
                instance_id, run_id = self._owner()
                self.instance_id, self.run_id = instance_id, run_id if run_id is not None else self.run_id
            write = sink_writer(self.store, part.table)
            write(part.rows, instance_id=self.instance_id, run_id=self.run_id, part_id=part.id)
        except Exception as exc:
            if is_outage(exc):
                self.counters["store_errors"] += 1
                self._down_until = time.monotonic() + self._retry
                self._retry = min(self._retry * 2, self._retry_max)
                log.warning("store unavailable (%s); spooling, retry in %.0f s", exc, self._down_until - time.monotonic())
                return "down"
            log.error("store refused %d %s row(s): %s", len(part.rows), part.table, exc)
            return "refused"
        self._retry = self._retry_min
        return "ok"
