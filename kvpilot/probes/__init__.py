"""Probes inside the engine: attention skew, memory pressure, latency and evictions.

    import kvpilot
    handle = kvpilot.attach(engine, store=url, deployment="chat")   # probes + recorder + config watcher

Parts: `skew` (metrics of sampled attention rows), `memory` (KV bytes, torch.cuda, NVML, RSS),
`latency` (request rows and spans), `events` (evictions per layer), `registry` (the probes by name,
with what each records, where and at what cost), `observer` (the ProbeSet the engine calls, sampling),
`recorder` (bounded queue, background writer, spool), `otel` (OpenTelemetry instruments). The offline
layer-sensitivity profiler is `kvpilot.evaluation.sensitivity`. Metric names: docs/telemetry.md.
"""

import importlib
from typing import Any

# Exported names -> submodule. Loaded on first use (PEP 562) so that importing a torch-free part
# (recorder, spool, OpenTelemetry) or `kvpilot.attach` does not import torch.
_EXPORTS = {
    "CacheState": "base", "Probe": "base", "RequestContext": "base", "SampledForward": "base",
    "SamplingPolicy": "base", "EvictionProbe": "events", "LatencyProbe": "latency",
    "DeviceMemoryProbe": "memory", "MemoryProbe": "memory", "process_rss": "memory",
    "ProbeContext": "base", "DEFAULT_PROBES": "registry", "PROBES": "registry", "ProbeSpec": "registry",
    "build_probes": "registry", "register_probe": "registry", "ProbeSet": "observer",
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
    "ProbeContext",
    "ProbeSet",
    "ProbeSpec",
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
    "register_probe",
    "skew_dict",
    "skew_metrics",
]
