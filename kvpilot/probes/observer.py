"""ProbeSet: the engine's observer. It samples forwards, times requests and fans hooks out to probes.

The registered attention function calls ``on_attention`` for every layer of every forward on a managed
cache, so the path that does not sample is a thread-local lookup and a comparison. Sampling is decided
once per forward, at layer 0 (see `SamplingPolicy`), and the sampled results are handed to the recorder
after the last layer. A probe that raises is logged and skipped: probes never break inference. Which
probes run is chosen by name in `kvpilot.probes.registry`.
"""

from __future__ import annotations

import logging
import random
import threading
import time
import weakref
from collections.abc import Iterable
from typing import Any

from kvpilot.probes.base import (
    SERVING_VERSION,
    CacheState,
    Probe,
    RequestContext,
    SampledForward,
    SamplingPolicy,
)

log = logging.getLogger(__name__)


def _overrides(probe: Probe, hook: str) -> bool:
    return getattr(type(probe), hook) is not getattr(Probe, hook)


class ProbeSet:
    """The object set as ``engine.observer`` (and added to ``engine.request_hooks``)."""

    def __init__(self, probes: Iterable[Probe], recorder: Any, policy: SamplingPolicy | None = None):
        self.probes = list(probes)
        self.recorder = recorder
        self.policy = policy or SamplingPolicy()
        self._attn = [p for p in self.probes if _overrides(p, "on_attention") or _overrides(p, "on_forward_end")]
        self._evict = [p for p in self.probes if _overrides(p, "on_evict")]
        self._req = [p for p in self.probes if _overrides(p, "on_request")]
        self._states: weakref.WeakKeyDictionary[Any, CacheState] = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()
        self._rng = random.Random(self.policy.seed)
        self._tl = threading.local()
        self.errors = 0
        self.sampled_forwards = 0
        # the deployment version in force, for requests served without a version chosen (`SERVING_VERSION`)
        self.version_source: Any = None

    # ----- per-cache state ---------------------------------------------------------------------------

    def state(self, cache: Any) -> CacheState:
        """The state of ``cache``, created (and its sampling drawn) on first sight."""
        tl = self._tl
        ref = getattr(tl, "cache_ref", None)
        if ref is not None and ref() is cache:
            return tl.state
        with self._lock:
            st = self._states.get(cache)
            if st is None:
                st = CacheState(sampled=self._rng.random() < self.policy.request_rate,
                                first_wall=time.time(), first_perf=time.perf_counter())
                self._states[cache] = st
        tl.cache_ref, tl.state = weakref.ref(cache), st
        return st

    # ----- hooks called by the engine and the cache ---------------------------------------------------

    def on_attention(self, cache, layer_idx, query, key, valid, scaling) -> None:
        if layer_idx == 0:
            self._begin(cache, query.shape[2])
        fwd = getattr(self._tl, "fwd", None)
        if fwd is None or fwd.cache is not cache:
            return
        try:
            for p in self._attn:
                p.on_attention(fwd, cache, layer_idx, query, key, valid, scaling)
        except Exception:
            self._failed("on_attention")
            self._tl.fwd = None
            return
        if layer_idx == len(cache.layers) - 1:
            self._tl.fwd = None
            self._end(fwd)

    def _begin(self, cache: Any, q_len: int) -> None:
        tl = self._tl
        pending = getattr(tl, "fwd", None)
        if pending is not None:  # the previous sampled forward stopped early: keep what it has
            tl.fwd = None
            self._end(pending)
        st = self.state(cache)
        st.forwards += 1
        if cache.layers[0].scoring_past >= 0:
            return  # a scoring prompt's queries-only pass: nothing of it stays in the cache
        if q_len == 1:
            st.decode_steps += 1
            every = self.policy.decode_every
            take = every > 0 and (st.decode_steps - 1) % every == 0
        else:
            take = self.policy.prefill
        if not (take and st.sampled and self._attn):
            return
        try:
            budgets = cache.budgets()
        except Exception:
            self._failed("budgets")
            return
        tl.fwd = SampledForward(cache=cache, step=st.decode_steps, q_len=q_len, budgets=budgets)
        self.sampled_forwards += 1

    def _end(self, fwd: SampledForward) -> None:
        for p in self._attn:
            try:
                p.on_forward_end(fwd, self.recorder)
            except Exception:
                self._failed("on_forward_end")
        fwd.cache = None

    def on_evict(self, cache, layer_idx: int, evicted: int, seconds: float) -> None:
        st = self.state(cache)
        e = st.evictions.get(layer_idx)
        if e is None:
            st.evictions[layer_idx] = [1, evicted, seconds]
        else:
            e[0] += 1
            e[1] += evicted
            e[2] += seconds
        if st.evict_first_wall is None:
            st.evict_first_wall = time.time() - seconds
        st.evict_seconds += seconds
        for p in self._evict:
            try:
                p.on_evict(st, layer_idx, evicted, seconds)
            except Exception:
                self._failed("on_evict")

    def begin_request(self, cache: Any) -> None:
        """`Engine.serve` starts a request on ``cache``: its end-to-end time starts now (so it covers the whole
        prefill, as TTFT does), also when the cache is kept from an earlier request (an agent session's next
        turn from the session pool), whose end-to-end time must not reach back to when the cache was filled."""
        st = self.state(cache)
        st.first_wall, st.first_perf = time.time(), time.perf_counter()
        st.forwards = st.questions = 0
        st.last_end_perf = None

    def on_request(self, result: Any, cache: Any) -> None:
        """Engine request hook ``(GenerationResult, cache)``."""
        try:
            req = self._request_context(result, cache)
        except Exception:
            self._failed("on_request")
            return
        for p in self._req:
            try:
                p.on_request(req, self.recorder)
            except Exception:
                self._failed(f"{p.name}.on_request")

    __call__ = on_request

    def _request_context(self, result: Any, cache: Any) -> RequestContext:
        now_wall, now_perf = time.time(), time.perf_counter()
        st = self.state(cache)
        first = st.questions == 0
        if first:
            e2e = now_perf - st.first_perf
            if e2e <= 0 or st.forwards == 0:  # never saw a forward (model not on kvpilot attention)
                e2e = result.ttft_s + result.tpot_s * max(len(result.token_ids) - 1, 0)
        else:
            e2e = now_perf - (st.last_end_perf or now_perf)
        st.questions += 1
        st.last_end_perf = now_perf
        evictions, first_evict, evict_s = st.take_evictions()
        chosen = SERVING_VERSION.get()
        if chosen is not None:
            version = chosen[0]
        else:
            version = self.version_source() if self.version_source is not None else None
        return RequestContext(
            result=result, cache=cache, state=st, ts=now_wall, start_wall=now_wall - e2e, e2e_s=e2e,
            first_question=first, evictions=evictions, evict_first_wall=first_evict, evict_seconds=evict_s,
            config_version=version,
        )

    # ----- misc ----------------------------------------------------------------------------------------

    def unavailable(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for p in self.probes:
            out.update(p.unavailable())
        return out

    def _failed(self, where: str) -> None:
        self.errors += 1
        if self.errors <= 5:
            log.exception("kvpilot probe failed in %s (inference continues)", where)

    def close(self) -> None:
        for p in self.probes:
            try:
                p.close()
            except Exception:
                log.exception("closing probe %s failed", p.name)

