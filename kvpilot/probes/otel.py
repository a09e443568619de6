"""OpenTelemetry export: GenAI-standard metrics where they exist, ``kvpilot.*`` for the KV cache, spans.

The recorder thread calls `Telemetry.export(table, rows)` once per batch with the same rows it writes to
the store, so OpenTelemetry never costs the inference thread anything. The metrics of the stored tables
come from their declarations (`kvpilot.storage.schema`: each column names its instrument), handled by one
generic exporter; `TABLE_EXPORTERS` adds the tables whose mapping is not per column (cache events by kind,
request spans). Providers are injected, never set globally (the OpenTelemetry API allows one global
provider per process, and it belongs to the application): `Telemetry.from_spec` picks a provider set from
`EXPORTERS` by name ("console", "otlp", "memory", "global"). Names and units are listed in
docs/telemetry.md.
"""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from opentelemetry import metrics, trace
from opentelemetry.metrics import CallbackOptions, Observation

from kvpilot.errors import KVPilotError
from kvpilot.storage.schema import ATTR_LAYER, DURATION_BUCKETS, SAMPLES
from kvpilot.storage.tabledef import Instrument, SampleTable
from kvpilot.version import __version__

SCOPE = "kvpilot.probes"

ATTR_OPERATION = "gen_ai.operation.name"
ATTR_PROVIDER = "gen_ai.provider.name"
ATTR_MODEL = "gen_ai.request.model"
EVICT_BUCKETS = [1e-5, 5e-5, 1e-4, 5e-4, 1e-3, 5e-3, 0.01, 0.05, 0.1, 0.5, 1.0]

Rows = list[dict[str, Any]]


