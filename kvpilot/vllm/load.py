"""Real load on a vLLM server: agent programs from kvpilot's trace generator, as multi-turn chats.

Each program of a generated agent trace (`kvpilot.workloads.agent`: Gamma arrivals, so bursts; long-tailed
prompts, responses and tool outputs) becomes one chat session driven through the official `openai` client:
a shared system prompt, the first user turn, then after each answer the tool's result as the next user
turn, closed-loop (a turn is sent when the previous answer is in and the tool's time has passed). The
server's own answers go into the history, so each turn's prompt extends the previous one exactly, which is
what a prefix cache can reuse. Words are drawn from kvpilot's word lists, about one token each; times are
scaled by `time_scale` so a trial takes seconds, not the trace's minutes.
"""

from __future__ import annotations

import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from kvpilot.workloads.agent import AgentWorkload, generate_agent_trace
from kvpilot.workloads.distributions import Geometric, LogNormal, Zipf
from kvpilot.workloads.trace import TraceEvent, programs
from kvpilot.workloads.wordlists import VOCABULARY

SYSTEM = ("You are a careful assistant working through a task with tools. Read each tool result, then say "
          "briefly what you will do next. ")


@dataclass(frozen=True)
class LoadSpec:
    """The offered load of one trial; the same spec and seed give the same trace."""

    programs: int = 8
    rate: float = 2.0  # program arrivals per second (trace time)
    cv: float = 2.0  # burstiness of arrivals (1 = Poisson)
    mean_turns: float = 3.0
    prompt_tokens: int = 300  # first turn's typical prompt (Zipf tail above it)
    response_tokens: int = 24  # typical answer; answers run to their max_tokens (ignore_eos)
    max_prompt_tokens: int = 1400  # below the server's max_model_len with the answer
    max_response_tokens: int = 48
    time_scale: float = 0.1  # trace seconds -> wall seconds
    seed: int = 0

    def trace(self) -> list[TraceEvent]:
        workload = AgentWorkload(
            n_programs=self.programs, rate=self.rate, cv=self.cv,
            turns=Geometric(self.mean_turns, low=2, high=8),
            prompt_tokens=Zipf(1.2, self.prompt_tokens // 2, self.max_prompt_tokens // 2),
            response_tokens=LogNormal(self.response_tokens, 0.5, low=4, high=self.max_response_tokens),
            max_prompt_tokens=self.max_prompt_tokens,
        )
        return generate_agent_trace(workload, seed=self.seed)


@dataclass
class RequestResult:
    """One chat turn as the client saw it."""

    program: str
    turn: int
    start: float
    ttft_s: float | None
    e2e_s: float
    prompt_tokens: int | None
    output_tokens: int
    error: str | None = None
    text: str = ""  # the answer, which goes into the session's history

    @property
    def tpot_s(self) -> float | None:
        if self.ttft_s is None or self.output_tokens < 2:
            return None
        return (self.e2e_s - self.ttft_s) / (self.output_tokens - 1)

    def row(self) -> dict[str, Any]:
        """The store's `requests` row for this turn."""
        return {"ts": self.start + self.e2e_s, "prompt_tokens": self.prompt_tokens,
                "output_tokens": self.output_tokens, "ttft_s": self.ttft_s, "tpot_s": self.tpot_s,
                "e2e_s": self.e2e_s, "error": self.error}


@dataclass
class LoadResult:
    results: list[RequestResult] = field(default_factory=list)
    wall_s: float = 0.0

    @property
    def ok(self) -> list[RequestResult]:
        return [r for r in self.results if r.error is None]


def _words(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(VOCABULARY) for _ in range(max(1, n)))


def _estimate(messages: list[dict[str, str]]) -> int:
    """Prompt tokens of a chat, roughly (the word lists' words are 1-2 tokens; 1.3 measured on the bundled model)."""
    return int(sum(len(m["content"].split()) * 1.3 + 4 for m in messages))


def _session(client: Any, model: str, turns: list[TraceEvent], spec: LoadSpec, t0: float,
             out: list[RequestResult], lock: threading.Lock) -> None:
    rng = random.Random(f"{spec.seed}:{turns[0].program_id}")
    delay = turns[0].arrival_s * spec.time_scale - (time.perf_counter() - t0)
    if delay > 0:
        time.sleep(delay)
    messages: list[dict[str, str]] = [{"role": "system", "content": SYSTEM}]
    for e in turns:
        messages.append({"role": "user", "content": _words(rng, min(e.new_tokens, spec.max_prompt_tokens // 2))})
        max_tokens = max(2, min(e.response_tokens, spec.max_response_tokens))
        while len(messages) > 3 and _estimate(messages) > spec.max_prompt_tokens:  # agents drop old turns
            del messages[1:3]
        result = _turn(client, model, messages, max_tokens, e)
        with lock:
            out.append(result)
        if result.error is not None:
            return
        messages.append({"role": "assistant", "content": result.text})
        if e.tool_duration_s:
            time.sleep(e.tool_duration_s * spec.time_scale)


def _turn(client: Any, model: str, messages: list[dict[str, str]], max_tokens: int, e: TraceEvent) -> RequestResult:
    start_wall, start = time.time(), time.perf_counter()
    first: float | None = None
    pieces: list[str] = []
    usage = None
    try:
        stream = client.chat.completions.create(
            model=model, messages=messages, max_tokens=max_tokens, temperature=0.0, stream=True,
            stream_options={"include_usage": True}, extra_body={"ignore_eos": True},
        )
        for chunk in stream:
            if chunk.usage is not None:
                usage = chunk.usage
            for choice in chunk.choices:
                if choice.delta.content:
                    if first is None:
                        first = time.perf_counter()
                    pieces.append(choice.delta.content)
    except Exception as exc:  # a failed turn is a measurement (errors count against the config)
        return RequestResult(e.program_id, e.turn, start_wall, None, time.perf_counter() - start, None, 0,
                             f"{type(exc).__name__}: {exc}"[:300])
    end = time.perf_counter()
    return RequestResult(
        e.program_id, e.turn, start_wall, None if first is None else first - start, end - start,
        getattr(usage, "prompt_tokens", None), int(getattr(usage, "completion_tokens", 0) or len(pieces)),
        text="".join(pieces),
    )


def run_load(base_url: str, spec: LoadSpec, *, model: str, timeout_s: float = 120.0) -> LoadResult:
    """Drive every program of `spec`'s trace against the server at `base_url`; one thread per program."""
    from openai import OpenAI

    client = OpenAI(base_url=f"{base_url.rstrip('/')}/v1", api_key="kvpilot", timeout=timeout_s, max_retries=0)
    sessions = programs(spec.trace())
    out: list[RequestResult] = []
    lock = threading.Lock()
    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=max(1, len(sessions))) as pool:
        for turns in sessions.values():
            pool.submit(_session, client, model, turns, spec, t0, out, lock)
    return LoadResult(sorted(out, key=lambda r: r.start), time.perf_counter() - t0)


__all__ = ["LoadResult", "LoadSpec", "RequestResult", "run_load"]
