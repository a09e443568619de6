"""Drive the real dashboard in headless Debian chromium with Playwright: serve it with `kvpilot dashboard` on a
free port, open every page, check its key elements and save screenshots.

Used by test_browser.py, and as a script that regenerates the README's screenshot on a seeded store:

    python -m tests.dashboard.browser --out docs/dashboard-overview.png [--pages-dir /tmp/shots]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
# page url path -> texts that must appear once it has rendered (from tests/dashboard/seed.py)
PAGES = {
    "": ["Overview", "Engines alive", "2 / 3", "Memory pressure", "Config in force on chat: v2"],
    "runs": ["Runs", "of the newest", "Run #", "Mean TTFT"],
    "layers": ["Layers", "Sensitivity profile", "Budgets per layer under the active config"],
    "sessions": ["Sessions", "Hit ratio", "75.0%"],
    "events": ["Events", "Latest 100 events", "Config changes"],
    "tuning": ["Tuning", "Pareto front", "Parameter importances"],
    "configs": ["Configs", "Versions of chat", "rejected v3"],
}
CHART_PAGES = {"", "layers", "sessions", "events", "tuning"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serve(db_url: str, port: int, *, read_only: bool = False, timeout: float = 90) -> Iterator[str]:
    """Run `kvpilot dashboard` on `db_url` and yield its base URL once /_stcore/health answers."""
    cmd = [sys.executable, "-m", "kvpilot.cli", "dashboard", "--db", db_url, "--port", str(port)]
    if read_only:
        cmd.append("--read-only")
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                            cwd=Path(__file__).resolve().parents[2])
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                log.seek(0)
                raise RuntimeError(f"dashboard exited with {proc.returncode}:\n{log.read().decode(errors='replace')}")
            try:
                with urllib.request.urlopen(f"{base}/_stcore/health", timeout=2) as r:
                    if r.read().strip() == b"ok":
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"dashboard did not answer on {base} within {timeout} s")
            time.sleep(0.5)
        yield base
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


@contextlib.contextmanager
def keep_alive(db_url: str, instance_ids: list[int], every_s: float = 5.0) -> Iterator[None]:
    """Heartbeat these engines while the browser looks, so 'alive' does not depend on how slow start-up is."""
    from kvpilot.storage import Store

    stop = threading.Event()

    def beat() -> None:
        with Store.open(db_url) as store:
            while not stop.is_set():
                for i in instance_ids:
                    store.heartbeat(i)
                stop.wait(every_s)

    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(10)


def shoot(base: str, out_dir: Path, *, timeout_ms: int = 60_000) -> dict[str, Path]:
    """Open every page, wait for its key texts (and charts), save a full-page screenshot of each."""
    from playwright.sync_api import sync_playwright

    out_dir.mkdir(parents=True, exist_ok=True)
    shots: dict[str, Path] = {}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1440, "height": 1000})
            page.set_default_timeout(timeout_ms)
            for path, texts in PAGES.items():
                page.goto(f"{base}/{path}")
                page.wait_for_selector('[data-testid="stSidebarNav"]')
                for text in texts:
                    page.get_by_text(text, exact=False).first.wait_for(state="visible")
                if path in CHART_PAGES:
                    page.wait_for_selector('[data-testid="stVegaLiteChart"] canvas, [data-testid="stVegaLiteChart"] svg')
                if page.locator('[data-testid="stException"]').count():
                    raise AssertionError(f"page /{path} shows an exception: "
                                         f"{page.locator('[data-testid=stException]').first.inner_text()}")
                page.wait_for_timeout(800)  # let charts finish their first paint
                # Streamlit scrolls inside its main container, so grow the viewport to the content instead.
                height = page.evaluate("document.querySelector('[data-testid=stMain]')?.scrollHeight || 1000")
                page.set_viewport_size({"width": 1440, "height": min(max(int(height), 1000), 4000)})
                page.wait_for_timeout(500)
                shots[path or "overview"] = out_dir / f"dashboard-{path or 'overview'}.png"
                page.screenshot(path=str(shots[path or "overview"]))
                page.set_viewport_size({"width": 1440, "height": 1000})
        finally:
            browser.close()
    return shots


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="docs/dashboard-overview.png", help="where the Overview screenshot goes")
    ap.add_argument("--pages-dir", default=None, help="keep every page's screenshot here too")
    args = ap.parse_args()
    from kvpilot.storage import Store
    from tests.dashboard.seed import seed

    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{Path(tmp) / 'kvpilot.db'}"
        with Store.open(url) as store:
            seeded = seed(store, url)
        with keep_alive(url, [seeded.engine0, seeded.engine_staging]), serve(url, free_port()) as base:
            shots = shoot(base, Path(args.pages_dir or tmp) / "shots")
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shots["overview"], args.out)
    print(f"wrote {args.out}" + (f" and every page to {args.pages_dir}/shots" if args.pages_dir else ""))


if __name__ == "__main__":
    main()
