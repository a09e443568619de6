"""Layers page: attention skew per layer and KV head, the sensitivity profile, and per-layer budgets under the
active config."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from kvpilot.dashboard import charts, fmt
from kvpilot.dashboard import context as C
from kvpilot.policies.layers import layer_budgets
from kvpilot.storage import LAYER_STATS, Store

# The layer-stat metrics the table declares with a help text, in column order; entropy is stored normalised
# by the log of the keys' count (the skew probe's metric), so its unit is said here, not "nats".
METRIC_HELP = {c.name: c.help for c in LAYER_STATS.metrics if c.help} | {
    "entropy": "normalised attention entropy, 0 to 1 (0: all attention on one token, 1: spread evenly over "
               "every token): high = hard to compress",
}
LAYER_METRICS = tuple(METRIC_HELP)


def render() -> None:
    st.title("Layers")
    ctx = C.current()
    with C.guard():
        if C.empty_notice(ctx, "layer statistics"):
            return
        if ctx.deployment is None:
            st.info(f"No deployment yet; run {C.fill_hint()}.")
            return
        metric = st.selectbox("Metric", LAYER_METRICS, key="layer_metric", help="\n".join(
            f"- **{k}**: {v}" for k, v in METRIC_HELP.items())) or LAYER_METRICS[0]
        C.live("layers", ctx, lambda c: _skew(c, metric))
        _profile(ctx)
        _budgets(ctx)


def _skew(ctx: C.Ctx, metric: str) -> None:
    view = C.query(Store.layer_view, ctx.scope, metric)
    if not view.cells and not view.layers:
        st.info(f"No layer statistics for {fmt.md(ctx.dep)} in this window. The probes record them while an engine "
                f"serves (`kvpilot.attach(model, store=..., deployment=...)`); try a longer window, or run {C.fill_hint()}.")
        return
    st.caption(f"{METRIC_HELP.get(metric, '')}. Means over {view.plan.describe()}.")
    left, right = st.columns(2)
    if view.cells:
        # the probes record each attention (query) head; with grouped-query attention several share a KV head
        df = pd.DataFrame({"layer": c.layer, "query head": c.head, metric: c.value} for c in view.cells)
        left.altair_chart(charts.heatmap(df, "query head", "layer", metric,
                                         title=f"{metric}: layer x query head (window mean)"))
    if view.layers:
        df = pd.DataFrame({"layer": c.layer, metric: c.value} for c in view.layers)
        right.altair_chart(charts.bars(df, "layer", metric, title=f"{metric} per layer (window mean)"))
    if view.series:
        df = pd.DataFrame({"time": charts.local_time(ts), "layer": layer, metric: v}
                          for ts, layer, v in view.series)
        st.altair_chart(charts.heatmap(df, "time", "layer", metric, x_type="T", title=f"{metric}: layer over time"))


def _profile(ctx: C.Ctx) -> None:
    st.subheader("Sensitivity profile")
    model = next((d.model for d in C.query(Store.deployments) if d.name == ctx.deployment), None)
    profiles = C.query(Store.profiles, model) if model else []
    profiles = profiles or C.query(Store.profiles)
    if not profiles:
        st.info("No sensitivity profile in the store yet. Measure one with `kvpilot profile`; a "
                "`layer_allocation='sensitivity'` config gives each layer a budget from it.")
        return
    labels = {p.id: f"#{p.id} {p.model} / {p.method} ({C.when(p.created_at)})" for p in profiles}
    pid = st.selectbox("Profile", list(labels), format_func=lambda i: labels[i], key="profile")
    prof = next(p for p in profiles if p.id == pid)
    df = pd.DataFrame({"layer": range(len(prof.values)), "sensitivity": prof.values})
    st.altair_chart(charts.bars(df, "layer", "sensitivity", title=f"{prof.method} sensitivity of {prof.model}"))


def _budgets(ctx: C.Ctx) -> None:
    st.subheader("Budgets per layer under the active config")
    active = C.query(Store.active_version, ctx.dep)
    if active is None:
        st.info(f"No config pushed to {fmt.md(ctx.dep)} yet: {fmt.code(f'kvpilot push -d {ctx.dep} -c config.json')}.")
        return
    if active.is_vllm:
        st.info(f"{ctx.deployment} is a vLLM server (v{active.version}): vLLM keeps whole blocks per layer, so "
                "there are no per-layer budgets; the Overview page shows its KV usage and prefix-cache hits.")
        return
    cfg = active.config()
    shape = C.query(Store.layer_shape, ctx.scope)
    per_layer = cfg.per_layer_values()  # e.g. explicit budgets or a sensitivity profile: one value per layer
    num_layers = shape.num_layers or max((len(v) for v in per_layer.values()), default=0) or None
    if num_layers is None:
        st.info("The number of layers is unknown until the probes record layer statistics for this deployment.")
        return
    seen = st.number_input("Tokens seen", min_value=1, value=int(shape.seen_tokens or 4096), step=256,
                           key="budget_seen", help="cache length to allocate for (default: the window's mean)")
    budgets = layer_budgets(cfg, num_layers, int(seen))
    st.caption(f"v{active.version}: policy `{cfg.policy}`, layer allocation `{cfg.layer_allocation}`; "
               f"mean {sum(budgets) / len(budgets):.0f} tokens per KV head per layer, total {sum(budgets):,}.")
    df = pd.DataFrame({"layer": range(num_layers), "tokens kept": budgets})
    st.altair_chart(charts.bars(df, "layer", "tokens kept", title=f"budget per layer at {int(seen):,} tokens seen"))


if __name__ == "__main__":
    render()
