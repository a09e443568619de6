"""Agent-session replays as a tuning target: what the Tuner needs from an Evaluator, over a trace.

A trial's config is replayed on the whole trace (`kvpilot.evaluation.replay.Replay`); its metrics (hit ratio,
job completion times, pinned memory-time, engine compute) are what objectives and constraints read. The
baseline (`KVConfig()`: full cache, no TTL) is the replay without a session pool. Results are kept in
memory per config, so a config the sampler proposes again is not replayed again.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kvpilot.config import KVConfig
from kvpilot.evaluation.replay import Replay
from kvpilot.workloads.trace import TraceEvent

if TYPE_CHECKING:
    from kvpilot.evaluation import Evaluator
    from kvpilot.tuner.target import TuningTarget


@dataclass
class ReplayRun:
    """One replayed config (the shape of an evaluation run the Tuner reads)."""

    config: KVConfig
    metrics: dict[str, Any]
    path: Path | None = None


class ReplayTarget:
    """Replays `events` under each config the Tuner asks for."""

    fidelity = False  # no full-cache answer reference: accuracy-style objectives do not apply

    def __init__(
        self,
        engine: Any,
        events: Sequence[TraceEvent],
        *,
        label: str = "agents",
        capacity_bytes: int | None = None,
        token_scale: float = 1.0,
        max_response_tokens: int = 8,
    ) -> None:
        if not events:
            raise ValueError("a replay target needs at least one trace event")
        self.engine = engine
        self.events = list(events)
        self.label = label
        self.capacity_bytes = capacity_bytes
        self.token_scale = token_scale
        self.max_response_tokens = max_response_tokens
        setup = {"capacity_bytes": capacity_bytes, "token_scale": token_scale,
                 "max_response_tokens": max_response_tokens, "events": [asdict(e) for e in self.events]}
        self.digest = hashlib.sha256(json.dumps(setup, sort_keys=True).encode()).hexdigest()[:16]
        self.computed_runs = 0
        self._done: dict[str, ReplayRun] = {}

    def run(self, config: KVConfig) -> ReplayRun:
        key = config.to_json()
        if key not in self._done:
            replay = Replay(self.engine, config, capacity_bytes=self.capacity_bytes, token_scale=self.token_scale,
                            max_response_tokens=self.max_response_tokens)
            self._done[key] = ReplayRun(config, replay.run(self.events).metrics())
            self.computed_runs += 1
        return self._done[key]


if TYPE_CHECKING:  # the type checker proves both targets fit the tuner's seam

    def _fits(evaluator: Evaluator, replay: ReplayTarget) -> tuple[TuningTarget, TuningTarget]:
        return evaluator, replay
