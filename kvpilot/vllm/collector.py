"""The collector: scrape a vLLM server's /metrics on an interval and record it under a deployment's instance.

Each scrape becomes one `vllm_samples` row (see `kvpilot.vllm.metrics.interval_row`) and one
`memory_samples` row (device "vllm"), so the dashboard's memory charts show the server's KV bytes next to
kvpilot engines'. Rows go through the probes' `Recorder`: off the scraping thread, spooled while the store
is down, and exported to OpenTelemetry from the same declarations as every stored table. The instance is
registered and heartbeats every scrape, so it is listed alive while the server answers.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from kvpilot.errors import KVPilotError
from kvpilot.probes.recorder import Recorder
from kvpilot.storage.protocols import ConfigSource, SampleSink
from kvpilot.vllm.metrics import RSS, Scrape, interval_row, parse

log = logging.getLogger(__name__)

KEEP_ROWS = 10_000
DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "fp8": 1, "fp8_e4m3": 1, "fp8_e5m2": 1}


class ScrapeError(KVPilotError):
    """The server's /metrics could not be read."""


def fetch_text(url: str, timeout: float = 5.0) -> str:
    """GET a URL as text; ScrapeError naming the URL and the cause."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 (an operator-given URL)
            return resp.read().decode("utf-8")
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise ScrapeError(f"cannot read {url}: {exc}") from None


def bytes_per_token(model_dir: str | Path | None, cache_config: dict[str, str]) -> int | None:
    """KV bytes per token of a model: 2 (K and V) x layers x KV heads x head size x element size.

    The element size is the cache dtype's, or for "auto" the model's (vLLM serves float32 checkpoints as
    bfloat16 on CPU, which the server's `dtype` label would say; 2 bytes is its default)."""
    if model_dir is None:
        return None
    try:
        cfg = json.loads((Path(model_dir) / "config.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None
    layers, heads = cfg.get("num_hidden_layers"), cfg.get("num_key_value_heads") or cfg.get("num_attention_heads")
    head_dim = cfg.get("head_dim") or (cfg.get("hidden_size", 0) // max(1, cfg.get("num_attention_heads") or 1))
    if not (layers and heads and head_dim):
        return None
    dtype = cache_config.get("cache_dtype", "auto")
    element = DTYPE_BYTES.get(dtype, DTYPE_BYTES.get(cache_config.get("dtype", ""), 2))
    return 2 * int(layers) * int(heads) * int(head_dim) * element


class Collector:
    """Scrape `base_url`/metrics every `interval_s` and record it; `start()` runs it in a thread.

    Rows belong to the instance `instance` of `deployment` (registered, heartbeating), or with
    `deployment=None` only to the run `run_id` (a tuning trial's short-lived server)."""

    def __init__(
        self,
        base_url: str,
        store: Any,  # a ConfigSource and SampleSink (a Store)
        deployment: str | None,
        instance: str | None,
        *,
        interval_s: float = 5.0,
        model_dir: str | Path | None = None,
        model: str | None = None,
        telemetry: Any = None,
        pid: int | None = None,
        spool: str | None = None,
        run_id: int | None = None,
    ):
        if not isinstance(store, ConfigSource) or not isinstance(store, SampleSink):
            raise TypeError("the collector needs a store that registers instances and writes samples")
        self.base_url = base_url.rstrip("/")
        self.store = store
        self.deployment = deployment
        self.instance = instance
        self.interval_s = interval_s
        self.model_dir = model_dir
        self.model = model
        self.pid = pid
        if deployment is None and run_id is None:
            raise ValueError("the collector records under a deployment's instance or a run: give one")
        self.recorder = Recorder(store, telemetry=telemetry, spool=spool)
        self.recorder.run_id = run_id
        if telemetry is not None and hasattr(telemetry, "bind_recorder"):
            telemetry.bind_recorder(self.recorder)
        self.instance_id: int | None = None
        self.config_version: int | None = None
        self._prev: Scrape | None = None
        self._peak_bytes = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.scrapes = 0
        self.errors = 0
        self.rows: list[dict[str, Any]] = []  # this collector's vllm_samples rows, oldest first

    def register(self) -> int | None:
        """Register the instance (idempotent) and point the recorder at it (None: rows go to the run only)."""
        if self.instance_id is None and self.deployment is not None and self.instance is not None:
            info = self.store.register_instance(self.deployment, self.instance, model=self.model, pid=self.pid)
            self.instance_id = info.id
            self.recorder.instance_id = info.id
        return self.instance_id

    def reset(self) -> None:
        """Forget the previous scrape (the server was restarted: its counters start from zero)."""
        self._prev = None

    def scrape_once(self) -> dict[str, Any]:
        """Read /metrics once, queue its rows and heartbeat; returns the vllm_samples row."""
        instance_id = self.register()
        cur = parse(fetch_text(f"{self.base_url}/metrics"), time.time())
        row = interval_row(self._prev, cur, bytes_per_token=bytes_per_token(self.model_dir, cur.cache_config))
        self._prev = cur
        if row.get("kv_bytes") is not None:
            self._peak_bytes = max(self._peak_bytes, row["kv_bytes"])
        memory = {
            "ts": cur.ts,
            "device": "vllm",
            "kv_bytes_physical": row.get("kv_bytes"),
            "kv_bytes_logical": row.get("kv_bytes"),  # vLLM evicts whole requests, never compresses a cache
            "kv_bytes_peak": self._peak_bytes if row.get("kv_bytes") is not None else None,
            "rss_bytes": int(cur.values[RSS]) if RSS in cur.values else None,
        }
        self.recorder.submit("vllm_samples", [row])
        self.recorder.submit("memory_samples", [memory])
        if instance_id is not None:
            try:
                self.store.heartbeat(instance_id, config_version=self.config_version)
            except KVPilotError as exc:
                log.warning("vllm collector: heartbeat failed: %s", exc)
        self.scrapes += 1
        self.rows.append(row)
        if len(self.rows) > 2 * KEEP_ROWS:  # a long `watch` keeps only the newest rows in memory
            del self.rows[:-KEEP_ROWS]
        return row

    def flush(self, timeout: float = 10.0) -> bool:
        """Write what is queued (tests and the CLI at exit)."""
        if self.recorder._thread is None:
            self.recorder.retry_now()
        return self.recorder.flush(timeout)

    # ----- the background thread ----------------------------------------------------------------------

    def start(self) -> Collector:
        self.recorder.start()
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name=f"kvpilot-vllm-{self.base_url}", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        self.recorder.stop(timeout)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.scrape_once()
            except ScrapeError as exc:  # the server is restarting or gone: keep trying
                self.errors += 1
                log.info("vllm collector: %s", exc)
            except Exception:
                self.errors += 1
                log.exception("vllm collector: scrape failed")
            self._stop.wait(self.interval_s)

    def __enter__(self) -> Collector:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


__all__ = ["Collector", "ScrapeError", "bytes_per_token", "fetch_text"]
