"""The dashboard stays torch-free: importing every page and the store it reads loads no torch."""

from __future__ import annotations

import subprocess
import sys

from tests.dashboard.helpers import PAGES


def test_dashboard_imports_no_torch():
    pages = ", ".join(f"kvpilot.dashboard.views.{p}" for p in PAGES)
    code = (f"import sys, kvpilot.dashboard.context, kvpilot.dashboard.tuning, {pages}; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)
