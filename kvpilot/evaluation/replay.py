"""Replay an agent-session trace through the engine and a session pool, on simulated time.

Programs arrive at their trace times; each turn is served by the real engine (one at a time, first come
first served), then the agent's tool runs for the trace's duration and the next turn is issued. Between
turns the session's cache is pinned for the TTL the config's policy chooses (`session_ttl`): if the tool
returns in time the next turn prefills only the tool's output (a hit), else the whole history again (a
miss). Tool durations are simulated, compute is measured: the clock advances by the engine's real wall
time for each turn, so queueing, TTL expiries and memory-time reflect what this engine costs.

Traces give token counts, not text: each program draws its token ids from its own seeded stream, so the
engine does real prefill and decode work of the trace's sizes. `token_scale` shrinks every prompt and
tool output by one factor (so a hit and a miss still do proportionate work) and `max_response_tokens`
caps the answers, for traces too long for the machine; what was replayed is what is reported.
"""

from __future__ import annotations

import heapq
import random
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from kvpilot.cache.sessions import SessionPool
from kvpilot.config import KVConfig
from kvpilot.engine.engine import Request
from kvpilot.policies.ttl import make_ttl_policy
from kvpilot.workloads.trace import TraceEvent, programs


@dataclass
class ReplayResult:
    """What a replay measured (times in simulated seconds; compute is the engine's real time)."""

    programs: int
    turns: int
    hits: int
    misses: int
    expiries: int
    prefilled_tokens: int
    reprefilled_tokens: int  # history prefilled again on misses (what the pool exists to save)
    decoded_tokens: int
    pinned_byte_seconds: float
    peak_pool_bytes: int
    compute_s: float
    makespan_s: float
    jct_s: list[float] = field(repr=False, default_factory=list)
    queue_s: list[float] = field(repr=False, default_factory=list)

    @property
    def hit_ratio(self) -> float | None:
        n = self.hits + self.misses
        return self.hits / n if n else None

    def metrics(self) -> dict[str, Any]:
        """Flat numbers for printing, storing and tuning."""
        jct = sorted(self.jct_s)
        return {
            "programs": self.programs,
            "turns": self.turns,
            "hits": self.hits,
            "misses": self.misses,
            "expiries": self.expiries,
            "hit_ratio": self.hit_ratio,
            "prefilled_tokens": self.prefilled_tokens,
            "reprefilled_tokens": self.reprefilled_tokens,
            "decoded_tokens": self.decoded_tokens,
            "pinned_gib_s": self.pinned_byte_seconds / 2**30,
            "peak_pool_bytes": self.peak_pool_bytes,
            "compute_s": self.compute_s,
            "makespan_s": self.makespan_s,
            "mean_jct_s": statistics.fmean(jct) if jct else None,
            "p95_jct_s": jct[min(len(jct) - 1, int(0.95 * len(jct)))] if jct else None,
            "mean_queue_s": statistics.fmean(self.queue_s) if self.queue_s else None,
        }


