"""The dashboard in a real browser: `kvpilot dashboard` on a seeded store, every page opened in headless Debian
chromium (driven by Playwright, nothing downloaded), key elements checked, screenshots saved.

Set-up installs the browser: `apt-get install -y chromium` and `pip install playwright` (the dev extra).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kvpilot.storage import Store
from tests.dashboard.browser import CHROMIUM, PAGES, free_port, keep_alive, serve, shoot
from tests.dashboard.seed import seed

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def browser_ready() -> None:
    if not os.access(CHROMIUM, os.X_OK):
        pytest.skip(f"{CHROMIUM} is absent: install Debian's chromium (`apt-get install -y chromium`)")
    pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e '.[dev]')")


def test_every_page_renders_in_chromium(browser_ready, tmp_path):
    url = f"sqlite:///{tmp_path / 'kvpilot.db'}"  # AppTest covers PostgreSQL; one backend is enough here
    with Store.open(url) as store:
        seeded = seed(store, url)
    with keep_alive(url, [seeded.engine0, seeded.engine_staging]), serve(url, free_port()) as base:
        shots = shoot(base, tmp_path / "shots")
    assert set(shots) == {p or "overview" for p in PAGES}
    for path in shots.values():
        data = Path(path).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000, path  # a real render, not a blank page
