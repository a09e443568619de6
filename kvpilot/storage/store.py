"""`Store`: the one object probes, the tuner, the dashboard, the CLI and engines use to reach the database."""

from __future__ import annotations

from kvpilot.storage.queries import QueryStore
from kvpilot.storage.registry import RegistryStore
from kvpilot.storage.samples import SampleWriter


class Store(SampleWriter, QueryStore, RegistryStore):
    """kvpilot's store on SQLite or PostgreSQL.

    Open it with `Store.open(url)` (None: $KVPILOT_DB, else `$KVPILOT_HOME/kvpilot.db`). It is safe to share
    between threads; each process opens its own. Methods come from its parts:

    - writers (`kvpilot.storage.samples`): add_layer_stats, add_requests, add_memory_samples, add_events;
    - metadata (`kvpilot.storage.entities`): register_instance, heartbeat, instances, deployments,
      start_run, finish_run, runs, save_profile, profiles, prune;
    - readers (`kvpilot.storage.queries`): layer_stats_latest, layer_stats_window, layer_stats_series,
      requests_window, requests_series, memory_window, events, event_series, run_summary, counts;
    - control plane (`kvpilot.storage.registry`): push, list_versions, get_version, active_version, diff,
      activate, rollback, ack, acks, activations.
    """
