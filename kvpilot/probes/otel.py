"""OpenTelemetry export: GenAI-standard metrics where they exist, ``kvpilot.*`` for the KV cache, spans.

The recorder thread calls `Telemetry.export(table, rows)` once per batch with the same rows it writes to
the store, so OpenTelemetry never costs the inference thread anything. Providers are injected, never set
globally (the OpenTelemetry API allows one global provider per process, and it belongs to the
application): `Telemetry.from_spec` builds local ones for "console", "otlp" and "memory", or uses the
application's global providers for True. Names and units are listed in docs/telemetry.md.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable, Mapping
from typing import Any

from opentelemetry import metrics, trace
from opentelemetry.metrics import CallbackOptions, Observation

from kvpilot.errors import KVPilotError

SCOPE = "kvpilot.probes"

# GenAI semantic conventions (Development stability); strings copied here so that a semconv package
# upgrade cannot rename them under us.
TTFT = "gen_ai.server.time_to_first_token"
TPOT = "gen_ai.server.time_per_output_token"
REQUEST_DURATION = "gen_ai.server.request.duration"
TOKEN_USAGE = "gen_ai.client.token.usage"
ATTR_OPERATION = "gen_ai.operation.name"
ATTR_PROVIDER = "gen_ai.provider.name"
ATTR_MODEL = "gen_ai.request.model"
ATTR_TOKEN_TYPE = "gen_ai.token.type"

TTFT_BUCKETS = [0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0]
TPOT_BUCKETS = [0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5]
DURATION_BUCKETS = [0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92]
TOKEN_BUCKETS = [4**i for i in range(14)]
FRACTION_BUCKETS = [0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99, 0.999, 1.0]
COUNT_BUCKETS = [2**i for i in range(18)]
EVICT_BUCKETS = [1e-5, 5e-5, 1e-4, 5e-4, 1e-3, 5e-3, 0.01, 0.05, 0.1, 0.5, 1.0]

SKEW_FIELDS = ("entropy", "retained_mass", "tokens_90", "sink_mass", "recent_mass", "gini")
ATTR_LAYER = "kvpilot.layer"


class Telemetry:
    """KV-cache metrics and request spans on injected OpenTelemetry providers."""

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
        from kvpilot import __version__

        meter = self.meter_provider.get_meter(SCOPE, __version__)
        self.tracer = self.tracer_provider.get_tracer(SCOPE, __version__)
        self._lock = threading.Lock()
        self._last: dict[str, float] = {}  # last memory readings, read by the observable instruments
        self._layer_bytes: dict[int, float] = {}
        self._recorder: Any = None

        h = meter.create_histogram
        self.ttft = h(TTFT, unit="s", description="Time to first token", explicit_bucket_boundaries_advisory=TTFT_BUCKETS)
        self.tpot = h(TPOT, unit="s", description="Time per output token after the first",
                      explicit_bucket_boundaries_advisory=TPOT_BUCKETS)
        self.duration = h(REQUEST_DURATION, unit="s", description="Request duration",
                          explicit_bucket_boundaries_advisory=DURATION_BUCKETS)
        self.tokens = h(TOKEN_USAGE, unit="{token}", description="Input and output tokens per request",
                        explicit_bucket_boundaries_advisory=TOKEN_BUCKETS)
        self.prefill = h("kvpilot.request.prefill.duration", unit="s", description="Prefill (context compression) time",
                         explicit_bucket_boundaries_advisory=DURATION_BUCKETS)
        self.ratio = h("kvpilot.kv.compression_ratio", unit="1", description="1 - physical/logical KV bytes per request",
                       explicit_bucket_boundaries_advisory=FRACTION_BUCKETS)
        self.skew = {
            f: h(f"kvpilot.attention.{f}", unit="{token}" if f == "tokens_90" else "1",
                 description=f"Attention skew: {f} of sampled rows, per layer",
                 explicit_bucket_boundaries_advisory=COUNT_BUCKETS if f == "tokens_90" else FRACTION_BUCKETS)
            for f in SKEW_FIELDS
        }
        self.evict_time = h("kvpilot.kv.eviction.duration", unit="s", description="Time spent evicting, per layer",
                            explicit_bucket_boundaries_advisory=EVICT_BUCKETS)
        c = meter.create_counter
        self.evictions = c("kvpilot.kv.evictions", unit="{eviction}", description="Eviction passes per layer")
        self.evicted = c("kvpilot.kv.evicted_tokens", unit="{token}", description="Slots evicted per layer")
        self.hits = c("kvpilot.cache.hits", unit="{request}", description="Session cache hits")
        self.queries = c("kvpilot.cache.queries", unit="{request}", description="Session cache lookups")
        self.config_changes = c("kvpilot.config.changes", unit="{config}", description="Configs applied or rejected")
        self.events = c("kvpilot.events", unit="{event}", description="Cache events by kind")
        self.requests = c("kvpilot.requests", unit="{request}", description="Requests observed")

        o = meter.create_observable_up_down_counter
        g = meter.create_observable_gauge
        self._observables = [
            o("kvpilot.kv.physical_bytes", [self._cb("kv_bytes_physical")], unit="By",
              description="KV bytes held by the last request's cache"),
            o("kvpilot.kv.logical_bytes", [self._cb("kv_bytes_logical")], unit="By",
              description="KV bytes an uncompressed cache would hold"),
            o("kvpilot.kv.peak_bytes", [self._cb("kv_bytes_peak")], unit="By", description="Peak KV bytes"),
            o("kvpilot.kv.layer.bytes", [self._layer_cb], unit="By", description="KV bytes per layer"),
            o("kvpilot.device.memory.allocated", [self._cb("device_allocated")], unit="By",
              description="torch.cuda allocated bytes"),
            o("kvpilot.device.memory.reserved", [self._cb("device_reserved")], unit="By",
              description="torch.cuda reserved bytes"),
            o("kvpilot.device.memory.peak", [self._cb("device_peak")], unit="By",
              description="torch.cuda peak allocated bytes"),
            o("hw.gpu.memory.usage", [self._cb("nvml_used", hw=True)], unit="By", description="NVML used bytes"),
            o("hw.gpu.memory.limit", [self._cb("nvml_total", hw=True)], unit="By", description="NVML total bytes"),
            g("hw.gpu.utilization", [self._cb("nvml_util", hw=True, scale=0.01)], unit="1",
              description="NVML GPU utilisation"),
            o("process.memory.usage", [self._cb("rss_bytes")], unit="By", description="Process resident set size"),
            meter.create_observable_counter("kvpilot.recorder.rows", [self._recorder_cb], unit="{row}",
                                            description="Recorder rows by outcome"),
        ]

    # ----- construction -------------------------------------------------------------------------------

    @classmethod
    def from_spec(cls, spec: Any, **kwargs: Any) -> Telemetry | None:
        """None/False: off; True/"global": the application's providers; "console", "otlp", "memory";
        a Telemetry; or a (meter_provider, tracer_provider) pair."""
        if spec is None or spec is False or spec == "none":
            return None
        if isinstance(spec, Telemetry):
            spec.attributes.update(kwargs.get("attributes") or {})
            return spec
        if spec is True or spec == "global":
            return cls(**kwargs)
        if isinstance(spec, tuple) and len(spec) == 2:
            return cls(spec[0], spec[1], **kwargs)
        if spec == "console":
            return cls.console(**kwargs)
        if spec == "otlp":
            return cls.otlp(**kwargs)
        if spec == "memory":
            return cls.in_memory(**kwargs)
        raise KVPilotError(f"otel={spec!r}: use True, False, 'console', 'otlp', 'memory' or a Telemetry")

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
        for provider in (self.meter_provider, self.tracer_provider):
            try:
                provider.force_flush()
                provider.shutdown()
            except Exception:  # exporters may already be closed
                pass

    # ----- observable callbacks (run at collection time) -------------------------------------------------

    def _cb(self, key: str, *, hw: bool = False, scale: float = 1.0):
        def callback(options: CallbackOptions) -> Iterable[Observation]:
            with self._lock:
                value = self._last.get(key)
                device = self._last.get("_device")
            if value is None:
                return []
            attrs = {"hw.id": device or "0", "hw.type": "gpu"} if hw else {}
            return [Observation(value * scale, attrs)]

        return callback

    def _layer_cb(self, options: CallbackOptions) -> Iterable[Observation]:
        with self._lock:
            items = list(self._layer_bytes.items())
        return [Observation(v, {ATTR_LAYER: layer}) for layer, v in items]

    def _recorder_cb(self, options: CallbackOptions) -> Iterable[Observation]:
        if self._recorder is None:
            return []
        c = dict(self._recorder.counters)
        return [
            Observation(c.get(k, 0), {"kvpilot.outcome": k.removesuffix("_rows")})
            for k in ("written_rows", "spooled_rows", "replayed_rows", "dropped_rows")
        ]

    # ----- export (recorder thread) ---------------------------------------------------------------------

    def export(self, table: str, rows: list[dict[str, Any]]) -> None:
        fn = getattr(self, f"_export_{table}", None)
        if fn is not None:
            fn(rows)

    def _export_requests(self, rows: list[dict[str, Any]]) -> None:
        a = self.attributes
        for r in rows:
            self.requests.add(1, a)
            if r.get("ttft_s") is not None:
                self.ttft.record(r["ttft_s"], a)
            if r.get("tpot_s") is not None and (r.get("output_tokens") or 0) > 1:
                self.tpot.record(r["tpot_s"], a)
            if r.get("e2e_s") is not None:
                self.duration.record(r["e2e_s"], a)
            if r.get("prompt_tokens") is not None:
                self.tokens.record(r["prompt_tokens"], {**a, ATTR_TOKEN_TYPE: "input"})
            if r.get("output_tokens") is not None:
                self.tokens.record(r["output_tokens"], {**a, ATTR_TOKEN_TYPE: "output"})
            if r.get("compression_ratio") is not None:
                self.ratio.record(r["compression_ratio"], a)

    def _export_layer_stats(self, rows: list[dict[str, Any]]) -> None:
        a = self.attributes
        for r in rows:
            if r.get("head", -1) != -1:
                continue  # per-head rows stay in the store: layer is the metric's finest attribute
            attrs = {**a, ATTR_LAYER: r["layer"]}
            if r.get("entropy") is not None:
                for f in SKEW_FIELDS:
                    if r.get(f) is not None:
                        self.skew[f].record(r[f], attrs)
            elif r.get("kv_bytes") is not None:
                with self._lock:
                    self._layer_bytes[r["layer"]] = r["kv_bytes"]

    def _export_memory_samples(self, rows: list[dict[str, Any]]) -> None:
        if not rows:
            return
        with self._lock:
            for r in rows:
                for k, v in r.items():
                    if v is not None and k not in ("ts", "instance_id", "run_id"):
                        self._last["_device" if k == "device" else k] = v

    def _export_cache_events(self, rows: list[dict[str, Any]]) -> None:
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

    def _export_spans(self, rows: list[dict[str, Any]]) -> None:
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
