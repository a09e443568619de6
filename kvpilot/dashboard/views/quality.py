"""Quality page: what compression costs in answers, per deployment and config version. Shadow fidelity
over time (top-1 agreement with the full cache, KL), canary rollouts with their status and decisions, and
the eviction lineage of a chosen request (what its cache forgot, `kvpilot.dashboard.views.lineage`)."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import pandas as pd
import streamlit as st

from kvpilot.dashboard import charts, fmt
from kvpilot.dashboard import context as C
from kvpilot.dashboard.views.lineage import render_lineage
from kvpilot.storage import Store

MAX_MEASUREMENTS = 5000  # quality events read per view (sampled answers; a window rarely holds more)
ALL = "all versions"


def render() -> None:
    st.title("Quality")
    ctx = C.current()
    with C.guard():
        if C.empty_notice(ctx, "quality measurements"):
            return
        if ctx.deployment is None:
            st.info(f"No deployment yet; run {C.fill_hint()}.")
            return
        C.live("quality", ctx, _body)
        render_lineage(ctx)


def _body(ctx: C.Ctx) -> None:
    events = C.query(Store.events, ctx.scope, kinds=["quality"], limit=MAX_MEASUREMENTS)
    canaries = C.query(Store.canaries, ctx.deployment, limit=50)
    _canary_status(ctx, canaries)
    _fidelity(ctx, events)
    _decisions(ctx, canaries)


def _version(v: Any) -> str:
    return "-" if v is None else f"v{v}"


# ----- shadow fidelity ------------------------------------------------------------------------------


def _fidelity(ctx: C.Ctx, events: list) -> None:
    st.subheader("Shadow fidelity")
    rows = [{"ts": e.ts, "version": _version((e.detail or {}).get("version")), "config": (e.detail or {}).get("config"),
             "agreement": (e.detail or {}).get("top1_agreement"), "kl": (e.detail or {}).get("mean_kl"),
             "tokens": (e.detail or {}).get("tokens")} for e in events]
    if not rows:
        st.info(f"No answer of {fmt.md(ctx.dep)} was measured against the full cache in this window. Engines measure "
                "a sampled fraction of their answers with `kvpilot.attach(..., shadow_fidelity=0.05)`; each "
                "measurement is a `quality` event.")
        return
    df = pd.DataFrame(rows)
    versions = sorted(df["version"].unique(), key=lambda v: (len(v), v))
    chosen = st.selectbox("Config version", [ALL, *versions], key="quality_version",
                          help="the deployment's config version that served the measured answers")
    if chosen != ALL:
        df = df[df["version"] == chosen]
    summary = []
    for (version, config), g in df.groupby(["version", "config"], dropna=False):
        agree = g["agreement"].dropna()
        summary.append({"version": version, "config": config if isinstance(config, str) else "-",
                        "answers measured": len(g), "top-1 agreement": fmt.pct(agree.mean() if len(agree) else None, 1),
                        "lowest agreement": fmt.pct(agree.min() if len(agree) else None, 1),
                        "mean KL": _nats(g["kl"].dropna().mean() if g["kl"].notna().any() else None),
                        "last measured": C.when(g["ts"].max())})
    st.dataframe(pd.DataFrame(summary), hide_index=True, key="quality_summary")
    width = ctx.scope.bucket_s(points=60)
    df = df.assign(bucket=(df["ts"] // width) * width)
    agg = df.groupby(["bucket", "version"]).agg(agreement=("agreement", "mean"), kl=("kl", "mean")).reset_index()
    agreement = pd.DataFrame({"time": agg["bucket"].map(charts.local_time), "series": agg["version"],
                              "value": agg["agreement"]}).dropna()
    kl = pd.DataFrame({"time": agg["bucket"].map(charts.local_time), "series": agg["version"],
                       "value": agg["kl"]}).dropna()
    left, right = st.columns(2)
    left.altair_chart(charts.lines(agreement, "top-1 agreement", fmt=".0%",
                                   title="Top-1 agreement with the full cache, per version"))
    right.altair_chart(charts.lines(kl, "KL (nats)", fmt=".3~f", title="Mean KL(full || served), per version"))


def _nats(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f} nats"


# ----- canaries --------------------------------------------------------------------------------------


def _canary_status(ctx: C.Ctx, canaries: list) -> None:
    running = [c for c in canaries if c.running]
    for c in running:
        st.warning(f"**Canary running**: v{c.version} on {fmt.pct(c.fraction)} of requests next to "
                   f"v{c.baseline_version}, since {C.ago(c.started_at)}. `kvpilot canary watch` promotes or rolls "
                   "it back on shadow fidelity, errors and latency.")
    if not running and canaries:
        last = canaries[0]
        verb = "promoted" if last.status == "promoted" else "rolled back"
        st.caption(f"Last canary: v{last.version} {verb} {C.ago(last.decided_at)}: {fmt.md(last.reason or '')}")


def _arm(figures: dict[str, Any] | None, arm: str) -> dict[str, Any]:
    got = (figures or {}).get(arm)
    return got if isinstance(got, dict) else {}


def _interval(ci: Any) -> str:
    if not isinstance(ci, (list, tuple)) or len(ci) != 2:
        return "-"
    return f"{fmt.pct(ci[0], 1)} - {fmt.pct(ci[1], 1)}"


def _ms(x: Any) -> str:
    return "-" if x is None else fmt.duration(float(x) / 1000)


def _decisions(ctx: C.Ctx, canaries: list) -> None:
    st.subheader("Canary rollouts")
    if not canaries:
        st.info(f"{fmt.md(ctx.dep)} has had no canary. Push one with "
                f"{fmt.code(f'kvpilot push -d {ctx.dep} -c config.json --canary 0.1')} and run "
                f"{fmt.code(f'kvpilot canary watch -d {ctx.dep}')}.")
        return
    rows = []
    for c in canaries:
        can, inc = _arm(c.figures, "canary"), _arm(c.figures, "incumbent")
        llr = (c.figures or {}).get("fidelity_llr")
        p = (c.figures or {}).get("latency_p")
        rows.append({
            "canary": f"v{c.version}", "incumbent": f"v{c.baseline_version}", "share": fmt.pct(c.fraction),
            "status": c.status.replace("_", " "), "started": C.when(c.started_at), "decided": C.when(c.decided_at),
            "requests (canary / incumbent)": f"{can.get('requests', '-')} / {inc.get('requests', '-')}" if can else "-",
            "agreement canary": fmt.pct(can.get("agreement"), 1), "95 % interval": _interval(can.get("agreement_ci")),
            "agreement incumbent": fmt.pct(inc.get("agreement"), 1),
            "LLR": "-" if llr is None else f"{llr:.2f}",
            "latency p50 (canary / incumbent)": f"{_ms(can.get('latency_p50_ms'))} / {_ms(inc.get('latency_p50_ms'))}"
            if can else "-",
            "latency p": "-" if p is None else f"{p:.3g}",
            "errors (canary)": fmt.pct(can.get("error_rate"), 1),
            "reason": c.reason or "",
        })
    st.dataframe(pd.DataFrame(rows), hide_index=True, key="canary_table")
    events = C.query(Store.canary_events, ctx.dep, limit=200)
    if events:
        st.markdown("**Decision log** (newest first; each event carries its figures)")
        counts: dict[str, int] = defaultdict(int)
        for e in events:
            counts[e["kind"]] += 1
        st.dataframe(pd.DataFrame({
            "time": C.when(e["ts"]), "event": e["kind"].removeprefix("canary_").replace("_", " "),
            "canary": _version(e["detail"].get("version") or (e["detail"].get("canary") or {}).get("version")),
            "requests (canary / incumbent)": _requests(e["detail"]),
            "reason": e["detail"].get("reason") or "",
        } for e in events), hide_index=True, key="canary_events")


def _requests(detail: dict[str, Any]) -> str:
    can, inc = _arm(detail, "canary"), _arm(detail, "incumbent")
    if "requests" not in can:
        return "-"
    return f"{can.get('requests')} / {inc.get('requests', '-')}"


if __name__ == "__main__":
    render()
