"""Long conversational QA (the EpiCache setting): multi-session chats with personal facts, questions after.

Two people talk over several dated sessions. Each fact (a pet's name, a home town, a job, a date, a
number...) is said exactly once by its owner, and the facts are spread over the whole history; the
questions come after all of it, so a cache compressed without knowing them must keep every fact. One turn
is one line, `Speaker: utterance`, so a newline marks a turn boundary; sessions start with a header line
`--- Session 3 (May 4) ---`.

The filler mixes neutral small talk (`smalltalk`) with exchanges that name other people, places, pets,
numbers and dates (`chitchat`, on by default: `distractors=True`), so what must be kept is not simply
"every name and number". Every distractor value is recorded in `meta["distractors"]`.
"""

from __future__ import annotations

import datetime
import random
from dataclasses import dataclass

from kvpilot.workloads.base import SampleContext, Task
from kvpilot.workloads.chitchat import DISTRACTOR_EXCHANGES, fill_exchange
from kvpilot.workloads.convqa_facts import KINDS, SPEAKERS, FactKind, render
from kvpilot.workloads.haystack import LazyStream
from kvpilot.workloads.sample import QA
from kvpilot.workloads.sizing import Builder, Built, TextBuilder
from kvpilot.workloads.smalltalk import (
    GOODBYES,
    GREETINGS,
    LEAD_INS,
    REACTIONS,
    address,
    exchange_templates,
    fill,
    with_lead_in,
)

Line = tuple[int, str]  # (speaker index 0/1, utterance)
Exchange = tuple[list[Line], list[str]]  # its lines and the distractor values they name


@dataclass
class Fact:
    kind: FactKind
    owner: int
    value: str
    statement: str
    reaction: str | None
    position: float  # where in the filler sequence it is said, as a fraction

    def question(self, names: list[str]) -> QA:
        p = names[self.owner]
        return QA(self.kind.question.format(p=p), [self.value], self.kind.answer_prefix.format(p=p))


def _contains_any(text: str, needles: list[str]) -> bool:
    low = text.lower()
    return any(n in low for n in needles)


def default_sessions(target_tokens: int) -> int:
    """About one session per 700 tokens, between 2 and 10."""
    return max(2, min(10, round(target_tokens / 700)))


def _draw_facts(
    rng: random.Random, n_facts: int, kinds: list[FactKind], share_kinds: bool
) -> list[tuple[FactKind, int, str]]:
    """Facts as (kind, owner, value), values unique and not substrings of one another.

    Without `share_kinds` every fact is of a different kind, so a question can only be answered from one
    statement; with it both people may have, say, a dog, which also tests who said what.
    """
    if share_kinds:
        pairs = [(k, owner) for k in kinds for owner in (0, 1)]
        rng.shuffle(pairs)
    else:
        pairs = [(k, rng.randrange(2)) for k in rng.sample(kinds, min(n_facts, len(kinds)))]
    if n_facts > len(pairs):
        hint = "" if share_kinds else "; pass share_kinds=True to let both people have facts of the same kind"
        raise ValueError(f"at most {len(pairs)} facts are available ({len(kinds)} kinds){hint}")
    chosen: list[tuple[FactKind, int, str]] = []
    for kind, owner in pairs[:n_facts]:
        for _ in range(1000):
            value = kind.value(rng)
            low = value.lower()
            if all(low not in v.lower() and v.lower() not in low for _, _, v in chosen):
                break
        else:
            raise RuntimeError(f"could not draw a distinct value for {kind.name}")
        chosen.append((kind, owner, value))
    return chosen


def _session_dates(rng: random.Random, n: int, avoid: list[str]) -> list[str]:
    day = datetime.date(2024, 1, 1) + datetime.timedelta(days=rng.randint(0, 300))
    out = []
    for _ in range(n):
        while _contains_any(f"({day:%B} {day.day})", avoid):
            day += datetime.timedelta(days=1)
        out.append(f"{day:%B} {day.day}")
        day += datetime.timedelta(days=rng.randint(2, 21))
    return out


def _allocate(n: int, weights: list[float]) -> list[int]:
    """Split n filler exchanges over sessions in proportion to weights (largest remainder)."""
    total = sum(weights)
    raw = [n * w / total for w in weights]
    counts = [int(r) for r in raw]
    order = sorted(range(len(weights)), key=lambda i: (counts[i] - raw[i], i))
    for i in order[: n - sum(counts)]:
        counts[i] += 1
    return counts


