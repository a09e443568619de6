"""Sessions page: the session pool's occupancy, pinned bytes and TTL hits, misses and expiries, and the
eviction lineage of sampled requests (`kvpilot.dashboard.views.lineage`, until a Quality page hosts it).

Everything comes from cache events of kinds ttl_pin, hit, miss, expire and offload (`count`, `bytes`), and
occupancy from the `pool_sessions`, `pool_bytes` and `pinned_bytes` keys of their `detail`.
"""

from __future__ import annotations

from dataclasses import replace

import pandas as pd
import streamlit as st

from kvpilot.dashboard import charts, fmt
from kvpilot.dashboard import context as C
from kvpilot.dashboard.views.lineage import render_lineage
from kvpilot.storage import SESSION_KINDS, Scope, Store, bucket_width


def render() -> None:
    st.title("Sessions")
    ctx = C.current()
    with C.guard():
        if C.empty_notice(ctx, "session-pool events"):
            return
        if ctx.deployment is None:
            st.info(f"No deployment yet; run {C.fill_hint()}.")
            return
        C.live("sessions", ctx, _pool)
        render_lineage(ctx)


def _pool(ctx: C.Ctx) -> None:
    totals = C.query(Store.event_totals, ctx.scope, SESSION_KINDS)
    if not totals:
        st.info(
            f"No session-pool events for {fmt.md(ctx.dep)} in this window. The session pool records cache events of "
            f"kinds {', '.join(SESSION_KINDS)} when it pins a conversation's KV cache with a TTL, serves it again "
            "(hit), misses it, expires it or offloads it. Serve multi-turn sessions through the pool, widen the "
            f"window, or run {C.fill_hint()}."
        )
        return

    def n(kind: str) -> int:
        return totals[kind].count if kind in totals else 0

    def b(kind: str) -> int:
        return totals[kind].bytes if kind in totals else 0

    scope, width = _focus(ctx)
    pool = C.query(Store.pool_series, scope, width)
    peak_pool = max((p.pool_bytes for p in pool if p.pool_bytes is not None), default=None)
    peak_pinned = max((p.pinned_bytes for p in pool if p.pinned_bytes is not None), default=None)
    hits, misses = n("hit"), n("miss")
    cols = st.columns(6)
    cols[0].metric("Pinned", f"{n('ttl_pin'):,}", help=f"sessions pinned with a TTL; {C.human_bytes(b('ttl_pin'))} "
                   "pinned over all of them")
    cols[1].metric("Peak pinned", C.human_bytes(peak_pinned),
                   help="the most bytes pinned at once (the top of the pinned line below)")
    cols[2].metric("Peak pool", C.human_bytes(peak_pool),
                   help="the most bytes the pool held at once, pinned or being served (`kvpilot replay`'s peak pool)")
    cols[3].metric("TTL hits / misses", f"{hits:,} / {misses:,}")
    cols[4].metric("Hit ratio", "-" if hits + misses == 0 else f"{hits / (hits + misses):.1%}")
    cols[5].metric("Expiries", f"{n('expire'):,}", help=f"offloads: {n('offload'):,} ({C.human_bytes(b('offload'))})")
    if scope is not ctx.scope:
        st.caption(f"Charts zoomed to the session events' {fmt.duration(scope.span_s)} "
                   f"({fmt.when(scope.since)} to {fmt.when(scope.until)}), in {width:g} s buckets.")

    if pool:
        rows = [{"time": charts.local_time(p.ts), "series": name, "value": v / 2**20}
                for p in pool for name, v in (("pool", p.pool_bytes), ("pinned", p.pinned_bytes))
                if v is not None]
        left, right = st.columns(2)
        if rows:
            left.altair_chart(charts.lines(pd.DataFrame(rows), "MiB", fmt=",.4~f", title="Pool occupancy (MiB)"))
        sessions = [{"time": charts.local_time(p.ts), "series": "sessions", "value": p.pool_sessions}
                    for p in pool if p.pool_sessions is not None]
        if sessions:
            right.altair_chart(charts.lines(pd.DataFrame(sessions), "sessions", fmt="d", title="Sessions in the pool"))
    else:
        st.caption("Pool occupancy appears when session events carry `pool_sessions`, `pool_bytes` and "
                   "`pinned_bytes` in their detail.")

    series = C.query(Store.event_series, scope, kinds=list(SESSION_KINDS), bucket_s=width)
    if series:
        counts = pd.DataFrame({"time": charts.local_time(e.ts), "series": e.kind, "value": e.count} for e in series)
        left, right = st.columns(2)
        left.altair_chart(charts.lines(counts, "events per bucket", fmt="d", title="Pins, hits, misses, expiries"))
        moved = counts.assign(value=[e.bytes / 2**20 for e in series])
        moved = moved[moved.series.isin(["ttl_pin", "expire", "offload"])]
        if len(moved):
            right.altair_chart(charts.lines(moved, "MiB per bucket", fmt=",.4~f",
                                            title="MiB pinned, expired, offloaded"))


def _focus(ctx: C.Ctx, points: int = 60) -> tuple[Scope, float]:
    """The scope and bucket width for the charts: the sidebar's window, narrowed to where the session events
    are when they fill only a small part of it (a short replay then still gets a line, not one or two points)."""
    width = ctx.scope.bucket_s(points=points)
    coarse = C.query(Store.event_series, ctx.scope, kinds=list(SESSION_KINDS), bucket_s=width)
    if not coarse:
        return ctx.scope, width
    first, last = min(e.ts for e in coarse), max(e.ts for e in coarse) + width
    span = last - first
    if ctx.scope.span_s is None or span * 4 > ctx.scope.span_s:
        return ctx.scope, width
    fine = bucket_width(span, points)
    return replace(ctx.scope, since=first, until=last), fine


if __name__ == "__main__":
    render()
