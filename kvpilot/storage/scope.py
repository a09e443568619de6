"""`Scope`: whose samples a reader looks at and over which time window, the one filter of every reader.

The store's readers (`layer_stats_series`, `requests_series`, ...) and its dashboard aggregates
(`request_totals`, `layer_view`, ...) all take a Scope; the readers also accept its fields as keyword
arguments (`deployment=`, `instance_id=`, `run_id=`, `since=`, `until=`, `last_s=`), which build one.
`bucket_width` is the one rule for time buckets, so charts of one window line up.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import TypedDict

if sys.version_info >= (3, 11):
    from typing import Unpack
else:  # pragma: no cover - Python 3.10
    from typing_extensions import Unpack

from kvpilot.storage.errors import StoreError

NICE_WIDTHS = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400)
DEFAULT_BUCKET_S = 60.0  # when a reader has neither a bucket width nor a bounded window


class ScopeFilters(TypedDict, total=False):
    """A Scope's fields as reader keyword arguments (`last_s` is the window length up to now)."""

    deployment: str | None
    instance_id: int | None
    run_id: int | None
    since: float | None
    until: float | None
    last_s: float | None


@dataclass(frozen=True)
class Scope:
    """Samples of one deployment, engine instance or run (the most specific one given wins for instance vs
    deployment; a run narrows either), from `start` on.

    The window is the last `window_s` seconds up to `now` (None: the moment of the query), further bounded
    by `since` / `until` (absolute epoch seconds) when given. The dashboard fixes `now` when it makes a
    scope, so every query of one page run sees the same window and cached results can be shared."""

    deployment: str | None = None
    instance_id: int | None = None
    window_s: float | None = 3600.0
    now: float | None = None
    run_id: int | None = None
    since: float | None = None
    until: float | None = None

    @classmethod
    def of(cls, scope: Scope | None = None, **filters: Unpack[ScopeFilters]) -> Scope:
        """`scope`, or the Scope that reader keyword arguments describe (no window unless `last_s`)."""
        given = {k: v for k, v in filters.items() if v is not None}
        if scope is not None:
            if given:
                raise StoreError(f"pass a Scope or filters ({', '.join(given)}), not both")
            return scope
        return cls(
            deployment=filters.get("deployment"),
            instance_id=filters.get("instance_id"),
            run_id=filters.get("run_id"),
            window_s=filters.get("last_s"),
            since=filters.get("since"),
            until=filters.get("until"),
        )

    @property
    def has_owner(self) -> bool:
        return self.deployment is not None or self.instance_id is not None or self.run_id is not None

    @property
    def end(self) -> float:
        """The window's end: `now`, else the current time."""
        return time.time() if self.now is None else self.now

    def bounds(self) -> tuple[float | None, float]:
        """(lower bound or None for all history, upper end), read off one clock reading."""
        end = self.end
        lower = [b for b in (self.since, None if self.window_s is None else end - self.window_s) if b is not None]
        return (max(lower) if lower else None), (self.until if self.until is not None else end)

    @property
    def start(self) -> float | None:
        """The window's lower bound (inclusive), or None for all history."""
        return self.bounds()[0]

    @property
    def span_s(self) -> float | None:
        """The window's length, when it has a lower bound."""
        start, end = self.bounds()
        return None if start is None else end - start

    def bucket_s(self, points: int = 150, given: float | None = None) -> float:
        """`given` (checked), else a round width cutting the window into about `points` buckets."""
        if given is not None:
            if given <= 0:
                raise StoreError(f"bucket_s must be positive, got {given}")
            return float(given)
        span = self.span_s
        return bucket_width(span, points) if span else DEFAULT_BUCKET_S


def bucket_width(window_s: float, points: int = 150) -> float:
    """A round bucket width giving about `points` buckets, so buckets stay put between refreshes."""
    raw = window_s / points
    return float(next((w for w in NICE_WIDTHS if w >= raw), NICE_WIDTHS[-1]))


__all__ = ["DEFAULT_BUCKET_S", "NICE_WIDTHS", "Scope", "ScopeFilters", "Unpack", "bucket_width"]
