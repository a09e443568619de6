"""Drive the real dashboard in headless Debian chromium with Playwright: serve it with `kvpilot dashboard` on a
free port, open every page at 1440x900, check its key elements and that none of the on-call faults shows
(an exception, a raw JSON tree, a link made from stored text), and save screenshots.

Used by test_browser.py, and as a script that regenerates docs/dashboard-*.png from the store `kvpilot demo`
filled (or, without --db, from the seeded test store):

    kvpilot demo --db /tmp/demo.db && python -m tests.dashboard.browser --db /tmp/demo.db --out docs
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
VIEWPORT = {"width": 1440, "height": 900}
MAX_HEIGHT = 3200  # a full-page screenshot stops here
# page url path -> texts that must appear once it has rendered (from tests/dashboard/seed.py)
PAGES = {
    "": ["Overview", "Engines alive", "2 / 4", "Memory pressure", "Active config of chat: v2"],
    "runs": ["Runs", "of the newest", "Run #4: canary", "recorded no metrics"],
    "layers": ["Layers", "Sensitivity profile", "Budgets per layer under the active config"],
    "sessions": ["Sessions", "Hit ratio", "75.0%"],
    "events": ["Events", "Latest 100 events", "Config changes"],
    "tuning": ["Tuning", "Pareto front", "Parameter importances"],
    "configs": ["Configs", "Versions of chat", "rejected v3"],
    "quality?deployment=support": ["Quality", "Shadow fidelity", "Canary running", "Canary rollouts",
                                   "Top-1 agreement with the full cache", "Decision log", "Eviction lineage"],
}
CHART_PAGES = {"", "layers", "sessions", "events", "tuning", "quality?deployment=support"}
# what every page of a store filled by `kvpilot demo` shows (the titles and the panels with the demo's data)
DEMO_PAGES = {
    "": ["Overview", "Engines alive", "0 / 1", "Active config of demo", "TTFT over time (ms)"],
    "runs": ["Runs", "of the newest", "Run #"],
    "layers": ["Layers", "layer x query head", "Budgets per layer under the active config"],
    "sessions": ["Sessions", "Hit ratio", "Peak pool"],
    "events": ["Events", "Latest", "Config changes"],
    "tuning": ["Tuning", "Pareto front", "full cache", "Parameter importances"],
    "configs": ["Configs", "Versions of demo", "Active: v1"],
    "quality": ["Quality", "Shadow fidelity", "Canary rollouts"],
}


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


def faults(page, script_errors: list[str] | None = None) -> list[str]:
    """What someone on call must never see on a rendered page (a chart that failed to draw shows only as
    a script error in the console: an empty frame of gridlines)."""
    found = [f"a script error: {e[:200]}" for e in script_errors or []]
    if page.locator('[data-testid="stException"]').count():
        found.append("an exception: " + page.locator('[data-testid="stException"]').first.inner_text()[:300])
    if page.locator('[data-testid="stJson"]').count():
        found.append("a raw JSON tree where a table belongs")
    links = page.locator('[data-testid="stMain"] [data-testid="stMarkdownContainer"] a[href^="http"]')
    if links.count():
        found.append(f"a link in page text: {links.first.get_attribute('href')}")
    return found


def shoot(base: str, out_dir: Path, *, pages: dict[str, list[str]] = PAGES, timeout_ms: int = 120_000) -> dict[str, Path]:
    """Open every page at 1440x900, wait for its key texts (and charts), check it shows no fault, and save a
    screenshot of the whole page at that width (palette PNG, so the docs stay small)."""
    from playwright.sync_api import sync_playwright

    out_dir.mkdir(parents=True, exist_ok=True)
    shots: dict[str, Path] = {}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport=VIEWPORT)
            page.set_default_timeout(timeout_ms)
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" and "Error" in m.text else None)
            for path, texts in pages.items():
                errors.clear()
                try:
                    shots[path or "overview"] = _one_page(page, base, path, texts, out_dir, errors)
                except Exception:
                    page.screenshot(path=str(out_dir / f"failed-{path.split('?')[0] or 'overview'}.png"))
                    raise
        finally:
            browser.close()
    return shots


def _one_page(page, base: str, path: str, texts: list[str], out_dir: Path, errors: list[str]) -> Path:
    """Open one page, check it and save its screenshot; returns the PNG's path."""
    page.goto(f"{base}/{path}")
    page.wait_for_selector('[data-testid="stSidebarNav"]')
    page.get_by_text(texts[0], exact=False).first.wait_for(state="visible")
    if path in CHART_PAGES:
        page.wait_for_selector('[data-testid="stVegaLiteChart"] canvas, [data-testid="stVegaLiteChart"] svg')
    _fit_viewport(page)
    for text in texts:
        _wait_for_text(page, text)
    page.wait_for_timeout(800)  # let charts finish their first paint
    page.wait_for_selector('[data-testid="stSpinner"]', state="detached")  # e.g. "Computing importances..."
    _fit_viewport(page)  # what the spinner stood for (the importances chart) makes the page longer
    problems = faults(page, errors)
    if problems:
        raise AssertionError(f"page /{path}: " + "; ".join(problems))
    shot = out_dir / f"dashboard-{path.split('?')[0] or 'overview'}.png"  # a page's query (its deployment) aside
    page.screenshot(path=str(shot))
    _shrink(shot)
    page.set_viewport_size(VIEWPORT)
    return shot


