"""How the dashboard writes numbers, times and stored text: one place, so every page reads the same at a glance.

Bytes in binary units (KiB, MiB, GiB), latencies in ms below a second and s above, fractions as percentages,
times in 24-hour local time. Stored text (deployment and instance names, reasons, sources) is written by
users and engines, so `md` escapes it before it reaches Streamlit's markdown: it shows as typed, never as a
link, emphasis or HTML. Nothing here imports streamlit.
"""

from __future__ import annotations

import json
import re
import time
from typing import Any

TIME_FORMAT = "%Y-%m-%d %H:%M:%S"
AXIS_TIME = "%H:%M:%S"  # Vega time axes and tooltips: 24-hour
_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]()<>#+\-.!|~:$&])")
BYTE_KEYS = ("bytes", "pool_bytes", "pinned_bytes", "kv_bytes", "peak_kv_bytes", "mean_peak_kv_bytes")


def md(text: object) -> str:
    """Stored text made safe for markdown: every ASCII punctuation character escaped (no links, no autolinks,
    no emphasis, no HTML) and line breaks flattened."""
    return _MD_SPECIAL.sub(r"\\\1", " ".join(str(text).split()))


def code(text: object) -> str:
    """Stored text inside a command shown as inline code: fenced with more backticks than it contains, so
    nothing in it can end the code span."""
    s = " ".join(str(text).split())
    fence = "`" * (max((len(run) for run in re.findall(r"`+", s)), default=0) + 1)
    return f"{fence} {s} {fence}" if s.startswith("`") or s.endswith("`") else f"{fence}{s}{fence}"


def human_bytes(n: float | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover (the loop returns)


def mib(n: float | None) -> float | None:
    return None if n is None else n / 2**20


def duration(seconds: float | None) -> str:
    """A latency or run time: ms below a second, s below two minutes, then min."""
    if seconds is None:
        return "-"
    if seconds < 1:
        return f"{seconds * 1000:.1f} ms"
    if seconds < 120:
        return f"{seconds:.2f} s" if seconds < 10 else f"{seconds:.1f} s"
    return f"{seconds / 60:.1f} min"


def config_name(config: dict[str, Any] | None) -> str:
    """A stored config as its short label (e.g. "snapkv-0.5"); "-" when none, a note when it no longer parses."""
    from kvpilot.config import KVConfig, KVConfigError, config_label

    if not config:
        return "-"
    try:
        return config_label(KVConfig.parse(config))
    except KVConfigError:
        return "(invalid config)"


def pct(fraction: float | None, digits: int = 0) -> str:
    return "-" if fraction is None else f"{fraction * 100:.{digits}f} %"


def when(ts: float | None) -> str:
    return "-" if ts is None else time.strftime(TIME_FORMAT, time.localtime(ts))


def value(key: str, v: Any) -> str:
    """One stored value for a table cell, by what its key says it is."""
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, (int, float)):
        k = key.lower()
        if k.endswith("bytes") or k in BYTE_KEYS:
            return human_bytes(v)
        if k.endswith("_s") or k.endswith("_seconds"):
            return duration(float(v))
        if k in ("accuracy", "hit_ratio", "compression_ratio", "top1_agreement") or k.endswith("accuracy"):
            return pct(float(v), 1)
        return f"{v:,}" if isinstance(v, int) else f"{v:.4g}"
    if isinstance(v, (dict, list)):
        return json.dumps(v, sort_keys=True) if v else "-"  # an empty {} (a plug-in without parameters) says nothing
    return str(v)


def detail(d: dict[str, Any] | None) -> str:
    """An event's detail as `key value, ...` with units, instead of a raw JSON dump."""
    if not d:
        return ""
    return ", ".join(f"{k} {value(k, v)}" for k, v in sorted(d.items()))


def rows(d: dict[str, Any] | None, *, flatten: bool = True) -> list[dict[str, str]]:
    """A nested dict (a run's metrics, a config) as `field | value` rows for a table, nested keys dotted."""
    out: list[dict[str, str]] = []

    def walk(prefix: str, obj: Any) -> None:
        if flatten and isinstance(obj, dict) and obj:
            for k, v in sorted(obj.items()):
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        else:
            out.append({"field": prefix, "value": value(prefix.rsplit(".", 1)[-1], obj)})

    walk("", d or {})
    return out
