"""RULER's needle-in-a-haystack family: single, multi-key, multi-value and multi-query variants.

Templates and the variant table follow RULER (see reference section 14.1). Differences: the haystacks are
synthesised (noise line, templated essay, or distractor needles), and the needle sentence stays plural
("One of the special magic numbers ...") also in the singular variants, where RULER's string replacement
leaves "number" ungrammatical.
"""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass

from kvpilot.workloads.assemble import Needle, assemble
from kvpilot.workloads.base import SampleContext, Task
from kvpilot.workloads.haystack import LazyStream, sentence_stream
from kvpilot.workloads.sample import QA
from kvpilot.workloads.sizing import Builder, Built, TextBuilder
from kvpilot.workloads.wordlists import word_keys

HEADER = (
    "Some special magic {type_v} are hidden within the following text. Make sure to memorize it. "
    "I will quiz you about the {type_v} afterwards."
)
QUESTION = "What are all the special magic {type_v} for {query} mentioned in the provided text?"
ANSWER_PREFIX = "The special magic {type_v} for {query} mentioned in the provided text are"
NEEDLE = "One of the special magic {type_v} for {key} is: "
DEPTHS = [round(i * 100 / 39) for i in range(40)]  # RULER: round(linspace(0, 100, 40))
TYPE_NAMES = {"numbers": "numbers", "uuids": "uuids", "words": "words"}


@dataclass(frozen=True)
class Variant:
    haystack: str  # "noise" | "essay" | "needle"
    type_key: str  # "words" | "numbers" | "uuids"
    type_value: str
    num_k: int = 1
    num_v: int = 1
    num_q: int = 1


VARIANTS: dict[str, Variant] = {
    "single_1": Variant("noise", "words", "numbers"),
    "single_2": Variant("essay", "words", "numbers"),
    "single_3": Variant("essay", "words", "uuids"),
    "multikey_1": Variant("essay", "words", "numbers", num_k=4),
    "multikey_2": Variant("needle", "words", "numbers"),
    "multikey_3": Variant("needle", "uuids", "uuids"),
    "multivalue": Variant("essay", "words", "numbers", num_v=4),
    "multiquery": Variant("essay", "words", "numbers", num_q=4),
}
DEFAULT_VARIANT = "single_1"


def _value(kind: str, rng: random.Random) -> str:
    if kind == "numbers":
        return str(rng.randint(10**6, 10**7 - 1))
    if kind == "uuids":
        return str(uuid.UUID(int=rng.getrandbits(128), version=4))
    if kind == "words":
        return word_keys(rng, 1)[0]
    raise ValueError(f"unknown needle type {kind!r}; expected numbers, uuids or words")


def _distinct(kind: str, rng: random.Random, n: int, exclude: set[str]) -> list[str]:
    out: list[str] = []
    while len(out) < n:
        v = _value(kind, rng)
        if v not in exclude and v not in out:
            out.append(v)
    return out


def join_keys(keys: list[str]) -> str:
    """RULER's query phrase: 'a', or 'a, b, and c'."""
    return keys[0] if len(keys) == 1 else ", ".join(keys[:-1]) + ", and " + keys[-1]


def _singular(template: str) -> str:
    """RULER's singularisation of a template (before formatting) when one value is asked for."""
    for old, new in (("Some", "A"), ("are all", "is"), ("are", "is")):
        template = template.replace(old, new)
    return template


def make_builder(sctx: SampleContext, variant: str = DEFAULT_VARIANT, **overrides) -> Builder:
    """Overrides (haystack, type_key, type_value, num_k, num_v, num_q) adjust the named variant."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown niah variant {variant!r}; choose from {sorted(VARIANTS)}")
    v = Variant(**{**VARIANTS[variant].__dict__, **overrides})
    rng = sctx.rng("needles")
    num_k = max(v.num_k, v.num_q)
    keys = word_keys(rng, num_k) if v.type_key == "words" else _distinct(v.type_key, rng, num_k, set())
    values = _distinct(v.type_value, rng, num_k * v.num_v, set(keys))
    type_v = TYPE_NAMES[v.type_value]
    needles = []
    for i, key in enumerate(keys):
        for j in range(v.num_v):
            value = values[i * v.num_v + j]
            needles.append(
                (key, value, Needle.around(NEEDLE.format(type_v=type_v, key=key), value, ".", value))
            )
    rng.shuffle(needles)
    queries = rng.sample(keys, v.num_q)
    answers = [values[keys.index(k) * v.num_v + j] for k in queries for j in range(v.num_v)]
    if v.haystack == "essay":
        if len(needles) > len(DEPTHS):
            raise ValueError(f"at most {len(DEPTHS)} needles fit the essay depth grid")
        fractions = sorted(d / 100 for d in rng.sample(DEPTHS, len(needles)))
    else:
        fractions = [rng.random() for _ in needles]
    query = join_keys(queries)
    header, question, prefix, asked_type = HEADER, QUESTION, ANSWER_PREFIX, type_v
    if v.num_q * v.num_v == 1:
        header, question, prefix = _singular(header), _singular(question), _singular(prefix)
        asked_type = type_v[:-1]
    header = header.format(type_v=asked_type)
    question = question.format(type_v=asked_type, query=query)
    prefix = prefix.format(type_v=asked_type, query=query)
    if v.haystack == "needle":
        taken_keys, taken_values = set(keys), set(values)

        def distractor(r: random.Random) -> str:
            key = (
                _distinct(v.type_key, r, 1, taken_keys)[0]
                if v.type_key != "words"
                else word_keys(r, 1, taken_keys)[0]
            )
            value = _distinct(v.type_value, r, 1, taken_values)[0]
            return NEEDLE.format(type_v=type_v, key=key) + value + "."

        stream = LazyStream(distractor, sctx.key + "/haystack")
    else:
        stream = sentence_stream(v.haystack, sctx.key + "/haystack")
    sep = " " if v.haystack == "essay" else "\n"

    def build(n: int) -> Built:
        units = stream.take(n)
        if v.haystack == "essay":
            points = [int(n * f) for f in fractions]
        else:
            points = [min(n, int(f * (n + 1))) for f in fractions]
        out = TextBuilder()
        out.add(header + "\n")
        spans, starts = assemble(out, units, [(p, nd[2]) for p, nd in zip(points, needles, strict=True)], sep)
        context = out.text()
        meta = {
            "variant": variant,
            "haystack": v.haystack,
            "keys": queries,
            "needle_depths": [round(s / len(context), 4) for s in starts],
            "num_needles": len(needles),
        }
        return Built(context, [QA(question, answers, prefix, [spans[a] for a in answers])], meta)

    return build


def task_for(variant: str) -> Task:
    """A Task bound to one variant, named like RULER's (`niah_multikey_1`)."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown niah variant {variant!r}; choose from {sorted(VARIANTS)}")

    def factory(sctx: SampleContext, **opts) -> Builder:
        return make_builder(sctx, variant=variant, **opts)

    return Task(f"niah_{variant}", factory, max_new_tokens=128)
