"""Interleave needles into a haystack while keeping the exact character span of every marked answer."""

from __future__ import annotations

from dataclasses import dataclass, field

from kvpilot.workloads.sizing import TextBuilder


@dataclass
class Needle:
    """A piece of text to insert, with labelled marks `(label, start, end)` relative to `text`."""

    text: str
    marks: list[tuple[str, int, int]] = field(default_factory=list)

    @classmethod
    def around(cls, before: str, marked: str, after: str, label: str) -> Needle:
        """A needle whose marked part is `marked`, between `before` and `after`."""
        start = len(before)
        return cls(before + marked + after, [(label, start, start + len(marked))])


def assemble(
    out: TextBuilder, units: list[str], inserts: list[tuple[int, Needle]], sep: str
) -> tuple[dict[str, tuple[int, int]], list[int]]:
    """Append `units` joined by `sep` to `out`, with each needle placed before unit `index`.

    Needles with equal indices keep their given order (variable-tracking chains rely on it). Returns the
    absolute span of every mark and the start offset of every needle, in the order given.
    """
    order = sorted(range(len(inserts)), key=lambda j: inserts[j][0])
    spans: dict[str, tuple[int, int]] = {}
    starts = [0] * len(inserts)
    pieces: list[tuple[str, int | None]] = []
    k = 0
    for i in range(len(units) + 1):
        while k < len(order) and inserts[order[k]][0] <= i:
            pieces.append((inserts[order[k]][1].text, order[k]))
            k += 1
        if i < len(units):
            pieces.append((units[i], None))
    for p, (text, which) in enumerate(pieces):
        if p:
            out.add(sep)
        start, _ = out.add(text)
        if which is not None:
            starts[which] = start
            for label, s, e in inserts[which][1].marks:
                spans[label] = (start + s, start + e)
    return spans, starts