class Telemetry:
    """KV-cache metrics and request spans on injected OpenTelemetry providers."""

    metric_reader: Any = None  # set by `in_memory`
    span_exporter: Any = None

    def __init__(
        self,
        meter_provider: Any = None,
        tracer_provider: Any = None,
        *,
        owned: bool = False,
        attributes: Mapping[str, Any] | None = None,
    ):
        self.meter_provider = meter_provider or metrics.get_meter_provider()
        self.tracer_provider = tracer_provider or trace.get_tracer_provider()
        self._owned = owned
        self.attributes: dict[str, Any] = {ATTR_OPERATION: "text_completion", ATTR_PROVIDER: "kvpilot"}
        self.attributes.update(attributes or {})
        self._meter = meter = self.meter_provider.get_meter(SCOPE, __version__)
        self.tracer = self.tracer_provider.get_tracer(SCOPE, __version__)
        self._lock = threading.Lock()
        # latest value of each observable instrument, by its per-row attributes (e.g. the layer)
        self._latest: dict[str, dict[tuple[tuple[str, Any], ...], float]] = {}
        self._device: Any = None  # the device `hw.*` instruments describe (the newest memory row's)
        self._recorder: Any = None
        self._instruments: dict[str, Any] = {}
        for spec in SAMPLES.values():  # the stored tables' metrics, from their declarations
            for _, inst in spec.instruments():
                self._instrument(inst)
            if spec.otel.count is not None:
                self._instrument(spec.otel.count)

        h = meter.create_histogram
        self.prefill = h("kvpilot.request.prefill.duration", unit="s", description="Prefill (context compression) time",
                         explicit_bucket_boundaries_advisory=list(DURATION_BUCKETS))
        self.evict_time = h("kvpilot.kv.eviction.duration", unit="s", description="Time spent evicting, per layer",
                            explicit_bucket_boundaries_advisory=EVICT_BUCKETS)
        c = meter.create_counter
        self.evictions = c("kvpilot.kv.evictions", unit="{eviction}", description="Eviction passes per layer")
        self.evicted = c("kvpilot.kv.evicted_tokens", unit="{token}", description="Slots evicted per layer")
        self.hits = c("kvpilot.cache.hits", unit="{request}", description="Session cache hits")
        self.queries = c("kvpilot.cache.queries", unit="{request}", description="Session cache lookups")
        self.config_changes = c("kvpilot.config.changes", unit="{config}", description="Configs applied or rejected")
        self.events = c("kvpilot.events", unit="{event}", description="Cache events by kind")
        self._recorder_rows = meter.create_observable_counter(
            "kvpilot.recorder.rows", [self._recorder_cb], unit="{row}", description="Recorder rows by outcome"
        )
        self._handlers: dict[str, Callable[[Rows], None]] = {
            name: functools.partial(self._export_columns, spec) for name, spec in SAMPLES.items()
        }
        for table, handler in TABLE_EXPORTERS.items():
            self._handlers[table] = functools.partial(handler, self)

    def _instrument(self, inst: Instrument) -> Any:
        """The OpenTelemetry instrument for a declaration, created once per name."""
        if inst.name in self._instruments:
            return self._instruments[inst.name]
        m = self._meter
        if inst.kind == "histogram":
            buckets = list(inst.buckets) if inst.buckets is not None else None
            made = m.create_histogram(inst.name, unit=inst.unit, description=inst.description,
                                      explicit_bucket_boundaries_advisory=buckets)
        elif inst.kind == "counter":
            made = m.create_counter(inst.name, unit=inst.unit, description=inst.description)
        else:
            create = m.create_observable_gauge if inst.kind == "gauge" else m.create_observable_up_down_counter
            made = create(inst.name, [self._observe(inst)], unit=inst.unit, description=inst.description)
        self._instruments[inst.name] = made
        return made

    # ----- construction -------------------------------------------------------------------------------

    @classmethod
    def from_spec(cls, spec: Any, **kwargs: Any) -> Telemetry | None:
        """None/False/"none": off; True: "global"; a name from `EXPORTERS` ("global", "console", "otlp",
        "memory"); a Telemetry; or a (meter_provider, tracer_provider) pair."""
        if spec is None or spec is False or spec == "none":
            return None
        if isinstance(spec, Telemetry):
            spec.attributes.update(kwargs.get("attributes") or {})
            return spec
        if isinstance(spec, tuple) and len(spec) == 2:
            return cls(spec[0], spec[1], **kwargs)
        name = "global" if spec is True else spec
        exporter = EXPORTERS.get(name) if isinstance(name, str) else None
        if exporter is None:
            names = ", ".join(repr(n) for n in EXPORTERS)
            raise KVPilotError(f"otel={spec!r}: use True, False, {names} or a Telemetry")
        return exporter.build(**kwargs)

    @staticmethod
    def _resource() -> Any:
        from opentelemetry.sdk.resources import Resource

        return Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME", "kvpilot")})

    @classmethod
    def in_memory(cls, **kwargs: Any) -> Telemetry:
        """Local providers with an InMemoryMetricReader (`.metric_reader`) and span exporter (`.span_exporter`)."""
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import InMemoryMetricReader
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

        reader, exporter = InMemoryMetricReader(), InMemorySpanExporter()
        mp = MeterProvider(metric_readers=[reader], resource=cls._resource())
        tp = TracerProvider(resource=cls._resource())
        tp.add_span_processor(SimpleSpanProcessor(exporter))
        tel = cls(mp, tp, owned=True, **kwargs)
        tel.metric_reader, tel.span_exporter = reader, exporter
        return tel

    @classmethod
    def console(cls, interval_s: float = 10.0, **kwargs: Any) -> Telemetry:
        """Metrics and spans printed to stdout (metrics every ``interval_s``)."""
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import ConsoleMetricExporter, PeriodicExportingMetricReader
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

        reader = PeriodicExportingMetricReader(ConsoleMetricExporter(), export_interval_millis=interval_s * 1000)
        tp = TracerProvider(resource=cls._resource())
        tp.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
        return cls(MeterProvider(metric_readers=[reader], resource=cls._resource()), tp, owned=True, **kwargs)

    @classmethod
    def otlp(cls, endpoint: str | None = None, interval_s: float = 10.0, **kwargs: Any) -> Telemetry:
        """OTLP over HTTP (the ``otlp`` extra); endpoint from OTEL_EXPORTER_OTLP_ENDPOINT when not given."""
        try:
            from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        except ImportError as exc:
            raise KVPilotError(
                f"OTLP export needs the otlp extra: pip install 'kvpilot[otlp]' ({exc})"
            ) from None
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        base = endpoint.rstrip("/") if endpoint else None
        m_exp = OTLPMetricExporter(endpoint=f"{base}/v1/metrics") if base else OTLPMetricExporter()
        s_exp = OTLPSpanExporter(endpoint=f"{base}/v1/traces") if base else OTLPSpanExporter()
        reader = PeriodicExportingMetricReader(m_exp, export_interval_millis=interval_s * 1000)
        tp = TracerProvider(resource=cls._resource())
        tp.add_span_processor(BatchSpanProcessor(s_exp))
        return cls(MeterProvider(metric_readers=[reader], resource=cls._resource()), tp, owned=True, **kwargs)

    def bind_recorder(self, recorder: Any) -> None:
        self._recorder = recorder

    def shutdown(self) -> None:
        """Flush and shut down providers this object created (never the application's)."""
        if not self._owned:
            return
        providers: tuple[Any, ...] = (self.meter_provider, self.tracer_provider)  # SDK providers: owned
        for provider in providers:
            try:
                provider.force_flush()
                provider.shutdown()
            except Exception:  # exporters may already be closed
                pass

    # ----- observable callbacks (run at collection time) -------------------------------------------------

    def _observe(self, inst: Instrument) -> Callable[[CallbackOptions], Iterable[Observation]]:
        """Report the latest value(s) recorded for `inst`, with its per-row and `hw.*` attributes."""

        def callback(options: CallbackOptions) -> Iterable[Observation]:
            with self._lock:
                items = list(self._latest.get(inst.name, {}).items())
                device = self._device
            hw = {"hw.id": device or "0", "hw.type": "gpu"} if inst.hw else {}
            return [Observation(value, {**dict(key), **hw}) for key, value in items]

        return callback

    def _recorder_cb(self, options: CallbackOptions) -> Iterable[Observation]:
        if self._recorder is None:
            return []
        c = dict(self._recorder.counters)
        return [
            Observation(c.get(k, 0), {"kvpilot.outcome": k.removesuffix("_rows")})
            for k in ("written_rows", "spooled_rows", "replayed_rows", "dropped_rows")
        ]

    # ----- export (recorder thread) ---------------------------------------------------------------------

    def export(self, table: str, rows: Rows) -> None:
        """Record one batch of a table's rows (the same rows the store gets), or of request spans."""
        handler = self._handlers.get(table)
        if handler is not None:
            handler(rows)

    def _export_columns(self, spec: SampleTable[Any], rows: Rows) -> None:
        """A stored table's metrics, as its declaration maps its columns (`Instrument`s)."""
        table = spec.otel
        columns = spec.instruments()
        base = self.attributes
        for r in rows:
            if table.rows is not None and not table.rows(r):
                continue
            per_row = tuple((attr, r.get(col)) for attr, col in table.attributes)
            if table.count is not None:
                self._instrument(table.count).add(1, base)
            if table.hw_id is not None and r.get(table.hw_id) is not None:
                with self._lock:
                    self._device = r[table.hw_id]
            for col, inst in columns:
                value = r.get(col)
                if value is None or (inst.when is not None and not inst.when(r)):
                    continue
                value = value * inst.scale if inst.scale != 1.0 else value
                if inst.kind in ("histogram", "counter"):
                    attrs = {**base, **dict(inst.attributes), **dict(per_row)}
                    made = self._instrument(inst)
                    (made.record if inst.kind == "histogram" else made.add)(value, attrs)
                else:
                    with self._lock:
                        self._latest.setdefault(inst.name, {})[per_row] = value

    def _export_cache_events(self, rows: Rows) -> None:
        """Events by kind: evictions per layer, session hits and lookups, config changes."""
        a = self.attributes
        for r in rows:
            kind, count = r["kind"], int(r.get("count") or 1)
            self.events.add(count, {**a, "kvpilot.event": kind})
            detail = r.get("detail") or {}
            if kind == "evict":
                attrs = {**a, ATTR_LAYER: r.get("layer", -1)}
                self.evictions.add(count, attrs)
                if detail.get("tokens"):
                    self.evicted.add(int(detail["tokens"]), attrs)
                if detail.get("seconds") is not None:
                    self.evict_time.record(float(detail["seconds"]), attrs)
            elif kind in ("hit", "miss"):
                self.queries.add(count, a)
                if kind == "hit":
                    self.hits.add(count, a)
            elif kind in ("config_applied", "config_rejected"):
                self.config_changes.add(count, {**a, "kvpilot.status": kind.removeprefix("config_")})

    def _export_spans(self, rows: Rows) -> None:
        """Spans of finished requests, with their measured start and end times (epoch ns)."""
        for r in rows:
            parent = self.tracer.start_span(
                r["name"], start_time=r["start_ns"], attributes={**self.attributes, **r.get("attributes", {})}
            )
            ctx = trace.set_span_in_context(parent)
            for child in r.get("children", []):
                span = self.tracer.start_span(
                    child["name"], context=ctx, start_time=child["start_ns"], attributes=child.get("attributes", {})
                )
                span.end(end_time=child["end_ns"])
                if child["name"] == "kvpilot.prefill":
                    self.prefill.record((child["end_ns"] - child["start_ns"]) / 1e9, self.attributes)
            parent.end(end_time=r["end_ns"])


