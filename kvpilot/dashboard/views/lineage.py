"""Eviction lineage panel: what the cache forgot of a sampled request's context, next to how it answered.

`render_lineage(ctx)` draws it for the page's scope (deployment, instance, time window): the sampled
requests (`kvpilot.attach(..., lineage=rate)`) with their kept fraction and, when the shadow probe measured
the same request, its top-1 agreement with the full cache, worst answered first; for the request picked,
its context with the evicted units marked, and a table of its units with their text. A unit counts as
evicted when less than half of its (layer, KV head) slots were still held (`kvpilot.engine.lineage`).
"""

from __future__ import annotations

from typing import Any

import pandas as pd
import streamlit as st

from kvpilot.dashboard import context as C
from kvpilot.dashboard import fmt
from kvpilot.storage import LineageInfo, LineageSummary, Store

LIMIT = 200
EXCERPT_CHARS = 160
CONTEXT_CHARS = 20_000  # the marked context is cut after this many characters (the units table has them all)


def render_lineage(ctx: C.Ctx) -> None:
    """The lineage panel for `ctx.scope`; draws a hint when no request there has a lineage."""
    st.subheader("Eviction lineage")
    with C.guard():
        found: list[LineageSummary] = C.query(Store.lineages, ctx.scope, limit=LIMIT)
        if not found:
            st.info("No eviction lineage in this scope and window. Sampled requests record which units of their "
                    "context the compressed cache forgot when the engine is attached with a lineage rate: "
                    "`kvpilot.attach(engine, store, lineage=0.01)` (every request the shadow fidelity probe "
                    "measures is also traced).")
            return
        ordered = sorted(found, key=_rank)
        st.caption(f"{len(found)} sampled request(s), worst answered first (top-1 agreement with the full cache "
                   "when the shadow probe measured it, else the least kept).")
        st.dataframe(pd.DataFrame(_row(s) for s in ordered), hide_index=True, key="lineage_requests",
                     column_config={"kept": st.column_config.NumberColumn("kept", format="percent"),
                                    "top-1 agreement": st.column_config.NumberColumn(format="%.2f")})
        labels = {s.id: _label(s) for s in ordered}
        pick = st.selectbox("Request", list(labels), format_func=lambda i: labels[i], key="lineage_request")
        if pick is not None:
            _details(C.query(Store.lineage, pick))


def _rank(s: LineageSummary) -> tuple[float, float, float]:
    agreement = s.top1_agreement if s.top1_agreement is not None else 2.0  # measured ones first
    return agreement, s.kept_fraction, -s.ts


def _label(s: LineageSummary) -> str:
    quality = "" if s.top1_agreement is None else f", top-1 {s.top1_agreement:.2f}"
    return f"#{s.id} {C.when(s.ts)} {fmt.config_name(s.config)} (kept {fmt.pct(s.kept_fraction)}{quality})"


def _row(s: LineageSummary) -> dict[str, Any]:
    return {
        "id": s.id, "time": C.when(s.ts), "config": fmt.config_name(s.config), "version": s.config_version,
        "units": s.kind, "tokens": s.context_tokens, "kept": s.kept_fraction,
        "evicted units": f"{s.evicted_units} / {s.total_units}", "top-1 agreement": s.top1_agreement,
        "KL": s.mean_kl, "question": (s.first_question or "")[:80],
    }


def marked_context(info: LineageInfo, limit: int = CONTEXT_CHARS) -> str:
    """The context as markdown, each evicted unit on a red background; stored text escaped (`fmt.md`)."""
    parts, used = [], 0
    for unit in info.units:
        text = info.excerpt(unit)
        if used >= limit:
            parts.append(" …")
            break
        text = text[: limit - used]
        used += len(text)
        body = fmt.md(text)
        if not body:
            continue
        lead = " " if text[:1].isspace() else ""
        parts.append(f"{lead}:red-background[{body}]" if unit.evicted else f"{lead}{body}")
    return "".join(parts)


def _details(info: LineageInfo) -> None:
    s = info.summary
    cols = st.columns(4)
    cols[0].metric("Kept", fmt.pct(s.kept_fraction, 1), help="share of the context tokens' (layer, KV head) slots "
                   "the compressed cache still held when the questions were asked")
    cols[1].metric("Evicted units", f"{s.evicted_units} / {s.total_units}",
                   help=f"{s.kind}s of which less than half was still held")
    cols[2].metric("Top-1 agreement", "-" if s.top1_agreement is None else f"{s.top1_agreement:.2f}",
                   help="the shadow probe's comparison of this request's answers with the full cache's")
    cols[3].metric("Context", f"{s.context_tokens:,} tokens")
    if info.answers:
        st.markdown("**Answers**")
        st.dataframe(pd.DataFrame({"question": a.get("question", ""), "answer": a.get("answer", "")}
                                  for a in info.answers), hide_index=True, key="lineage_answers")
    st.markdown("**Context** (evicted units marked)")
    st.markdown(marked_context(info))
    only = st.checkbox("Evicted units only", value=True, key="lineage_evicted_only")
    units = [u for u in info.units if u.evicted or not only]
    st.dataframe(pd.DataFrame(
        {"tokens": f"{u.token_start}-{u.token_end}", "characters": f"{u.char_start}-{u.char_end}", "kept": u.kept,
         "evicted": u.evicted, "text": " ".join(info.excerpt(u).split())[:EXCERPT_CHARS]} for u in units),
        hide_index=True, key="lineage_units",
        column_config={"kept": st.column_config.NumberColumn("kept", format="percent")})
