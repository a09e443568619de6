"""The search space: which KVConfig fields and plug-in parameters the tuner varies, over which values.

The shared fields (compression ratio, window, sink tokens, scoring, granularity, KV storage) and the plug-in choices
(policy, layer and head allocation, session TTL) are listed here by KVConfig name. Each chosen plug-in's
own parameters are then searched over the range its declaration gives (`kvpilot.plugins.Param.search`) or
the one this space sets in `params`, keyed "<field>.<plug-in>.<param>" (e.g. "layer_allocation.pyramid.beta"):
two numbers are a range, one value pins it, three or more (or strings) are choices. Trial parameters carry
the same names, so a trial's params read as its config (`config_from_params`).

Conditions come from the specs: a policy that never evicts (`full`) searches only the session TTL, `scoring`
only applies to policies scored by chosen queries (a scoring prompt means nothing to H2O's accumulated mass
or to key norms), `episodes` (EpiCache) only when `scoring="prompt"` is drawn for such a policy (episodes
differ only by their patched scoring prompts; `episode_params` can be pinned in `fixed`), a plug-in's
parameters only when it is chosen. Fields not searched take `fixed` values
(shared KVConfig fields, dotted plug-in parameters, or the old flat names), then KVConfig's defaults.
`full` is allowed only in a space that searches a session TTL (agent replays).

The order of suggestions is kept stable (policy, TTL, ratio, allocations, shared fields, then the policy's
own parameters) so that a seeded study of the default space draws the same configs as before.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import optuna

from kvpilot.config import LEGACY_DEFAULTS, SLOT_OF, SLOTS, KVConfig, KVConfigError, Slot
from kvpilot.errors import KVPilotError
from kvpilot.inputs import InputError, parse_json, read_text
from kvpilot.plugins import Param, ParamError
from kvpilot.policies import POLICY_REGISTRY, Policy


def prompt_scorable(policy: str) -> bool:
    """True for policies scored by the attention of chosen queries (observation window or scoring prompt)."""
    return POLICY_REGISTRY.get(policy).stats == "scoring"


def _evicts(policy: type[Policy]) -> bool:
    return policy.evicts


# Shared categorical fields, searched in this order for a policy the condition accepts.
SHARED: tuple[tuple[str, Callable[[type[Policy]], bool]], ...] = (
    ("window", _evicts),
    ("sink_tokens", _evicts),
    ("scoring", lambda p: p.evicts and p.stats == "scoring"),
    ("granularity", _evicts),
    ("kv_storage", _evicts),
)
SLOTS_FIELDS = {s.field for s in SLOTS}  # fixed may pin a plug-in choice, not its params dict (use dotted keys)
MAX_EPISODES = next(m.le for m in KVConfig.model_fields["episodes"].metadata if hasattr(m, "le"))
POLICY, LAYERS, HEADS, TTL = (SLOT_OF[f] for f in ("policy", "layer_allocation", "head_allocation", "session_ttl"))


class SearchSpaceError(KVPilotError):
    """A search-space file or dict that cannot be used; the message names the field and what is allowed."""


@dataclass(frozen=True)
class SearchSpace:
    """Ranges and choices for each searched field; a one-element choice is not searched.

    compression_ratio: (low, high, step), the fraction of the context evicted.
    params: plug-in parameter ranges by "<field>.<plug-in>.<param>"; after construction it holds every
    range searched (the declared ones included) for the plug-ins this space can choose.
    fixed: values held in every trial (e.g. a scoring_prompt, "layer_allocation.sensitivity.profile").
    """

    policy: tuple[str, ...] = ("snapkv", "tova", "h2o", "knorm", "streaming", "expected_attention", "kvzip", "keydiff")
    compression_ratio: tuple[float, float, float] = (0.5, 0.9, 0.05)
    layer_allocation: tuple[str, ...] = ("uniform", "pyramid", "global")
    head_allocation: tuple[str, ...] = ("uniform", "adaptive")
    window: tuple[int, ...] = (0, 4, 8, 16, 32, 64)  # 0-4: reconstruction scoring needs no recent window
    sink_tokens: tuple[int, ...] = (4,)
    scoring: tuple[str, ...] = ("window", "prompt", "reconstruct")
    granularity: tuple[str, ...] = ("token", "sentence")
    kv_storage: tuple[str, ...] = ("model",)  # ("model", "int8", "int4") multiplies eviction's saving
    session_ttl: tuple[str, ...] = ("none",)
    episodes: tuple[int, ...] = (1,)  # EpiCache episode counts, searched when scoring="prompt" is drawn
    params: dict[str, tuple[Any, ...]] = field(default_factory=dict)
    fixed: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        problems: list[str] = []
        fixed = self._normalise_fixed(problems)
        params = self._effective_params(problems)
        problems += self._problems(fixed, params)
        if problems:
            raise SearchSpaceError("bad search space: " + "; ".join(problems))
        object.__setattr__(self, "fixed", fixed)
        object.__setattr__(self, "params", params)

    # ----- construction ----------------------------------------------------------------------------

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SearchSpace:
        """From a JSON-like dict; lists become tuples, unknown keys are an error that lists the known ones.

        The flat range keys of older space files (`pyramid_beta`, `adaptive_alpha`, `session_ttl_s`,
        `ttl_memory_price`) set the range of the plug-in parameter that declares them."""
        if not isinstance(data, dict):
            raise SearchSpaceError(f"a search space is a JSON object, got {type(data).__name__}")
        legacy = _legacy_ranges()
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known - set(legacy))
        if unknown:
            raise SearchSpaceError(f"unknown search-space keys {unknown}; known keys: {', '.join(sorted(known))}")
        params: dict[str, tuple[Any, ...]] = {}
        args: dict[str, Any] = {"params": params}
        for key, value in data.items():
            if key in ("fixed", "params") and not isinstance(value, dict):
                raise SearchSpaceError(f"{key}: expected an object")
            if key == "fixed":
                args[key] = dict(value)
            elif key == "params":
                params.update({k: _values(v) for k, v in value.items()})
            elif key in legacy:
                for dotted in legacy[key]:
                    params.setdefault(dotted, _values(value))
            else:
                args[key] = _values(value)
        return cls(**args)

    @classmethod
    def from_file(cls, path: str) -> SearchSpace:
        try:
            data = parse_json(read_text(path, "search-space file"), f"search-space file {path}")
        except InputError as exc:
            raise SearchSpaceError(str(exc)) from None
        return cls.from_dict(data)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}
        out["params"] = {k: list(v) for k, v in self.params.items()}
        return out

    def describe(self) -> list[str]:
        """The space for people, one field a line: a range reads `0.5 .. 0.9 step 0.05` (with `integers` or
        `log scale` when so drawn), a set of choices `one of a, b`, a single value `fixed: v`; in the JSON of
        `to_dict` both a range and a choice list are lists, so [0.5, 0.9, 0.05] looks like three choices."""
        rows: list[tuple[str, str]] = []
        for f in fields(self):
            if f.name in ("params", "fixed"):
                continue
            value = getattr(self, f.name)
            if f.name == "compression_ratio":
                low, high, step = value
                rows.append((f.name, f"fixed: {_num(low)}" if low == high else
                             f"range {_num(low)} .. {_num(high)} step {_num(step)}"))
            else:
                rows.append((f.name, _choices_text(value)))
        for key, values in self.params.items():
            p = _param_of(key)
            if p is not None and _is_range(p, values) and values[0] != values[1]:
                low, high = values
                kind = "integers" if p.type is int else "range"
                text = f"{kind} {_num(low)} .. {_num(high)}"
                if p.step:
                    text += f" step {_num(p.step)}"
                rows.append((key, text + (", log scale" if p.log else "")))
            else:
                rows.append((key, _choices_text(values[:1] if len(set(values)) == 1 else values)))
        for key, value in self.fixed.items():
            rows.append((key, f"fixed: {json.dumps(value) if isinstance(value, (dict, list)) else value}"))
        width = max(len(k) for k, _ in rows)
        return [f"{k.ljust(width)}  {v}" for k, v in rows]

    # ----- sampling --------------------------------------------------------------------------------

    def suggest(self, trial: optuna.Trial) -> KVConfig:
        """The KVConfig for one trial (raises KVConfigError only if `fixed` clashes with a sampled value)."""
        data: dict[str, Any] = {k: v for k, v in self.fixed.items() if "." not in k}
        data["policy"] = _pick(trial, "policy", self.policy)
        self._choose(trial, data, TTL, self.session_ttl)
        policy = POLICY_REGISTRY.get(data["policy"])
        if policy.evicts:
            low, high, step = self.compression_ratio
            data["compression_ratio"] = (
                low if low == high else round(trial.suggest_float("compression_ratio", low, high, step=step), 6)
            )
            self._choose(trial, data, LAYERS, self.layer_allocation)
            if data[LAYERS.params_field].get("heads"):  # pair-level selection decides each head's budget itself
                data[HEADS.field], data[HEADS.params_field] = "uniform", {}
            else:
                self._choose(trial, data, HEADS, self.head_allocation)
            for name, applies in SHARED:
                if applies(policy):
                    data[name] = _pick(trial, name, getattr(self, name))
            if policy.stats == "scoring" and data.get("scoring") == "prompt":  # episodes differ by their prompt
                data["episodes"] = _pick(trial, "episodes", self.episodes)
        data[POLICY.params_field] = self._plugin_params(trial, POLICY, data["policy"])
        return KVConfig.parse(data)

    def _choose(self, trial: optuna.Trial, data: dict[str, Any], slot: Slot, choices: tuple[str, ...]) -> None:
        choice = _pick(trial, slot.field, choices)
        data[slot.field] = choice
        data[slot.params_field] = self._plugin_params(trial, slot, choice)

    def _plugin_params(self, trial: optuna.Trial, slot: Slot, choice: str) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for p in slot.registry.get(choice).params():
            key = f"{slot.field}.{choice}.{p.name}"
            if key in self.params:
                out[p.name] = _sample(trial, key, p, self.params[key])
            elif key in self.fixed:
                out[p.name] = self.fixed[key]
        return out

    # ----- validation ------------------------------------------------------------------------------

    def _normalise_fixed(self, problems: list[str]) -> dict[str, Any]:
        """Fixed values, old flat parameter names turned into dotted ones, each plug-in value validated.

        An old flat name sets the parameter of every plug-in this space can choose that declares it."""
        if not isinstance(self.fixed, dict):
            problems.append("fixed: expected an object of KVConfig fields")
            return {}
        legacy: dict[str, list[tuple[str, Param]]] = {}
        for slot, choices in self._slot_choices():
            for choice in choices:
                for p in slot.registry.get(choice).params() if choice in slot.registry else ():
                    if p.legacy:
                        legacy.setdefault(p.legacy, []).append((f"{slot.field}.{choice}.{p.name}", p))
        out: dict[str, Any] = {}
        unknown = []
        for key, value in self.fixed.items():
            declared = _param_of(key)
            if declared is not None:
                targets = [(key, declared, value)]
            elif key in legacy or key in LEGACY_DEFAULTS:
                targets = [(k, p, p.from_legacy(value) if p.from_legacy else value) for k, p in legacy.get(key, [])]
            elif (key in KVConfig.model_fields and key not in SLOT_OF) or key in SLOTS_FIELDS:
                out[key] = value
                continue
            else:
                unknown.append(key)
                continue
            for dotted, p, v in targets:
                try:
                    out[dotted] = p.validate(v)
                except ParamError as exc:
                    problems.append(f"fixed: {dotted}={v!r}: {exc}")
        if unknown:
            problems.append(f"fixed: unknown KVConfig fields {sorted(unknown)}")
        return out

    def _slot_choices(self) -> list[tuple[Slot, tuple[str, ...]]]:
        return [(s, getattr(self, s.field)) for s in SLOTS]

    def _effective_params(self, problems: list[str]) -> dict[str, tuple[Any, ...]]:
        """Every searched parameter range of the plug-ins this space can choose (declared ones included)."""
        given = {k: _values(v) for k, v in self.params.items()}
        for key in given:
            if _param_of(key) is None:
                problems.append(f"params: unknown parameter {key!r}; expected '<field>.<plug-in>.<param>', "
                                f"e.g. {', '.join(sorted(_all_param_keys())[:3])}")
        out: dict[str, tuple[Any, ...]] = {}
        for slot, choices in self._slot_choices():
            for choice in choices:
                if choice not in slot.registry:
                    continue
                for p in slot.registry.get(choice).params():
                    key = f"{slot.field}.{choice}.{p.name}"
                    values = given.get(key, p.search)
                    if values is not None:
                        out[key] = tuple(values)
        return out

    def _problems(self, fixed: dict[str, Any], params: dict[str, tuple[Any, ...]]) -> list[str]:
        out: list[str] = []
        for name, values in self._choice_fields().items():
            allowed = _allowed_values(name)
            if not values:
                out.append(f"{name}: needs at least one value")
            bad = [v for v in values if v not in allowed]
            if bad:
                out.append(f"{name}: {bad} not allowed; allowed values: {', '.join(map(str, allowed))}")
        if out:
            return out
        never_evict = [p for p in self.policy if not POLICY_REGISTRY.get(p).evicts]
        if never_evict and set(self.session_ttl) == {"none"}:
            out.append(f"policy: {never_evict[0]!r} never evicts; it is the baseline every trial is compared with "
                       "(allowed only when session_ttl is searched)")
        if len(self.compression_ratio) != 3:
            out.append("compression_ratio: expected [low, high, step]")
        else:
            low, high, step = self.compression_ratio
            if not (0.0 < low <= high < 1.0) or step <= 0:
                out.append(f"compression_ratio: need 0 < low <= high < 1 and step > 0, got {list(self.compression_ratio)}")
        for name in ("window", "sink_tokens"):
            values = getattr(self, name)
            if not values or any(not isinstance(v, int) or v < 0 for v in values):
                out.append(f"{name}: expected non-negative integers, got {list(values)}")
        if not self.episodes or any(not isinstance(v, int) or not 1 <= v <= MAX_EPISODES for v in self.episodes):
            out.append(f"episodes: expected integers in [1, {MAX_EPISODES}], got {list(self.episodes)}")
        for key, values in params.items():
            problem = _range_problem(_param_of(key), values)
            if problem:
                out.append(f"params.{key}: {problem}")
        for slot, choices in self._slot_choices():
            for choice in choices:
                for p in slot.registry.get(choice).params():
                    key = f"{slot.field}.{choice}.{p.name}"
                    if p.required and key not in fixed and key not in params:
                        out.append(f"{slot.field} {choice!r} needs fixed.{key} ({p.description or p.allowed()})")
        searched = set(self._choice_fields()) | {"compression_ratio", "window", "sink_tokens", "episodes"} | set(params)
        clash = sorted(set(fixed) & searched)
        if clash:
            out.append(f"fixed: {clash} are searched; pin a searched field with a one-element list instead")
        elif not out:
            out += self._shared_fixed_problems(fixed)
        return out

    def _choice_fields(self) -> dict[str, tuple[Any, ...]]:
        return {"policy": self.policy, "layer_allocation": self.layer_allocation,
                "head_allocation": self.head_allocation, "scoring": self.scoring,
                "granularity": self.granularity, "kv_storage": self.kv_storage, "session_ttl": self.session_ttl}

    def _shared_fixed_problems(self, fixed: dict[str, Any]) -> list[str]:
        shared = {k: v for k, v in fixed.items() if "." not in k}
        evicting = [p for p in self.policy if POLICY_REGISTRY.get(p).evicts]
        probe = {"policy": evicting[0], "compression_ratio": self.compression_ratio[0]} if evicting else \
            {"policy": self.policy[0]}
        try:
            KVConfig.parse({**shared, **probe})
        except KVConfigError as exc:
            return ["fixed: " + "; ".join(exc.problems)]
        return []


def config_from_params(params: Mapping[str, Any]) -> KVConfig:
    """The KVConfig a trial's params describe (fields it did not search take their defaults)."""
    data: dict[str, Any] = {}
    for key, value in params.items():
        if "." in key:
            slot_field, choice, name = key.split(".", 2)
            data[slot_field] = choice
            data.setdefault(SLOT_OF[slot_field].params_field, {})[name] = value
        elif key in KVConfig.model_fields:
            data[key] = value
    return KVConfig.parse(data)


