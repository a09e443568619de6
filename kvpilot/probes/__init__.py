"""Probes inside the engine: attention skew, layer sensitivity, memory pressure, latency and events.

    import kvpilot
    handle = kvpilot.attach(engine, store=url, deployment="chat")   # probes + recorder + config watcher

Parts: `skew` (metrics of sampled attention rows), `memory` (KV bytes, torch.cuda, NVML, RSS),
`latency` (request rows and spans), `events` (evictions per layer), `observer` (the ProbeSet the engine
calls, sampling, registry), `recorder` (bounded queue, background writer, spool), `otel` (OpenTelemetry
instruments), `sensitivity` (offline layer profiler). Metric names: docs/telemetry.md.
"""

from kvpilot.probes.base import CacheState, Probe, RequestContext, SampledForward, SamplingPolicy
from kvpilot.probes.events import EvictionProbe
from kvpilot.probes.latency import LatencyProbe
from kvpilot.probes.memory import DeviceMemoryProbe, MemoryProbe, process_rss
from kvpilot.probes.observer import DEFAULT_PROBES, PROBES, ProbeSet, build_probes
from kvpilot.probes.otel import Telemetry
from kvpilot.probes.recorder import Recorder
from kvpilot.probes.skew import METRICS, SkewParams, SkewProbe, skew_dict, skew_metrics
from kvpilot.probes.spool import Part, Spool

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
