"""User JSONL: round trip of generated samples, and clear per-line errors while good lines still load."""

from __future__ import annotations

import json

import pytest

from kvpilot.workloads import QA, JsonlLoadError, Sample, generate, load_jsonl, load_workload, write_jsonl


def test_generated_samples_round_trip(tmp_path, tokenizer):
    samples = [
        s
        for task in ("passkey", "niah_multivalue", "vt", "cwe", "convqa")
        for s in generate(task, 2, 800, 0, tokenizer)
    ]
    path = tmp_path / "samples.jsonl"
    write_jsonl(samples, path)
    loaded, errors = load_jsonl(path)
    assert errors == [] and loaded == samples


def test_minimal_user_lines_load_with_defaults(tmp_path):
    path = tmp_path / "mine.jsonl"
    lines = [
        {
            "id": "a",
            "context": "Ana: My dog is called Rex.",
            "qa": [{"question": "Dog?", "answers": ["Rex"]}],
        },
        {
            "id": 7,
            "context": "x",
            "qa": [{"question": "q", "answers": ["y", "z"], "answer_prefix": "It is"}],
            "max_new_tokens": 5,
        },
    ]
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n\n", encoding="utf-8")
    samples, errors = load_jsonl(path)
    assert errors == []
    assert samples[0] == Sample("a", "jsonl", "Ana: My dog is called Rex.", [QA("Dog?", ["Rex"])], 32, {})
    assert (
        samples[1].id == "7" and samples[1].max_new_tokens == 5 and samples[1].qa[0].answer_prefix == "It is"
    )


BAD = [
    ('{"id": "x", "context": "c", "qa": [', "bad JSON"),
    ('["not", "an", "object"]', "JSON object"),
    ('{"context": "c", "qa": [{"question": "q", "answers": ["a"]}]}', "missing field 'id'"),
    ('{"id": "x", "qa": [{"question": "q", "answers": ["a"]}]}', "missing field 'context'"),
    ('{"id": "x", "context": "c"}', "missing field 'qa'"),
    ('{"id": "x", "context": 5, "qa": [{"question": "q", "answers": ["a"]}]}', "'context' must be a string"),
    ('{"id": "x", "context": "c", "qa": {"question": "q"}}', "'qa' must be a list"),
    ('{"id": "x", "context": "c", "qa": []}', "'qa' is empty"),
    ('{"id": "x", "context": "c", "qa": [{"answers": ["a"]}]}', "missing field qa[0].'question'"),
    ('{"id": "x", "context": "c", "qa": [{"question": "q"}]}', "missing field qa[0].'answers'"),
    ('{"id": "x", "context": "c", "qa": [{"question": "q", "answers": []}]}', "'answers' is empty"),
    ('{"id": "x", "context": "c", "qa": [{"question": "q", "answers": "a"}]}', "wrap a single answer"),
    ('{"id": "x", "context": "c", "qa": [{"question": "q", "answers": [1]}]}', "only non-empty strings"),
    (
        '{"id": "x", "context": "c", "qa": [{"question": "q", "answers": ["a"], "answer_prefix": 3}]}',
        "'answer_prefix' must be a string",
    ),
    (
        '{"id": "x", "context": "c", "qa": [{"question": "q", "answers": ["a"]}], "max_new_tokens": 0}',
        "positive integer",
    ),
    (
        '{"id": "x", "context": "c", "qa": [{"question": "q", "answers": ["a"], "spans": [[0, 9]]}]}',
        "outside the context",
    ),
]


@pytest.mark.parametrize(("line", "reason"), BAD)
def test_bad_line_is_reported_with_number_and_reason(tmp_path, line, reason):
    good = '{"id": "ok", "context": "c", "qa": [{"question": "q", "answers": ["a"]}]}'
    path = tmp_path / "data.jsonl"
    path.write_text(good + "\n" + line + "\n" + good.replace('"ok"', '"ok2"') + "\n", encoding="utf-8")
    samples, errors = load_jsonl(path)
    assert [s.id for s in samples] == ["ok", "ok2"]
    assert len(errors) == 1 and errors[0].line == 2
    assert reason in errors[0].reason and str(errors[0]).startswith("line 2: ")


def test_duplicate_id_is_an_error(tmp_path):
    good = '{"id": "ok", "context": "c", "qa": [{"question": "q", "answers": ["a"]}]}'
    path = tmp_path / "dup.jsonl"
    path.write_text(good + "\n" + good + "\n", encoding="utf-8")
    samples, errors = load_jsonl(path)
    assert (
        len(samples) == 1
        and errors[0].line == 2
        and "duplicate id 'ok' (first on line 1)" in errors[0].reason
    )


def test_load_workload_jsonl_spec(tmp_path, caplog):
    good = '{"id": "%s", "context": "c", "qa": [{"question": "q", "answers": ["a"]}]}'
    path = tmp_path / "w.jsonl"
    path.write_text("\n".join([good % "a", "{oops", good % "b", good % "c"]) + "\n", encoding="utf-8")
    samples = load_workload(f"jsonl:{path}", 2, 1000, 0, tokenizer=None)
    assert [s.id for s in samples] == ["a", "b"]
    assert "line 2: bad JSON" in caplog.text
    with pytest.raises(JsonlLoadError, match="line 2: bad JSON") as info:
        load_workload(f"jsonl:{path}", 0, 1000, 0, tokenizer=None, strict=True)
    assert len(info.value.samples) == 3
    with pytest.raises(FileNotFoundError):
        load_workload(f"jsonl:{tmp_path / 'missing.jsonl'}", 0, 1000, 0, tokenizer=None)


def test_load_workload_generates_named_tasks(tokenizer):
    samples = load_workload("niah:multiquery", 1, 1000, 0, tokenizer)
    assert samples[0].task == "niah_multiquery"