# ----- helpers ------------------------------------------------------------------------------------------


def _values(value: Any) -> tuple[Any, ...]:
    return tuple(value) if isinstance(value, (list, tuple)) else (value,)  # a single value pins the field


def _num(x: Any) -> str:
    """A bound for people: 0.05 not 0.05000000000000001, 2.0 for a float, 2 for an integer."""
    if not isinstance(x, float):
        return str(x)
    text = f"{x:.6g}"
    return f"{text}.0" if text.lstrip("-").isdigit() else text  # 2.0, so a float range never reads as integers


def _choices_text(values: tuple[Any, ...]) -> str:
    shown = [str(v) for v in values]
    return f"fixed: {shown[0]}" if len(shown) == 1 else "one of: " + ", ".join(shown)


def _allowed_values(name: str) -> tuple[Any, ...]:
    if name in SLOT_OF:
        return SLOT_OF[name].registry.names()
    annotation = KVConfig.model_fields[name].annotation
    return tuple(getattr(annotation, "__args__", ()))


def _all_param_keys() -> list[str]:
    return [f"{s.field}.{spec.name}.{p.name}" for s in SLOTS for spec in s.registry.specs() for p in spec.params()]


def _param_of(key: str) -> Param | None:
    """The declaration a dotted key names, or None."""
    parts = key.split(".")
    if len(parts) != 3 or parts[0] not in SLOT_OF or parts[0].endswith("_params"):
        return None
    registry = SLOT_OF[parts[0]].registry
    if parts[1] not in registry:
        return None
    return next((p for p in registry.get(parts[1]).params() if p.name == parts[2]), None)


