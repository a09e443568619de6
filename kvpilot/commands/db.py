"""`kvpilot db ...`: create or migrate the store's schema, show where it stands, roll up and prune samples."""

from __future__ import annotations

import argparse

DB_HELP = (
    "database URL: sqlite:///PATH, a plain file path, or postgresql+psycopg://USER@HOST:PORT/DBNAME "
    "(default: $KVPILOT_DB, else $KVPILOT_HOME/kvpilot.db)"
)


def add_db_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--db", metavar="URL", default=None, help=DB_HELP)


def parse_duration(text: str) -> float:
    """'7d', '12h', '30m', '90s', '2w' or plain seconds (`kvpilot.storage.retention.parse_duration`)."""
    from kvpilot.storage.retention import parse_duration as parse

    return parse(text)


def register(subparsers: argparse._SubParsersAction) -> None:
    db = subparsers.add_parser(
        "db",
        help="create, migrate, inspect or prune the kvpilot database",
        description="Manage kvpilot's database (SQLite file or PostgreSQL). Optuna's tables may share it.",
    )
    sub = db.add_subparsers(dest="db_command", metavar="ACTION")
    db.set_defaults(func=lambda args: db.print_help() or 2)

    up = sub.add_parser(
        "upgrade",
        help="create the tables or migrate them to this kvpilot's schema",
        description="Create kvpilot's tables in an empty database, or migrate a database written by an older "
        "kvpilot. Stop engines writing to it first. Safe to run twice.",
    )
    add_db_option(up)
    up.set_defaults(func=_upgrade)

    st = sub.add_parser("status", help="schema revision, row counts and deployments")
    add_db_option(st)
    st.set_defaults(func=_status)

    bk = sub.add_parser("backends", help="the database backends kvpilot can use, with their URL forms")
    bk.set_defaults(func=_backends)

    pr = sub.add_parser(
        "prune",
        help="delete samples older than a given age (their rollups stay)",
        description="Delete layer stats, requests, memory samples and cache events older than --older-than. "
        "The per-minute and per-hour rollups are brought up to date first and stay, so dashboards keep long "
        "windows (at minute or hour resolution) after the raw rows are gone, until the rollups' own ages. "
        "Deployments, runs, profiles and config versions are kept.",
    )
    pr.add_argument("--older-than", required=True, metavar="AGE", help="age such as 7d, 12h, 30m or 3600 (seconds)")
    pr.add_argument("--minute-rollups-older-than", metavar="AGE", help="also delete per-minute rollups this old")
    pr.add_argument("--hour-rollups-older-than", metavar="AGE", help="also delete per-hour rollups this old")
    add_db_option(pr)
    pr.set_defaults(func=_prune)

    ru = sub.add_parser(
        "rollup",
        help="bring the per-minute and per-hour rollups up to date",
        description="Roll up the samples stored since the last refresh (engines' writers do this every minute "
        "on their own; run it after a bulk import, or after `kvpilot db upgrade` to roll up existing samples).",
    )
    add_db_option(ru)
    ru.set_defaults(func=_rollup)


def _upgrade(args: argparse.Namespace) -> int:
    from kvpilot.storage.core import open_for_migration

    handle = open_for_migration(args.db)
    try:
        before, after = handle.upgrade_schema()
    finally:
        handle.close()
    if before == after:
        print(f"{handle.url}: already at schema revision {after}")
    else:
        print(f"{handle.url}: schema revision {before or '(empty)'} -> {after}")
    return 0


def _status(args: argparse.Namespace) -> int:
    from kvpilot.storage import Store
    from kvpilot.storage.migrate import head_revision

    with Store.open(args.db, create=False) as store:
        print(f"database: {store.url} ({store.backend_name})")
        print(f"schema:   revision {store.schema_revision()} (this kvpilot: {head_revision()})")
        for table, n in store.counts().items():
            print(f"  {table:15} {n:>12,} rows")
        for dep in store.deployments():
            alive = sum(i.alive for i in store.instances(dep.name))
            print(f"deployment {dep.name}: active config version {dep.active_version}, {alive} engine(s) alive")
    return 0


def _backends(args: argparse.Namespace) -> int:
    from kvpilot.storage import BACKENDS

    for spec in BACKENDS.values():
        print(f"{spec.name:12} {spec.url_form}\n{'':12} {spec.description}")
    return 0


def _prune(args: argparse.Namespace) -> int:
    from kvpilot.storage import Store
    from kvpilot.storage.schema import SAMPLES

    age = parse_duration(args.older_than)
    minutes = None if args.minute_rollups_older_than is None else parse_duration(args.minute_rollups_older_than)
    hours = None if args.hour_rollups_older_than is None else parse_duration(args.hour_rollups_older_than)
    with Store.open(args.db) as store:
        deleted = store.prune(age, minute_rollups_older_than=minutes, hour_rollups_older_than=hours)
    samples = {k: v for k, v in deleted.items() if k in SAMPLES or k in ("ingested_parts", "eviction_lineage")}
    rollups = {k: v for k, v in deleted.items() if k not in samples}
    total = sum(v for k, v in samples.items() if k in SAMPLES)
    print(f"deleted {total:,} samples older than {args.older_than}: " + ", ".join(f"{k} {v:,}" for k, v in samples.items()))
    if rollups:
        print(f"deleted {sum(rollups.values()):,} rollup rows: " + ", ".join(f"{k} {v:,}" for k, v in rollups.items()))
    return 0


def _rollup(args: argparse.Namespace) -> int:
    from kvpilot.storage import Store

    with Store.open(args.db) as store:
        rolled = store.refresh_rollups()
    print("rolled up " + ", ".join(f"{k} {v:,}" for k, v in rolled.items()) + " new samples")
    return 0
