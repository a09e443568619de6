"""User errors: every area's derives from KVPilotError (kvpilot.errors knows none of them) and the CLI
prints it as one line with exit code 2; anything else is a bug and is re-raised."""

from __future__ import annotations

import pytest

from kvpilot.config import KVConfigError
from kvpilot.engine.model import ModelNotFoundError
from kvpilot.errors import KVPilotError, report_user_error
from kvpilot.plugins import UnknownPluginError
from kvpilot.probes.registry import UnknownProbeError
from kvpilot.storage import StoreError
from kvpilot.tuner import ObjectiveError, TuningError
from kvpilot.workloads import JsonlLoadError, UnknownTaskError, WorkloadSpecError


@pytest.mark.parametrize("exc", [
    KVConfigError(["policy='x': not allowed"]),
    ModelNotFoundError("no model at /m"),
    StoreError("database is locked"),
    UnknownPluginError("unknown policy 'x'"),
    UnknownProbeError("unknown probe 'x'"),
    ObjectiveError("unknown objective 'x'"),
    TuningError("nothing to push"),
    UnknownTaskError("unknown workload 'x'"),
    WorkloadSpecError("jsonl: needs a path"),
    JsonlLoadError("f.jsonl", [], []),
    FileNotFoundError("no such JSONL file: f.jsonl"),
])
def test_user_errors_print_one_line(exc, capsys):
    assert report_user_error(exc) == 2
    assert capsys.readouterr().err == f"kvpilot: error: {exc}\n"


def test_area_errors_derive_from_the_base():
    for cls in (KVConfigError, StoreError, UnknownPluginError, ObjectiveError, UnknownTaskError, JsonlLoadError):
        assert issubclass(cls, KVPilotError), cls
    assert issubclass(KVConfigError, ValueError)  # callers that caught ValueError still do


def test_bugs_are_not_user_errors():
    assert report_user_error(RuntimeError("boom")) is None
    assert report_user_error(KeyError("k")) is None
