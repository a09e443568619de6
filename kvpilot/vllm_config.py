"""VLLMConfig: the KV-related engine arguments of a vLLM server, versioned like a KVConfig.

A deployment served by `kvpilot vllm serve` keeps these in the config registry. The document carries
`"engine": "vllm"`, which is how the registry tells it from a KVConfig (and why a kvpilot engine that
follows such a deployment rejects it instead of misreading it). Foundation layer: pydantic only, so the
registry (layer 1) can validate it without importing the supervisor (`kvpilot.vllm`, layer 3).
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from kvpilot.config import KVConfigError

ENGINE = "vllm"
BLOCK_SIZES = (32, 64, 128, 256)  # the CPU attention backend takes multiples of 32; 128 is its default
KV_CACHE_DTYPES = ("auto", "fp8", "fp8_e4m3", "fp8_e5m2")  # what the CPU attention backend supports


class VLLMConfigError(KVConfigError):
    """A VLLMConfig was rejected; `problems` names each bad field like KVConfigError does."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        ValueError.__init__(self, "invalid vLLM config:\n  - " + "\n  - ".join(problems))


class VLLMConfig(BaseModel):
    """The server arguments kvpilot controls; everything else stays at vLLM's defaults."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    engine: Literal["vllm"] = Field(default="vllm", description="marks a vLLM document in the registry")
    kv_cache_gib: int = Field(default=1, ge=1, le=256, description="KV cache size (VLLM_CPU_KVCACHE_SPACE, GiB)")
    block_size: Literal[32, 64, 128, 256] = Field(default=128, description="tokens per KV block (--block-size)")
    enable_prefix_caching: bool = Field(default=True, description="automatic prefix caching")
    max_num_seqs: int = Field(default=256, ge=1, le=4096, description="sequences per scheduler step")
    max_num_batched_tokens: int | None = Field(
        default=None, ge=16, description="tokens per scheduler step (None: vLLM's default)")
    max_model_len: int = Field(default=2048, ge=64, le=8192, description="context length the server accepts")
    kv_cache_dtype: Literal["auto", "fp8", "fp8_e4m3", "fp8_e5m2"] = Field(
        default="auto", description="KV cache element type (--kv-cache-dtype)")
    enable_chunked_prefill: bool = Field(default=True, description="split long prefills across steps")

    @model_validator(mode="after")
    def _check(self) -> VLLMConfig:
        if (
            self.max_num_batched_tokens is not None
            and not self.enable_chunked_prefill
            and self.max_num_batched_tokens < self.max_model_len
        ):
            raise ValueError(
                f"max_num_batched_tokens={self.max_num_batched_tokens} is below max_model_len={self.max_model_len}: "
                "without chunked prefill a full-length prompt would never be scheduled"
            )
        return self

    # ----- construction and serialisation -------------------------------------------------------

    @classmethod
    def parse(cls, data: dict[str, Any] | str | bytes) -> VLLMConfig:
        """Build a config from a dict or JSON text, raising VLLMConfigError with readable problems."""
        if isinstance(data, (str, bytes)):
            try:
                data = json.loads(data)
            except json.JSONDecodeError as exc:
                raise VLLMConfigError([f"not valid JSON: {exc}"]) from None
        if not isinstance(data, dict):
            raise VLLMConfigError([f"expected a JSON object, got {type(data).__name__}"])
        try:
            return cls.model_validate({"engine": ENGINE, **data})
        except ValidationError as exc:
            raise VLLMConfigError(_describe(exc)) from None

    def to_json(self, indent: int | None = None) -> str:
        return self.model_dump_json(indent=indent)

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def replace(self, **changes: Any) -> VLLMConfig:
        return VLLMConfig.parse({**self.to_dict(), **changes})

    # ----- what the server is started with -------------------------------------------------------

    def server_args(self) -> list[str]:
        """Command-line arguments of `vllm.entrypoints.openai.api_server` for this config."""
        args = [
            "--block-size", str(self.block_size),
            "--max-num-seqs", str(self.max_num_seqs),
            "--max-model-len", str(self.max_model_len),
            "--kv-cache-dtype", self.kv_cache_dtype,
            "--enable-prefix-caching" if self.enable_prefix_caching else "--no-enable-prefix-caching",
            "--enable-chunked-prefill" if self.enable_chunked_prefill else "--no-enable-chunked-prefill",
        ]
        if self.max_num_batched_tokens is not None:
            args += ["--max-num-batched-tokens", str(self.max_num_batched_tokens)]
        return args

    def server_env(self) -> dict[str, str]:
        """Environment variables the CPU build reads for this config."""
        return {"VLLM_CPU_KVCACHE_SPACE": str(self.kv_cache_gib)}


def is_vllm_document(data: Any) -> bool:
    """Whether a config document (dict or JSON text) is a VLLMConfig rather than a KVConfig."""
    if isinstance(data, VLLMConfig):
        return True
    if isinstance(data, (str, bytes)):
        try:
            data = json.loads(data)
        except json.JSONDecodeError:
            return False
    return isinstance(data, dict) and data.get("engine") == ENGINE


def _describe(exc: ValidationError) -> list[str]:
    """Pydantic errors as 'field=value: what is allowed' lines."""
    out: list[str] = []
    for err in exc.errors():
        field = ".".join(str(p) for p in err.get("loc", ())) or "config"
        if err.get("type") == "extra_forbidden":
            out.append(f"{field}: unknown field; allowed fields: {', '.join(VLLMConfig.model_fields)}")
            continue
        msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
        out.append(msg if field == "config" else f"{field}={err.get('input')!r}: {msg}")
    return out


__all__ = ["BLOCK_SIZES", "ENGINE", "KV_CACHE_DTYPES", "VLLMConfig", "VLLMConfigError", "is_vllm_document"]