def _fit_viewport(page, settle_ms: int = 800, max_rounds: int = 20) -> None:
    """Grow the viewport to the page's content until its height stops changing.

    Streamlit scrolls inside its main container and draws charts only as they come into view, so on a
    slow (loaded) machine one look at the height sees half a page and the charts below it never draw.
    """
    last = -1
    for _ in range(max_rounds):
        page.wait_for_timeout(settle_ms)
        height = int(page.evaluate("document.querySelector('[data-testid=stMain]')?.scrollHeight || 900"))
        height = min(max(height, VIEWPORT["height"]), MAX_HEIGHT)
        if height == last:
            return
        page.set_viewport_size({"width": VIEWPORT["width"], "height": height})
        last = height


def _wait_for_text(page, text: str, attempts: int = 4) -> None:
    """Wait for a text, growing the viewport again between tries (a chart title appears only once drawn)."""
    locator = page.get_by_text(text, exact=False).first
    for _ in range(attempts - 1):
        try:
            locator.wait_for(state="visible", timeout=15_000)
            return
        except Exception:
            _fit_viewport(page)
    locator.wait_for(state="visible")  # the last try waits the page's default timeout


def _shrink(path: Path) -> None:
    """Re-save a screenshot as a 256-colour PNG (a third of the size; dashboards have few colours)."""
    from PIL import Image

    with Image.open(path) as img:
        small = img.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT)
    small.save(path, optimize=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--db", default=None, help="a store filled by `kvpilot demo` (default: a seeded test store)")
    ap.add_argument("--out", default="docs", help="folder for dashboard-<page>.png (default docs)")
    args = ap.parse_args()
    from kvpilot.storage import Store
    from tests.dashboard.seed import seed

    out = Path(args.out)
    with tempfile.TemporaryDirectory() as tmp:
        if args.db:
            url = args.db if "://" in args.db else f"sqlite:///{Path(args.db).resolve()}"
            # the demo's engine is gone once the demo ends: the pages show it stale, as a newcomer sees them
            alive, pages = [], DEMO_PAGES
        else:
            url = f"sqlite:///{Path(tmp) / 'kvpilot.db'}"
            with Store.open(url) as store:
                seeded = seed(store, url)
            alive, pages = [seeded.engine0, seeded.engine_staging], PAGES
        with keep_alive(url, alive), serve(url, free_port()) as base:
            shots = shoot(base, Path(tmp) / "shots", pages=pages)
        out.mkdir(parents=True, exist_ok=True)
        for shot in shots.values():
            shutil.copyfile(shot, out / shot.name)
    print(f"wrote {', '.join(str(out / s.name) for s in shots.values())}")


if __name__ == "__main__":
    main()
