"""The store's seams as small Protocols, so components depend on what they use, not on `Store`.

- `SampleSink`: what the probe recorder writes samples to (one bulk writer per sample table, each able to
  claim a recorder part id so a replayed part is stored at most once);
- `ConfigSource`: what an engine's config watcher reads and answers (active versions, acks, heartbeats,
  config events, and a push listener where the database has one);
- `RunRecorder`: what records a run (demo, evaluation, tuning trial, replay, profile) so the dashboard
  lists it.

`Store` satisfies all three (checked in `kvpilot.storage.store` for the type checker and by a test at run
time); test doubles and proxies only need the methods of the seam they stand in for. Torch-free and cheap
to import: nothing here loads SQLAlchemy.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from kvpilot.storage.rows import SampleRow

if TYPE_CHECKING:
    from kvpilot.config import KVConfig
    from kvpilot.storage.backends.base import Listener
    from kvpilot.storage.types import ConfigVersionInfo, InstanceInfo



@runtime_checkable
class SampleSink(Protocol):
    """Bulk writers of the sample tables; each returns the rows stored (0 for a part already stored)."""

    def add_layer_stats(
        self, rows: Iterable[SampleRow], *, instance_id: int | None = None, run_id: int | None = None,
        part_id: str | None = None,
    ) -> int: ...

    def add_requests(
        self, rows: Iterable[SampleRow], *, instance_id: int | None = None, run_id: int | None = None,
        part_id: str | None = None,
    ) -> int: ...

    def add_memory_samples(
        self, rows: Iterable[SampleRow], *, instance_id: int | None = None, run_id: int | None = None,
        part_id: str | None = None,
    ) -> int: ...

    def add_events(
        self, rows: Iterable[SampleRow], *, instance_id: int | None = None, run_id: int | None = None,
        part_id: str | None = None,
    ) -> int: ...

    def add_vllm_samples(
        self, rows: Iterable[SampleRow], *, instance_id: int | None = None, run_id: int | None = None,
        part_id: str | None = None,
    ) -> int: ...


class SampleWriterFn(Protocol):
    """One of a SampleSink's writers."""

    def __call__(
        self, rows: Iterable[SampleRow], *, instance_id: int | None = None, run_id: int | None = None,
        part_id: str | None = None,
    ) -> int: ...


# The sink's writer for each sample table (the names of `kvpilot.storage.schema.SAMPLES`, in its order).
SINK_WRITERS: dict[str, Callable[[SampleSink], SampleWriterFn]] = {
    "layer_stats": lambda sink: sink.add_layer_stats,
    "requests": lambda sink: sink.add_requests,
    "memory_samples": lambda sink: sink.add_memory_samples,
    "cache_events": lambda sink: sink.add_events,
    "vllm_samples": lambda sink: sink.add_vllm_samples,
}


def sink_writer(sink: SampleSink, table: str) -> SampleWriterFn:
    """The method of `sink` that stores rows of `table`."""
    return SINK_WRITERS[table](sink)


@runtime_checkable
class ConfigSource(Protocol):
    """What a config watcher needs from the control plane."""

    def register_instance(
        self, deployment: str, name: str, *, model: str | None = None, host: str | None = None,
        pid: int | None = None,
    ) -> InstanceInfo: ...

    def heartbeat(self, instance_id: int, *, config_version: int | None = None, ts: float | None = None) -> None: ...

    def active_version(self, deployment: str) -> ConfigVersionInfo | None: ...

    def ack(self, instance_id: int, version: int, status: str, reason: str | None = None) -> None: ...

    def add_events(
        self, rows: Iterable[SampleRow], *, instance_id: int | None = None, run_id: int | None = None,
        part_id: str | None = None,
    ) -> int: ...

    def config_listener(self) -> Listener | None: ...


@runtime_checkable
class RunRecorder(Protocol):
    """Opens and closes runs (kinds: `kvpilot.storage.RUN_KINDS`, e.g. "eval"), so the dashboard lists them."""

    def start_run(
        self,
        kind: str,
        *,
        deployment: str | None = None,
        instance_id: int | None = None,
        name: str | None = None,
        study_name: str | None = None,
        trial_number: int | None = None,
        config: KVConfig | dict[str, Any] | None = None,
        params: dict[str, Any] | None = None,
        started_at: float | None = None,
    ) -> int: ...

    def finish_run(
        self,
        run_id: int,
        *,
        status: str = "completed",
        metrics: dict[str, Any] | None = None,
        finished_at: float | None = None,
    ) -> None: ...


__all__ = ["SINK_WRITERS", "ConfigSource", "RunRecorder", "SampleRow", "SampleSink", "SampleWriterFn", "sink_writer"]
