"""Every generated task: token length, determinism, exact answer spans, clean context/question split."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from kvpilot.workloads import NIAH_TASKS, TOLERANCE, WORKLOADS, TargetTooSmallError, count_tokens, generate
from kvpilot.workloads.niah import VARIANTS

TASKS = ["passkey", "vt", "cwe", "convqa", *NIAH_TASKS]


def _gen(task, tokenizer, target=1000, n=3, seed=0, **opts):
    return generate(task, n, target, seed, tokenizer, **opts)


@pytest.mark.parametrize("target", [1000, 2000])
@pytest.mark.parametrize("task", TASKS)
def test_context_length_within_tolerance(task, target, tokenizer):
    for s in _gen(task, tokenizer, target=target):
        tokens = count_tokens(tokenizer, s.context)
        assert tokens == s.meta["context_tokens"]
        assert abs(tokens - target) <= TOLERANCE * target, (s.id, tokens)


@pytest.mark.parametrize("task", ["convqa", "cwe", "niah_single_2"])
def test_long_context_within_tolerance(task, tokenizer):
    (s,) = _gen(task, tokenizer, target=8000, n=1)
    assert abs(count_tokens(tokenizer, s.context) - 8000) <= TOLERANCE * 8000


@pytest.mark.parametrize("task", TASKS)
def test_answers_are_at_recorded_spans(task, tokenizer):
    for s in _gen(task, tokenizer, target=1000):
        assert s.qa
        for qa in s.qa:
            assert qa.answers and qa.spans is not None and len(qa.spans) == len(qa.answers)
            for answer, (start, end) in zip(qa.answers, qa.spans, strict=True):
                assert s.context[start:end] == answer


@pytest.mark.parametrize("task", TASKS)
def test_context_and_question_split_cleanly(task, tokenizer):
    for s in _gen(task, tokenizer, target=1000, n=2):
        assert s.context == s.context.strip(), "the evaluator appends the question after the context"
        assert s.max_new_tokens > 0 and s.task and s.id
        for qa in s.qa:
            assert qa.question and qa.question == qa.question.strip()
            assert qa.answer_prefix == qa.answer_prefix.lstrip()  # a trailing space may be deliberate
            for answer in qa.answers:
                assert answer not in qa.question


@pytest.mark.parametrize("task", TASKS)
def test_deterministic_for_a_seed(task, tokenizer):
    a = _gen(task, tokenizer, n=2, seed=7)
    b = _gen(task, tokenizer, n=2, seed=7)
    c = _gen(task, tokenizer, n=2, seed=8)
    assert [x.to_dict() for x in a] == [x.to_dict() for x in b]
    assert [x.context for x in a] != [x.context for x in c]


def test_sample_does_not_depend_on_how_many_are_asked(tokenizer):
    few = _gen("niah_multikey_1", tokenizer, n=2)
    many = _gen("niah_multikey_1", tokenizer, n=4)
    assert [s.to_dict() for s in few] == [s.to_dict() for s in many[:2]]


def test_same_keys_at_every_length(tokenizer):
    short, long = _gen("passkey", tokenizer, 1000, n=1)[0], _gen("passkey", tokenizer, 2000, n=1)[0]
    assert short.qa[0].answers == long.qa[0].answers


def test_ids_are_unique(tokenizer):
    ids = [s.id for task in TASKS for s in _gen(task, tokenizer, n=2)]
    assert len(ids) == len(set(ids))


def test_passkey_depth_spreads_across_samples(tokenizer):
    samples = _gen("passkey", tokenizer, n=5)
    assert [s.meta["depth"] for s in samples] == [0.0, 0.25, 0.5, 0.75, 1.0]
    positions = [s.meta["needle_position"] for s in samples]
    assert positions == sorted(positions) and positions[0] < 0.1 and positions[-1] > 0.9
    for s in samples:
        key = s.qa[0].answers[0]
        assert len(key) == 5 and key.isdigit() and s.qa[0].answer_prefix.startswith("The pass key is")


def test_passkey_explicit_depths(tokenizer):
    samples = _gen("passkey", tokenizer, n=2, depths=[0.1, 0.9])
    assert [s.meta["depth"] for s in samples] == [0.1, 0.9]


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_niah_values_appear_once_and_templates_agree(variant, tokenizer):
    v = VARIANTS[variant]
    for s in _gen(f"niah_{variant}", tokenizer):
        qa = s.qa[0]
        assert len(qa.answers) == v.num_v * v.num_q
        for a in qa.answers:
            assert s.context.count(a) == 1
        singular = v.num_v * v.num_q == 1
        assert qa.question.startswith(
            "What is the special magic" if singular else "What are all the special magic"
        )
        assert qa.answer_prefix.endswith(" is" if singular else " are")
        assert s.meta["haystack"] == v.haystack
        for key in s.meta["keys"]:
            assert key in qa.question and key in qa.answer_prefix


def test_niah_variant_option_and_default(tokenizer):
    default = _gen("niah", tokenizer, n=1)[0]
    assert default.task == "niah_single_1" and default.meta["haystack"] == "noise"
    mv = _gen("niah", tokenizer, n=1, variant="multivalue")[0]
    assert mv.task == "niah_multivalue" and len(mv.qa[0].answers) == 4


def test_vt_chain_is_traceable(tokenizer):
    for s in _gen("vt", tokenizer):
        names, value = s.qa[0].answers, s.meta["value"]
        assert f"VAR {names[0]} = {value}" in s.context
        for prev, name in zip(names, names[1:], strict=False):
            assert f"VAR {name} = VAR {prev}" in s.context
        assert value in s.qa[0].question and s.context.count("Question:") == 1  # the worked example


def test_cwe_common_words_are_the_most_common(tokenizer):
    for target in (1000, 5000):
        (s,) = _gen("cwe", tokenizer, target=target, n=1)
        header = "Memorize the ones that appear most often.\n"
        listing = s.context[s.context.rindex(header) + len(header) :]
        words = listing.split()[1::2]
        counts = {w: words.count(w) for w in set(words)}
        common = set(s.qa[0].answers)
        assert len(common) == 10
        assert min(counts[w] for w in common) > max(c for w, c in counts.items() if w not in common)


def test_target_too_small_is_explained(tokenizer):
    with pytest.raises(TargetTooSmallError, match="target"):
        generate("convqa", 1, 200, 0, tokenizer, n_facts=12, n_questions=2)


def test_unknown_workload_lists_the_choices(tokenizer):
    with pytest.raises(ValueError, match="passkey"):
        generate("nope", 1, 1000, 0, tokenizer)


def test_registry_names():
    assert set(WORKLOADS) == {"passkey", "niah", "vt", "cwe", "convqa"}
    assert {"niah_single_1", "niah_multikey_3", "niah_multiquery"} <= set(NIAH_TASKS)


_SCRIPT = """
import hashlib, json
from kvpilot.workloads import generate
class Tok:
    def encode(self, text, add_special_tokens=False):
        return text.split()
out = [s.to_dict() for t in ("passkey", "niah_multikey_2", "vt", "cwe", "convqa") for s in generate(t, 2, 800, 3, Tok())]
print(hashlib.sha256(json.dumps(out, sort_keys=True).encode()).hexdigest())
"""


def test_deterministic_across_processes():
    """String seeds and no set iteration: output must not depend on PYTHONHASHSEED."""
    digests = set()
    for hashseed in ("1", "2"):
        env = {"PYTHONHASHSEED": hashseed, "PATH": ""}
        run = subprocess.run(
            [sys.executable, "-c", _SCRIPT], capture_output=True, text=True, env=env, check=True
        )
        digests.add(run.stdout.strip())
    assert len(digests) == 1


def test_word_tokenizer_sizing(word_tokenizer):
    """Any tokenizer-like object works; sizing is in its tokens."""
    for s in generate("convqa", 2, 1500, 0, word_tokenizer):
        assert abs(len(s.context.split()) - 1500) <= TOLERANCE * 1500
    assert json.dumps(s.meta)  # metadata stays JSON-serialisable
