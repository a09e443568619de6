"""KVConfig: the one object that is tuned, stored, pushed and applied.

A KVConfig says how a managed KV cache is compressed: which policy scores tokens, how many tokens each
layer and KV head keeps, which tokens are protected, how statistics are gathered and when eviction runs.
It is plain data (JSON round trip, JSON schema) so the tuner can search it, the store can version it and
an engine can validate it before applying it. Nothing here imports torch.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

POLICIES = ("full", "random", "streaming", "h2o", "tova", "snapkv", "knorm", "expected_attention")
LAYER_ALLOCATIONS = ("uniform", "pyramid", "sensitivity", "explicit")
HEAD_ALLOCATIONS = ("uniform", "adaptive")
GRANULARITIES = ("token", "sentence", "turn", "chunk")

DEFAULT_SCORING_PROMPT = (
    "\n\nExtract the essential information from this conversation: the speakers' names, "
    "places, dates, numbers, pets, jobs, preferences and plans each person mentioned."
)


class KVConfigError(ValueError):
    """A KVConfig was rejected. The message names each bad field, its value and what is allowed."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("invalid KVConfig:\n  - " + "\n  - ".join(problems))


class KVConfig(BaseModel):
    """How a managed KV cache is compressed.

    Budgets count tokens kept per KV head per layer, sinks and the protected window included.
    Exactly one of ``budget`` (absolute tokens, averaged over layers) and ``compression_ratio``
    (fraction of the tokens seen that is evicted) sets the size; ``full`` ignores both.
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=False, frozen=True)

    policy: Literal["full", "random", "streaming", "h2o", "tova", "snapkv", "knorm", "expected_attention"] = (
        "full"
    )
    budget: int | None = Field(default=None, ge=1, description="average tokens kept per KV head per layer")
    compression_ratio: float | None = Field(
        default=None, ge=0.0, lt=1.0, description="fraction of seen tokens evicted, in [0, 1)"
    )

    layer_allocation: Literal["uniform", "pyramid", "sensitivity", "explicit"] = "uniform"
    pyramid_beta: float = Field(default=20.0, ge=1.0, description="PyramidKV steepness (b_min = B/beta)")
    sensitivity_alpha: float = Field(default=1.1, ge=0.0, le=8.0, description="EpiCache sharpness")
    sensitivity_floor: float = Field(default=0.25, ge=0.0, le=1.0, description="min budget, fraction of avg")
    sensitivity_profile: list[float] | None = Field(
        default=None, description="per-layer sensitivity (higher = needs more budget)"
    )
    layer_budgets: list[int] | None = Field(default=None, description="explicit tokens per layer")

    head_allocation: Literal["uniform", "adaptive"] = "uniform"
    adaptive_alpha: float = Field(default=0.2, ge=0.0, le=1.0, description="Ada-KV safeguard floor")

    sink_tokens: int = Field(default=4, ge=0, le=1024)
    window: int = Field(default=16, ge=0, le=8192, description="protected recent tokens")
    observation_window: int = Field(default=32, ge=1, le=8192, description="queries scored (SnapKV)")
    pooling: Literal["avg", "max", "none"] = "avg"
    pooling_kernel: int = Field(default=5, ge=1, le=63)

    scoring: Literal["window", "prompt"] = Field(
        default="window", description="queries that score the cache: the context's last window, or a prompt"
    )
    scoring_prompt: str = DEFAULT_SCORING_PROMPT

    granularity: Literal["token", "sentence", "turn", "chunk"] = "token"
    chunk_size: int = Field(default=16, ge=1, le=4096)
    unit_pooling: Literal["max", "mean"] = "max"

    prefill_block_size: int | None = Field(default=None, ge=16, description="block-wise prefill size C")
    decode_interval: int | None = Field(default=None, ge=1, description="evict every N decode steps")
    seed: int = 0

    session_ttl: Literal["none", "fixed", "cdf"] = Field(
        default="none", description="keep a session's cache while its agent runs a tool: never, for "
        "session_ttl_s, or by Continuum's rule over each tool's duration distribution"
    )
    session_ttl_s: float = Field(default=0.0, ge=0.0, le=86400.0,
                                 description="fixed: the TTL (s); cdf: the largest TTL considered (0 = 120 s)")
    ttl_memory_price: float = Field(default=1e-9, ge=0.0,
                                    description="cdf: seconds of compute one byte-second of pinned KV is worth")

    @model_validator(mode="after")
    def _consistent(self) -> KVConfig:
        problems: list[str] = []
        if self.budget is not None and self.compression_ratio is not None:
            problems.append(
                f"budget={self.budget} and compression_ratio={self.compression_ratio}: "
                "set only one of them"
            )
        if self.pooling_kernel % 2 == 0:
            problems.append(f"pooling_kernel={self.pooling_kernel}: must be odd (1, 3, 5, ...)")
        if self.layer_allocation == "explicit" and not self.layer_budgets:
            problems.append("layer_allocation='explicit': layer_budgets must list one budget per layer")
        if self.layer_budgets is not None and any(b < 1 for b in self.layer_budgets):
            problems.append(f"layer_budgets={self.layer_budgets}: every budget must be >= 1")
        if self.layer_allocation == "sensitivity" and not self.sensitivity_profile:
            problems.append(
                "layer_allocation='sensitivity': sensitivity_profile must list one value per layer "
                "(run `kvpilot profile` to measure one)"
            )
        if self.session_ttl == "fixed" and self.session_ttl_s <= 0:
            problems.append("session_ttl='fixed': session_ttl_s must be > 0 (seconds a pinned cache is kept)")
        if self.scoring == "prompt" and not self.scoring_prompt.strip():
            problems.append("scoring='prompt': scoring_prompt must not be empty")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    # ----- construction and serialisation -------------------------------------------------------

    @classmethod
    def parse(cls, data: dict[str, Any] | str | bytes) -> KVConfig:
        """Build a config from a dict or JSON text, raising KVConfigError with readable problems."""
        if isinstance(data, (str, bytes)):
            try:
                data = json.loads(data)
            except json.JSONDecodeError as exc:
                raise KVConfigError([f"not valid JSON: {exc}"]) from None
        if not isinstance(data, dict):
            raise KVConfigError([f"expected a JSON object, got {type(data).__name__}"])
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise KVConfigError(_describe(exc)) from None

    @classmethod
    def from_file(cls, path: str) -> KVConfig:
        try:
            with open(path, encoding="utf-8") as fh:
                text = fh.read()
        except OSError as exc:
            raise KVConfigError([f"cannot read config file {path}: {exc.strerror}"]) from None
        return cls.parse(text)

    def to_json(self, indent: int | None = None) -> str:
        return self.model_dump_json(indent=indent, exclude_defaults=False)

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def replace(self, **changes: Any) -> KVConfig:
        """A validated copy with some fields changed."""
        return KVConfig.parse({**self.to_dict(), **changes})

    @classmethod
    def json_schema(cls) -> dict[str, Any]:
        return cls.model_json_schema()

    # ----- semantics ---------------------------------------------------------------------------

    @property
    def compresses(self) -> bool:
        """False when the config can never evict anything (full cache)."""
        if self.policy == "full":
            return False
        if self.layer_allocation == "explicit" and self.layer_budgets:
            return True
        return self.budget is not None or bool(self.compression_ratio)

    def validate_for_model(self, num_layers: int, num_kv_heads: int, num_heads: int | None = None) -> None:
        """Check the fields that depend on the model's shape; raise KVConfigError if any is wrong."""
        problems: list[str] = []
        if self.layer_budgets is not None and len(self.layer_budgets) != num_layers:
            problems.append(
                f"layer_budgets has {len(self.layer_budgets)} entries; the model has {num_layers} layers"
            )
        if self.sensitivity_profile is not None and len(self.sensitivity_profile) != num_layers:
            problems.append(
                f"sensitivity_profile has {len(self.sensitivity_profile)} entries; "
                f"the model has {num_layers} layers"
            )
        if num_kv_heads < 1 or (num_heads is not None and num_heads % num_kv_heads):
            problems.append(f"model has {num_heads} query heads and {num_kv_heads} KV heads: unsupported")
        if problems:
            raise KVConfigError(problems)


def _describe(exc: ValidationError) -> list[str]:
    """Turn pydantic errors into 'field=value: what is allowed' lines."""
    out = []
    for err in exc.errors():
        field = ".".join(str(p) for p in err.get("loc", ())) or "config"
        value = err.get("input")
        msg = err.get("msg", "invalid")
        if err.get("type") == "extra_forbidden":
            allowed = ", ".join(sorted(KVConfig.model_fields))
            out.append(f"{field}: unknown field; allowed fields: {allowed}")
            continue
        if err.get("type") == "literal_error":
            expected = err.get("ctx", {}).get("expected", "")
            out.append(f"{field}={value!r}: not allowed; allowed values: {expected}")
            continue
        msg = msg.removeprefix("Value error, ")
        if field == "config":
            out.append(msg)
        else:
            out.append(f"{field}={value!r}: {msg}")
    return out
