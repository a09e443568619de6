"""Sessions page: the session pool's occupancy, pinned bytes and TTL hits, misses and expiries.

Everything comes from cache events of kinds ttl_pin, hit, miss, expire and offload (`count`, `bytes`), and
occupancy from the `pool_sessions`, `pool_bytes` and `pinned_bytes` keys of their `detail`.
"""

from __future__ import annotations

import pandas as pd
import streamlit as st

from kvpilot.dashboard import charts
from kvpilot.dashboard import context as C
from kvpilot.storage import SESSION_KINDS, Store


def render() -> None:
    st.title("Sessions")
    ctx = C.current()
    with C.guard():
        if C.empty_notice(ctx, "session-pool events"):
            return
        if ctx.deployment is None:
            st.info(f"No deployment yet; run {C.FILL_HINT}.")
            return
        C.live("sessions", ctx, _pool)


def _pool(ctx: C.Ctx) -> None:
    totals = C.query(Store.event_totals, ctx.scope, SESSION_KINDS)
    if not totals:
        st.info(
            f"No session-pool events for {ctx.deployment} in this window. The session pool records cache events of "
            f"kinds {', '.join(SESSION_KINDS)} when it pins a conversation's KV cache with a TTL, serves it again "
            "(hit), misses it, expires it or offloads it. Serve multi-turn sessions through the pool, widen the "
            f"window, or run {C.FILL_HINT}."
        )
        return

    def n(kind: str) -> int:
        return totals[kind].count if kind in totals else 0

    def b(kind: str) -> int:
        return totals[kind].bytes if kind in totals else 0

    hits, misses = n("hit"), n("miss")
    cols = st.columns(6)
    cols[0].metric("Pinned", f"{n('ttl_pin'):,}", help=f"{C.human_bytes(b('ttl_pin'))} pinned in this window")
    cols[1].metric("Pinned bytes", C.human_bytes(b("ttl_pin")))
    cols[2].metric("TTL hits", f"{hits:,}")
    cols[3].metric("TTL misses", f"{misses:,}")
    cols[4].metric("Hit ratio", "-" if hits + misses == 0 else f"{hits / (hits + misses):.1%}")
    cols[5].metric("Expiries", f"{n('expire'):,}", help=f"offloads: {n('offload'):,} ({C.human_bytes(b('offload'))})")

    width = ctx.scope.bucket_s(points=60)
    pool = C.query(Store.pool_series, ctx.scope, width)
    if pool:
        rows = [{"time": pd.to_datetime(p.ts, unit="s", utc=True), "series": name, "value": v}
                for p in pool for name, v in (("pool bytes", p.pool_bytes), ("pinned bytes", p.pinned_bytes))
                if v is not None]
        left, right = st.columns(2)
        if rows:
            left.altair_chart(charts.lines(pd.DataFrame(rows), "bytes", fmt="~s", title="Pool occupancy (bytes)"))
        sessions = [{"time": pd.to_datetime(p.ts, unit="s", utc=True), "series": "sessions", "value": p.pool_sessions}
                    for p in pool if p.pool_sessions is not None]
        if sessions:
            right.altair_chart(charts.lines(pd.DataFrame(sessions), "sessions", fmt="d", title="Sessions in the pool"))
    else:
        st.caption("Pool occupancy appears when session events carry `pool_sessions`, `pool_bytes` and "
                   "`pinned_bytes` in their detail.")

    series = C.query(Store.event_series, ctx.scope, kinds=list(SESSION_KINDS), bucket_s=width)
    if series:
        counts = pd.DataFrame({"time": pd.to_datetime(e.ts, unit="s", utc=True), "series": e.kind, "value": e.count}
                              for e in series)
        left, right = st.columns(2)
        left.altair_chart(charts.lines(counts, "events per bucket", fmt="d", title="Pins, hits, misses, expiries"))
        moved = counts.assign(value=[e.bytes for e in series])
        moved = moved[moved.series.isin(["ttl_pin", "expire", "offload"])]
        if len(moved):
            right.altair_chart(charts.lines(moved, "bytes per bucket", fmt="~s", title="Bytes pinned, expired, offloaded"))


if __name__ == "__main__":
    render()
