"""Events page: evictions, config changes, recorder drops and errors, filterable by kind and instance."""

from __future__ import annotations

import json
from typing import Any

import pandas as pd
import streamlit as st

from kvpilot.dashboard import charts
from kvpilot.dashboard import context as C
from kvpilot.storage import EVENT_KINDS, Store

LIMITS = (100, 500, 2000)


def render() -> None:
    st.title("Events")
    ctx = C.current()
    with C.guard():
        if C.empty_notice(ctx, "events"):
            return
        if ctx.deployment is None:
            st.info(f"No deployment yet; run {C.FILL_HINT}.")
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
        st.info(f"No events of these kinds for {ctx.deployment} in this window. Engines record evictions, config "
                f"applications and rejections, recorder drops and errors as they happen; or run {C.FILL_HINT}.")
        return
    df = pd.DataFrame({"kind": t.kind, "events": t.events, "count": t.count, "bytes": t.bytes}
                      for t in sorted(totals.values(), key=lambda t: EVENT_KINDS.index(t.kind)))
    st.dataframe(df, hide_index=True, key="event_totals")
    width = ctx.scope.bucket_s(points=60)
    series = C.query(Store.event_series, ctx.scope, kinds=list(kinds), bucket_s=width)
    chart_df = pd.DataFrame({"time": pd.to_datetime(e.ts, unit="s", utc=True), "kind": e.kind, "count": e.count}
                            for e in series)
    st.altair_chart(charts.bars(chart_df, "time", "count", x_type="T", color="kind", title="Events over time"))

    names: dict[int | None, str] = {i.id: i.name for i in C.query(Store.instances, ctx.deployment)}
    latest = C.query(Store.events, ctx.scope, kinds=list(kinds), limit=limit)
    st.subheader(f"Latest {len(latest)} events")
    st.dataframe(
        pd.DataFrame(
            {
                "time": C.when(e.ts), "instance": names.get(e.instance_id, e.instance_id), "kind": e.kind,
                "layer": e.layer, "count": e.count, "bytes": e.bytes,
                "detail": json.dumps(e.detail, sort_keys=True) if e.detail else "",
            }
            for e in latest
        ),
        hide_index=True,
        key="latest_events",
    )


def _config_changes(ctx: C.Ctx) -> None:
    st.subheader("Config changes")
    since = ctx.scope.start or 0.0
    activations = [a for a in C.query(Store.activations, ctx.dep) if a.ts >= since]
    acks = [a for a in C.query(Store.acks, ctx.dep, limit=500) if a.ts >= since]
    if not activations and not acks:
        st.caption(f"No pushes, activations, rollbacks or engine acknowledgements for {ctx.deployment} in this window.")
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
