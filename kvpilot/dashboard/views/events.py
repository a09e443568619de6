"""Events page: evictions, config changes, recorder drops and errors, filterable by kind and instance."""

from __future__ import annotations

from typing import Any

import pandas as pd
import streamlit as st

from kvpilot.dashboard import charts, fmt
from kvpilot.dashboard import context as C
from kvpilot.storage import EVENT_KINDS, Store

LIMITS = (100, 500, 2000)
# one colour per kind, by what it asks of someone on call: red for failures, orange for what degrades
# service, blue and green for routine cache work, grey for harmless notices
KIND_COLORS = {
    "error": "#d62728", "config_rejected": "#e377c2", "recorder_drop": "#ff7f0e",
    "evict": "#1f77b4", "ttl_pin": "#2ca02c", "hit": "#98df8a", "miss": "#bcbd22", "expire": "#17becf",
    "offload": "#9edae5", "config_applied": "#8c564b", "probe_unavailable": "#c7c7c7",
}


def render() -> None:
    st.title("Events")
    ctx = C.current()
    with C.guard():
        if C.empty_notice(ctx, "events"):
            return
        if ctx.deployment is None:
            st.info(f"No deployment yet; run {C.fill_hint()}.")
            return
        left, right = st.columns([3, 1])
        kinds = left.multiselect("Kinds", EVENT_KINDS, default=list(EVENT_KINDS), key="event_kinds")
        limit = right.selectbox("Latest events shown", LIMITS, key="event_limit") or LIMITS[0]

        def body(c: C.Ctx) -> None:
            _events(c, tuple(kinds), limit)
            _config_changes(c)

        C.live("events", ctx, body)


def _events(ctx: C.Ctx, kinds: tuple[str, ...], limit: int) -> None:
    if not kinds:
        st.info("Pick at least one kind.")
        return
    totals = C.query(Store.event_totals, ctx.scope, kinds)
    if not totals:
        st.info(f"No events of these kinds for {fmt.md(ctx.dep)} in this window. Engines record evictions, config "
                f"applications and rejections, recorder drops and errors as they happen; or run {C.fill_hint()}.")
        return
    ordered = sorted(totals.values(), key=lambda t: EVENT_KINDS.index(t.kind))
    # `count` is what an event counts (tokens evicted, rows dropped); it is shown only where it says more
    # than the number of events
    df = pd.DataFrame({"kind": t.kind, "events": t.events, "items counted": f"{t.count:,}" if t.count != t.events else "",
                       "bytes": C.human_bytes(t.bytes) if t.bytes else "-"} for t in ordered)
    if not any(df["items counted"]):
        df = df.drop(columns="items counted")
    st.dataframe(df, hide_index=True, key="event_totals")
    width = ctx.scope.bucket_s(points=60)
    series = C.query(Store.event_series, ctx.scope, kinds=list(kinds), bucket_s=width)
    chart_df = pd.DataFrame({"time": charts.local_time(e.ts), "kind": e.kind, "events": e.count}
                            for e in series)
    shown = {k: KIND_COLORS.get(k, "#7f7f7f") for k in EVENT_KINDS if k in set(chart_df.get("kind", []))}
    st.altair_chart(charts.bars(chart_df, "time", "events", x_type="T", color="kind", colors=shown,
                                title="Events over time"))

    names: dict[int | None, str] = {i.id: i.name for i in C.query(Store.instances, ctx.deployment)}
    latest = C.query(Store.events, ctx.scope, kinds=list(kinds), limit=limit)
    st.subheader(f"Latest {len(latest)} events")
    st.dataframe(
        pd.DataFrame(
            {
                "time": C.when(e.ts), "instance": names.get(e.instance_id, str(e.instance_id or "-")),
                "kind": e.kind, "layer": "" if e.layer is None else str(e.layer), "count": e.count,
                "bytes": C.human_bytes(e.bytes) if e.bytes else "", "detail": fmt.detail(e.detail),
            }
            for e in latest
        ),
        hide_index=True,
        key="latest_events",
        column_config={"detail": st.column_config.TextColumn("detail", width="large")},
    )


def _config_changes(ctx: C.Ctx) -> None:
    st.subheader("Config changes")
    since = ctx.scope.start or 0.0
    activations = [a for a in C.query(Store.activations, ctx.dep) if a.ts >= since]
    acks = [a for a in C.query(Store.acks, ctx.dep, limit=500) if a.ts >= since]
    if not activations and not acks:
        st.caption(f"No pushes, activations, rollbacks or engine acknowledgements for {fmt.md(ctx.dep)} in this "
                   "window.")
        return
    rows: list[dict[str, Any]] = [{"time": a.ts, "what": a.action, "version": a.version, "by / instance": a.by or "", "reason": ""}
            for a in activations]
    rows += [{"time": a.ts, "what": a.status, "version": a.version, "by / instance": a.instance, "reason": a.reason or ""}
             for a in acks]
    df = pd.DataFrame(sorted(rows, key=lambda r: r["time"], reverse=True))
    df["time"] = df["time"].map(C.when)
    st.dataframe(df, hide_index=True, key="config_changes")


if __name__ == "__main__":
    render()