def make_builder(
    sctx: SampleContext,
    n_sessions: int | None = None,
    n_facts: int = 8,
    n_questions: int = 4,
    kinds: list[str] | None = None,
    share_kinds: bool = False,
    distractors: bool = True,
) -> Builder:
    """`kinds` restricts the fact kinds (names from convqa_facts.KINDS); see `_draw_facts` for `share_kinds`.

    `distractors=False` keeps the filler to neutral small talk that names nothing (the older, easier form).
    """
    rng = sctx.rng("conversation")
    n_sessions = n_sessions or default_sessions(sctx.target_tokens)
    if n_sessions < 1 or n_facts < 1 or not 1 <= n_questions <= n_facts:
        raise ValueError("need n_sessions >= 1, n_facts >= 1 and 1 <= n_questions <= n_facts")
    pool = [k for k in KINDS if kinds is None or k.name in kinds]
    if kinds is not None and len(pool) != len(set(kinds)):
        raise ValueError(f"unknown fact kinds in {kinds}; known: {[k.name for k in KINDS]}")
    names = rng.sample(SPEAKERS, 2)
    drawn = _draw_facts(rng, n_facts, pool, share_kinds)
    answers = [v.lower() for _, _, v in drawn]
    facts = []
    for k, (kind, owner, value) in enumerate(drawn):
        statement = with_lead_in(rng.choice(LEAD_INS), render(rng.choice(kind.statements), value))
        reaction = rng.choice(REACTIONS) if rng.random() < 0.6 else None
        facts.append(
            Fact(kind, owner, value, statement, reaction, position=(k + rng.uniform(0.1, 0.9)) / n_facts)
        )
    # facts were drawn in random order, so fact k (said in the k-th stratum of the history) is a random one
    asked = rng.sample(range(n_facts), n_questions)
    dates = _session_dates(rng, n_sessions, answers)
    weights = [rng.uniform(0.7, 1.3) for _ in range(n_sessions)]
    openers = [(rng.randrange(2), rng.choice(GREETINGS), rng.choice(GOODBYES)) for _ in range(n_sessions)]
    templates = exchange_templates() + (DISTRACTOR_EXCHANGES if distractors else [])
    recent: list[int] = []  # the stream is generated in order, so this state is deterministic
    no_repeat = 12 if distractors else 6  # an exchange is not reused within this many

    def exchange(r: random.Random) -> Exchange:
        while True:
            which = r.randrange(len(templates))
            if which in recent:
                continue
            first = r.randrange(2)
            texts, values = fill_exchange(templates[which], r)
            lines = [((first + j) % 2, fill(t, r, names[(first + j + 1) % 2])) for j, t in enumerate(texts)]
            if not any(_contains_any(text, answers) for _, text in lines):
                recent.append(which)
                del recent[:-no_repeat]
                return lines, values

    filler = LazyStream(exchange, sctx.key + "/filler")

    def build(n: int) -> Built:
        counts = _allocate(n, weights)
        stream = filler.take(n)
        at = [min(n, int(f.position * n)) for f in facts]  # fact k is said before filler exchange at[k]
        out = TextBuilder()
        out.add(f"Below are {n_sessions} chat sessions between {names[0]} and {names[1]}.")
        line_no, turn_no = 0, 0
        records: list[dict] = []
        spans: dict[int, tuple[int, int]] = {}

        def say(speaker: int, text: str, fact: int | None = None) -> None:
            nonlocal line_no, turn_no
            line_no += 1
            prefix = f"\n{names[speaker]}: "
            if fact is None:
                out.add(prefix + text)
            else:
                f = facts[fact]
                i = text.index(f.value)
                spans[fact] = out.add_with(prefix + text[:i], f.value, text[i + len(f.value) :])
                records.append(
                    {
                        "kind": f.kind.name,
                        "person": names[f.owner],
                        "answer": f.value,
                        "span": list(spans[fact]),
                        "line": line_no,
                        "turn": turn_no,
                        "session": s + 1,
                        "asked": fact in asked,
                    }
                )
            turn_no += 1

        def say_fact(k: int) -> None:
            f = facts[k]
            say(f.owner, f.statement, fact=k)
            if f.reaction:
                say(1 - f.owner, f.reaction)

        g = 0  # global filler index
        k = 0  # next fact
        for s in range(n_sessions):
            line_no += 1
            out.add(f"\n--- Session {s + 1} ({dates[s]}) ---")
            first, greeting, goodbye = openers[s]
            for j, t in enumerate(greeting):
                say((first + j) % 2, address(t, names[(first + j + 1) % 2]))
            for _ in range(counts[s]):
                while k < len(facts) and at[k] <= g:
                    say_fact(k)
                    k += 1
                for speaker, text in stream[g][0]:
                    say(speaker, text)
                g += 1
            if s == n_sessions - 1:
                while k < len(facts):
                    say_fact(k)
                    k += 1
            for j, t in enumerate(goodbye):
                say((first + j + 1) % 2, address(t, names[(first + j) % 2]))
        context = out.text()
        low = context.lower()
        for f in facts:  # a safety net: generation guarantees this by construction
            if low.count(f.value.lower()) != 1:
                raise RuntimeError(
                    f"convqa bug: answer {f.value!r} occurs {low.count(f.value.lower())} times"
                )
        qa = []
        for k in asked:
            q = facts[k].question(names)
            q.spans = [spans[k]]
            qa.append(q)
        meta = {
            "speakers": names,
            "n_sessions": n_sessions,
            "n_facts": n_facts,
            "facts": records,
            "fact_depths": [round(r["span"][0] / len(context), 4) for r in records],
            "distractors": sorted({v for _, values in stream for v in values}),
        }
        return Built(context, qa, meta)

    return build


TASK = Task("convqa", make_builder, max_new_tokens=16)
