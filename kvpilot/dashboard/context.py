"""Streamlit glue shared by every page: settings, the cached store, the sidebar scope, cached queries,
error display and confirmed actions.

The store and Optuna's storage are process-wide singletons (`st.cache_resource`); query results are cached
for a couple of seconds (`st.cache_data`) so several viewers and auto-refreshing fragments share one
database round trip. The sidebar widgets live in `app.py`'s run, so their values survive page switches.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any, Concatenate, ParamSpec, TypeVar

import streamlit as st
from sqlalchemy.exc import DBAPIError

from kvpilot.config import KVConfigError
from kvpilot.dashboard import READ_ONLY_ENV, fmt
from kvpilot.storage import DeploymentInfo, InstanceInfo, RunSummary, Scope, Store, StoreError

P = ParamSpec("P")
R = TypeVar("R")

WINDOWS = {"5m": 300, "15m": 900, "1h": 3600, "6h": 21600, "24h": 86400, "7d": 604800}
WINDOW_LABELS = {"5m": "last 5 min", "15m": "last 15 min", "1h": "last hour", "6h": "last 6 hours",
                 "24h": "last 24 hours", "7d": "last 7 days"}
REFRESH = {"off": None, "2s": 2, "5s": 5, "10s": 10, "30s": 30}
CACHE_TTL_S = 2


def fill_hint() -> str:
    """The command that fills the store this dashboard has open (not necessarily the default one)."""
    url = settings().url
    target = f" --db '{url}'" if url else ""
    return f"`kvpilot demo{target}` (runs the bundled model under the probes and records into this store)"


@dataclass(frozen=True)
class Settings:
    url: str | None
    read_only: bool


def settings() -> Settings:
    """What `kvpilot dashboard` passed through the environment."""
    flag = os.environ.get(READ_ONLY_ENV, "").strip().lower()
    return Settings(url=os.environ.get("KVPILOT_DB") or None, read_only=flag in ("1", "true", "yes", "on"))


@st.cache_resource(show_spinner=False, on_release=lambda s: s.close())
def _open_store(url: str | None, create: bool) -> Store:
    return Store.open(url, create=create)


def store() -> Store:
    """The process-wide store. A read-only view never creates tables in an empty database."""
    s = settings()
    return _open_store(s.url, not s.read_only)


@st.cache_resource(show_spinner=False)
def optuna_storage(url: str | None) -> Any:
    from kvpilot.dashboard import tuning

    return tuning.open_storage(url)


@st.cache_data(ttl=CACHE_TTL_S, show_spinner=False, max_entries=1000)
def _cached(url: str | None, name: str, args: tuple, kwargs: tuple) -> Any:
    return getattr(store(), name)(*args, **dict(kwargs))


def query(method: Callable[Concatenate[Store, P], R], *args: P.args, **kwargs: P.kwargs) -> R:
    """`store.<method>(...)` (e.g. `query(Store.layer_view, scope, "gini")`), cached for a couple of seconds.

    Pages read the store only through its methods; this caches them by name and arguments."""
    name = method.__name__
    if getattr(Store, name, None) is not method:
        raise TypeError(f"query() takes a Store method, got {method!r}")
    return _cached(settings().url, name, args, tuple(sorted(kwargs.items())))


# ----- the sidebar scope ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Ctx:
    """What every page needs: the scope chosen in the sidebar, refresh interval and mode."""

    scope: Scope
    refresh_s: int | None
    read_only: bool
    empty: bool
    url: str

    @property
    def deployment(self) -> str | None:
        return self.scope.deployment

    @property
    def dep(self) -> str:
        """The deployment, in panels a page draws only once one exists (it checks `deployment` first)."""
        if self.scope.deployment is None:
            raise StoreError("no deployment is selected")
        return self.scope.deployment


def sidebar() -> None:
    """Scope widgets (deployment, instance, window, refresh), drawn once per run by app.py."""
    s = settings()
    st.sidebar.caption(f"Store: `{store().url}`")
    if s.read_only:
        st.sidebar.info("Read-only view: push, rollback and promote are hidden.")
    deployments = [d.name for d in query(Store.deployments)]
    if deployments:
        if st.session_state.get("deployment") not in deployments and st.query_params.get("deployment") not in deployments:
            st.session_state["deployment"] = default_deployment()
        st.sidebar.selectbox("Deployment", deployments, key="deployment", bind="query-params",
                             help="opens on the deployment whose engines reported last")
        dep = st.session_state.get("deployment")
        insts = query(Store.instances, dep) if dep else []
        labels = {i.id: f"{i.name} ({'alive' if i.alive else 'stale'})" for i in insts}
        st.sidebar.selectbox(
            "Instance", [None, *labels], format_func=lambda i: "all instances" if i is None else labels.get(i, i),
            key="instance",
        )
    st.sidebar.selectbox("Time window", list(WINDOWS), index=2, format_func=lambda w: WINDOW_LABELS[w], key="window",
                         bind="query-params")
    st.sidebar.selectbox("Auto-refresh", list(REFRESH), index=2, key="refresh",
                         help="how often live panels re-query the store, without reloading the page")


def current() -> Ctx:
    """The page's context, from the sidebar's widget state."""
    s = settings()
    deployments = [d.name for d in query(Store.deployments)]
    dep = st.session_state.get("deployment")
    if dep not in deployments:
        dep = default_deployment() if deployments else None
    inst = st.session_state.get("instance")
    if inst is not None and (dep is None or inst not in {i.id for i in query(Store.instances, dep)}):
        inst = None
    window = WINDOWS.get(st.session_state.get("window") or "1h", 3600)
    refresh = REFRESH.get(st.session_state.get("refresh") or "5s", 5)
    return Ctx(Scope(dep, inst, float(window), now()), refresh, s.read_only, query(Store.is_empty), store().url)


def default_deployment() -> str | None:
    """The deployment the dashboard opens on: the one with the most recent data (see `most_recent`)."""
    deployments = query(Store.deployments)
    newest: dict[str, float] = {}
    for d in deployments:
        everything = Scope(d.name, window_s=None)
        stamps = [s.ts for s in query(Store.layer_stats_latest, everything, level="layer")]
        stamps += [e.ts for e in query(Store.events, everything, limit=1)]
        if stamps:
            newest[d.name] = max(stamps)
    return most_recent(deployments, query(Store.instances), newest)


def most_recent(deployments: list[DeploymentInfo], instances: list[InstanceInfo],
                newest_data: dict[str, float]) -> str | None:
    """The deployment with the newest sample (layer statistics or cache events); among deployments without
    samples, the one whose engine reported last; a deployment with only pushed configs comes last, so
    `tune --push chat` does not open the dashboard on an empty page."""
    beats: dict[str, float] = {}
    for i in instances:
        beats[i.deployment] = max(beats.get(i.deployment, 0.0), i.last_heartbeat)

    def rank(d: DeploymentInfo) -> tuple[bool, float, bool, float]:
        return (d.name in newest_data, newest_data.get(d.name, 0.0), d.name in beats, beats.get(d.name, d.created_at))

    ranked = sorted(deployments, key=rank, reverse=True)
    return ranked[0].name if ranked else None


def now() -> float:
    """The current time rounded to the cache TTL, so queries made within one TTL share cached results."""
    return math.floor(time.time() / CACHE_TTL_S) * CACHE_TTL_S


def live(name: str, ctx: Ctx, body: Callable[[Ctx], None]) -> None:
    """Run `body` in a fragment that re-runs every `ctx.refresh_s` seconds (not at all when auto-refresh is
    off) with the time window moved up to now, without re-running the rest of the page."""

    @st.fragment(run_every=ctx.refresh_s, key=f"live:{name}")
    def run() -> None:
        with guard():
            body(replace(ctx, scope=replace(ctx.scope, now=now())))

    run()


# ----- messages, errors and confirmed actions -------------------------------------------------------


def empty_notice(ctx: Ctx, what: str, command: str | None = None) -> bool:
    """Guidance when the whole store is empty; returns True so the page can stop."""
    if ctx.empty:
        st.info(f"The store `{ctx.url}` is empty: no deployments and no samples yet, so there are no {what}. "
                f"Fill it with {command or fill_hint()}, or point the dashboard at another database with "
                "`kvpilot dashboard --db URL`.")
        return True
    return False


@contextlib.contextmanager
def guard() -> Iterator[None]:
    """Show store, database and config errors on the page instead of a traceback."""
    try:
        yield
    except (StoreError, KVConfigError) as exc:
        st.error(fmt.md(exc))
    except DBAPIError as exc:
        detail = str(exc.orig).strip().splitlines()[0] if exc.orig is not None else str(exc)
        st.error(f"database error on `{store().url}`: {fmt.md(detail)}")


def flash() -> None:
    """Show the outcome of the last confirmed action once."""
    msg = st.session_state.pop("_flash", None)
    if msg:
        (st.success if msg[0] == "ok" else st.error)(msg[1])


def confirm(key: str, label: str, question: str, action: Callable[[], str], *, disabled: bool = False) -> None:
    """A button that asks before acting: the first click shows `question` with Confirm / Cancel."""
    pending = f"_pending:{key}"
    if st.session_state.get(pending):
        st.warning(question)
        yes, no = st.columns(2)
        if yes.button("Confirm", key=f"{key}:yes", type="primary"):
            st.session_state[pending] = False
            try:
                st.session_state["_flash"] = ("ok", action())
            except (StoreError, KVConfigError, DBAPIError) as exc:
                st.session_state["_flash"] = ("error", fmt.md(exc))
            st.cache_data.clear()
            st.rerun()
        if no.button("Cancel", key=f"{key}:no"):
            st.session_state[pending] = False
            st.rerun()
    elif st.button(label, key=key, disabled=disabled):
        st.session_state[pending] = True
        st.rerun()


def when(ts: float | None) -> str:
    return fmt.when(ts)


def ago(ts: float | None) -> str:
    if ts is None:
        return "-"
    s = max(0.0, time.time() - ts)
    return f"{s:.0f} s ago" if s < 120 else f"{s / 60:.0f} min ago" if s < 7200 else f"{s / 3600:.1f} h ago"


def human_bytes(n: float | None) -> str:
    return fmt.human_bytes(n)


def table(d: dict[str, Any] | None, key: str) -> None:
    """A nested dict (metrics, a config, params) as a two-column table with units, instead of raw JSON."""
    st.dataframe(fmt.rows(d), hide_index=True, key=key, width="stretch")


def run_metrics(summary: RunSummary) -> None:
    """The five numbers every run shows (Runs and Tuning pages): requests, latency, peak KV, evictions; a run
    that recorded no request (a tuning trial, a replay) says so in one line instead of a row of zeros and dashes."""
    if summary.requests == 0 and not summary.events.get("evict"):
        st.caption("No requests were recorded under this run (the probes record requests; tuning trials and "
                   "replays record their results as the metrics below).")
        return
    cols = st.columns(5)
    cols[0].metric("Requests", f"{summary.requests:,}")
    cols[1].metric("Mean TTFT", fmt.duration(summary.ttft_mean))
    cols[2].metric("Mean TPOT", fmt.duration(summary.tpot_mean))
    cols[3].metric("Peak KV", human_bytes(summary.kv_bytes_peak))
    cols[4].metric("Evictions", f"{summary.events.get('evict', 0):,}")
