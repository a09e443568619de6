"""`kvpilot dashboard`: run the Streamlit dashboard on a store, on 127.0.0.1 unless told otherwise."""

from __future__ import annotations

import argparse
import ipaddress
import os
import signal
import socket
import subprocess
import sys
import time

from kvpilot.commands.db import add_db_option
from kvpilot.errors import KVPilotError

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8501


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "dashboard",
        help="open the Streamlit dashboard on a store (127.0.0.1 by default)",
        description="Serve kvpilot's dashboard (overview, layers, sessions, events, tuning, configs) over the store. "
        f"It binds to {DEFAULT_HOST} so only this machine can reach it; --host binds elsewhere (it has no login, so "
        "add --read-only to hide push, rollback and promote). Stop it with Ctrl-C.",
    )
    add_db_option(p)
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port to listen on (default {DEFAULT_PORT})")
    p.add_argument("--host", default=DEFAULT_HOST,
                   help=f"address to bind (default {DEFAULT_HOST}); e.g. 0.0.0.0 to serve every interface")
    p.add_argument("--read-only", action="store_true", help="hide push, activate, rollback and promote")
    p.set_defaults(func=_run)


def build_command(db: str | None, host: str, port: int, read_only: bool) -> tuple[list[str], dict[str, str]]:
    """The `streamlit run` argv and environment that serve the dashboard on `db`."""
    from kvpilot.dashboard import APP_PATH, READ_ONLY_ENV
    from kvpilot.storage import resolve_url

    if not 0 < port < 65536:
        raise KVPilotError(f"--port {port}: use a port between 1 and 65535")
    argv = [
        sys.executable, "-m", "streamlit", "run", str(APP_PATH),
        "--server.address", host,
        "--server.port", str(port),
        "--server.headless", "true",
        "--server.fileWatcherType", "none",
        "--server.runOnSave", "false",
        "--browser.gatherUsageStats", "false",
        "--client.toolbarMode", "viewer",
    ]
    env = dict(os.environ)
    env["KVPILOT_DB"] = resolve_url(db).render_as_string(hide_password=False)
    env.pop(READ_ONLY_ENV, None)
    if read_only:
        env[READ_ONLY_ENV] = "1"
    return argv, env


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_port(host: str, port: int) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            raise KVPilotError(f"cannot listen on {host}:{port} ({exc.strerror}); pick another --port or --host") from None


def _run(args: argparse.Namespace) -> int:
    from kvpilot.storage import Store

    argv, env = build_command(args.db, args.host, args.port, args.read_only)
    # Open the store once here, so a bad URL or an old schema is one clear line instead of a page error.
    with Store.open(env["KVPILOT_DB"], create=not args.read_only) as store:
        shown = store.url
    _check_port(args.host, args.port)
    if not is_loopback(args.host):
        what = "see the dashboard" if args.read_only else "see the dashboard and push or roll back configs"
        print(f"kvpilot: warning: binding to {args.host}: anyone who can reach this machine on port {args.port} can "
              f"{what}; there is no login" + ("" if args.read_only else " (add --read-only to hide the actions)"),
              file=sys.stderr)
    mode = ", read-only" if args.read_only else ""
    url_host = f"[{args.host}]" if ":" in args.host else args.host
    print(f"kvpilot dashboard on http://{url_host}:{args.port} (store {shown}{mode}); Ctrl-C stops it", flush=True)
    return run_child(argv, env)


def run_child(argv: list[str], env: dict[str, str], grace_s: float = 10.0) -> int:
    """Run Streamlit and wait for it; SIGTERM or SIGHUP to this process stops the child first.

    With `subprocess.call` alone, `kill <pid>` ended this process and left Streamlit serving the port. The
    handler only asks the child to stop (waiting inside a handler would deadlock on Popen's wait lock);
    the loop below waits, and kills the child if it has not stopped ``grace_s`` seconds later.
    """
    child = subprocess.Popen(argv, env=env)
    asked: list[tuple[int, float]] = []

    def stop(signum: int, _frame: object) -> None:
        asked.append((signum, time.monotonic()))
        child.terminate()

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        while True:
            try:
                code = child.wait(0.5)
                break
            except subprocess.TimeoutExpired:
                if asked and time.monotonic() - asked[0][1] > grace_s:
                    child.kill()
            except KeyboardInterrupt:  # Ctrl-C reaches the child too (same process group); let it finish
                asked.append((signal.SIGINT, time.monotonic()))
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if child.poll() is None:
            child.kill()
            child.wait()
    return 128 + asked[0][0] if asked else code
