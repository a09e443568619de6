"""Eviction lineage of sampled requests, written to the store off the request path.

`kvpilot.attach(engine, store, lineage=rate)` samples requests served through `handle.serve` at ``rate``
(and every request the shadow fidelity probe measures, so a poorly answered request has its lineage next
to its fidelity); `Engine.serve` computes the lineage (`kvpilot.engine.lineage`) and this writer stores it
(`Store.add_lineage`) from a worker thread with a bounded queue. Lineage is diagnostic: when the queue is
full or the store does not answer, the row is dropped and counted (`dropped`, `errors`), never spooled,
and serving never waits for it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kvpilot.probes.worker import SampledWorker

log = logging.getLogger(__name__)

DEFAULT_RATE = 0.01


@dataclass(frozen=True)
class LineageJob:
    """What the worker stores for one request."""

    key: str
    lineage: Any  # kvpilot.engine.lineage.Lineage
    questions: list[list[int]]  # token ids, decoded by the worker
    answers: list[str]
    config: Any
    version: int | None
    ts: float


class LineageWriter(SampledWorker):
    """Sample requests at `rate` and store their lineage from a worker thread.

    store: what `add_lineage` is called on (a Store, or attach's lazily opened one);
    owner: returns (instance_id, run_id) to tag rows with (the recorder's, once it registered).
    """

    def __init__(self, store: Any, deployment: str, *, rate: float = DEFAULT_RATE, tokenizer: Any = None,
                 owner: Callable[[], tuple[int | None, int | None]] = lambda: (None, None),
                 seed: int | None = None, max_pending: int = 16) -> None:
        self.store = store
        self.deployment = deployment
        self.tokenizer = tokenizer
        self._owner = owner
        self.written = 0
        super().__init__("kvpilot-lineage", rate, what="lineage sampling rate", seed=seed, max_pending=max_pending)

    def sample(self) -> bool:
        return self._draw()

    def submit(self, key: str, lineage: Any, questions: list[list[int]], answers: list[str], config: Any,
               version: int | None) -> bool:
        """Queue one request's lineage; never blocks (a full queue drops it)."""
        return self._offer(LineageJob(key, lineage, questions, answers, config, version, time.time()))

    def handle(self, job: LineageJob) -> None:
        self.write(job)
        self.written += 1

    def failed(self, exc: Exception) -> None:  # a lost lineage row must never stop the worker or touch serving
        log.warning("kvpilot: eviction lineage not stored: %s", exc)

    def _question(self, ids: list[int]) -> str:
        """A question's text without the chat template's markers (its role names stay as plain lines)."""
        if self.tokenizer is None or not ids:
            return ""
        lines = self.tokenizer.decode(list(ids), skip_special_tokens=True).strip().splitlines()
        return " ".join(line for line in lines if line.strip() not in ("user", "assistant", "system")).strip()

    def write(self, job: LineageJob) -> int:
        lin = job.lineage
        answers = [{"question": self._question(job.questions[i]) if i < len(job.questions) else "", "answer": a}
                   for i, a in enumerate(job.answers)]
        instance_id, run_id = self._owner()
        return int(self.store.add_lineage(
            request_key=job.key, kind=lin.kind, context=lin.text, context_tokens=lin.context_tokens,
            kept_fraction=lin.kept_fraction, units=[u.as_list() for u in lin.units], answers=answers,
            deployment=self.deployment, instance_id=instance_id, run_id=run_id, config=job.config,
            config_version=job.version, ts=job.ts,
        ))
