"""RULER's variable tracking: follow a chain of `VAR X = VAR Y` assignments back to a number.

One chain of four hops by default, hidden among noise lines, after one worked example (in-context
learning) with three-letter names. RULER builds its example at 500 tokens; here it is a few noise lines
long by default (`icl_lines`), so that at 1k tokens most of the context is still the task itself.
"""

from __future__ import annotations

import random
import string

from kvpilot.workloads.assemble import Needle, assemble
from kvpilot.workloads.base import SampleContext, Task
from kvpilot.workloads.haystack import NOISE_LINE
from kvpilot.workloads.sample import QA
from kvpilot.workloads.sizing import Builder, Built, TextBuilder

HEADER = "Memorize and track the chain(s) of variable assignment hidden in the following text."
QUESTION = "Question: Find all variables that are assigned the value {value} in the text above."
ANSWER_PREFIX = (
    "Answer: According to the chain(s) of variable assignment in the text above, {n} variables are assigned "
    "the value {value}, they are:"
)


def _names(rng: random.Random, n: int, length: int) -> list[str]:
    out: list[str] = []
    while len(out) < n:
        name = "".join(rng.choice(string.ascii_uppercase) for _ in range(length))
        if name not in out:
            out.append(name)
    return out


def _chain(names: list[str], value: str) -> list[Needle]:
    """The assignment lines of one chain; mark i is the left-hand side naming variable i."""
    lines = [Needle.around("VAR ", names[0], f" = {value}", names[0])]
    for prev, name in zip(names, names[1:], strict=False):
        lines.append(Needle.around("VAR ", name, f" = VAR {prev}", name))
    return lines


def _example(rng: random.Random, num_hops: int, lines: int, avoid_value: str) -> str:
    """A solved example with its own names and value, placed before the task."""
    value = str(rng.randint(10000, 99999))
    while value == avoid_value:
        value = str(rng.randint(10000, 99999))
    names = _names(rng, num_hops + 1, 3)
    out = TextBuilder()
    out.add(HEADER + "\n\n")
    points = sorted(rng.randint(0, lines) for _ in names)
    assemble(out, [NOISE_LINE] * lines, list(zip(points, _chain(names, value), strict=True)), "\n")
    out.add("\n" + QUESTION.format(value=value) + " ")
    out.add(ANSWER_PREFIX.format(n=len(names), value=value) + " " + " ".join(names))
    return out.text()


def make_builder(
    sctx: SampleContext, num_chains: int = 1, num_hops: int = 4, icl: bool = True, icl_lines: int = 5
) -> Builder:
    """The question asks for chain 0; further chains are distractors with other values."""
    rng = sctx.rng("chains")
    values: list[str] = []
    while len(values) < num_chains:
        v = str(rng.randint(10000, 99999))
        if v not in values:
            values.append(v)
    all_names = _names(rng, num_chains * (num_hops + 1), 5)
    chains = [all_names[c * (num_hops + 1) : (c + 1) * (num_hops + 1)] for c in range(num_chains)]
    fractions = [sorted(rng.random() for _ in chain) for chain in chains]
    example = _example(sctx.rng("example"), num_hops, icl_lines, values[0]) + "\n\n" if icl else ""
    target_names, value = chains[0], values[0]

    def build(n: int) -> Built:
        inserts = []
        for chain, value_c, fr in zip(chains, values, fractions, strict=True):
            points = [min(n, int(f * (n + 1))) for f in fr]
            inserts += list(zip(points, _chain(chain, value_c), strict=True))
        out = TextBuilder()
        out.add(example + HEADER + "\n\n")
        spans, starts = assemble(out, [NOISE_LINE] * n, inserts, "\n")
        context = out.text()
        qa = QA(
            QUESTION.format(value=value),
            list(target_names),
            ANSWER_PREFIX.format(n=len(target_names), value=value),
            [spans[name] for name in target_names],
        )
        meta = {
            "value": value,
            "num_chains": num_chains,
            "num_hops": num_hops,
            "icl": icl,
            "chain_depths": [round(s / len(context), 4) for s in starts[: num_hops + 1]],
        }
        return Built(context, [qa], meta)

    return build


TASK = Task("vt", make_builder, max_new_tokens=30)
