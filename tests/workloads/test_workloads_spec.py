"""The one workload-spec parser: names, variants, `jsonl:PATH`, run labels and the fail-fast check."""

from __future__ import annotations

import json

import pytest

from kvpilot.errors import KVPilotError
from kvpilot.workloads import (
    JsonlLoadError,
    UnknownTaskError,
    WorkloadSpec,
    WorkloadSpecError,
    check_workload,
    load_workload,
    resolve,
)


def test_parse_names_variants_and_files():
    assert WorkloadSpec.parse("passkey") == WorkloadSpec("passkey", "passkey")
    niah = WorkloadSpec.parse("niah:multikey_1")
    assert (niah.name, niah.variant, niah.task_name, niah.is_jsonl) == ("niah", "multikey_1", "niah_multikey_1", False)
    user = WorkloadSpec.parse("jsonl:C:/data/my:file.jsonl")  # everything after the prefix is the path
    assert (user.name, user.path, user.is_jsonl, str(user)) == ("jsonl", "C:/data/my:file.jsonl", True,
                                                              "jsonl:C:/data/my:file.jsonl")


def test_labels_name_the_run_folder():
    assert WorkloadSpec.parse("passkey").label(10, 1000, 0) == "passkey-1000t-10s-seed0"
    assert WorkloadSpec.parse("niah:multikey_1").label(2, 500, 3) == "niah_multikey_1-500t-2s-seed3"
    assert WorkloadSpec.parse("jsonl:/tmp/mine.jsonl").label(7, 1000, 0) == "jsonl-mine-7s"


def test_errors_are_user_errors_and_value_errors():
    with pytest.raises(WorkloadSpecError, match="jsonl: needs a path"):
        WorkloadSpec.parse("jsonl:")
    with pytest.raises(UnknownTaskError, match="unknown workload 'bogus'") as info:
        resolve("bogus")
    assert isinstance(info.value, KVPilotError) and isinstance(info.value, ValueError)
    with pytest.raises(UnknownTaskError, match="unknown workload 'passkey:x'"):
        resolve("passkey:x")  # only niah has variants
    assert resolve("niah:multikey_1") is resolve("niah_multikey_1") is resolve("niah", "multikey_1")


def test_check_workload_fails_before_any_model_loads(tmp_path):
    assert check_workload("niah:multivalue").task_name == "niah_multivalue"
    with pytest.raises(UnknownTaskError):
        check_workload("bogus")
    with pytest.raises(FileNotFoundError, match="no such JSONL file"):
        check_workload(f"jsonl:{tmp_path / 'missing.jsonl'}")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("", encoding="utf-8")
    with pytest.raises(JsonlLoadError, match="no samples"):
        check_workload(f"jsonl:{empty}")
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{not json\n", encoding="utf-8")
    with pytest.raises(JsonlLoadError, match="line 1: bad JSON") as info:
        check_workload(f"jsonl:{bad}")
    assert isinstance(info.value, KVPilotError)
    good = tmp_path / "good.jsonl"
    good.write_text(json.dumps({"id": "a", "context": "c", "qa": [{"question": "q", "answers": ["a"]}]}) + "\n",
                    encoding="utf-8")
    spec = check_workload(f"jsonl:{good}")
    assert spec.path == str(good)
    assert [s.id for s in load_workload(spec, 0, 1000, 0, None)] == ["a"]


def test_load_workload_takes_a_parsed_spec(word_tokenizer):
    by_text = load_workload("niah:multikey_1", 1, 300, 0, word_tokenizer)
    by_spec = load_workload(WorkloadSpec.parse("niah:multikey_1"), 1, 300, 0, word_tokenizer)
    assert by_text == by_spec and by_text[0].task == "niah_multikey_1"
