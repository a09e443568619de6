"""Probes inside the engine: attention skew, layer sensitivity, memory pressure, latency and events.

    import kvpilot
    handle = kvpilot.attach(engine, store=url, deployment="chat")   # probes + recorder + config watcher

Parts: `skew` (metrics of sampled attention rows), `memory` (KV bytes, torch.cuda, NVML, RSS),
`latency` (request rows and spans), `events` (evictions per layer), `observer` (the ProbeSet the engine
calls, sampling, registry), `recorder` (bounded queue, background writer, spool), `otel` (OpenTelemetry
instruments), `sensitivity` (offline layer profiler). Metric names: docs/telemetry.md.
"""

import importlib
from typing import Any

# Exported names -> submodule. Loaded on first use (PEP 562) so that importing a torch-free part
# (recorder, spool, OpenTelemetry) or `kvpilot.attach` does not import torch.
_EXPORTS = {
    "CacheState": "base", "Probe": "base", "RequestContext": "base", "SampledForward": "base",
    "SamplingPolicy": "base", "EvictionProbe": "events", "LatencyProbe": "latency",
    "DeviceMemoryProbe": "memory", "MemoryProbe": "memory", "process_rss": "memory",
    "DEFAULT_PROBES": "observer", "PROBES": "observer", "ProbeSet": "observer", "build_probes": "observer",
    "Telemetry": "otel", "Recorder": "recorder", "METRICS": "skew", "SkewParams": "skew", "SkewProbe": "skew",
    "skew_dict": "skew", "skew_metrics": "skew", "Part": "spool", "Spool": "spool",
}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"kvpilot.probes.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'kvpilot.probes' has no attribute {name!r}")


__all__ = [
    "DEFAULT_PROBES",
    "METRICS",
    "PROBES",
    "CacheState",
    "DeviceMemoryProbe",
    "EvictionProbe",
    "LatencyProbe",
    "MemoryProbe",
    "Part",
    "Probe",
    "ProbeSet",
    "Recorder",
    "RequestContext",
    "SampledForward",
    "SamplingPolicy",
    "SkewParams",
    "SkewProbe",
    "Spool",
    "Telemetry",
    "build_probes",
    "process_rss",
    "skew_dict",
    "skew_metrics",
]
