"""KVConfig: the one object that is tuned, stored, pushed and applied.

A KVConfig says how a managed KV cache is compressed: which policy scores tokens, how many tokens each
layer and KV head keeps, which tokens are protected, how statistics are gathered and when eviction runs.
It is plain data (JSON round trip, JSON schema) so the tuner can search it, the store can version it and
an engine can validate it before applying it. Nothing here imports torch.

Four fields name a plug-in (`SLOTS`): `policy`, `layer_allocation`, `head_allocation`, `session_ttl`. Each
plug-in's own parameters live beside it, in `<field>_params` (e.g. `policy_params={"pooling": "max"}` for
snapkv), validated by the plug-in's declarations (`kvpilot.plugins.Param`); the other fields are shared by
every policy. Configs written before the plug-ins owned their parameters kept them flat
(`pooling="max"`, `pyramid_beta=4`): such keys are still accepted and moved into the plug-in that declares
them (`Param.legacy`); one the chosen plug-in does not use is dropped when it holds its old default and
rejected otherwise.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from kvpilot.errors import KVPilotError
from kvpilot.inputs import InputError, check_document, clip, parse_json, read_text, short
from kvpilot.plugins import Plugin, Registry, param
from kvpilot.policies import HEAD_ALLOCATORS, LAYER_ALLOCATORS, POLICY_REGISTRY, TTL_RULES

DEFAULT_SCORING_PROMPT = (
    "\n\nExtract the essential information from this conversation: the speakers' names, "
    "places, dates, numbers, pets, jobs, preferences and plans each person mentioned."
)
# Every scoring-prompt token is a query run against the whole cache at each block: 2 KB of prompt made a
# request 6x slower and 20 KB did not finish. A prompt is a short instruction; 1,024 characters is plenty.
MAX_SCORING_PROMPT_CHARS = 1024
MAX_TOKENS = 2**31 - 1  # token counts (budgets, block sizes): what a torch int32 index and any model hold
MAX_PROBLEMS = 20  # problems listed in one KVConfigError (a document with 10^5 bad keys stays readable)


@dataclass(frozen=True)
class Slot:
    """A KVConfig field that names a plug-in of ``registry``; ``<field>_params`` holds that plug-in's parameters."""

    field: str
    registry: Registry[Any]

    @property
    def params_field(self) -> str:
        return f"{self.field}_params"


SLOTS = (
    Slot("policy", POLICY_REGISTRY),
    Slot("layer_allocation", LAYER_ALLOCATORS),
    Slot("head_allocation", HEAD_ALLOCATORS),
    Slot("session_ttl", TTL_RULES),
)
SLOT_OF = {s.field: s for s in SLOTS} | {s.params_field: s for s in SLOTS}

# The flat fields of the config before plug-ins owned their parameters, with their defaults then: old JSON
# dumps every one of them, so a key the chosen plug-in does not use is dropped when it holds this value.
LEGACY_DEFAULTS: dict[str, Any] = {
    "observation_window": 32,
    "pooling": "avg",
    "pooling_kernel": 5,
    "seed": 0,
    "pyramid_beta": 20.0,
    "sensitivity_alpha": 1.1,
    "sensitivity_floor": 0.25,
    "sensitivity_profile": None,
    "layer_budgets": None,
    "adaptive_alpha": 0.2,
    "session_ttl_s": 0.0,
    "ttl_memory_price": 1e-9,
}


@dataclass(frozen=True)
class EpisodeParams(Plugin):
    """The parameters of EpiCache episodes (`episodes` > 1), declared like a plug-in's so they are validated,
    documented and searchable the same way."""

    name = "episodes"
    description = "EpiCache: cluster the conversation into episodes, one compressed cache per episode"

    window: int = param(4, low=1, high=64, description="utterances (lines) per embedded segment")
    medoids: int = param(8, low=1, high=64, description="segments nearest an episode's centroid "
                         "that patch its scoring prompt, in conversation order")
    layer: int | None = param(None, low=0, description="hidden layer whose mean embeds a segment with the "
                              "model itself (null: the middle layer)")
    encoder: str = param("model", description='"model" (the served model\'s own hidden states) or a '
                         "sentence-transformers model name or path, used only if that package and model are "
                         "installed (never downloaded)")
    seed: int = param(42, low=0, description="k-means seed")


