"""A sampled background worker: some requests get slow extra work, done on a daemon thread.

Why: the shadow-fidelity replay and the eviction-lineage write must never make a request wait or fail, so a
request only queues its job (a full queue drops it and counts it) and one thread handles the jobs in order.
"""

from __future__ import annotations

import logging
import queue
import random
import threading
import time
from typing import Any

log = logging.getLogger(__name__)


class SampledWorker:
    """`rate` of the requests are sampled (`_draw`); their jobs go to `handle` on a daemon thread named `name`."""

    def __init__(self, name: str, rate: float, *, what: str, seed: int | None, max_pending: int) -> None:
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"the {what} must be in [0, 1], got {rate}")
        self.rate = rate
        self._random = random.Random(seed)
        self._queue: queue.Queue[Any] = queue.Queue(max_pending)
        self.sampled = self.dropped = self.errors = 0
        self.busy_s = 0.0  # the worker's time on jobs: the probe's cost, bounded by the rate
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _draw(self) -> bool:
        return self.rate > 0 and self._random.random() < self.rate

    def _offer(self, job: Any) -> bool:
        """Queue a job; never blocks (a full queue drops it)."""
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            self.dropped += 1
            return False
        self.sampled += 1
        return True

    def join(self, timeout: float = 60.0) -> bool:
        """Wait until every queued job is handled (tests, detach)."""
        done = threading.Event()

        def waiter() -> None:
            self._queue.join()
            done.set()

        threading.Thread(target=waiter, daemon=True).start()
        return done.wait(timeout)

    def close(self, timeout: float = 60.0) -> None:
        self.join(timeout)
        self._queue.put(None)
        self._thread.join(timeout)

    def handle(self, job: Any) -> None:
        raise NotImplementedError

    def failed(self, exc: Exception) -> None:
        log.warning("kvpilot: %s failed: %s", self._thread.name, exc)

    def _run(self) -> None:
        while True:
            job = self._queue.get()
            t0 = time.perf_counter()
            try:
                if job is None:
                    return
                self.handle(job)
            except Exception as exc:  # a failed job must never stop the worker or touch serving
                self.errors += 1
                self.failed(exc)
            finally:
                self.busy_s += time.perf_counter() - t0
                self._queue.task_done()