def _legacy_ranges() -> dict[str, list[str]]:
    """Old flat range keys -> the dotted parameters (with a declared search range) that took them over."""
    out: dict[str, list[str]] = {}
    for s in SLOTS:
        for spec in s.registry.specs():
            for p in spec.params():
                if p.legacy and p.search is not None:
                    out.setdefault(p.legacy, []).append(f"{s.field}.{spec.name}.{p.name}")
    return out


def _range_problem(p: Param | None, values: tuple[Any, ...]) -> str | None:
    if p is None:
        return "unknown parameter"
    if not values:
        return "needs at least one value"
    if p.per_layer:
        return "a per-layer list is not searchable; set it in fixed"
    try:
        for v in values:
            p.validate(v)
    except ParamError as exc:
        return f"{v!r}: {exc}"
    if _is_range(p, values):
        low, high = values
        if low > high:
            return f"expected [low, high] with low <= high, got {list(values)}"
        if p.log and low <= 0:
            return f"searched on a log scale, so low must be > 0, got {list(values)}"
    return None


def _is_range(p: Param, values: tuple[Any, ...]) -> bool:
    return p.numeric and len(values) == 2


def _pick(trial: optuna.Trial, name: str, values: tuple[Any, ...]) -> Any:
    return values[0] if len(values) == 1 else trial.suggest_categorical(name, list(values))


def _sample(trial: optuna.Trial, name: str, p: Param, values: tuple[Any, ...]) -> Any:
    """One value of a plug-in parameter: pinned, a categorical choice, or a draw from [low, high]."""
    if not _is_range(p, values):
        return _pick(trial, name, values)
    low, high = values
    if low == high:
        return low
    if p.type is int:
        return trial.suggest_int(name, int(low), int(high), log=p.log, step=int(p.step or 1))
    return trial.suggest_float(name, float(low), float(high), log=p.log, step=p.step)
