"""Configs page: version history per deployment, diffs, engine acknowledgements and rejections, and push,
activate and rollback behind a confirmation (hidden in a read-only view)."""

from __future__ import annotations

import json
from collections import Counter

import pandas as pd
import streamlit as st

from kvpilot.config import KVConfig, KVConfigError
from kvpilot.dashboard import context as C
from kvpilot.dashboard import fmt
from kvpilot.storage import Activation, ConfigVersionInfo, Store
from kvpilot.vllm_config import VLLMConfig, is_vllm_document


def render() -> None:
    st.title("Configs")
    C.flash()
    ctx = C.current()
    with C.guard():
        if ctx.deployment is None:
            st.info("No deployment has a config yet. Push one with `kvpilot push -d NAME -c config.json`, promote a "
                    f"trial on the Tuning page, or run {C.fill_hint()}.")
            if not ctx.read_only:
                _push(None, None)
            return
        versions: list[ConfigVersionInfo] = C.query(Store.list_versions, ctx.deployment)
        if not versions:
            st.info(f"{fmt.md(ctx.dep)} has no config version yet: {fmt.code(f'kvpilot push -d {ctx.dep} -c config.json')}.")
            if not ctx.read_only:
                _push(ctx.deployment, None)
            return
        acks = C.query(Store.acks, ctx.deployment, limit=1000)
        active = next((v for v in versions if v.active), None)
        _rejections(ctx, acks, active)
        _history(versions, acks)
        _show_and_diff(ctx, versions, active)
        _acks(acks)
        activations: list[Activation] = C.query(Store.activations, ctx.deployment)
        st.subheader("Activation history")
        st.dataframe(
            pd.DataFrame({"time": C.when(a.ts), "action": a.action, "version": a.version, "by": a.by or ""}
                         for a in reversed(activations)),
            hide_index=True, key="activations_table",
        )
        if not ctx.read_only:
            _rollback(ctx, active, activations)
            _activate(ctx, versions, active)
            _push(ctx.deployment, active)


def _rejections(ctx: C.Ctx, acks: list, active: ConfigVersionInfo | None) -> None:
    rejected = [a for a in acks if a.status == "rejected"]
    for a in rejected[:5]:
        st.error(f"{fmt.md(a.instance)} rejected v{a.version} ({C.ago(a.ts)}): {fmt.md(a.reason or 'no reason given')}")
    if active is not None:
        applied = {a.instance for a in acks if a.version == active.version and a.status == "applied"}
        st.markdown(f"**Active: v{active.version}**, applied by {len(applied)} engine(s)"
                    + (f": {fmt.md(', '.join(sorted(applied)))}" if applied else "") + ".")


def _history(versions: list[ConfigVersionInfo], acks: list) -> None:
    st.subheader(f"Versions of {fmt.md(versions[0].deployment)}")
    tally = Counter((a.version, a.status) for a in acks)
    st.dataframe(
        pd.DataFrame(
            {
                "version": v.version, "active": v.active, "created": C.when(v.created_at), "pushed by": v.pushed_by,
                "source": v.source, "parent": v.parent_version, "applied": tally[(v.version, "applied")],
                "rejected": tally[(v.version, "rejected")], "hash": v.config_hash[:12],
            }
            for v in reversed(versions)
        ),
        hide_index=True, key="versions_table", placeholder="-",  # version 1 has no parent
    )


def _acks(acks: list) -> None:
    st.subheader("Acknowledgements")
    if not acks:
        st.caption("No engine has acknowledged a version yet (engines with a config watcher do).")
        return
    st.dataframe(
        pd.DataFrame({"time": C.when(a.ts), "instance": a.instance, "version": a.version, "status": a.status,
                      "reason": a.reason or ""} for a in acks),
        hide_index=True, key="acks_table",
    )


