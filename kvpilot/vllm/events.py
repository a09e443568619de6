"""vLLM's KV-cache events (blocks stored in and removed from the prefix cache) as kvpilot cache events.

vLLM publishes them over ZMQ only when its `--kv-events-config` sets `"enable_kv_cache_events": true`:
with `"publisher": "zmq"` alone the publisher socket opens but the block pool records nothing, which is
why a subscriber sees no message. Events exist only with prefix caching on (they carry block hashes).
Each message is (topic, 8-byte sequence number, msgpack payload); the payload is a batch
`[ts, [event, ...], data_parallel_rank]` whose events are maps tagged by `type`: `BlockStored`
(`block_hashes`, `token_ids`, `block_size`, ...), `BlockRemoved` (`block_hashes`), `AllBlocksCleared`.
A batch of one kind becomes one `cache_events` row whose `count` is the number of blocks and `bytes`
their KV bytes; `detail` keeps the server's timestamp, the tokens and the sequence number, and a gap in
the sequence (messages the socket dropped) is reported in the next row's detail.
"""

from __future__ import annotations

import json
import logging
import threading
from typing import Any

import msgspec
import zmq

log = logging.getLogger(__name__)

KINDS = {"BlockStored": "kv_block_stored", "BlockRemoved": "kv_block_removed", "AllBlocksCleared": "kv_blocks_cleared"}


def events_config(port: int, topic: str = "kvpilot") -> str:
    """The `--kv-events-config` JSON that makes a server publish its KV events on `port`."""
    return json.dumps({"enable_kv_cache_events": True, "publisher": "zmq", "endpoint": f"tcp://*:{port}",
                       "topic": topic})


def batch_rows(payload: Any, *, seq: int, bytes_per_token: int | None, missed: int = 0,
               block_size: int | None = None) -> list[dict[str, Any]]:
    """The cache_events rows of one decoded batch (`block_size`: the server's, which removals do not carry)."""
    ts, events = float(payload[0]), payload[1]
    rows = []
    for ev in events:
        kind = KINDS.get(ev.get("type", "")) if isinstance(ev, dict) else None
        if kind is None:
            continue
        blocks = len(ev.get("block_hashes") or ())
        tokens = len(ev.get("token_ids") or ()) if kind == "kv_block_stored" else None
        size = ev.get("block_size") or block_size
        detail: dict[str, Any] = {"seq": seq, "server_ts": ts}
        if tokens is not None:
            detail["tokens"] = tokens
        if size:
            detail["block_size"] = size
        if missed:
            detail["missed_batches"] = missed
            missed = 0
        nbytes = None
        if bytes_per_token and kind == "kv_block_stored" and tokens is not None:
            nbytes = tokens * bytes_per_token
        elif bytes_per_token and kind == "kv_block_removed" and size:
            nbytes = blocks * size * bytes_per_token
        rows.append({"ts": ts, "kind": kind, "count": max(1, blocks), "bytes": nbytes, "detail": detail})
    return rows


class KVEventListener:
    """Subscribe to a server's KV events and submit them to a recorder as cache events (a daemon thread)."""

    def __init__(self, endpoint: str, recorder: Any, *, bytes_per_token: int | None = None, topic: str = ""):
        self.endpoint = endpoint
        self.recorder = recorder
        self.bytes_per_token = bytes_per_token
        self.topic = topic
        self.batches = 0
        self.missed = 0
        self.block_size: int | None = None  # learnt from stored blocks; removals do not say it
        self._last_seq: int | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._decoder = msgspec.msgpack.Decoder()

    def start(self) -> KVEventListener:
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="kvpilot-vllm-kv-events", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _run(self) -> None:
        ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
        sock = ctx.socket(zmq.SUB)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(self.endpoint)  # reconnects by itself when the server restarts
        sock.setsockopt(zmq.SUBSCRIBE, self.topic.encode())
        try:
            while not self._stop.is_set():
                if not sock.poll(200):
                    continue
                self.handle(sock.recv_multipart())
        except Exception:
            log.exception("vLLM KV-event listener on %s stopped", self.endpoint)
        finally:
            sock.close()

    def handle(self, parts: list[bytes]) -> int:
        """Decode one message and submit its rows; returns how many."""
        if len(parts) < 3:
            return 0
        seq = int.from_bytes(parts[1], "big")
        missed = 0
        if self._last_seq is not None and seq > self._last_seq + 1:
            missed = seq - self._last_seq - 1
            self.missed += missed
        self._last_seq = seq
        rows = batch_rows(self._decoder.decode(parts[2]), seq=seq, bytes_per_token=self.bytes_per_token,
                          missed=missed, block_size=self.block_size)
        for r in rows:
            self.block_size = r["detail"].get("block_size") or self.block_size
        self.batches += 1
        if rows:
            self.recorder.submit("cache_events", rows)
        return len(rows)


__all__ = ["KINDS", "KVEventListener", "batch_rows", "events_config"]
