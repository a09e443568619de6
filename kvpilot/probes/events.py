"""Evictions per layer: one ``evict`` event row per layer and request (passes, slots, bytes, seconds).

The managed cache tells the probe set about every eviction (``ManagedCache.evict_layer``); the probe set
sums them per cache, and this probe turns the sums into rows once per request, so a decode that evicts
every step still writes one row per layer.
"""

from __future__ import annotations

from typing import Any

from kvpilot.probes.base import Probe, RequestContext


class EvictionProbe(Probe):
    """``evict`` cache events, per layer, after each request."""

    name = "evictions"

    def on_request(self, req: RequestContext, out: Any) -> None:
        if not req.evictions:
            return
        rows = []
        for layer_idx, (passes, slots, seconds) in sorted(req.evictions.items()):
            layer = req.cache.layers[layer_idx]
            per_slot = layer.slot_bytes  # one KV head's key and value (read without unpacking a packed layer)
            rows.append({
                "ts": req.ts, "kind": "evict", "layer": layer_idx, "count": int(passes),
                "bytes": int(slots) * per_slot, "detail": {"tokens": int(slots), "seconds": float(seconds)},
            })
        out.submit("cache_events", rows)
