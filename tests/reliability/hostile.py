"""Seeded hostile config documents: what an attacker or a careless script pushes at a deployment.

Each document is bytes (what a config file or stdin holds). A third are plausible configs with one or two
fields poisoned (NaN, infinities, 1e308, 2**63, booleans for numbers, strings for numbers, lone surrogates,
huge strings and lists, deep nesting, unknown keys), a third are plausible configs across every plug-in
(some valid, some with extreme but in-range values), and a third are broken documents (binary, UTF-16,
truncated JSON, nesting 10^5 deep, 5,000-digit integers, NaN literals, non-objects).
"""

from __future__ import annotations

import json
import random
from typing import Any

from kvpilot.config import SLOTS, KVConfig

POISON: list[Any] = [
    float("nan"), float("inf"), float("-inf"), 1e308, -1e308, 5e-324, 2**63, 2**64, -(2**63) - 1, 2**31,
    2**63 - 1, True, False, None, "4", "", "\ud800", "x" * 3000, [], {}, [1] * 5000, [[[[[[]]]]]], -1, 0, 1,
    0.5, 1.5, -0.0, {"a": 1},
]
FIELDS = list(KVConfig.model_fields)


def _nested(depth: int) -> Any:
    out: Any = 1
    for _ in range(depth):
        out = [out]
    return out


def _plugin_params(rng: random.Random, spec: Any, num_layers: int) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for p in spec.params():
        if not p.required and rng.random() < 0.4:
            continue
        if p.choices is not None:
            params[p.name] = rng.choice(p.choices)
        elif p.per_layer:
            n = num_layers if rng.random() < 0.85 else rng.choice([1, num_layers + 1])
            extreme = rng.random() < 0.4
            if p.type == list[int]:
                params[p.name] = [rng.choice([1, 2, 7, 64, 2**31, 2**62]) if extreme else rng.randint(1, 64)
                                  for _ in range(n)]
            else:
                params[p.name] = [rng.choice([1e308, -1e308, 1e-308, 0.0, 1e30, -5.0]) if extreme else rng.random()
                                  for _ in range(n)]
        elif p.type is int:
            low = int(p.low) if p.low is not None else 0
            high = int(p.high) if p.high is not None else 2**31
            params[p.name] = rng.choice([low, high, rng.randint(low, min(high, low + 100))])
        else:
            low = p.low if p.low is not None else 0.0
            high = p.high if p.high is not None else 1e6
            params[p.name] = rng.choice([low, high, rng.uniform(low, high), 1e300 if p.high is None else high])
    return params


def plausible(rng: random.Random, num_layers: int) -> dict[str, Any]:
    """A config over every plug-in, with values anywhere in their declared ranges (extremes included)."""
    doc: dict[str, Any] = {}
    for slot in SLOTS:
        name = rng.choice(list(slot.registry))
        doc[slot.field] = name
        doc[slot.params_field] = _plugin_params(rng, slot.registry.get(name), num_layers)
    if rng.random() < 0.5:
        doc["compression_ratio"] = rng.choice([0.0, 0.5, 0.9, 0.999999])
    else:
        doc["budget"] = rng.choice([1, 2, 8, 64, 2**31 - 1])
    doc["sink_tokens"] = rng.choice([0, 4, 1024])
    doc["window"] = rng.choice([0, 16, 8192])
    doc["scoring"] = rng.choice(["window", "prompt", "reconstruct"])
    doc["granularity"] = rng.choice(["token", "sentence", "turn", "chunk"])
    doc["chunk_size"] = rng.choice([1, 16, 4096])
    doc["unit_pooling"] = rng.choice(["max", "mean"])
    doc["reconstruction_chunk"] = rng.choice([16, 2048, 65536])
    if rng.random() < 0.3:
        doc["prefill_block_size"] = rng.choice([16, 64, 2**31 - 1])
    if rng.random() < 0.3 and doc["layer_allocation"] != "global":
        doc["decode_interval"] = rng.choice([1, 4, 2**31 - 1])
    if rng.random() < 0.3:
        doc["scoring_prompt"] = rng.choice(["Remember the numbers.", "x" * 1024, "é" * 500, "\n"])
    return doc


def poisoned(rng: random.Random, num_layers: int) -> dict[str, Any]:
    doc = plausible(rng, num_layers)
    for _ in range(rng.randint(1, 2)):
        where = rng.random()
        value = rng.choice(POISON)
        if where < 0.5:
            doc[rng.choice(FIELDS)] = value
        elif where < 0.8:
            slot = rng.choice(SLOTS)
            params = doc.setdefault(slot.params_field, {})
            choice = doc.get(slot.field)
            if isinstance(params, dict) and isinstance(choice, str) and choice in slot.registry:
                names = [p.name for p in slot.registry.get(choice).params()] or ["bogus"]
                params[rng.choice(names)] = value
        elif where < 0.9:
            doc[rng.choice(["pooling", "pyramid_beta", "seed", "ttl_memory_price", "sensitivity_profile",
                            "layer_budgets", "session_ttl_s", "nonsense"])] = value
        else:
            doc[rng.choice(FIELDS)] = _nested(rng.choice([70, 500]))
    return doc


def broken(rng: random.Random) -> bytes:
    kind = rng.randrange(10)
    good = json.dumps({"policy": "snapkv", "compression_ratio": 0.5})
    if kind == 0:
        return bytes(rng.randrange(256) for _ in range(rng.randint(1, 200)))
    if kind == 1:
        return good.encode(rng.choice(["utf-16", "utf-16-le", "utf-32"]))
    if kind == 2:
        return good[: rng.randint(0, len(good) - 1)].encode()
    if kind == 3:
        return ("[" * rng.choice([1000, 100_000])).encode()
    if kind == 4:
        return ('{"policy": "random", "policy_params": {"seed": ' + "9" * rng.choice([4301, 5000, 20000]) + "}}").encode()
    if kind == 5:
        return rng.choice([b'{"budget": NaN}', b'{"compression_ratio": Infinity}', b'{"budget": -Infinity}'])
    if kind == 6:
        return rng.choice([b"[]", b"null", b"42", b'"snapkv"', b"", b"   ", b"\xef\xbb\xbf{}", b"{}{}"])
    if kind == 7:
        return b'{"scoring_prompt": "\\ud800\\udc00\\ud800", "scoring": "prompt"}'
    if kind == 8:
        return ('{"policy": "snapkv", "policy_params": {' + ",".join(f'"k{i}": {i}' for i in range(3000)) + "}}").encode()
    return ('{"a": ' * 2000 + "1" + "}" * 2000).encode()


def documents(n: int, seed: int, num_layers: int) -> list[bytes]:
    """``n`` hostile documents, the same for the same seed."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        if i % 3 == 0:
            out.append(broken(rng))
            continue
        doc = plausible(rng, num_layers) if i % 3 == 1 else poisoned(rng, num_layers)
        text = json.dumps(doc, ensure_ascii=rng.random() < 0.5, allow_nan=True)
        out.append(text.encode("utf-8", errors="surrogatepass"))
    return out
