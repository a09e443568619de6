"""Dashboard fixtures: an empty and a seeded store on SQLite and, when KVPILOT_TEST_DATABASE_URL is set, on
PostgreSQL (tests/conftest.py's `db_url` and `store`), and an AppTest factory pointed at a store through
KVPILOT_DB."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from kvpilot.dashboard import APP_PATH, READ_ONLY_ENV
from tests.dashboard.seed import Seeded, seed

TIMEOUT = 60  # the first run imports optuna and altair


@pytest.fixture
def db_url(db_url) -> Iterator[str]:
    """tests/conftest.py's database, with the dashboard's pooled connections closed before its schema is dropped."""
    yield db_url
    st.cache_resource.clear()


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
