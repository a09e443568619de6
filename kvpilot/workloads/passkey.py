"""Passkey retrieval (Mohtashami & Jaggi): a 5-digit key hidden at a chosen depth in repeated noise.

It is easy for most eviction policies, so it serves as a sanity check rather than a headline number. The
depth is spread evenly across samples (0 % to 100 %) unless `depths` is given.
"""

from __future__ import annotations

from kvpilot.workloads.base import SampleContext, Task
from kvpilot.workloads.haystack import NOISE_LINE
from kvpilot.workloads.sample import QA
from kvpilot.workloads.sizing import Builder, Built, TextBuilder

INSTRUCTION = (
    "There is an important info hidden inside a lot of irrelevant text. Find it and memorize them. "
    "I will quiz you about the important information there."
)
# Measured on the bundled 135M model with the full cache: "What is the pass key?" + "The pass key is"
# answered 3 of 6 samples (it drifts into prose); asking for the number and ending the prefix with a
# space answered 6 of 6.
QUESTION = "What is the pass key? Answer with the number only."
ANSWER_PREFIX = "The pass key is "
_NOISE_SENTENCES = [s.strip() + "." for s in NOISE_LINE.split(".") if s.strip()]


def _depth(sctx: SampleContext, depths: list[float] | None) -> float:
    if depths:
        return float(depths[sctx.index % len(depths)])
    if sctx.n_samples <= 1:
        return 0.5
    return sctx.index / (sctx.n_samples - 1)


def make_builder(sctx: SampleContext, depths: list[float] | None = None) -> Builder:
    """`depths` are fractions in [0, 1], cycled over samples."""
    rng = sctx.rng("key")
    key = str(rng.randint(10000, 99999))
    depth = _depth(sctx, depths)
    if not 0.0 <= depth <= 1.0:
        raise ValueError(f"passkey depth {depth} is outside [0, 1]")

    def build(n: int) -> Built:
        garbage = [_NOISE_SENTENCES[i % len(_NOISE_SENTENCES)] for i in range(n)]
        cut = int(round(depth * n))
        out = TextBuilder()
        out.add(INSTRUCTION)
        if cut:
            out.add("\n" + " ".join(garbage[:cut]))
        span = out.add_with("\nThe pass key is ", key, f". Remember it. {key} is the pass key.")
        if cut < n:
            out.add("\n" + " ".join(garbage[cut:]))
        context = out.text()
        meta = {"depth": depth, "needle_position": round(span[0] / len(context), 4), "key": key}
        return Built(context, [QA(QUESTION, [key], ANSWER_PREFIX, [span])], meta)

    return build


TASK = Task("passkey", make_builder, max_new_tokens=16)
