"""Latency: one request row (TTFT, TPOT, end-to-end, sizes) and one span tree per request.

Times come from the engine's own GenerationResult (TTFT, TPOT, prefill) and from the probe set's clock
(end-to-end, from the cache's first forward, or from the previous question on the same cache). Spans
are built in the recorder thread with these measured start and end times: a request span with
``kvpilot.prefill``, ``kvpilot.decode`` and ``kvpilot.evict`` children (the eviction child covers the
summed eviction time, starting at the first eviction).
"""

from __future__ import annotations

from typing import Any

from kvpilot.probes.base import Probe, ProbeContext, RequestContext


def _ns(t: float) -> int:
    return int(t * 1e9)


class LatencyProbe(Probe):
    """Requests table rows and request spans."""

    name = "latency"

    def __init__(self, *, model_name: str | None = None, spans: bool = True):
        super().__init__()
        self.model_name = model_name
        self.spans = spans

    @classmethod
    def from_context(cls, context: ProbeContext) -> LatencyProbe:
        return cls(model_name=context.model_name)

    def on_request(self, req: RequestContext, out: Any) -> None:
        r = req.result
        n_out = len(r.token_ids)
        out.submit(
            "requests",
            [{
                "ts": req.ts,
                "prompt_tokens": int(r.prompt_tokens),
                "output_tokens": n_out,
                "ttft_s": float(r.ttft_s),
                "tpot_s": float(r.tpot_s) if n_out > 1 else None,
                "e2e_s": float(req.e2e_s),
                "kv_bytes": int(r.kv_bytes),
                "compression_ratio": float(r.compression_ratio),
                "config_version": req.config_version,
            }],
        )
        if self.spans:
            out.submit("spans", [self.span(req)])

    def span(self, req: RequestContext) -> dict[str, Any]:
        """The span tree of one request as plain data (`Telemetry` turns it into spans)."""
        r = req.result
        start, end = req.start_wall, req.ts
        ttft_here = r.ttft_s if req.first_question else max(r.ttft_s - r.prefill_s, 0.0)
        children = []
        if req.first_question:
            children.append({"name": "kvpilot.prefill", "start_ns": _ns(start),
                             "end_ns": _ns(min(start + r.prefill_s, end)),
                             "attributes": {"gen_ai.usage.input_tokens": int(r.prompt_tokens)}})
        children.append({"name": "kvpilot.decode", "start_ns": _ns(min(start + ttft_here, end)), "end_ns": _ns(end),
                         "attributes": {"gen_ai.usage.output_tokens": len(r.token_ids)}})
        if req.evict_seconds > 0 and req.evict_first_wall is not None:
            passes = int(sum(v[0] for v in req.evictions.values()))
            slots = int(sum(v[1] for v in req.evictions.values()))
            t0 = req.evict_first_wall
            children.append({"name": "kvpilot.evict", "start_ns": _ns(t0), "end_ns": _ns(t0 + req.evict_seconds),
                             "attributes": {"kvpilot.evictions": passes, "kvpilot.evicted_tokens": slots,
                                            "kvpilot.eviction.seconds_total": req.evict_seconds}})
        cfg = r.config
        attrs = {
            "gen_ai.usage.input_tokens": int(r.prompt_tokens),
            "gen_ai.usage.output_tokens": len(r.token_ids),
            "kvpilot.ttft_s": float(r.ttft_s),
            "kvpilot.kv.bytes": int(r.kv_bytes),
            "kvpilot.kv.peak_bytes": int(r.peak_kv_bytes),
            "kvpilot.kv.logical_bytes": int(r.logical_kv_bytes),
            "kvpilot.kv.compression_ratio": float(r.compression_ratio),
            "kvpilot.config.policy": cfg.policy,
            "kvpilot.sampled": bool(req.state.sampled),
            "kvpilot.question_index": req.state.questions - 1,
        }
        name = f"text_completion {self.model_name}" if self.model_name else "text_completion"
        return {"name": name, "start_ns": _ns(start), "end_ns": _ns(end), "attributes": attrs, "children": children}