KV_STORAGE_GROUP = 32  # values per float16 scale when kv_storage holds integers (a narrower head: its whole row)


class KVConfigError(KVPilotError, ValueError):
    """A KVConfig was rejected. The message names each bad field, its value and what is allowed."""

    def __init__(self, problems: list[str], source: str | None = None):
        if len(problems) > MAX_PROBLEMS:
            problems = [*problems[:MAX_PROBLEMS], f"... and {len(problems) - MAX_PROBLEMS} more problems"]
        self.problems = problems
        self.source = source
        where = f" in {source}" if source else ""
        super().__init__(f"invalid KVConfig{where}:\n  - " + "\n  - ".join(problems))


def _params_field(description: str) -> Any:
    return Field(default_factory=dict, validate_default=True, description=description)


class KVConfig(BaseModel):
    """How a managed KV cache is compressed.

    Budgets count tokens kept per KV head per layer, sinks and the protected window included.
    Exactly one of ``budget`` (absolute tokens, averaged over layers) and ``compression_ratio``
    (fraction of the tokens seen that is evicted) sets the size; ``full`` ignores both.
    """

    # strict: `"budget": true` is not 1 and "4" is not 4; no NaN or infinity (JSON cannot store them)
    model_config = ConfigDict(extra="forbid", validate_assignment=False, frozen=True, strict=True,
                              allow_inf_nan=False)

    policy: str = Field(default="full", description="eviction policy (kvpilot.policies.POLICY_REGISTRY)")
    policy_params: dict[str, Any] = _params_field("the policy's own parameters")
    budget: int | None = Field(default=None, ge=1, le=MAX_TOKENS, description="average tokens kept per KV head per layer")
    compression_ratio: float | None = Field(
        default=None, ge=0.0, lt=1.0, description="fraction of seen tokens evicted, in [0, 1)"
    )

    layer_allocation: str = Field(default="uniform", description="how the budget is split over layers")
    layer_allocation_params: dict[str, Any] = _params_field("the layer allocation's own parameters")
    head_allocation: str = Field(default="uniform", description="how a layer's budget is split over KV heads")
    head_allocation_params: dict[str, Any] = _params_field("the head allocation's own parameters")

    sink_tokens: int = Field(default=4, ge=0, le=1024, description="first tokens always kept (attention sinks)")
    window: int = Field(default=16, ge=0, le=8192, description="protected recent tokens")

    scoring: Literal["window", "prompt", "reconstruct"] = Field(
        default="window", description="queries that score the cache: the context's last window, a prompt, or "
        "a pass that reproduces the context (KVzip), each run as queries only and never stored"
    )
    reconstruction_chunk: int = Field(
        default=2048, ge=16, le=65536, description='`scoring="reconstruct"`: context tokens reproduced per '
        "reconstruction pass (a prefill block is reproduced in chunks of at most this size)")
    scoring_prompt: str = Field(default=DEFAULT_SCORING_PROMPT, max_length=MAX_SCORING_PROMPT_CHARS,
                                description='the prompt run as scoring queries when `scoring="prompt"` '
                                f'(never stored in the cache; at most {MAX_SCORING_PROMPT_CHARS} characters)')

    granularity: Literal["token", "sentence", "turn", "chunk"] = Field(
        default="token", description="what is kept or dropped whole: single tokens, sentences, turns (a newline "
        "ends one) or chunks of `chunk_size` tokens")
    chunk_size: int = Field(default=16, ge=1, le=4096, description='tokens per unit with `granularity="chunk"`')
    unit_pooling: Literal["max", "mean"] = Field(
        default="max", description="how the scores of a unit's tokens combine into the unit's score")

    prefill_block_size: int | None = Field(default=None, ge=16, le=MAX_TOKENS, description="block-wise prefill size C")
    decode_interval: int | None = Field(default=None, ge=1, le=MAX_TOKENS, description="evict every N decode steps")
    kv_storage: Literal["model", "int8", "int4"] = Field(
        default="model", description='how kept keys and values are held between forwards: "model" (as computed) or '
        '"int8" / "int4" (symmetric integers with a float16 scale per 32 values, dequantised for each forward); '
        "multiplies with eviction: a kept pair costs 0.53 (int8) or 0.28 (int4) of its 16-bit bytes (head_dim 64)")

    session_ttl: str = Field(
        default="none", description="keep a session's cache while its agent runs a tool (a TTL rule)"
    )
    session_ttl_params: dict[str, Any] = _params_field("the TTL rule's own parameters")

    episodes: int = Field(default=1, ge=1, le=32, description="EpiCache: cluster the conversation into this many "
                          "episodes, compress one cache per episode (scored by `scoring_prompt` patched with the "
                          "episode's medoid utterances, kept off the device) and answer each question on the "
                          'nearest episode\'s cache; needs `scoring="prompt"`; 1 is off')
    episode_params: dict[str, Any] = _params_field("the episodes' parameters (`window`, `medoids`, `layer`, "
                                                   "`encoder`, `seed`; see [Episodes](#episodes))")

    def __init__(self, **data: Any) -> None:
        """``KVConfig(budget=...)`` raises KVConfigError (a kvpilot error the CLI prints), like `parse`."""
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise KVConfigError(_describe(exc)) from None

    @model_validator(mode="before")
    @classmethod
    def _nest_legacy(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        problem = check_document(data)  # what no field validator sees: depth, surrogates, NaN inside params
        if problem:
            raise ValueError(problem)
        return _nest_legacy(data)

    @field_validator("policy", "layer_allocation", "head_allocation", "session_ttl")
    @classmethod
    def _registered(cls, name: str, info: ValidationInfo) -> str:
        registry = SLOT_OF[str(info.field_name)].registry
        if name not in registry:
            raise ValueError(f"not allowed; allowed values: {', '.join(registry)}")
        return name

    @field_validator("policy_params", "layer_allocation_params", "head_allocation_params", "session_ttl_params")
    @classmethod
    def _own_params(cls, values: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        field = str(info.field_name)
        slot = SLOT_OF[field]
        choice = info.data.get(slot.field)
        if choice is None:  # the plug-in's name was rejected: that is the error to report
            return values
        spec: type[Plugin] = slot.registry.get(choice)
        normalised, problems = spec.validate_params(values, field)
        if problems:
            raise ValueError("\n".join(problems))
        return normalised

    @field_validator("episode_params")
    @classmethod
    def _episode_params(cls, values: dict[str, Any]) -> dict[str, Any]:
        normalised, problems = EpisodeParams.validate_params(values, "episode_params")
        if problems:
            raise ValueError("\n".join(problems))
        return normalised

    @model_validator(mode="after")
    def _episodes_apply(self) -> KVConfig:
        """Episodes differ only in their scoring prompt: they need a config that compresses and scores by it."""
        if self.episodes > 1 and not (self.compresses and self.scoring == "prompt"
                                      and POLICY_REGISTRY.get(self.policy).stats == "scoring"):
            raise ValueError(f"episodes={self.episodes}: each episode is scored by its own patched scoring prompt, "
                             "so it needs a policy scored by chosen queries (kvzip, snapkv, tova), "
                             'scoring="prompt" and a budget or compression_ratio')
        return self

    @model_validator(mode="after")
    def _consistent(self) -> KVConfig:
        problems: list[str] = []
        if self.budget is not None and self.compression_ratio is not None:
            problems.append(
                f"budget={self.budget} and compression_ratio={self.compression_ratio}: "
                "set only one of them"
            )
        if self.layer_allocation == "global" and self.decode_interval:
            problems.append(f"layer_allocation='global' splits the budget over layers at prefill; "
                            f"decode_interval={self.decode_interval} (eviction while decoding) does not go with it")
        if (self.layer_allocation == "global" and self.layer_allocation_params.get("heads")
                and self.head_allocation != "uniform"):
            problems.append(f"layer_allocation='global' with heads=true decides every KV head's budget; "
                            f"head_allocation={self.head_allocation!r} does not go with it (use 'uniform')")
        if self.scoring == "prompt" and not self.scoring_prompt.strip():
            problems.append("scoring='prompt': scoring_prompt must not be empty")
        if problems:
            raise ValueError("\n".join(problems))
        return self

    # ----- construction and serialisation -------------------------------------------------------

    @classmethod
    def parse(cls, data: dict[str, Any] | str | bytes) -> KVConfig:
        """Build a config from a dict or JSON text, raising KVConfigError with readable problems."""
        return cls._parse(data, None)

    @classmethod
    def from_file(cls, path: str) -> KVConfig:
        """Read a JSON config file; any unreadable or invalid file is a KVConfigError naming it."""
        try:
            text = read_text(path, "config file")
        except InputError as exc:
            raise KVConfigError([str(exc)], source=path) from None
        return cls._parse(text, path)

    @classmethod
    def _parse(cls, data: dict[str, Any] | str | bytes, source: str | None) -> KVConfig:
        if isinstance(data, (str, bytes)):
            try:
                data = parse_json(data, "config" if source is None else f"config file {source}")
            except InputError as exc:
                raise KVConfigError([str(exc)], source=source) from None
        if not isinstance(data, dict):
            raise KVConfigError([f"expected a JSON object, got {type(data).__name__}"], source=source)
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise KVConfigError(_describe(exc), source=source) from None

    def to_json(self, indent: int | None = None) -> str:
        return self.model_dump_json(indent=indent, exclude_defaults=False)

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def replace(self, **changes: Any) -> KVConfig:
        """A validated copy with some fields changed (flat legacy parameter names work too).

        Naming another plug-in in a slot drops the old plug-in's parameters unless ``changes`` gives new ones.
        """
        data = self.to_dict()
        for slot in SLOTS:
            if changes.get(slot.field, data[slot.field]) != data[slot.field] and slot.params_field not in changes:
                del data[slot.params_field]
        return KVConfig.parse({**data, **changes})

    @classmethod
    def json_schema(cls) -> dict[str, Any]:
        """The JSON schema, with each slot's plug-in names and, per plug-in, the schema of its parameters."""
        schema = cls.model_json_schema()
        conditions = []
        for slot in SLOTS:
            schema["properties"][slot.field]["enum"] = list(slot.registry)
            for spec in slot.registry.specs():
                conditions.append({
                    "if": {"properties": {slot.field: {"const": spec.name}}, "required": [slot.field]},
                    "then": {"properties": {slot.params_field: spec.params_schema()}},
                })
        schema["allOf"] = conditions
        return schema

    # ----- semantics ---------------------------------------------------------------------------

    def spec(self, field: str) -> type[Plugin]:
        """The plug-in class a slot field names, e.g. ``config.spec("policy").stats``."""
        slot = SLOT_OF[field]
        return slot.registry.get(getattr(self, slot.field))

    @property
    def compresses(self) -> bool:
        """False when the config can never evict anything (full cache)."""
        if not POLICY_REGISTRY.get(self.policy).evicts:
            return False
        if LAYER_ALLOCATORS.get(self.layer_allocation).absolute:
            return True
        return self.budget is not None or bool(self.compression_ratio)

    def per_layer_values(self) -> dict[str, list[Any]]:
        """The per-layer lists the config holds (e.g. ``layer_allocation_params.budgets``), by dotted name."""
        out: dict[str, list[Any]] = {}
        for slot in SLOTS:
            values = getattr(self, slot.params_field)
            for p in self.spec(slot.field).params():
                if p.per_layer and values.get(p.name) is not None:
                    out[f"{slot.params_field}.{p.name}"] = values[p.name]
        return out

    def declared_num_layers(self) -> int | None:
        """The layer count a per-layer list in the config implies, if it holds one."""
        lists = self.per_layer_values()
        return len(next(iter(lists.values()))) if lists else None

    def validate_for_model(self, num_layers: int, num_kv_heads: int, num_heads: int | None = None,
                           head_dim: int | None = None) -> None:
        """Check the fields that depend on the model's shape; raise KVConfigError if any is wrong."""
        problems = [
            f"{name} has {len(values)} entries; the model has {num_layers} layers"
            for name, values in self.per_layer_values().items()
            if len(values) != num_layers
        ]
        if num_kv_heads < 1 or (num_heads is not None and num_heads % num_kv_heads):
            problems.append(f"model has {num_heads} query heads and {num_kv_heads} KV heads: unsupported")
        if head_dim is not None and self.kv_storage != "model" and head_dim % min(KV_STORAGE_GROUP, head_dim):
            problems.append(f'kv_storage="{self.kv_storage}" quantises groups of {KV_STORAGE_GROUP} values; the '
                            f"model's head_dim {head_dim} is not a multiple of it")
        if problems:
            raise KVConfigError(problems)


class _Document(Protocol):
    def to_dict(self) -> dict[str, Any]: ...


def config_hash(config: _Document) -> str:
    """The config's id: 8 hex digits of the SHA-256 of its canonical JSON (every field, defaults included).

    Any versioned config document with `to_dict` (a KVConfig, a `kvpilot.vllm_config.VLLMConfig`)."""
    canonical = json.dumps(config.to_dict(), sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode()).hexdigest()[:8]


def config_label(config: KVConfig) -> str:
    """Short human label, e.g. `snapkv-0.75`, `h2o-b256`, `full`."""
    if not config.compresses:
        return "full" if config.policy == "full" else f"{config.policy}-0"
    if config.compression_ratio is not None:
        return f"{config.policy}-{config.compression_ratio:g}"
    if config.budget is not None:
        return f"{config.policy}-b{config.budget}"
    return f"{config.policy}-explicit"


# ----- legacy flat parameters -----------------------------------------------------------------------


def _nest_legacy(data: dict[str, Any]) -> dict[str, Any]:
    """Move flat parameter names (``pooling="max"``) into the params of the plug-in that declares them."""
    legacy_keys = {p.legacy for s in SLOTS for spec in s.registry.specs() for p in spec.params() if p.legacy}
    legacy_keys = (legacy_keys | set(LEGACY_DEFAULTS)) - set(KVConfig.model_fields)
    if not legacy_keys & set(data):
        return data
    out = dict(data)
    used: set[str] = set()
    choices: dict[str, str] = {}
    for slot in SLOTS:
        choice = out.get(slot.field, KVConfig.model_fields[slot.field].default)
        if not isinstance(choice, str) or choice not in slot.registry:
            continue  # the name is rejected by its own validator
        choices[slot.field] = choice
        declared = [p for p in slot.registry.get(choice).params() if p.legacy in out]
        params = out.get(slot.params_field) or {}
        if not declared or not isinstance(params, dict):
            continue
        params = dict(params)
        for p in declared:
            value = out[p.legacy]
            params[p.name] = p.from_legacy(value) if p.from_legacy is not None else value
            used.add(str(p.legacy))
        out[slot.params_field] = params
    problems = []
    for key in sorted(legacy_keys & set(out)):
        value = out.pop(key)
        if key in used or len(choices) < len(SLOTS):
            continue
        defaults = [LEGACY_DEFAULTS[key]] if key in LEGACY_DEFAULTS else []
        owners: dict[str, list[str]] = {}
        for slot in SLOTS:
            for spec in slot.registry.specs():
                for p in spec.params():
                    if p.legacy == key:
                        owners.setdefault(slot.field, []).append(repr(spec.name))
                        defaults.append(p.default)
        if value in defaults:
            continue
        if not owners:
            problems.append(f"{key}={short(value)}: no registered plug-in takes this parameter any more")
        problems.extend(
            f"{key}={short(value)}: only {field} {' or '.join(names)} uses it; this config's {field} is {choices[field]!r}"
            for field, names in owners.items()
        )
    if problems:
        raise ValueError("\n".join(problems))
    return out


def _describe(exc: ValidationError) -> list[str]:
    """Turn pydantic errors into 'field=value: what is allowed' lines."""
    out: list[str] = []
    for err in exc.errors():
        field = clip(".".join(str(p) for p in err.get("loc", ()))) or "config"
        value = err.get("input")
        msg = err.get("msg", "invalid")
        inner = err.get("ctx", {}).get("error")
        if isinstance(inner, KVConfigError):  # model_validate runs our __init__, whose error pydantic wraps
            out.extend(inner.problems)
            continue
        if err.get("type") == "extra_forbidden":
            allowed = ", ".join(KVConfig.model_fields)
            out.append(f"{field}: unknown field; allowed fields: {allowed}")
            continue
        if err.get("type") == "literal_error":
            expected = err.get("ctx", {}).get("expected", "")
            out.append(f"{field}={short(value)}: not allowed; allowed values: {expected}")
            continue
        msg = msg.removeprefix("Value error, ")
        if err.get("type") == "value_error" and (field == "config" or field.endswith("_params")):
            out.extend(msg.split("\n"))  # these messages name their own fields
        else:
            out.append(f"{field}={short(value)}: {msg}")
    return out
