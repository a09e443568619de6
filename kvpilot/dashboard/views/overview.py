"""Overview page: engines alive or stale, the config in force, memory pressure, latency and request rate."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from kvpilot.dashboard import charts, fmt
from kvpilot.dashboard import context as C
from kvpilot.storage import Histogram, Store
from kvpilot.storage.types import LatencyColumn

LATENCIES: tuple[LatencyColumn, ...] = ("ttft_s", "tpot_s")


def render() -> None:
    st.title("Overview")
    C.flash()
    ctx = C.current()
    with C.guard():
        if C.empty_notice(ctx, "engines, configs or measurements"):
            return
        C.live("overview", ctx, _live)


def _live(ctx: C.Ctx) -> None:
    _engines(ctx)
    if ctx.deployment is None:
        st.info("No deployment yet. Engines create one when they register (`kvpilot.attach(model, store=..., "
                f"deployment=...)`), and `kvpilot push` creates one with its first config; or run {C.fill_hint()}.")
        return
    _config_in_force(ctx)
    _vllm(ctx)
    _traffic(ctx)
    _memory(ctx)
    _latency(ctx)


def _engines(ctx: C.Ctx) -> None:
    deployments = C.query(Store.deployments)
    insts = C.query(Store.instances)
    alive = sum(i.alive for i in insts)
    a, b, c = st.columns(3)
    a.metric("Deployments", len(deployments))
    b.metric("Engines alive", f"{alive} / {len(insts)}", help="alive: heartbeat within the last 30 s")
    active = next((d.active_version for d in deployments if d.name == ctx.deployment), None)
    c.metric(f"Active config of {fmt.md(ctx.deployment)}" if ctx.deployment else "Active config",
             "-" if active is None else f"v{active}")
    if insts:
        st.subheader("Engine instances")
        versions = {d.name: d.active_version for d in deployments}
        df = pd.DataFrame(
            {
                "deployment": i.deployment,
                "instance": i.name,
                "status": "alive" if i.alive else "stale",
                "last heartbeat": C.ago(i.last_heartbeat),
                "config applied": _applied(i.config_version),
                "runs the active config": _current(i.config_version, versions.get(i.deployment)),
                "host": i.host,
                "pid": i.pid,
            }
            for i in insts
        )
        st.dataframe(df, hide_index=True, key="instances_table")
        if any(i.config_version is None for i in insts):
            st.caption("*not reported*: the engine runs without a config watcher (e.g. `kvpilot demo`, which "
                       "serves each compared config directly), so it never acknowledged a pushed version.")


def _applied(version: int | None) -> str:
    return "not reported" if version is None else f"v{version}"


def _current(version: int | None, active: int | None) -> str:
    if version is None or active is None:
        return "unknown"
    return "yes" if version == active else f"no (active is v{active})"


def _config_in_force(ctx: C.Ctx) -> None:
    active = C.query(Store.active_version, ctx.dep)
    if active is None:
        st.info(f"No config pushed to {fmt.md(ctx.dep)} yet: {fmt.code(f'kvpilot push -d {ctx.dep} -c config.json')}, "
                "or promote a trial on the Tuning page.")
        return
    if active.is_vllm:
        v = active.vllm_config()
        st.markdown(
            f"**vLLM config in force on {ctx.deployment}: v{active.version}**: KV cache {v.kv_cache_gib} GiB, "
            f"block size {v.block_size}, prefix caching {'on' if v.enable_prefix_caching else 'off'}, "
            f"max_num_seqs {v.max_num_seqs}, max_num_batched_tokens {v.max_num_batched_tokens or 'default'}, "
            f"KV dtype `{v.kv_cache_dtype}` (pushed by {active.pushed_by or '?'} from {active.source or '?'}, "
            f"{C.ago(active.created_at)})."
        )
        return
    cfg = active.config()
    size = (f"budget {cfg.budget} tokens" if cfg.budget is not None
            else f"compression {cfg.compression_ratio:.0%}" if cfg.compression_ratio is not None else "no eviction")
    insts = C.query(Store.instances, ctx.dep)
    running = sum(i.config_version == active.version for i in insts)
    st.markdown(
        f"**Active config of {fmt.md(ctx.dep)}: v{active.version}**: policy `{cfg.policy}`, {size}, "
        f"layers `{cfg.layer_allocation}`, heads `{cfg.head_allocation}` "
        f"(pushed by {fmt.md(active.pushed_by or '?')} from {fmt.md(active.source or '?')}, "
        f"{C.ago(active.created_at)}); {running} of {len(insts)} engine(s) report running it."
    )


def _vllm(ctx: C.Ctx) -> None:
    """A vLLM server's scrapes (`kvpilot watch --vllm` / `kvpilot vllm serve`): throughput, prefix-cache hit
    ratio, KV usage, preemptions and latency quantiles, per instance."""
    width = ctx.scope.bucket_s()
    buckets = C.query(Store.vllm_series, ctx.scope, bucket_s=width)
    if not buckets:
        return
    st.subheader("vLLM server")
    names: dict[int | None, str] = {i.id: i.name for i in C.query(Store.instances, ctx.deployment)}
    queries = sum(b.prefix_queries for b in buckets)
    hits = sum(b.prefix_hits for b in buckets)
    last = buckets[-1]
    cols = st.columns(5)
    cols[0].metric("Generation", "-" if last.generation_tokens_per_s is None
                   else f"{last.generation_tokens_per_s:.1f} tok/s")
    cols[1].metric("Prefix hit ratio", "-" if not queries else f"{hits / queries:.1%}",
                   help="prompt tokens found in vLLM's prefix cache / looked up, over the window")
    cols[2].metric("KV usage (latest)", "-" if last.kv_usage is None else f"{last.kv_usage:.1%}")
    cols[3].metric("Preemptions", f"{sum(b.preemptions for b in buckets):,}")
    cols[4].metric("TTFT p99 (worst)", _ms(max((b.ttft_p99_s for b in buckets if b.ttft_p99_s is not None),
                                               default=None)))
    rows = []
    for b in buckets:
        time = pd.to_datetime(b.ts, unit="s", utc=True)
        who = names.get(b.instance_id, str(b.instance_id))
        for panel, name, v in (
            ("rate", "prompt tok/s", b.prompt_tokens_per_s), ("rate", "generated tok/s", b.generation_tokens_per_s),
            ("ratio", "prefix hit ratio", b.prefix_hit_ratio), ("ratio", "KV usage", b.kv_usage),
            ("latency", "TTFT p50", b.ttft_p50_s), ("latency", "TTFT p99", b.ttft_p99_s),
            ("latency", "TPOT p50", b.tpot_p50_s), ("latency", "TPOT p99", b.tpot_p99_s),
        ):
            if v is not None:
                rows.append({"time": time, "series": f"{who}: {name}", "value": float(v), "panel": panel})
    df = pd.DataFrame(rows)
    if not len(df):
        return
    left, mid, right = st.columns(3)
    for col, panel, unit, title in ((left, "rate", "tokens/s", "Throughput"), (mid, "ratio", "fraction",
                                    "Prefix hits and KV usage"), (right, "latency", "seconds", "Latency quantiles")):
        part = df[df.panel == panel]
        if len(part):
            col.altair_chart(charts.lines(part, unit, fmt=".3~f", title=title))


def _traffic(ctx: C.Ctx) -> None:
    t = C.query(Store.request_totals, ctx.scope)
    cols = st.columns(5)
    cols[0].metric("Requests", f"{t.requests:,}")
    cols[1].metric("Request rate", "-" if t.rate_per_s is None else f"{t.rate_per_s:.2f}/s")
    cols[2].metric("Mean TTFT", _ms(t.ttft_mean))
    cols[3].metric("Mean TPOT", _ms(t.tpot_mean))
    cols[4].metric("Errors", f"{t.errors:,}")
    if not t.requests:
        st.caption(f"No requests recorded for {fmt.md(ctx.dep)} in this window.")
        return
    width = ctx.scope.bucket_s()
    series = C.query(Store.requests_series, ctx.scope, bucket_s=width)
    rows = []
    for b in series:
        time = charts.local_time(b.ts)
        rows.append({"time": time, "series": "requests/s", "value": b.requests / width, "panel": "rate"})
        # TTFT (a whole prefill) and TPOT (one token) differ 100-fold: each gets its own chart and axis
        for name, v, panel in (("TTFT mean", b.ttft_mean, "ttft"), ("TTFT max", b.ttft_max, "ttft"),
                               ("TPOT mean", b.tpot_mean, "tpot")):
            if v is not None:
                rows.append({"time": time, "series": name, "value": v * 1000, "panel": panel})
    df = pd.DataFrame(rows)
    rate, ttft, tpot = st.columns(3)
    rate.altair_chart(charts.lines(df[df.panel == "rate"], "requests/s", fmt=",.3~f", title="Request rate"))
    for col, panel, title in ((ttft, "ttft", "TTFT over time (ms)"), (tpot, "tpot", "TPOT over time (ms)")):
        part = df[df.panel == panel]
        if len(part):
            col.altair_chart(charts.lines(part, "ms", fmt=",.4~f", title=title))


def _memory(ctx: C.Ctx) -> None:
    width = ctx.scope.bucket_s()
    buckets = C.query(Store.memory_window, ctx.scope, bucket_s=width)
    if not buckets:
        st.caption("No memory samples in this window.")
        return
    names: dict[int | None, str] = {i.id: i.name for i in C.query(Store.instances, ctx.deployment)}
    rows = []
    for b in buckets:
        time = charts.local_time(b.ts)
        who = names.get(b.instance_id, str(b.instance_id))
        for name, v in (("KV physical", b.kv_bytes_physical), ("KV logical", b.kv_bytes_logical),
                        ("device allocated", b.device_allocated), ("NVML used", b.nvml_used_max)):
            if v is not None:
                rows.append({"time": time, "series": f"{who}: {name}", "value": float(v) / 2**20})
    last = buckets[-1]
    cols = st.columns(3)
    cols[0].metric("KV cache (latest)", C.human_bytes(last.kv_bytes_physical),
                   help="physical bytes held by the managed cache, mean over the newest bucket")
    cols[1].metric("KV logical (latest)", C.human_bytes(last.kv_bytes_logical),
                   help="what the cache would hold without eviction")
    device = last.nvml_used_max if last.nvml_used_max is not None else last.device_reserved_max
    cols[2].metric("Device memory (latest)", C.human_bytes(device),
                   help="NVML used, else the torch allocator's reserved bytes; '-' without a GPU")
    st.altair_chart(charts.lines(pd.DataFrame(rows), "MiB", fmt=",.4~f", title="Memory pressure (MiB)"))


def _latency(ctx: C.Ctx) -> None:
    cols = st.columns(2)
    hists: dict[str, Histogram] = C.query(Store.latency_histograms, ctx.scope, tuple(LATENCIES))  # one read
    for col, name in zip(cols, LATENCIES, strict=True):
        h = hists[name]
        label = "TTFT" if name == "ttft_s" else "TPOT"
        if not h.total:
            col.caption(f"No {label} values in this window.")
            continue
        df = pd.DataFrame({"start": [i * h.width * 1000 for i in range(len(h.counts))],
                           "end": [(i + 1) * h.width * 1000 for i in range(len(h.counts))], "requests": h.counts})
        q = " · ".join(f"p{int(p * 100)} ≈ {_ms(h.quantile(p))}" for p in (0.5, 0.9, 0.99))
        col.altair_chart(charts.histogram(df, "ms", title=f"{label} distribution"))
        col.caption(f"{label}: {q} ({h.total:,} requests; quantiles read off {len(h.counts)} bins)")


def _ms(seconds: float | None) -> str:
    return fmt.duration(seconds)


if __name__ == "__main__":
    render()
