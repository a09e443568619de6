"""The search / held-out split of a workload: two disjoint sample sets drawn from one, seeded.

The tuner searches on the first set only; the second is what the search's front is validated on
(`kvpilot.tuner.heldout`). Both come from one generated pool (or one JSONL file) shuffled with the split
seed, so the same flags always give the same two sets, and a sample never sits in both.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

from kvpilot.errors import KVPilotError
from kvpilot.workloads.sample import Sample


class SplitError(KVPilotError):
    """Sizes the workload cannot provide (too few samples in a file, a set of size zero)."""


def split_samples(samples: Sequence[Sample], n_search: int, n_heldout: int, seed: int) -> tuple[list[Sample], list[Sample]]:
    """`n_search` and `n_heldout` distinct samples, chosen by a permutation seeded with `seed`."""
    if n_search < 1 or n_heldout < 1:
        raise SplitError(f"the search and held-out sets need at least 1 sample each, got {n_search} and {n_heldout}")
    if n_search + n_heldout > len(samples):
        raise SplitError(f"the workload has {len(samples)} samples, fewer than {n_search} to search plus "
                         f"{n_heldout} held out")
    order = list(range(len(samples)))
    random.Random(seed).shuffle(order)
    search = [samples[i] for i in sorted(order[:n_search])]
    heldout = [samples[i] for i in sorted(order[n_search:n_search + n_heldout])]
    return search, heldout


def split_evaluators(
    engine: Any,
    workload: str,
    n_search: int,
    n_heldout: int | None,
    target_tokens: int,
    seed: int,
    split_seed: int,
    **kwargs: Any,
) -> tuple[Any, Any]:
    """Two Evaluators on one workload: the search set and the held-out set (`n_heldout` None: as many as
    searched; for a JSONL file with `n_search` < 1, the file is halved)."""
    from kvpilot.evaluation import Evaluator, load_samples, workload_label
    from kvpilot.workloads.spec import WorkloadSpec

    jsonl = WorkloadSpec.parse(workload).is_jsonl
    if jsonl and n_search < 1:
        pool = load_samples(engine.tokenizer, workload, 0, target_tokens, seed)
        n_search = len(pool) // 2 if n_heldout is None else len(pool) - n_heldout
        n_heldout = len(pool) - n_search if n_heldout is None else n_heldout
    else:
        n_heldout = n_search if n_heldout is None else n_heldout
        pool = load_samples(engine.tokenizer, workload, 0 if jsonl else n_search + n_heldout, target_tokens, seed)
    search, heldout = split_samples(pool, n_search, n_heldout, split_seed)
    base = workload_label(workload, len(pool), target_tokens, seed)
    info = {"workload": workload, "target_tokens": None if jsonl else target_tokens, "seed": None if jsonl else seed,
            "split_seed": split_seed}
    return (
        Evaluator(engine, search, label=f"{base}-search{n_search}-split{split_seed}",
                  workload_info={**info, "set": "search"}, **kwargs),
        Evaluator(engine, heldout, label=f"{base}-heldout{n_heldout}-split{split_seed}",
                  workload_info={**info, "set": "heldout"}, **kwargs),
    )
