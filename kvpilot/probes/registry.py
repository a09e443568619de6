"""The probes `kvpilot.attach` can put on an engine: one torch-free spec per probe, looked up by name.

Adding a probe is one file (a `kvpilot.probes.base.Probe` subclass; override `from_context` if it takes
options) plus one `register_probe(ProbeSpec(...))` line below. The spec names the class as
"module:Class", so reading the registry (docs, CLI help, the dashboard) imports no probe and no torch;
the class loads only when a probe is built.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from kvpilot.plugins import UnknownPluginError
from kvpilot.probes.base import ProbeContext, SamplingPolicy

if TYPE_CHECKING:
    from kvpilot.probes.base import Probe


class UnknownProbeError(UnknownPluginError, ValueError):
    """A probe name the registry does not have; the message lists the known ones."""


@dataclass(frozen=True)
class ProbeSpec:
    """One probe: its name, the class that implements it, what it records, where and at what cost."""

    name: str
    target: str  # "package.module:ClassName" of the Probe subclass
    records: str  # what one row says, in a sentence
    tables: tuple[str, ...]  # the stored tables (kvpilot.storage) its rows go to
    cost: str  # what it costs the inference thread, for people choosing probes
    default: bool = True  # on when `attach(probes=None)`

    def load(self) -> type[Probe]:
        """The probe class (imports its module, which may import torch)."""
        module, _, attr = self.target.partition(":")
        cls = getattr(importlib.import_module(module), attr)
        if not (isinstance(cls, type) and hasattr(cls, "from_context")):
            raise TypeError(f"probe {self.name!r}: {self.target} is not a Probe class")
        return cls

    def build(self, context: ProbeContext) -> Probe:
        return self.load().from_context(context)


PROBES: dict[str, ProbeSpec] = {}


def register_probe(spec: ProbeSpec) -> ProbeSpec:
    """Add a probe to the registry (a name registered twice is a mistake, not an override)."""
    if spec.name in PROBES:
        raise ValueError(f"probe {spec.name!r} is already registered ({PROBES[spec.name].target})")
    if ":" not in spec.target:
        raise ValueError(f"probe {spec.name!r}: target must be 'module:Class', got {spec.target!r}")
    PROBES[spec.name] = spec
    return spec


def probe_spec(name: str) -> ProbeSpec:
    try:
        return PROBES[name]
    except KeyError:
        raise UnknownProbeError(f"unknown probe {name!r}; choose from {', '.join(PROBES)}") from None


def default_probes() -> tuple[str, ...]:
    return tuple(name for name, spec in PROBES.items() if spec.default)


def build_probes(
    names: Iterable[str],
    *,
    policy: SamplingPolicy,
    model_name: str | None = None,
    device: Any = None,
    proxy_budget: int | None = None,
) -> list[Probe]:
    """Instantiate probes by registry name; each takes what it needs from one `ProbeContext`."""
    specs = [probe_spec(name) for name in names]  # every name checked before anything is built
    context = ProbeContext(policy=policy, model_name=model_name, device=device, proxy_budget=proxy_budget)
    return [spec.build(context) for spec in specs]


# ----- the registry: one line per probe -------------------------------------------------------------

register_probe(ProbeSpec(
    "skew", "kvpilot.probes.skew:SkewProbe",
    records="attention concentration per layer and query head (entropy, retained mass at the budget, "
            "tokens for 90 %, sink and recent mass, Gini) of sampled attention rows",
    tables=("layer_stats",),
    cost="sampled forwards only: one statistics kernel per layer; the metrics run in the recorder thread",
))
register_probe(ProbeSpec(
    "latency", "kvpilot.probes.latency:LatencyProbe",
    records="one row per request (TTFT, TPOT, end-to-end, sizes), and its span tree for OpenTelemetry",
    tables=("requests",),
    cost="every request: a few host-side numbers; spans are built in the recorder thread",
))
register_probe(ProbeSpec(
    "memory", "kvpilot.probes.memory:MemoryProbe",
    records="KV bytes (total and per layer), torch.cuda allocator counters, NVML used/utilisation, RSS",
    tables=("memory_samples", "layer_stats"),
    cost="every request: host-side counters; NVML and RSS are read in the recorder thread, rate-limited",
))
register_probe(ProbeSpec(
    "evictions", "kvpilot.probes.events:EvictionProbe",
    records="evictions per layer and request: passes, evicted tokens, bytes, seconds",
    tables=("cache_events",),
    cost="every eviction: a dict update; one row per layer per request",
))

DEFAULT_PROBES = default_probes()