# Tables whose rows are not mapped column by column: handled by these Telemetry methods instead.
TABLE_EXPORTERS: dict[str, Callable[[Telemetry, Rows], None]] = {
    "cache_events": Telemetry._export_cache_events,
    "spans": Telemetry._export_spans,  # request span trees from the latency probe, never stored
}


@dataclass(frozen=True)
class ExporterSpec:
    """A named set of OpenTelemetry providers `attach(otel=NAME)` can build."""

    name: str
    description: str
    build: Callable[..., Telemetry]
    extra: str | None = None  # the pip extra it needs, if any


EXPORTERS: dict[str, ExporterSpec] = {}


def register_exporter(spec: ExporterSpec) -> ExporterSpec:
    """Add a provider set by name (registering a name twice is a mistake, not an override)."""
    if spec.name in EXPORTERS or spec.name == "none":
        raise ValueError(f"OpenTelemetry exporter {spec.name!r} is already registered")
    EXPORTERS[spec.name] = spec
    return spec


register_exporter(ExporterSpec("global", "the application's global providers (nothing unless it set up the SDK)",
                               lambda **kw: Telemetry(**kw)))
register_exporter(ExporterSpec("console", "metrics and spans printed to stdout", Telemetry.console))
register_exporter(ExporterSpec("otlp", "OTLP over HTTP to $OTEL_EXPORTER_OTLP_ENDPOINT", Telemetry.otlp, extra="otlp"))
register_exporter(ExporterSpec("memory", "in-memory reader and span exporter (tests)", Telemetry.in_memory))
