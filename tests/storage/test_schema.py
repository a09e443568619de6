"""Migrations: fresh databases are created, older ones refused until `kvpilot db upgrade`, Optuna can share."""

from __future__ import annotations

import pytest
from sqlalchemy import inspect

from kvpilot.storage import SchemaError, SchemaOutdatedError, SchemaTooNewError, Store, StoreError, migrate
from kvpilot.storage.core import open_for_migration
from kvpilot.storage.schema import Base


def test_fresh_database_gets_every_table(store):
    tables = set(inspect(store.engine).get_table_names())
    assert set(Base.metadata.tables) <= tables
    assert migrate.VERSION_TABLE in tables
    assert store.schema_revision() == migrate.head_revision()


def test_migrations_build_exactly_the_models(store):
    """Alembic's comparison of the migrated database with the ORM models finds nothing but its version table."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    with store.engine.connect() as conn:
        diffs = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert [d for d in diffs if not (d[0] == "remove_table" and d[1].name == migrate.VERSION_TABLE)] == []


def test_sqlite_pragmas(tmp_path):
    with Store.open(str(tmp_path / "p.db")) as s:
        with s.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() >= 1000


def test_older_schema_is_refused_with_the_fix(db_url):
    old = open_for_migration(db_url)
    migrate.upgrade(old.engine, old._backend, "0001")
    old.close()
    with pytest.raises(SchemaOutdatedError) as err:
        Store.open(db_url)
    assert "kvpilot db upgrade" in str(err.value) and "0001" in str(err.value)
    with Store.open(db_url, upgrade=True) as s:
        assert s.schema_revision() == migrate.head_revision()
        s.push("d", {"policy": "h2o", "budget": 64})  # 0002's tables work


def test_newer_schema_is_refused(db_url):
    Store.open(db_url).close()
    handle = open_for_migration(db_url)
    with handle.engine.begin() as conn:
        conn.exec_driver_sql(f"UPDATE {migrate.VERSION_TABLE} SET version_num = '9999_future'")
    handle.close()
    with pytest.raises(SchemaTooNewError, match="newer kvpilot"):
        Store.open(db_url)


def test_tables_without_version_table_are_refused(db_url):
    Store.open(db_url).close()
    handle = open_for_migration(db_url)
    with handle.engine.begin() as conn:
        conn.exec_driver_sql(f"DROP TABLE {migrate.VERSION_TABLE}")
    handle.close()
    with pytest.raises(SchemaError, match="schema version is unknown"):
        Store.open(db_url)


def test_create_false_on_empty_database(db_url):
    with pytest.raises(StoreError, match="kvpilot db upgrade"):
        Store.open(db_url, create=False)


def test_optuna_shares_the_database(db_url):
    optuna = pytest.importorskip("optuna")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(storage=db_url, study_name="s")
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    with Store.open(db_url) as s:  # kvpilot's migrations ignore Optuna's tables and alembic_version
        run = s.start_run("tuning_trial", study_name="s", trial_number=1)
        assert s.get_run(run).study_name == "s"
        tables = set(inspect(s.engine).get_table_names())
    assert {"alembic_version", migrate.VERSION_TABLE, "trials", "layer_stats"} <= tables
    assert len(optuna.load_study(study_name="s", storage=db_url).trials) == 2


def _one_engine(conn) -> None:
    """Deployment 1 with engine instance 1, in raw SQL (the ORM may be ahead of the revision under test)."""
    conn.exec_driver_sql("INSERT INTO deployments (id, name, created_at) VALUES (1, 'd', 0)")
    conn.exec_driver_sql("INSERT INTO engine_instances (id, deployment_id, name, started_at, last_heartbeat) "
                         "VALUES (1, 1, 'e', 0, 0)")


def test_0010_drops_the_sample_owner_keys_and_keeps_rows_and_indexes(db_url):
    """Upgrading a 0007 store with samples in it: rows stay, the owner foreign keys go, the indexes stay."""
    old = open_for_migration(db_url)
    migrate.upgrade(old.engine, old._backend, "0007")
    with old.engine.begin() as conn:
        _one_engine(conn)
        conn.exec_driver_sql("INSERT INTO layer_stats (ts, instance_id, layer, head) VALUES (5, 1, 2, -1)")
        conn.exec_driver_sql("INSERT INTO cache_events (ts, instance_id, kind, count) VALUES (5, 1, 'hit', 1)")
    assert inspect(old.engine).get_foreign_keys("layer_stats")
    migrate.upgrade(old.engine, old._backend, "0010")
    insp = inspect(old.engine)
    for table in ("layer_stats", "requests", "memory_samples", "cache_events", "vllm_samples"):
        assert insp.get_foreign_keys(table) == [], table
        assert {"ix_" + table + "_instance_ts", "ix_" + table + "_run_ts"} <= {i["name"] for i in insp.get_indexes(table)}
    assert "ix_cache_events_kind_ts" in {i["name"] for i in insp.get_indexes("cache_events")}
    old.close()
    with Store.open(db_url, upgrade=True) as s:
        assert s.counts() == {"layer_stats": 1, "requests": 0, "memory_samples": 0, "cache_events": 1, "vllm_samples": 0}
        assert [r.layer for r in s.layer_stats_window(instance_id=1, since=0)] == [2]


def test_0011_gives_layer_stats_a_time_index_and_goes_back(db_url):
    """0011 swaps layer_stats' (instance_id, ts) B-tree for a time index (BRIN on PostgreSQL); rows stay and the
    readers that used the old index still answer; downgrading restores the old index."""
    old = open_for_migration(db_url)
    migrate.upgrade(old.engine, old._backend, "0010")
    with old.engine.begin() as conn:
        _one_engine(conn)
        conn.exec_driver_sql("INSERT INTO layer_stats (ts, instance_id, layer, head, entropy) VALUES (5, 1, 2, -1, 1.5)")
    migrate.upgrade(old.engine, old._backend, "0011")
    indexes = {i["name"] for i in inspect(old.engine).get_indexes("layer_stats")}
    assert "ix_layer_stats_ts" in indexes and "ix_layer_stats_instance_ts" not in indexes
    assert "ix_layer_stats_run_ts" in indexes
    if old._backend.name == "postgresql":
        with old.engine.connect() as conn:
            method = conn.exec_driver_sql(
                "SELECT am.amname FROM pg_class c JOIN pg_am am ON am.oid = c.relam WHERE c.relname = 'ix_layer_stats_ts'"
            ).scalar()
        assert method == "brin"
    old.close()
    with Store.open(db_url) as s:
        assert [r.entropy for r in s.layer_stats_latest(instance_id=1)] == [1.5]
        assert [r.layer for r in s.layer_stats_window(deployment="d", since=0)] == [2]
    from alembic import command

    handle = open_for_migration(db_url)
    with handle.engine.connect() as conn, conn.begin():
        command.downgrade(migrate.alembic_config(conn), "0010")
    indexes = {i["name"] for i in inspect(handle.engine).get_indexes("layer_stats")}
    assert "ix_layer_stats_instance_ts" in indexes and "ix_layer_stats_ts" not in indexes
    handle.close()
