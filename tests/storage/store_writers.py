"""Writer processes for the concurrency test: engines writing samples and a tuner writing trials.

Each writes until its deadline, counts what the store accepted, and reports the counts (or the error)
as JSON in `out_path`. Imported by spawned processes, so it holds no test code.
"""

from __future__ import annotations

import json
import random
import time
import traceback

LAYERS, HEADS = 30, 3


def engine_writer(url: str, deployment: str, name: str, start_at: float, duration_s: float, out_path: str) -> None:
    counts = {"layer_stats": 0, "cache_events": 0, "memory_samples": 0, "requests": 0, "heartbeats": 0, "acks": 0}
    try:
        from kvpilot.storage import Store

        time.sleep(max(0.0, start_at - time.time()))  # all processes open the (maybe empty) database at once
        store = Store.open(url)
        inst = store.register_instance(deployment, name)
        counts["instance_id"] = inst.id
        deadline = time.time() + duration_s
        applied = None
        step = 0
        while time.time() < deadline:
            rows = [
                {"step": step, "layer": layer, "head": head, "entropy": random.random(), "kv_bytes": 4096}
                for layer in range(LAYERS)
                for head in (-1, *range(HEADS))
            ]
            counts["layer_stats"] += store.add_layer_stats(rows, instance_id=inst.id)
            counts["cache_events"] += store.add_events(
                [{"kind": "evict", "layer": step % LAYERS, "count": 3}, {"kind": "hit"}], instance_id=inst.id
            )
            counts["memory_samples"] += store.add_memory_samples([{"kv_bytes_physical": 1 << 20}], instance_id=inst.id)
            counts["requests"] += store.add_requests([{"prompt_tokens": 100, "ttft_s": 0.05}], instance_id=inst.id)
            active = store.active_version(deployment)  # what the config watcher does every poll
            if active is not None and active.version != applied:
                active.config()
                store.ack(inst.id, active.version, "applied")
                applied = active.version
                counts["acks"] += 1
            if step % 5 == 0:
                store.heartbeat(inst.id, config_version=applied)
                counts["heartbeats"] += 1
            step += 1
        store.close()
    except BaseException:
        counts["error"] = traceback.format_exc()
    with open(out_path, "w") as fh:
        json.dump(counts, fh)


def tuner_writer(url: str, deployment: str, start_at: float, duration_s: float, out_path: str) -> None:
    counts = {"runs": 0, "layer_stats": 0, "requests": 0, "pushes": 0}
    try:
        from kvpilot.storage import Store

        time.sleep(max(0.0, start_at - time.time()))
        store = Store.open(url)
        deadline = time.time() + duration_s
        trial = 0
        while time.time() < deadline:
            run = store.start_run("tuning_trial", deployment=deployment, study_name="study", trial_number=trial,
                                  params={"ratio": 0.1 * (trial % 9)})
            counts["runs"] += 1
            counts["layer_stats"] += store.add_layer_stats(
                [{"layer": layer, "retained_mass": 0.9} for layer in range(LAYERS)], run_id=run
            )
            counts["requests"] += store.add_requests([{"output_tokens": 16}] * 4, run_id=run)
            store.finish_run(run, metrics={"accuracy": random.random()})
            if trial % 10 == 0:
                store.push(deployment, {"policy": "snapkv", "compression_ratio": 0.1 * (trial % 9)},
                           pushed_by="tuner", source=f"tuner:study/{trial}")
                counts["pushes"] += 1
            trial += 1
        store.close()
    except BaseException:
        counts["error"] = traceback.format_exc()
    with open(out_path, "w") as fh:
        json.dump(counts, fh)


def engine_server(url: str, deployment: str, commands, replies) -> None:
    """A real engine (the bundled model) with a config watcher, serving prompts sent through `commands`.

    Before each request it checks for a new config (the request boundary); each reply carries the config
    the request actually ran with. The background watcher thread polls too.
    """
    try:
        from kvpilot.engine import Engine
        from kvpilot.engine.watcher import ConfigWatcher
        from kvpilot.storage import Store

        store = Store.open(url)
        engine = Engine.load()
        watcher = ConfigWatcher(
            store, deployment, "engine-0", engine.apply_config, poll_s=0.2, initial=engine.config, model="bundled"
        ).start()
        replies.put(("ready", None))
        while True:
            prompt = commands.get()
            if prompt is None:
                break
            watcher.check_once()
            result = engine.generate(prompt, max_new_tokens=4)
            replies.put(("result", {"config": result.config.to_dict(), "text": result.text, "version": watcher.version}))
        watcher.stop()
        store.close()
    except BaseException:
        replies.put(("error", traceback.format_exc()))
