"""Offline workloads: passkey, RULER-like tasks, long conversational QA, agent-session traces, user JSONL.

Everything is generated locally from a seed (no downloads) and sized in tokens of the model's own
tokenizer, which is passed in: this package does not import torch.
"""

from kvpilot.workloads.agent import (
    DEFAULT_TOOLS,
    AgentWorkload,
    ToolSpec,
    gamma_arrivals,
    generate_agent_trace,
)
from kvpilot.workloads.jsonl import LineError, load_jsonl, write_jsonl
from kvpilot.workloads.registry import (
    NIAH_TASKS,
    WORKLOADS,
    JsonlLoadError,
    check_workload,
    generate,
    load_workload,
    resolve,
)
from kvpilot.workloads.sample import QA, Sample
from kvpilot.workloads.scoring import (
    first_integer,
    metric_for,
    passkey_match,
    string_match_all,
    string_match_part,
)
from kvpilot.workloads.sizing import TOLERANCE, TargetTooSmallError, count_tokens
from kvpilot.workloads.spec import UnknownTaskError, WorkloadSpec, WorkloadSpecError
from kvpilot.workloads.trace import TraceEvent, programs, read_trace, write_trace

__all__ = [
    "DEFAULT_TOOLS",
    "NIAH_TASKS",
    "QA",
    "TOLERANCE",
    "WORKLOADS",
    "AgentWorkload",
    "JsonlLoadError",
    "LineError",
    "Sample",
    "TargetTooSmallError",
    "ToolSpec",
    "TraceEvent",
    "UnknownTaskError",
    "WorkloadSpec",
    "WorkloadSpecError",
    "check_workload",
    "count_tokens",
    "first_integer",
    "gamma_arrivals",
    "generate",
    "generate_agent_trace",
    "load_jsonl",
    "load_workload",
    "metric_for",
    "passkey_match",
    "programs",
    "read_trace",
    "resolve",
    "string_match_all",
    "string_match_part",
    "write_jsonl",
    "write_trace",
]
