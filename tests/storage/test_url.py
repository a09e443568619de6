"""Database URL resolution and early, readable refusal of bad URLs."""

from __future__ import annotations

import pytest

from kvpilot.storage import BadDatabaseURLError, DatabaseUnavailableError, Store, resolve_url


def test_default_is_sqlite_file_under_kvpilot_home(tmp_path, monkeypatch):
    monkeypatch.setenv("KVPILOT_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("KVPILOT_DB", raising=False)
    url = resolve_url(None)
    assert url.drivername == "sqlite"
    assert url.database == str(tmp_path / "home" / "kvpilot.db")
    assert (tmp_path / "home").is_dir()


def test_env_overrides_default(tmp_path, monkeypatch):
    monkeypatch.setenv("KVPILOT_DB", str(tmp_path / "x.db"))
    assert resolve_url(None).database == str(tmp_path / "x.db")
    assert resolve_url(f"sqlite:///{tmp_path}/y.db").database == f"{tmp_path}/y.db"


def test_plain_path_and_postgres_normalised(tmp_path):
    assert resolve_url(str(tmp_path / "a.db")).drivername == "sqlite"
    assert resolve_url("postgresql://u@h/db").drivername == "postgresql+psycopg"


@pytest.mark.parametrize(
    "url, words",
    [
        ("mysql://u@h/db", "unsupported database URL scheme"),
        ("postgresql+psycopg2://u@h/db", "psycopg 3"),
        ("postgresql+psycopg://u@h", "names no database"),
        ("sqlite:////no/such/dir/x.db", "does not exist"),
        ("not a url://", "cannot parse"),
    ],
)
def test_bad_urls_have_clear_messages(url, words):
    with pytest.raises(BadDatabaseURLError, match=words):
        resolve_url(url)


def test_unreachable_server_is_clear():
    with pytest.raises(DatabaseUnavailableError) as err:
        Store.open("postgresql+psycopg://nobody:secret@127.0.0.1:1/nodb", connect_timeout_s=2)
    msg = str(err.value)
    assert "cannot reach database" in msg and "--db" in msg
    assert "secret" not in msg


def test_not_a_database_file(tmp_path):
    path = tmp_path / "junk.db"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(DatabaseUnavailableError, match="kvpilot database"):
        Store.open(str(path))


@pytest.mark.parametrize("url", ["sqlite:{tmp}/one.db", "sqlite:one.db", "sqlite:/one.db"])
def test_store_open_refuses_sqlite_url_with_one_slash(url, tmp_path, monkeypatch):
    """Python gets the CLI's one clear error, not a file named after the URL."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(BadDatabaseURLError, match="is not a SQLite URL") as err:
        Store.open(url.format(tmp=tmp_path))
    assert "sqlite:///" in str(err.value)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("url", ["sqlite://x", "sqlite://x/y.db", "sqlite://me@h/y.db"])
def test_sqlite_url_with_a_host_is_refused(url, tmp_path, monkeypatch):
    """`sqlite://x` would silently be an in-memory store that forgets everything."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(BadDatabaseURLError, match="has no host"):
        Store.open(url)
    assert list(tmp_path.iterdir()) == []


def test_sqlite_memory_and_relative_urls_still_open(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for url in ("sqlite://", "sqlite:///:memory:", "sqlite:///rel.db"):
        with Store.open(url):
            pass
    assert (tmp_path / "rel.db").is_file()
