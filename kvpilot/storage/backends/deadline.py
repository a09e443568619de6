"""Client-side deadlines for network databases: a frozen network becomes an outage instead of a hang.

When packets stop (a partition, a frozen proxy, a suspended VM) without a reset, a PostgreSQL client
blocks in `recv` forever: TCP keepalives only probe idle connections, and a proxy's kernel keeps
acknowledging. The recorder and the config watcher then stop, and rows pile up in memory. Each store
operation therefore runs under a deadline; when it passes, a watchdog thread shuts down the sockets of
the connections that operation's thread holds (and of idle pooled connections, one of which may be the
one being pinged), so the blocked call fails with a connection error, which the store reports as
`DatabaseUnavailableError` and the recorder spools.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
import weakref
from collections.abc import Iterator
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Engine

log = logging.getLogger(__name__)

TIMEOUT_ENV = "KVPILOT_DB_TIMEOUT_S"
DEFAULT_TIMEOUT_S = 30.0
TICK_S = 0.2


def timeout_s() -> float:
    """The deadline of one store operation: $KVPILOT_DB_TIMEOUT_S, else 30 s (0 or less: none)."""
    try:
        return float(os.environ.get(TIMEOUT_ENV, DEFAULT_TIMEOUT_S))
    except ValueError:
        return DEFAULT_TIMEOUT_S


class Deadlines:
    """Per-engine watchdog: operations register a deadline; expired ones get their sockets shut down."""

    def __init__(self, engine: Engine, timeout: float):
        self.timeout = timeout
        self.expired = 0  # operations cut so far (for tests and logs)
        self._lock = threading.Lock()
        self._conns: dict[int, tuple[weakref.ref[Any], int | None]] = {}  # id -> (dbapi conn, owner thread)
        self._ops: dict[int, float] = {}  # thread ident -> deadline (monotonic)
        self._thread: threading.Thread | None = None
        self._stopped = threading.Event()
        event.listen(engine.pool, "connect", self._on_connect)
        event.listen(engine.pool, "checkout", self._on_checkout)
        event.listen(engine.pool, "checkin", self._on_checkin)

    # ----- pool events ------------------------------------------------------------------------------

    def _on_connect(self, dbapi_conn: Any, record: Any) -> None:
        with self._lock:
            self._conns[id(dbapi_conn)] = (weakref.ref(dbapi_conn), None)

    def _on_checkout(self, dbapi_conn: Any, record: Any, proxy: Any) -> None:
        with self._lock:
            self._conns[id(dbapi_conn)] = (weakref.ref(dbapi_conn), threading.get_ident())

    def _on_checkin(self, dbapi_conn: Any, record: Any) -> None:
        if dbapi_conn is None:
            return
        with self._lock:
            self._conns[id(dbapi_conn)] = (weakref.ref(dbapi_conn), None)

    # ----- operations ------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def guard(self) -> Iterator[None]:
        """Run the body under the deadline (nested guards in one thread keep the outer one)."""
        me = threading.get_ident()
        with self._lock:
            outer = me in self._ops
            if not outer:
                self._ops[me] = time.monotonic() + self.timeout
            self._start()
        try:
            yield
        finally:
            if not outer:
                with self._lock:
                    self._ops.pop(me, None)

    def close(self) -> None:
        self._stopped.set()

    def _start(self) -> None:  # called with the lock held
        if self._thread is None:
            self._thread = threading.Thread(target=self._watch, name="kvpilot-db-deadlines", daemon=True)
            self._thread.start()

    def _watch(self) -> None:
        while not self._stopped.wait(TICK_S):
            now = time.monotonic()
            with self._lock:
                if not self._ops:  # idle: the thread ends; the next guarded operation starts another
                    self._thread = None
                    return
                late = [t for t, deadline in self._ops.items() if deadline <= now]
                for t in late:
                    self._ops[t] = float("inf")  # cut once
                victims = [ref() for ref, owner in self._conns.values() if owner in late or owner is None] if late else []
                self._conns = {k: v for k, v in self._conns.items() if v[0]() is not None}
            for conn in victims:
                if conn is not None:
                    _shutdown(conn)
            if late:
                self.expired += len(late)
                log.warning("database operation exceeded %.0f s: connection shut down (network frozen?)", self.timeout)


_DEADLINES: weakref.WeakKeyDictionary[Engine, Deadlines] = weakref.WeakKeyDictionary()


def install(engine: Engine, timeout: float | None = None) -> None:
    """Give ``engine`` operation deadlines (see `guard`)."""
    timeout = timeout_s() if timeout is None else timeout
    if timeout > 0:
        _DEADLINES[engine] = Deadlines(engine, timeout)


def guard(engine: Engine) -> contextlib.AbstractContextManager[None]:
    """The deadline of ``engine``'s operations, or a no-op for an engine without one (SQLite)."""
    deadlines = _DEADLINES.get(engine)
    return deadlines.guard() if deadlines is not None else contextlib.nullcontext()


def deadlines_of(engine: Engine) -> Deadlines | None:
    return _DEADLINES.get(engine)


def _shutdown(dbapi_conn: Any) -> None:
    """Shut the connection's socket down (both ways) so a call blocked on it returns an error now."""
    try:
        fd = dbapi_conn.pgconn.socket
    except Exception:  # closed already
        return
    try:
        sock = socket.socket(fileno=os.dup(fd))
    except OSError:
        return
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    finally:
        sock.close()
