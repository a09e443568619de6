"""Dashboard fixtures: an empty and a seeded store on SQLite and, when KVPILOT_TEST_DATABASE_URL is set, on
PostgreSQL (one schema per test), and an AppTest factory pointed at a store through KVPILOT_DB."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator

import pytest
import streamlit as st
from sqlalchemy import create_engine
from sqlalchemy.engine import make_url
from streamlit.testing.v1 import AppTest

from kvpilot.dashboard import APP_PATH, READ_ONLY_ENV
from kvpilot.storage import Store
from tests.dashboard.seed import Seeded, seed

PG_ENV = "KVPILOT_TEST_DATABASE_URL"
TIMEOUT = 60  # the first run imports optuna, altair and (on the Layers page) torch


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request, tmp_path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'kvpilot.db'}"
        return
    base = os.environ.get(PG_ENV)
    if not base:
        pytest.skip(f"{PG_ENV} is not set")
    schema = f"kvdash_{uuid.uuid4().hex[:12]}"
    admin = create_engine(make_url(base).set(drivername="postgresql+psycopg"))
    with admin.begin() as conn:
        conn.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
    url = make_url(base).set(drivername="postgresql+psycopg").update_query_dict({"options": f"-csearch_path={schema}"})
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        st.cache_resource.clear()  # close the dashboard's pooled connections before dropping the schema
        with admin.begin() as conn:
            conn.exec_driver_sql(f'DROP SCHEMA "{schema}" CASCADE')
        admin.dispose()


@pytest.fixture
def store(db_url) -> Iterator[Store]:
    s = Store.open(db_url)
    try:
        yield s
    finally:
        s.close()


@pytest.fixture
def seeded(store, db_url) -> Seeded:
    return seed(store, db_url)


@pytest.fixture
def app(monkeypatch) -> Iterator[Callable[..., AppTest]]:
    """`app(url, read_only=False)`: a fresh AppTest of the dashboard on that store, already run once."""

    def make(url: str, *, read_only: bool = False) -> AppTest:
        monkeypatch.setenv("KVPILOT_DB", url)
        if read_only:
            monkeypatch.setenv(READ_ONLY_ENV, "1")
        else:
            monkeypatch.delenv(READ_ONLY_ENV, raising=False)
        at = AppTest.from_file(str(APP_PATH), default_timeout=TIMEOUT)
        at.run()
        return at

    yield make
    st.cache_data.clear()
    st.cache_resource.clear()
