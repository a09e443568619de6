"""Synthetic agent sessions for the time-to-live (Continuum) work.

A program is a sequence of LLM turns; after every turn but the last the agent calls a tool and waits for
it. Programs arrive in bursts: inter-arrival times are Gamma with a given rate and coefficient of
variation (CV = 1 is Poisson; real LLM services are burstier, which BurstGPT models with a Gamma fit).
Request and response lengths are long-tailed (Zipf, lognormal), and each tool type has its own duration
distribution, which is exactly what a TTL policy has to learn. All defaults are knobs, not fitted values:
fit them to your own traces.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from kvpilot.workloads.distributions import Dist, Gamma, Geometric, LogNormal, Zipf
from kvpilot.workloads.trace import TraceEvent


@dataclass(frozen=True)
class ToolSpec:
    """A tool type: how long a call takes (seconds), how many tokens its result adds, how often it is used."""

    name: str
    duration_s: Dist
    output_tokens: Dist
    weight: float = 1.0


DEFAULT_TOOLS: tuple[ToolSpec, ...] = (
    ToolSpec("search", LogNormal(1.5, 0.6), LogNormal(400, 0.8, low=1, high=8192), 0.35),
    ToolSpec("code_exec", LogNormal(6.0, 1.0), LogNormal(250, 1.0, low=1, high=8192), 0.25),
    ToolSpec("file_read", LogNormal(0.3, 0.5), LogNormal(800, 0.9, low=1, high=16384), 0.25),
    ToolSpec("web_fetch", LogNormal(3.0, 0.8), LogNormal(1200, 0.7, low=1, high=16384), 0.15),
)


@dataclass(frozen=True)
class AgentWorkload:
    """Parameters of a synthetic agent trace."""

    n_programs: int = 100
    rate: float = 0.5  # program arrivals per second
    cv: float = 2.0  # burstiness: CV of inter-arrival times (1 = Poisson)
    turns: Dist = field(default_factory=lambda: Geometric(5, low=2, high=40))
    prompt_tokens: Dist = field(default_factory=lambda: Zipf(1.2, 64, 8192))  # first turn's prompt
    response_tokens: Dist = field(default_factory=lambda: LogNormal(200, 1.0, low=1, high=4096))
    tools: tuple[ToolSpec, ...] = DEFAULT_TOOLS
    max_prompt_tokens: int | None = 32768  # agents truncate their history; prompts are capped here

    def __post_init__(self) -> None:
        if self.n_programs < 0 or self.rate <= 0 or self.cv <= 0:
            raise ValueError("need n_programs >= 0, rate > 0 and cv > 0")
        if not self.tools or sum(t.weight for t in self.tools) <= 0:
            raise ValueError("need at least one tool with a positive weight")


def gamma_arrivals(rng: np.random.Generator, n: int, rate: float, cv: float) -> np.ndarray:
    """Arrival times of n events whose gaps are Gamma(mean 1/rate, CV cv); the first arrives at its gap."""
    return np.cumsum(Gamma(1.0 / rate, cv).sample(rng, n))


def generate_agent_trace(workload: AgentWorkload, seed: int = 0) -> list[TraceEvent]:
    """All turns of all programs, ordered by nominal arrival time. Deterministic for a seed."""
    rng = np.random.default_rng(seed)
    n = workload.n_programs
    arrivals = gamma_arrivals(rng, n, workload.rate, workload.cv)
    turns = np.maximum(1, workload.turns.sample(rng, n).round().astype(int))
    total = int(turns.sum())
    first_prompt = np.maximum(1, workload.prompt_tokens.sample(rng, n).round().astype(int))
    responses = np.maximum(1, workload.response_tokens.sample(rng, total).round().astype(int))
    weights = np.array([t.weight for t in workload.tools], dtype=np.float64)
    tool_idx = rng.choice(len(workload.tools), size=total, p=weights / weights.sum())
    # Draw every tool's durations and outputs for all slots, then pick: keeps each stream independent of
    # the others' parameters, so changing one tool's distribution does not reshuffle the rest.
    durations = np.stack([t.duration_s.sample(rng, total) for t in workload.tools])
    outputs = np.stack([np.maximum(0, t.output_tokens.sample(rng, total).round()) for t in workload.tools])
    width = len(str(max(n - 1, 0)))
    events: list[TraceEvent] = []
    k = 0
    for p in range(n):
        pid = f"p{p:0{width}d}"
        clock = float(arrivals[p])
        prompt = int(first_prompt[p])
        new = prompt
        for t in range(int(turns[p])):
            last = t == turns[p] - 1
            tool = None if last else workload.tools[tool_idx[k]].name
            dur = 0.0 if last else float(durations[tool_idx[k], k])
            events.append(
                TraceEvent(
                    pid,
                    t,
                    int(turns[p]),
                    round(clock, 6),
                    prompt,
                    new,
                    int(responses[k]),
                    tool,
                    round(dur, 6),
                )
            )
            if not last:
                out = int(outputs[tool_idx[k], k])
                prompt += int(responses[k]) + out
                new = out
                if workload.max_prompt_tokens is not None and prompt > workload.max_prompt_tokens:
                    prompt = workload.max_prompt_tokens
                    new = min(new, prompt)
                clock += dur
            k += 1
    events.sort(key=lambda e: (e.arrival_s, e.program_id, e.turn))
    return events
