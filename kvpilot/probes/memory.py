"""Memory pressure: the KV cache's own bytes, the device allocator, NVML and the process RSS.

KV bytes come from the managed cache (exact, no device sync). Device numbers come from
``torch.cuda`` (allocated/reserved/peak: host-side counters, cheap) and NVML (used/total/utilisation:
a driver call, so it is rate-limited and read off the inference thread). Without CUDA or without the
NVML library the probe degrades to a null probe: the fields stay None (never a misleading 0) and the
reason is kept in `unavailable` so the caller records it once.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any

import torch

from kvpilot.probes.base import Probe, ProbeContext

log = logging.getLogger(__name__)


class DeviceMemoryProbe:
    """Reads torch.cuda and NVML for one CUDA device, or nothing (with a reason) when there is none."""

    def __init__(self, device: torch.device | str | None = None, *, nvml_min_interval_s: float = 0.5):
        self.device = torch.device(device) if device is not None else None
        self.unavailable: dict[str, str] = {}  # probe name -> why it is off
        self._cuda_index: int | None = None
        self._nvml: Any = None
        self._nvml_handle: Any = None
        self._nvml_min_interval_s = nvml_min_interval_s
        self._nvml_last: tuple[float, dict[str, Any]] = (0.0, {})
        self._nvml_lock = threading.Lock()
        self._init_cuda()
        self._init_nvml()

    # ----- set-up -------------------------------------------------------------------------------------

    def _init_cuda(self) -> None:
        if self.device is not None and self.device.type != "cuda":
            self.unavailable["torch.cuda"] = f"model runs on {self.device.type}, not CUDA"
            return
        if not torch.cuda.is_available():
            self.unavailable["torch.cuda"] = "CUDA is not available (no GPU, or torch built without CUDA)"
            return
        idx = self.device.index if self.device is not None else None
        self._cuda_index = torch.cuda.current_device() if idx is None else idx

    def _init_nvml(self) -> None:
        try:
            import pynvml  # nvidia-ml-py
        except ImportError as exc:
            self.unavailable["nvml"] = f"nvidia-ml-py is not installed ({exc})"
            return
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError as exc:
            self.unavailable["nvml"] = f"NVML cannot start: {type(exc).__name__}: {exc}"
            return
        try:
            self._nvml_handle = self._nvml_device(pynvml)
        except pynvml.NVMLError as exc:
            self.unavailable["nvml"] = f"NVML has no handle for the device: {type(exc).__name__}: {exc}"
            pynvml.nvmlShutdown()
            return
        self._nvml = pynvml

    def _nvml_device(self, pynvml: Any) -> Any:
        """The NVML handle of the CUDA device in use (by UUID, since CUDA_VISIBLE_DEVICES renumbers)."""
        if self._cuda_index is not None:
            uuid = str(getattr(torch.cuda.get_device_properties(self._cuda_index), "uuid", "") or "")
            if uuid:
                try:
                    return pynvml.nvmlDeviceGetHandleByUUID(uuid if uuid.startswith("GPU-") else f"GPU-{uuid}")
                except pynvml.NVMLError:
                    pass
        return pynvml.nvmlDeviceGetHandleByIndex(self._cuda_index or 0)

    @property
    def has_cuda(self) -> bool:
        return self._cuda_index is not None

    @property
    def has_nvml(self) -> bool:
        return self._nvml_handle is not None

    @property
    def device_name(self) -> str:
        if self._cuda_index is not None:
            return f"cuda:{self._cuda_index}"
        return self.device.type if self.device is not None else "cpu"

    # ----- readings ------------------------------------------------------------------------------------

    def torch_stats(self) -> dict[str, int | None]:
        """Allocator counters (host-side, no device sync); None fields without CUDA."""
        if self._cuda_index is None:
            return {"device_allocated": None, "device_reserved": None, "device_peak": None}
        i = self._cuda_index
        return {
            "device_allocated": int(torch.cuda.memory_allocated(i)),
            "device_reserved": int(torch.cuda.memory_reserved(i)),
            "device_peak": int(torch.cuda.max_memory_allocated(i)),
        }

    def nvml_stats(self) -> dict[str, Any]:
        """NVML used/total bytes and GPU utilisation (%), at most once per ``nvml_min_interval_s``."""
        if self._nvml_handle is None:
            return {"nvml_used": None, "nvml_total": None, "nvml_util": None}
        with self._nvml_lock:
            now = time.monotonic()
            last_t, last = self._nvml_last
            if last and now - last_t < self._nvml_min_interval_s:
                return dict(last)
            nv, h = self._nvml, self._nvml_handle
            out: dict[str, Any] = {"nvml_used": None, "nvml_total": None, "nvml_util": None}
            try:
                mem = nv.nvmlDeviceGetMemoryInfo(h)
                out["nvml_used"], out["nvml_total"] = int(mem.used), int(mem.total)
            except nv.NVMLError as exc:  # per field: MIG and vGPU refuse some queries
                log.debug("NVML memory info unavailable: %s", exc)
            try:
                out["nvml_util"] = float(nv.nvmlDeviceGetUtilizationRates(h).gpu)
            except nv.NVMLError as exc:
                log.debug("NVML utilisation unavailable: %s", exc)
            self._nvml_last = (now, out)
            return dict(out)

    def close(self) -> None:
        if self._nvml is not None:
            try:
                self._nvml.nvmlShutdown()
            except Exception:  # shutting down must never raise
                pass
            self._nvml = self._nvml_handle = None


_PROCESS: Any = None


def process_rss() -> int | None:
    """Resident set size of this process in bytes (psutil), or None if psutil cannot read it."""
    global _PROCESS
    try:
        if _PROCESS is None:
            import psutil

            _PROCESS = psutil.Process(os.getpid())
        return int(_PROCESS.memory_info().rss)
    except Exception:  # psutil missing or a restricted /proc: not worth failing a sample for
        return None


def kv_memory(cache: Any) -> dict[str, int]:
    """Physical, logical and peak KV bytes of a managed cache (exact; no device sync)."""
    return {
        "kv_bytes_physical": int(cache.physical_bytes),
        "kv_bytes_logical": int(cache.logical_bytes()),
        "kv_bytes_peak": int(cache.peak_bytes),
    }


class MemoryProbe(Probe):
    """After each request: KV bytes (total and per layer), allocator counters, NVML and RSS.

    The cache numbers and torch's counters are read on the inference thread (host-side integers); NVML
    and RSS are read in the recorder thread, rate-limited, since they are system calls.
    """

    name = "memory"

    def __init__(self, device: torch.device | str | None = None, *, per_layer: bool = True):
        super().__init__()
        self.device = DeviceMemoryProbe(device)
        self.per_layer = per_layer

    @classmethod
    def from_context(cls, context: ProbeContext) -> MemoryProbe:
        return cls(context.device)

    def unavailable(self) -> dict[str, str]:
        return dict(self.device.unavailable)

    def on_request(self, req, out) -> None:
        cache, ts = req.cache, req.ts
        row = {"ts": ts, "device": self.device.device_name, **kv_memory(cache), **self.device.torch_stats()}
        dev = self.device

        def build() -> list[tuple[str, list[dict]]]:
            return [("memory_samples", [{**row, **dev.nvml_stats(), "rss_bytes": process_rss()}])]

        out.submit_deferred(build)
        if self.per_layer:
            kept = cache.kept_tokens()
            rows = [
                {"ts": ts, "layer": i, "head": -1, "kv_bytes": int(layer.nbytes),
                 "kept_tokens": max(k) if k else 0, "seen_tokens": int(layer.seen), "step": req.state.decode_steps}
                for i, (layer, k) in enumerate(zip(cache.layers, kept, strict=True))
            ]
            out.submit("layer_stats", rows)

    def close(self) -> None:
        self.device.close()