class _Stream:
    """A program's token ids, drawn from its own seeded stream of ordinary (non-special) vocabulary ids."""

    def __init__(self, program_id: str, vocab_size: int) -> None:
        self.rng = random.Random(f"replay/{program_id}")
        self.low, self.high = min(1000, vocab_size // 4), min(20000, vocab_size)

    def take(self, n: int) -> list[int]:
        return [self.rng.randrange(self.low, self.high) for _ in range(n)]


class Replay:
    """Drives a trace through `engine` under `config`'s cache and TTL settings.

    capacity_bytes: the session pool's limit (None: unlimited). on_event: where pool events go (e.g. a
    probe handle's `event`, so they reach the store). progress: called after each turn with (done, total).
    """

    def __init__(
        self,
        engine: Any,
        config: KVConfig | None = None,
        *,
        capacity_bytes: int | None = None,
        token_scale: float = 1.0,
        max_response_tokens: int = 16,
        on_event: Callable[..., Any] | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> None:
        if not 0 < token_scale <= 1 or max_response_tokens < 1:
            raise ValueError("token_scale must be in (0, 1] and max_response_tokens >= 1")
        self.engine = engine
        self.config = config or engine.config
        engine.validate(self.config)
        self.capacity_bytes = capacity_bytes
        self.token_scale = token_scale
        self.max_response_tokens = max_response_tokens
        self.on_event = on_event
        self.progress = progress

    def _scaled(self, tokens: int) -> int:
        return max(1, round(tokens * self.token_scale))

    def run(self, events: Sequence[TraceEvent]) -> ReplayResult:
        by_program = programs(list(events))
        cfg = self.config
        now = 0.0
        policy = make_ttl_policy(cfg)
        pool = SessionPool(policy, capacity_bytes=self.capacity_bytes, clock=lambda: now, on_event=self.on_event)
        vocab = int(self.engine.model.config.vocab_size)
        streams = {pid: _Stream(pid, vocab) for pid in by_program}
        # (time, order, kind, program, turn): "issue" = the turn is ready; "done" = the engine finished it
        agenda: list[tuple[float, int, str, str, int]] = []
        order = 0
        for pid, turns in by_program.items():
            heapq.heappush(agenda, (turns[0].arrival_s, order, "issue", pid, 0))
            order += 1
        queue: list[tuple[float, int, str, int, Any]] = []  # FCFS: (issued at, order, program, turn, cache)
        busy = False
        total = sum(len(t) for t in by_program.values())
        stats = dict(turns=0, prefilled=0, reprefilled=0, decoded=0, peak=0)
        compute_s = 0.0
        jct, waits = [], []
        finished: dict[str, Any] = {}  # program -> its cache, between the engine finishing and "done"

        def serve(pid: str, turn: int, cache: Any) -> float:
            event = by_program[pid][turn]
            t0 = time.perf_counter()
            history, new = self._scaled(event.prompt_tokens), self._scaled(event.new_tokens)
            if cache is None:  # first turn, or a miss: prefill the whole history
                ids = streams[pid].take(history)
                if turn > 0:
                    stats["reprefilled"] += max(0, history - new)
            else:  # a hit: only what the tool returned
                ids = streams[pid].take(new)

            def prefilled(served: Any, prefill_s: float) -> None:
                pool.prefill_s_per_token = prefill_s / len(ids)  # what a hit saves, per token
                pool.serving(pid, served)
                stats["peak"] = max(stats["peak"], pool.pool_bytes)

            n_out = max(1, min(event.response_tokens, self.max_response_tokens))
            response = self.engine.serve(Request(ids, (), n_out, config=cfg, cache=cache, stop_at_eos=False,
                                                 on_prefilled=prefilled))
            stats["prefilled"] += len(ids)
            stats["decoded"] += len(response.answers[0].raw_token_ids)
            finished[pid] = response.cache
            return time.perf_counter() - t0

        while agenda or queue:
            if not busy and queue:  # one turn at a time, first come first served
                issued, _, pid, turn, cache = queue.pop(0)
                waits.append(now - issued)
                spent = serve(pid, turn, cache)
                compute_s += spent
                busy = True
                heapq.heappush(agenda, (now + spent, order, "done", pid, turn))
                order += 1
                continue
            t, _, kind, pid, turn = heapq.heappop(agenda)
            now = max(now, t)
            event = by_program[pid][turn]
            if kind == "issue":
                if turn > 0:
                    previous = by_program[pid][turn - 1]
                    pool.tool_returned(previous.tool, previous.tool_duration_s)
                cache = pool.checkout(pid) if turn > 0 else None
                queue.append((now, order, pid, turn, cache))
                order += 1
                continue
            busy = False  # "done"
            stats["turns"] += 1
            cache = finished.pop(pid)
            if turn + 1 < event.n_turns:
                pool.release(pid, cache, tool=event.tool,
                             history_tokens=self._scaled(by_program[pid][turn + 1].prompt_tokens))
                heapq.heappush(agenda, (now + event.tool_duration_s, order, "issue", pid, turn + 1))
                order += 1
            else:
                pool.close(pid)
                jct.append(now - by_program[pid][0].arrival_s)
            stats["peak"] = max(stats["peak"], pool.pool_bytes)
            if self.progress is not None:
                self.progress(stats["turns"], total)
        pool.advance()  # account the last pinned byte-seconds
        return ReplayResult(
            programs=len(by_program), turns=stats["turns"], hits=pool.counts["hit"], misses=pool.counts["miss"],
            expiries=pool.counts["expire"], prefilled_tokens=stats["prefilled"],
            reprefilled_tokens=stats["reprefilled"], decoded_tokens=stats["decoded"],
            pinned_byte_seconds=pool.pinned_byte_seconds, peak_pool_bytes=stats["peak"],
            compute_s=compute_s, makespan_s=now, jct_s=jct, queue_s=waits,
        )