def _show_and_diff(ctx: C.Ctx, versions: list[ConfigVersionInfo], active: ConfigVersionInfo | None) -> None:
    numbers = [v.version for v in versions]
    left, right = st.columns(2)
    with left:
        st.subheader("Show a version")
        shown = st.selectbox("Version", numbers[::-1], key="show_version")
        C.table(next(v for v in versions if v.version == shown).config_dict(), key="version_config")
    with right:
        st.subheader("Diff")
        if len(numbers) < 2:
            st.caption("Only one version so far.")
            return
        b_default, a_default = diff_defaults(versions, active)
        a = st.selectbox("From version", numbers, index=numbers.index(a_default), key="diff_a")
        b = st.selectbox("To version", numbers, index=numbers.index(b_default), key="diff_b")
        if a is None or b is None:
            return
        changes = C.query(Store.diff, ctx.dep, a, b)
        if not changes:
            st.caption(f"v{a} and v{b} are identical.")
        else:
            st.dataframe(
                pd.DataFrame({"field": c.field, f"v{a}": _cell(c.old), f"v{b}": _cell(c.new)} for c in changes),
                hide_index=True, key="diff_table",
            )


def diff_defaults(versions: list[ConfigVersionInfo], active: ConfigVersionInfo | None) -> tuple[int, int]:
    """(to, from) for the diff: the active version against the one it replaced (its parent, else the version
    before it); when the active one is the oldest, the newest version against it. Never a version with itself."""
    numbers = sorted(v.version for v in versions)
    to = active.version if active else numbers[-1]
    parent = next((v.parent_version for v in versions if v.version == to), None)
    if parent in numbers and parent != to:
        return to, parent
    earlier = [n for n in numbers if n < to]
    if earlier:
        return to, earlier[-1]
    later = [n for n in numbers if n != to]
    return (later[-1], to) if later else (to, to)


def _cell(value: object) -> str:
    return json.dumps(value) if not isinstance(value, str) else value


def rollback_target(activations: list[Activation]) -> int | None:
    """The version `Store.rollback` would re-activate (the same undo stack), or None."""
    stack: list[int] = []
    for a in activations:
        if a.action == "rollback":
            if stack:
                stack.pop()
            if not stack or stack[-1] != a.version:
                stack.append(a.version)
        else:
            stack.append(a.version)
    return stack[-2] if len(stack) >= 2 else None


def _rollback(ctx: C.Ctx, active: ConfigVersionInfo | None, activations: list[Activation]) -> None:
    st.subheader("Actions")
    target = rollback_target(activations)
    if target is None or active is None:
        st.caption("Rollback: no earlier active version to go back to.")
        return
    C.confirm(
        "rollback", f"Roll back to v{target}",
        f"Roll {fmt.md(ctx.dep)} back from v{active.version} to v{target}? Engines apply it at their next request "
        "boundary.",
        lambda: f"{fmt.md(ctx.dep)}: v{C.store().rollback(ctx.dep, by='dashboard').version} is active again.",
    )


def _activate(ctx: C.Ctx, versions: list[ConfigVersionInfo], active: ConfigVersionInfo | None) -> None:
    others = [v.version for v in versions if not v.active]
    if not others:
        return
    pick = st.selectbox("Activate an earlier version", others[::-1], key="activate_version")
    if pick is None:
        return
    C.confirm(
        "activate", f"Activate v{pick}",
        f"Make v{pick} the active config of {fmt.md(ctx.dep)}" + (f" (instead of v{active.version})?" if active else "?"),
        lambda: f"{fmt.md(ctx.dep)}: v{C.store().activate(ctx.dep, pick, by='dashboard').version} is active.",
    )


def _push(deployment: str | None, active: ConfigVersionInfo | None) -> None:
    st.subheader("Push a new version")
    name = deployment or st.text_input("Deployment", key="push_deployment")
    start = active.document().to_json(indent=2) if active else KVConfig().to_json(indent=2)
    kind = "VLLMConfig" if active is not None and active.is_vllm else "KVConfig"
    text = st.text_area(f"{kind} (JSON)", value=start, height=260, key=f"push_text:{deployment}")
    try:
        cfg: KVConfig | VLLMConfig = VLLMConfig.parse(text) if is_vllm_document(text) else KVConfig.parse(text)
    except KVConfigError as exc:
        st.error(str(exc))
        return
    changed = [k for k, v in cfg.to_dict().items() if active is None or active.config_dict().get(k) != v]
    summary = ", ".join(f"{k}={json.dumps(cfg.to_dict()[k])}" for k in changed[:8]) or "no field changes"
    C.confirm(
        f"push:{deployment}", "Push", f"Push this config to {fmt.md(name)} as its next version and activate it? ({summary})",
        lambda: f"{fmt.md(name)}: pushed v{C.store().push(name, cfg, pushed_by='dashboard', source='dashboard').version}.",
        disabled=not name,
    )


if __name__ == "__main__":
    render()
