"""Agent-session traces as JSONL: one LLM turn per line, the file a replay drives.

See docs/workloads.md for the field meanings. Reading validates every line and names the line and field
that are wrong, because a replay that silently skips turns would measure the wrong thing.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from dataclasses import asdict, dataclass, fields
from typing import Any

from kvpilot.inputs import InputError, loads, read_text


@dataclass(frozen=True)
class TraceEvent:
    """One LLM turn of one program.

    `arrival_s` is nominal: the program's arrival plus the tool durations before this turn, as if the
    model answered instantly. A closed-loop replay uses it only for turn 0 and issues turn t+1 when turn t
    has finished and `tool_duration_s` has passed. `prompt_tokens` is the whole prompt including history;
    `new_tokens` is the part not already in the previous turn's prompt and response (the tool result), i.e.
    what must be prefilled when the previous turn's KV is still cached.
    """

    program_id: str
    turn: int
    n_turns: int
    arrival_s: float
    prompt_tokens: int
    new_tokens: int
    response_tokens: int
    tool: str | None  # tool called after this turn; None on a program's last turn
    tool_duration_s: float


_TYPES = {
    "program_id": (str,),
    "turn": (int,),
    "n_turns": (int,),
    "arrival_s": (int, float),
    "prompt_tokens": (int,),
    "new_tokens": (int,),
    "response_tokens": (int,),
    "tool": (str, type(None)),
    "tool_duration_s": (int, float),
}


def write_trace(events: list[TraceEvent], path: str | os.PathLike) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        for e in events:
            fh.write(json.dumps(asdict(e)) + "\n")


_FIELDS = tuple(f.name for f in fields(TraceEvent))


def _event(obj: object) -> TraceEvent:
    if not isinstance(obj, dict):
        raise ValueError("not a JSON object")
    values: dict[str, Any] = {}
    for name in _FIELDS:
        if name not in obj:
            raise ValueError(f"missing field {name!r}")
        value = obj[name]
        if isinstance(value, bool) or not isinstance(value, _TYPES[name]):
            raise ValueError(f"field {name!r} has the wrong type ({type(value).__name__})")
        values[name] = value
    values["arrival_s"] = float(values["arrival_s"])
    values["tool_duration_s"] = float(values["tool_duration_s"])
    e = TraceEvent(**values)
    if not 0 <= e.turn < e.n_turns:
        raise ValueError("turn must be in 0..n_turns-1")
    if e.prompt_tokens < 1 or e.response_tokens < 0 or not 0 <= e.new_tokens <= e.prompt_tokens:
        raise ValueError("token counts out of range (need prompt >= 1, 0 <= new <= prompt, response >= 0)")
    if e.tool_duration_s < 0 or e.arrival_s < 0:
        raise ValueError("times must be >= 0")
    return e


def read_trace(path: str | os.PathLike) -> list[TraceEvent]:
    """Read a trace; raises ValueError naming the first bad line. Unknown extra fields are ignored."""
    events: list[TraceEvent] = []
    for n, raw in enumerate(read_text(path, "trace file").split("\n"), start=1):
        if not raw.strip():
            continue
        try:
            events.append(_event(loads(raw)))
        except (ValueError, TypeError) as exc:  # InputError is a ValueError
            raise InputError(f"trace file {path}: line {n}: {exc}") from None
    return events


def programs(events: list[TraceEvent]) -> dict[str, list[TraceEvent]]:
    """Events grouped by program, each list in turn order; checks that no turn is missing."""
    grouped: dict[str, list[TraceEvent]] = defaultdict(list)
    for e in events:
        grouped[e.program_id].append(e)
    for pid, turns in grouped.items():
        turns.sort(key=lambda e: e.turn)
        if [e.turn for e in turns] != list(range(turns[0].n_turns)):
            raise ValueError(
                f"program {pid} has turns {[e.turn for e in turns]}, expected 0..{turns[0].n_turns - 1}"
            )
    return dict(grouped)
