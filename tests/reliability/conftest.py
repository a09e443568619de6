"""Reliability fixtures: the probes' tiny engine (a random 4-layer Llama with a stub tokenizer), and
`record_figures`, which merges a test's figures into $KVPILOT_RELIABILITY_REPORT (JSON) when it is set:
the README's Reliability section quotes that file (benchmarks/results/reliability.json)."""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import pytest

from tests.probes.conftest import StubTokenizer, tiny_engine

__all__ = ["StubTokenizer", "record_figures", "tiny_engine"]
REPORT_ENV = "KVPILOT_RELIABILITY_REPORT"


@pytest.fixture
def record_figures():
    def record(name: str, figures: dict[str, Any]) -> None:
        print(name, json.dumps(figures))
        path = os.environ.get(REPORT_ENV)
        if not path:
            return
        report = json.loads(Path(path).read_text()) if Path(path).exists() else {}
        report[name] = figures
        report["environment"] = {"python": platform.python_version(), "machine": platform.machine(),
                                 "cpus": os.cpu_count(), "load_1_5_15": os.getloadavg(),
                                 "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
        Path(path).write_text(json.dumps(report, indent=2) + "\n")

    return record
