"""`kvpilot dashboard`: loopback by default, explicit --host, read-only passed through, clear errors."""

from __future__ import annotations

import socket
import sys

import pytest

from kvpilot.cli import build_parser
from kvpilot.commands import dashboard as D
from kvpilot.dashboard import APP_PATH, READ_ONLY_ENV
from kvpilot.errors import KVPilotError


def _opt(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def test_defaults_bind_loopback(tmp_path, monkeypatch):
    monkeypatch.setenv("KVPILOT_HOME", str(tmp_path))
    monkeypatch.delenv("KVPILOT_DB", raising=False)
    monkeypatch.setenv(READ_ONLY_ENV, "1")  # a stale value in the caller's shell must not leak through
    args = build_parser().parse_args(["dashboard"])
    assert (args.host, args.port, args.read_only, args.db) == ("127.0.0.1", 8501, False, None)
    argv, env = D.build_command(args.db, args.host, args.port, args.read_only)
    assert argv[:5] == [sys.executable, "-m", "streamlit", "run", str(APP_PATH)]
    assert _opt(argv, "--server.address") == "127.0.0.1" and _opt(argv, "--server.port") == "8501"
    assert _opt(argv, "--server.headless") == "true" and _opt(argv, "--browser.gatherUsageStats") == "false"
    assert env["KVPILOT_DB"] == f"sqlite:///{tmp_path / 'kvpilot.db'}"
    assert READ_ONLY_ENV not in env


def test_explicit_host_port_db_and_read_only():
    args = build_parser().parse_args(
        ["dashboard", "--db", "postgresql://u:secret@db:5432/kv", "--host", "0.0.0.0", "--port", "9000", "--read-only"]
    )
    argv, env = D.build_command(args.db, args.host, args.port, args.read_only)
    assert _opt(argv, "--server.address") == "0.0.0.0" and _opt(argv, "--server.port") == "9000"
    assert env["KVPILOT_DB"] == "postgresql+psycopg://u:secret@db:5432/kv"  # the server needs the password
    assert env[READ_ONLY_ENV] == "1"


def test_loopback_detection():
    assert D.is_loopback("127.0.0.1") and D.is_loopback("::1") and D.is_loopback("localhost")
    assert not D.is_loopback("0.0.0.0") and not D.is_loopback("10.1.2.3") and not D.is_loopback("example.org")


def test_bad_port_and_busy_port(tmp_path):
    with pytest.raises(KVPilotError, match="between 1 and 65535"):
        D.build_command(str(tmp_path / "x.db"), "127.0.0.1", 70000, False)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        with pytest.raises(KVPilotError, match="cannot listen"):
            D._check_port("127.0.0.1", s.getsockname()[1])


def test_run_reports_bad_database_before_starting(tmp_path, capsys):
    from kvpilot.cli import main

    code = main(["dashboard", "--db", f"sqlite:///{tmp_path}/missing-dir/kv.db", "--port", "1"])
    assert code == 2
    assert "does not exist" in capsys.readouterr().err
