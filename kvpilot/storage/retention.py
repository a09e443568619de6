"""Retention by downsampling as a standing policy: how long raw samples, per-minute and per-hour rollups stay.

`kvpilot db prune` applies ages given on its command line once; a `Retention` applies them continuously:
with `KVPILOT_RETENTION="raw=7d,1m=30d,1h=52w"` (any subset; `raw` is required) in an engine's environment,
its store's writers prune once an hour after their own commit (`kvpilot.storage.samples`). Durations are
read by `parse_duration`, which `kvpilot db prune` uses too.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from kvpilot.storage.errors import StoreError

ENV = "KVPILOT_RETENTION"
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str) -> float:
    """'7d', '12h', '30m', '90s', '2w' or plain seconds."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*", text or "")
    if not m:
        raise StoreError(f"cannot read duration {text!r}: use a number with s, m, h, d or w (e.g. 7d, 12h)")
    return float(m.group(1)) * _UNITS[m.group(2) or "s"]


@dataclass(frozen=True)
class Retention:
    """Ages (seconds) after which raw samples, per-minute and per-hour rollups are deleted (None: kept)."""

    raw_s: float
    minute_s: float | None = None
    hour_s: float | None = None

    @classmethod
    def parse(cls, text: str) -> Retention:
        """'raw=7d,1m=30d,1h=52w' (1m and 1h optional)."""
        ages: dict[str, float] = {}
        for part in filter(None, (p.strip() for p in text.split(","))):
            key, sep, value = part.partition("=")
            if not sep or key.strip() not in ("raw", "1m", "1h"):
                raise StoreError(f"retention {text!r}: write raw=AGE[,1m=AGE][,1h=AGE], e.g. raw=7d,1m=30d,1h=52w")
            ages[key.strip()] = parse_duration(value)
        if "raw" not in ages:
            raise StoreError(f"retention {text!r} gives no raw=AGE (how long raw samples stay)")
        return cls(ages["raw"], ages.get("1m"), ages.get("1h"))

    @classmethod
    def from_env(cls) -> Retention | None:
        """The policy in $KVPILOT_RETENTION, or None when it is not set."""
        text = os.environ.get(ENV, "").strip()
        try:
            return cls.parse(text) if text else None
        except StoreError as exc:
            raise StoreError(f"${ENV}: {exc}") from None
