"""The search space: which KVConfig fields the tuner varies, over which values.

Parameters are named after the KVConfig fields they set, so a trial's params read as a config. Some are
conditional: `pyramid_beta` only with the pyramid allocation, `adaptive_alpha` only with adaptive heads,
`scoring` only for policies scored by attention of chosen queries (a scoring prompt means nothing to
H2O's accumulated mass or to key norms), the eviction fields only for a policy that evicts, the TTL's
seconds or memory price only with the TTL policy that uses them. Fields not searched take `fixed` values,
then KVConfig's defaults. `full` is allowed only in a space that searches a session TTL (agent replays).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import optuna

from kvpilot.config import KVConfig, KVConfigError
from kvpilot.errors import KVPilotError


def prompt_scorable(policy: str) -> bool:
    """True for policies scored by the attention of chosen queries (observation window or scoring prompt).

    Imported lazily: the dashboard reads studies through this package and must not pay for torch."""
    from kvpilot.cache.policies import POLICY_REGISTRY

    return POLICY_REGISTRY[policy].stats == "scoring"


class SearchSpaceError(KVPilotError):
    """A search-space file or dict that cannot be used; the message names the field and what is allowed."""


@dataclass(frozen=True)
class SearchSpace:
    """Ranges and choices for each searched KVConfig field; a one-element choice is not searched.

    compression_ratio: (low, high, step), the fraction of the context evicted.
    pyramid_beta / adaptive_alpha: (low, high), searched only when their allocation is chosen.
    fixed: KVConfig fields held at a value in every trial (e.g. a scoring_prompt, a sensitivity_profile).
    """

    policy: tuple[str, ...] = ("snapkv", "tova", "h2o", "knorm", "streaming", "expected_attention")
    compression_ratio: tuple[float, float, float] = (0.5, 0.9, 0.05)
    layer_allocation: tuple[str, ...] = ("uniform", "pyramid")
    pyramid_beta: tuple[float, float] = (2.0, 20.0)
    head_allocation: tuple[str, ...] = ("uniform", "adaptive")
    adaptive_alpha: tuple[float, float] = (0.1, 0.5)
    window: tuple[int, ...] = (8, 16, 32, 64)
    sink_tokens: tuple[int, ...] = (4,)
    scoring: tuple[str, ...] = ("window", "prompt")
    granularity: tuple[str, ...] = ("token", "sentence")
    session_ttl: tuple[str, ...] = ("none",)
    session_ttl_s: tuple[float, float] = (1.0, 60.0)
    ttl_memory_price: tuple[float, float] = (1e-10, 1e-7)
    fixed: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        problems = self._problems()
        if problems:
            raise SearchSpaceError("bad search space: " + "; ".join(problems))

    # ----- construction ----------------------------------------------------------------------------

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SearchSpace:
        """From a JSON-like dict; lists become tuples, unknown keys are an error that lists the known ones."""
        if not isinstance(data, dict):
            raise SearchSpaceError(f"a search space is a JSON object, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise SearchSpaceError(f"unknown search-space keys {unknown}; known keys: {', '.join(sorted(known))}")
        args: dict[str, Any] = {}
        for key, value in data.items():
            if key == "fixed":
                if not isinstance(value, dict):
                    raise SearchSpaceError("fixed: expected an object of KVConfig fields")
                args[key] = dict(value)
            elif isinstance(value, (list, tuple)):
                args[key] = tuple(value)
            else:
                args[key] = (value,)  # a single value pins the field
        return cls(**args)

    @classmethod
    def from_file(cls, path: str) -> SearchSpace:
        try:
            with open(path, encoding="utf-8") as fh:
                data = json.load(fh)
        except OSError as exc:
            raise SearchSpaceError(f"cannot read search-space file {path}: {exc.strerror}") from None
        except json.JSONDecodeError as exc:
            raise SearchSpaceError(f"{path} is not valid JSON: {exc}") from None
        return cls.from_dict(data)

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    # ----- sampling --------------------------------------------------------------------------------

    def suggest(self, trial: optuna.Trial) -> KVConfig:
        """The KVConfig for one trial (raises KVConfigError only if `fixed` clashes with a sampled value)."""
        chosen: dict[str, Any] = dict(self.fixed)
        chosen["policy"] = _pick(trial, "policy", self.policy)
        chosen["session_ttl"] = _pick(trial, "session_ttl", self.session_ttl)
        if chosen["session_ttl"] == "fixed":
            chosen["session_ttl_s"] = _range(trial, "session_ttl_s", self.session_ttl_s, log=True)
        elif chosen["session_ttl"] == "cdf":
            chosen["ttl_memory_price"] = _range(trial, "ttl_memory_price", self.ttl_memory_price, log=True)
        if chosen["policy"] == "full":
            return KVConfig.parse(chosen)
        low, high, step = self.compression_ratio
        chosen["compression_ratio"] = (
            low if low == high else round(trial.suggest_float("compression_ratio", low, high, step=step), 6)
        )
        chosen["layer_allocation"] = _pick(trial, "layer_allocation", self.layer_allocation)
        if chosen["layer_allocation"] == "pyramid":
            chosen["pyramid_beta"] = _range(trial, "pyramid_beta", self.pyramid_beta, log=True)
        chosen["head_allocation"] = _pick(trial, "head_allocation", self.head_allocation)
        if chosen["head_allocation"] == "adaptive":
            chosen["adaptive_alpha"] = _range(trial, "adaptive_alpha", self.adaptive_alpha)
        chosen["window"] = _pick(trial, "window", self.window)
        chosen["sink_tokens"] = _pick(trial, "sink_tokens", self.sink_tokens)
        if prompt_scorable(chosen["policy"]):
            chosen["scoring"] = _pick(trial, "scoring", self.scoring)
        chosen["granularity"] = _pick(trial, "granularity", self.granularity)
        return KVConfig.parse(chosen)

    # ----- validation ------------------------------------------------------------------------------

    def _problems(self) -> list[str]:
        out: list[str] = []
        choices = {
            "policy": self.policy,
            "layer_allocation": self.layer_allocation,
            "head_allocation": self.head_allocation,
            "scoring": self.scoring,
            "granularity": self.granularity,
            "session_ttl": self.session_ttl,
        }
        for name, values in choices.items():
            allowed = _literal_values(name)
            if not values:
                out.append(f"{name}: needs at least one value")
            bad = [v for v in values if v not in allowed]
            if bad:
                out.append(f"{name}: {bad} not allowed; allowed values: {', '.join(map(str, allowed))}")
        if "full" in self.policy and set(self.session_ttl) == {"none"}:
            out.append("policy: 'full' never evicts; it is the baseline every trial is compared with "
                       "(allowed only when session_ttl is searched)")
        if "sensitivity" in self.layer_allocation and not self.fixed.get("sensitivity_profile"):
            out.append("layer_allocation 'sensitivity' needs fixed.sensitivity_profile (see `kvpilot profile`)")
        if "explicit" in self.layer_allocation:
            out.append("layer_allocation 'explicit' is not searchable (its budgets are a list per layer)")
        if len(self.compression_ratio) != 3:
            out.append("compression_ratio: expected [low, high, step]")
        else:
            low, high, step = self.compression_ratio
            if not (0.0 < low <= high < 1.0) or step <= 0:
                out.append(f"compression_ratio: need 0 < low <= high < 1 and step > 0, got {list(self.compression_ratio)}")
        for name in ("pyramid_beta", "adaptive_alpha", "session_ttl_s", "ttl_memory_price"):
            rng = getattr(self, name)
            if len(rng) != 2 or rng[0] > rng[1]:
                out.append(f"{name}: expected [low, high] with low <= high, got {list(rng)}")
            elif name in ("session_ttl_s", "ttl_memory_price") and rng[0] <= 0:
                out.append(f"{name}: searched on a log scale, so low must be > 0, got {list(rng)}")
        for name in ("window", "sink_tokens"):
            values = getattr(self, name)
            if not values or any(not isinstance(v, int) or v < 0 for v in values):
                out.append(f"{name}: expected non-negative integers, got {list(values)}")
        searched = {"policy", "compression_ratio", "layer_allocation", "pyramid_beta", "head_allocation",
                    "adaptive_alpha", "window", "sink_tokens", "scoring", "granularity", "session_ttl",
                    "session_ttl_s", "ttl_memory_price"}
        clash = sorted(set(self.fixed) & searched)
        if clash:
            out.append(f"fixed: {clash} are searched; pin a searched field with a one-element list instead")
        unknown = sorted(set(self.fixed) - set(KVConfig.model_fields))
        if unknown:
            out.append(f"fixed: unknown KVConfig fields {unknown}")
        elif not out:
            try:
                KVConfig.parse({**self.fixed, "policy": "snapkv", "compression_ratio": self.compression_ratio[0]})
            except KVConfigError as exc:
                out.append("fixed: " + "; ".join(exc.problems))
        return out


def _literal_values(field_name: str) -> tuple[Any, ...]:
    return tuple(KVConfig.model_fields[field_name].annotation.__args__)


def _pick(trial: optuna.Trial, name: str, values: tuple[Any, ...]) -> Any:
    return values[0] if len(values) == 1 else trial.suggest_categorical(name, list(values))


def _range(trial: optuna.Trial, name: str, bounds: tuple[float, float], log: bool = False) -> float:
    low, high = bounds
    return low if low == high else trial.suggest_float(name, low, high, log=log)
