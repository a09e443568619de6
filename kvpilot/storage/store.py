"""`Store`: the one object probes, the tuner, the dashboard, the CLI and engines use to reach the database."""

from __future__ import annotations

from typing import TYPE_CHECKING

from kvpilot.storage.aggregates import AggregateStore
from kvpilot.storage.canary import CanaryStore
from kvpilot.storage.lineage import LineageStore
from kvpilot.storage.samples import SampleWriter

if TYPE_CHECKING:
    from kvpilot.storage.protocols import ConfigSource, RunRecorder, SampleSink


class Store(SampleWriter, AggregateStore, CanaryStore, LineageStore):
    """kvpilot's store on SQLite or PostgreSQL (or any registered backend, see `kvpilot.storage.backends`).

    Open it with `Store.open(url)` (None: $KVPILOT_DB, else `$KVPILOT_HOME/kvpilot.db`). It is safe to share
    between threads; each process opens its own. It satisfies the `SampleSink`, `ConfigSource` and
    `RunRecorder` protocols (`kvpilot.storage.protocols`). Methods come from its parts:

    - writers (`kvpilot.storage.samples`): add_samples, add_layer_stats, add_requests, add_memory_samples,
      add_events;
    - rollups (`kvpilot.storage.rollup_jobs`): refresh_rollups, prune_rollups, cover_until;
    - metadata (`kvpilot.storage.entities`): register_instance, heartbeat, instances, deployments,
      start_run, finish_run, runs, save_profile, profiles, prune (raw rows; rollups stay);
    - readers (`kvpilot.storage.queries`), all taking a `Scope` or its fields: layer_stats_latest,
      layer_stats_window, layer_stats_series, requests_window, requests_series, memory_window, events,
      event_series, run_summary, counts;
    - dashboard aggregates (`kvpilot.storage.aggregates`), taking a `Scope`: is_empty, request_totals,
      latency_histogram, latency_histograms, layer_plan, layer_view, layer_shape, event_totals, pool_series;
    - control plane (`kvpilot.storage.registry`): push, list_versions, get_version, active_version, diff,
      activate, rollback, ack, acks, activations, config_listener;
    - canary rollouts (`kvpilot.storage.canary`): start_canary, active_canary, canaries, canary_arms,
      finish_canary, canary_event, canary_events.
    - eviction lineage (`kvpilot.storage.lineage`): add_lineage, lineages (a `Scope`), lineage,
      lineage_for_request.
    """


if TYPE_CHECKING:  # the type checker proves that Store satisfies every seam

    def _seams(store: Store) -> tuple[SampleSink, ConfigSource, RunRecorder]:
        return store, store, store
