"""A small, fully known store for dashboard tests, the browser test and the README screenshot.

Everything is written through the public Store API (and Optuna's API for the study), with values chosen
so the pages' numbers can be checked: 2 deployments, 3 engines (one stale), 3 config versions with a
rejection and a rollback, 10 minutes of layer stats for the bundled model's shape (30 layers x 3 KV heads),
requests, memory samples, every event kind, a sensitivity profile and a two-objective Optuna study; and a
third deployment for the Quality page (`seed_quality`): shadow fidelity of four config versions, a canary
rolled back, one promoted and one running, with a stale engine.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass

import optuna

from kvpilot.storage import Store

DEPLOYMENT = "chat"
OTHER_DEPLOYMENT = "staging"
QUALITY_DEPLOYMENT = "support"  # the Quality page's deployment: canaries and shadow fidelity
# per version of QUALITY_DEPLOYMENT: (measured answers, top-1 agreement of each, mean KL of each)
QUALITY = {1: (12, 1.0, 0.0), 2: (8, 0.625, 0.9), 3: (10, 0.98, 0.02), 4: (4, 0.95, 0.05)}
LOSSY_REASON = "fidelity: canary agreement 62.5 % on 8 answers vs incumbent 100.0 % on 12; LLR 8.41 >= 2.25"
MODEL = "SmolLM2-135M-Instruct"
STUDY = "chat-tune"
LAYERS, HEADS = 30, 3
STEPS = 60  # one sample every 10 s over the last 10 minutes
REQUESTS = 120
REQUEST_ERRORS = 3
EVENTS = {  # kind: (rows, count per row, bytes per row)
    "evict": (40, 5, 4096),
    "ttl_pin": (10, 1, 2 * 2**20),
    "hit": (30, 1, 0),
    "miss": (10, 1, 0),
    "expire": (4, 1, 2 * 2**20),
    "offload": (2, 1, 2**20),
    "config_applied": (3, 1, 0),
    "config_rejected": (1, 1, 0),
    "recorder_drop": (1, 17, 0),
    "error": (1, 1, 0),
}
REJECT_REASON = "budget 4096 exceeds the model's context"
CONFIGS = [
    {"policy": "snapkv", "compression_ratio": 0.5},
    {"policy": "snapkv", "compression_ratio": 0.7, "layer_allocation": "pyramid"},
    {"policy": "h2o", "budget": 4096},
]
TRIALS = [  # (compression_ratio, policy, kv_mib, accuracy)
    (0.3, "snapkv", 70.0, 0.98),
    (0.5, "snapkv", 50.0, 0.97),
    (0.7, "snapkv", 30.0, 0.90),
    (0.5, "h2o", 50.0, 0.93),
    (0.7, "h2o", 30.0, 0.85),
    (0.9, "streaming", 10.0, 0.60),
]
PARETO = {0, 1, 2, 5}
BASELINE_MIB = 100.0


@dataclass(frozen=True)
class Seeded:
    url: str
    now: float
    engine0: int
    engine1: int
    engine_staging: int
    trial_run: int


def entropy(layer: int, head: int) -> float:
    return 0.2 + 0.02 * layer + 0.05 * (head + 1)  # normalised entropy, in [0, 1] like the probes record


def seed(store: Store, url: str, *, now: float | None = None, with_study: bool = True) -> Seeded:
    """Fill an empty store (and, with `with_study`, Optuna tables in the same database)."""
    now = time.time() if now is None else now
    e0 = store.register_instance(DEPLOYMENT, "engine-0", model=MODEL, host="gpu-a").id
    e1 = store.register_instance(DEPLOYMENT, "engine-1", model=MODEL, host="gpu-b").id
    es = store.register_instance(OTHER_DEPLOYMENT, "engine-s", model=MODEL, host="gpu-c").id

    for i, cfg in enumerate(CONFIGS, start=1):
        store.push(DEPLOYMENT, cfg, pushed_by="alice", source=f"user:alice#{i}")
        store.ack(e0, i, "rejected" if i == 3 else "applied", REJECT_REASON if i == 3 else None)
    store.ack(e1, 1, "applied")
    store.rollback(DEPLOYMENT, by="bob")  # active: v2
    store.heartbeat(e1, ts=now - 600)  # stale (acks count as heartbeats, so this comes after them)
    store.heartbeat(e0, ts=now)
    store.heartbeat(es, ts=now)

    for inst in (e0, e1):
        rows = []
        for s in range(STEPS):
            ts = now - 600 + 10 * s + 5
            for layer in range(LAYERS):
                for head in (-1, *range(HEADS)):
                    rows.append({
                        "ts": ts, "step": s, "layer": layer, "head": head,
                        "entropy": entropy(layer, head),
                        "retained_mass": 0.99 - 0.01 * layer, "tokens_90": 50.0 + 10 * layer,
                        "sink_mass": 0.3 - 0.005 * layer, "recent_mass": 0.2, "gini": 0.3 + 0.02 * layer,
                        "kv_bytes": 12288 * 1024, "kept_tokens": 1024, "seen_tokens": 2048,
                    })
        store.add_layer_stats(rows, instance_id=inst)

    store.add_requests(
        [
            {
                "ts": now - 595 + 4.9 * i, "prompt_tokens": 1000, "output_tokens": 64,
                "ttft_s": 0.05 + 0.001 * i, "tpot_s": 0.02 + 0.0001 * i, "e2e_s": 1.0,
                "kv_bytes": 50 * 2**20, "compression_ratio": 0.7,
                "error": "timeout" if i < REQUEST_ERRORS else None,
            }
            for i in range(REQUESTS)
        ],
        instance_id=e0,
    )
    for inst in (e0, e1):
        store.add_memory_samples(
            [
                {"ts": now - 600 + 10 * s + 5, "device": "cpu", "kv_bytes_physical": (40 + s % 7) * 2**20,
                 "kv_bytes_logical": 100 * 2**20, "kv_bytes_peak": 60 * 2**20, "rss_bytes": 900 * 2**20}
                for s in range(STEPS)
            ],
            instance_id=inst,
        )
    events = []
    for kind, (n, count, size) in EVENTS.items():
        for j in range(n):
            detail = None
            if kind in ("ttl_pin", "hit", "miss", "expire", "offload"):
                detail = {"session": f"s{j}", "pool_sessions": 2 + j % 5, "pool_bytes": (2 + j % 5) * 2**21,
                          "pinned_bytes": (1 + j % 3) * 2**21}
            elif kind == "config_rejected":
                detail = {"version": 3, "reason": REJECT_REASON}
            elif kind == "error":
                detail = {"message": "CUDA out of memory (simulated)"}
            events.append({"ts": now - 590 + (580 * j) / n, "kind": kind, "layer": j % LAYERS if kind == "evict" else None,
                           "count": count, "bytes": size or None, "detail": detail})
    store.add_events(events, instance_id=e0)
    store.save_profile(MODEL, "kl", [0.5 + 0.5 * math.sin(layer / 5) ** 2 for layer in range(LAYERS)])

    run = store.start_run("tuning_trial", deployment=DEPLOYMENT, study_name=STUDY, trial_number=1,
                          config=CONFIGS[0], started_at=now - 300)
    store.add_requests([{"ts": now - 290 + i, "ttft_s": 0.1, "tpot_s": 0.01, "kv_bytes": 2**20} for i in range(5)],
                       run_id=run)
    store.finish_run(run, metrics={"accuracy": 0.97})
    seed_quality(store, now)
    if with_study:
        seed_study(url)
    return Seeded(url, now, e0, e1, es, run)


def _figures(canary: int, incumbent: int, requests: tuple[int, int], llr: float) -> dict:
    def arm(version: int, n_requests: int) -> dict:
        n, agreement, kl = QUALITY[version]
        return {"version": version, "requests": n_requests, "errors": 0, "error_rate": 0.0, "measured": n,
                "agreement": agreement, "agreement_ci": [agreement * 0.8, min(1.0, agreement * 1.05)], "kl": kl,
                "latency_p50_ms": 420.0 + 10 * version, "latency_p95_ms": 900.0, "rejected": []}

    return {"canary": arm(canary, requests[0]), "incumbent": arm(incumbent, requests[1]), "fidelity_llr": llr,
            "thresholds": {"rollback_at": 2.25, "promote_at": -2.89}, "latency_p": 0.41}


def seed_quality(store: Store, now: float) -> None:
    """QUALITY_DEPLOYMENT: v1 (full cache) active, v2 a lossy canary rolled back, v3 a canary promoted, v4 a
    canary running; each version's answers measured by the shadow probe, older than chat's newest data."""
    eq = store.register_instance(QUALITY_DEPLOYMENT, "engine-q", model=MODEL, host="cpu-q").id
    store.push(QUALITY_DEPLOYMENT, {"policy": "full"}, pushed_by="alice")
    lossy = store.start_canary(QUALITY_DEPLOYMENT, {"policy": "streaming", "compression_ratio": 0.9}, 0.5, seed=1,
                               pushed_by="alice")
    store.finish_canary(lossy.id, "rollback", LOSSY_REASON, _figures(2, 1, (4, 6), 8.41), by="canary-judge")
    good = store.start_canary(QUALITY_DEPLOYMENT, {"policy": "snapkv", "compression_ratio": 0.3}, 0.5, seed=2,
                              pushed_by="alice")
    store.canary_event(good, "canary_undecided", {"reason": "undecided after 4 canary requests", **_figures(3, 1, (4, 5), -1.2)})
    store.finish_canary(good.id, "promote", "fidelity: canary agreement 98.0 % on 10 answers; LLR -3.02 <= -2.89",
                        _figures(3, 1, (5, 6), -3.02), by="canary-judge")
    store.start_canary(QUALITY_DEPLOYMENT, {"policy": "snapkv", "compression_ratio": 0.5}, 0.1, seed=3,
                       pushed_by="bob")
    events, requests = [], []
    for version, (n, agreement, kl) in QUALITY.items():
        for j in range(n):
            ts = now - 560 + 100 * (version - 1) + 8 * j
            events.append({"ts": ts, "kind": "quality", "detail": {
                "question": 0, "tokens": 8, "top1_agreement": agreement, "mean_kl": kl, "version": version,
                "config": {1: "full", 2: "streaming-0.9", 3: "snapkv-0.3", 4: "snapkv-0.5"}[version]}})
            requests.append({"ts": ts, "e2e_s": 0.4, "output_tokens": 8, "config_version": version})
    store.add_events(events, instance_id=eq)
    store.add_requests(requests, instance_id=eq)
    store.heartbeat(eq, ts=now - 600)  # stale: its benchmark ended


def seed_study(url: str) -> None:
    """A two-objective study (minimise KV MiB, maximise accuracy) with known trials and Pareto front."""
    storage = optuna.storages.RDBStorage(url)
    study = optuna.create_study(study_name=STUDY, storage=storage, directions=["minimize", "maximize"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(["kv_mib", "accuracy"])
    study.set_user_attr("baseline", {"kv_mib": BASELINE_MIB, "accuracy": 0.98})  # the full cache, as the tuner stores it
    dists = {
        "compression_ratio": optuna.distributions.FloatDistribution(0.0, 0.95),
        "policy": optuna.distributions.CategoricalDistribution(["snapkv", "h2o", "streaming"]),
    }
    for ratio, policy, kv, acc in TRIALS:
        study.add_trial(
            optuna.trial.create_trial(
                params={"compression_ratio": ratio, "policy": policy}, distributions=dists, values=[kv, acc],
                user_attrs={"config": {"policy": policy, "compression_ratio": ratio}},
            )
        )
    storage.engine.dispose()
