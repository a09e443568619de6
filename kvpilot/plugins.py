"""Plug-in declarations: a parameter (`Param`), a plug-in base class (`Plugin`) and a name registry.

A plug-in (an eviction policy, a layer or head allocator, a TTL rule) is a dataclass whose fields are its
own parameters, each declared with `param(...)`: default, bounds or choices, log scale, the tuner's search
range, a description. KVConfig validation, the tuner's search space, the JSON schema and the docs all read
these declarations, so adding a plug-in is one class plus one `Registry.register` call. Torch-free.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import typing
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, Literal, TypeVar, cast

from pydantic import TypeAdapter, ValidationError

from kvpilot.errors import KVPilotError
from kvpilot.inputs import clip, short

_META_KEY = "kvpilot.param"
MAX_INT = 2**63 - 1  # an integer parameter without bounds still fits a torch int64 and a database BIGINT
MAX_ITEMS = 4096  # items in a list parameter (per-layer lists: no model has this many layers)


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Any = _Required()  # the default of a parameter that has none: the config must give it


class UnknownPluginError(KVPilotError, LookupError):
    """A name no registry entry has; the message lists the known names."""


class ParamError(ValueError):
    """A parameter value outside its declaration; the message says what is allowed (without the name)."""


@dataclass(frozen=True)
class Param:
    """One declared parameter of a plug-in.

    type: what pydantic validates the value as (int, float, str, bool, list[float], a Literal).
    low/high: inclusive bounds of a number, or of each item of a list. choices: allowed values (a Literal
    type supplies them). search: the tuner's range, (low, high) for a number or a tuple of choices; None means
    the tuner keeps the value (a search space may still ask for a range). per_layer: a list with one entry per
    model layer. check: an extra rule, returning a problem or None. legacy: the flat KVConfig field the value
    was stored in before plug-ins owned their parameters (from_legacy converts an old value).
    """

    name: str
    type: Any
    default: Any = REQUIRED
    low: float | None = None
    high: float | None = None
    choices: tuple[Any, ...] | None = None
    log: bool = False
    step: float | None = None
    search: tuple[Any, ...] | None = None
    per_layer: bool = False
    check: Callable[[Any], str | None] | None = None
    legacy: str | None = None
    from_legacy: Callable[[Any], Any] | None = None
    description: str = ""

    @property
    def required(self) -> bool:
        return self.default is REQUIRED

    @property
    def numeric(self) -> bool:
        return self.choices is None and self.type in (int, float)

    def validate(self, value: Any) -> Any:
        """The value, coerced to the declared type; raises ParamError saying what is allowed."""
        if value is None and self.default is None:
            return None
        if self.choices is not None and value not in self.choices:
            raise ParamError(f"not allowed; allowed values: {', '.join(map(str, self.choices))}")
        if isinstance(value, (list, tuple)) and len(value) > MAX_ITEMS:
            raise ParamError(f"a list of {len(value)} items; at most {MAX_ITEMS}")
        try:  # strict: true is not 1, "4" is not 4 (an int is still a float)
            value = _adapter(self.type).validate_python(value, strict=True)
        except ValidationError:
            raise ParamError(f"expected {self.kind()}") from None
        items = value if isinstance(value, list) else [value]
        if self.per_layer and not items:
            raise ParamError("must list one value per layer")
        for item in items:
            if isinstance(item, float) and not math.isfinite(item):
                raise ParamError(f"must be a finite number in {self.bounds()}")
            if isinstance(item, (int, float)) and not _within(item, self.low, self.high):
                raise ParamError(f"must be in {self.bounds()}")
            if isinstance(item, int) and not -MAX_INT - 1 <= item <= MAX_INT:
                raise ParamError("does not fit in 64 bits")
        problem = self.check(value) if self.check is not None else None
        if problem:
            raise ParamError(problem)
        return value

    def kind(self) -> str:
        """The declared type in words, e.g. `float`, `list[int]`, `one of avg, max`."""
        if self.choices is not None:
            return "one of " + ", ".join(map(str, self.choices))
        return str(self.type) if typing.get_args(self.type) else getattr(self.type, "__name__", str(self.type))

    def bounds(self) -> str:
        return f"[{_number(self.low, '-inf')}, {_number(self.high, 'inf')}]"

    def allowed(self) -> str:
        """What a value may be, in words (for messages and docs)."""
        text = self.kind()
        if self.low is not None or self.high is not None:
            text += f" in {self.bounds()}"
        return text + (", one per layer" if self.per_layer else "")

    def schema(self) -> dict[str, Any]:
        """A JSON-schema fragment for this parameter."""
        out: dict[str, Any] = dict(_adapter(self.type).json_schema())
        target = out.get("items", out) if self.per_layer else out
        if self.low is not None:
            target["minimum"] = self.low
        if self.high is not None:
            target["maximum"] = self.high
        if self.choices is not None:
            out["enum"] = list(self.choices)
        if not self.required:
            out["default"] = self.default
        if self.description:
            out["description"] = self.description
        return out


def param(
    default: Any = REQUIRED,
    *,
    low: float | None = None,
    high: float | None = None,
    choices: tuple[Any, ...] | None = None,
    log: bool = False,
    step: float | None = None,
    search: tuple[Any, ...] | None = None,
    per_layer: bool = False,
    check: Callable[[Any], str | None] | None = None,
    legacy: str | None = None,
    from_legacy: Callable[[Any], Any] | None = None,
    description: str = "",
) -> Any:
    """A dataclass field that is a plug-in parameter (the field's name and annotation give its name and type)."""
    meta = {
        "low": low, "high": high, "choices": choices, "log": log, "step": step, "search": search,
        "per_layer": per_layer, "check": check, "legacy": legacy, "from_legacy": from_legacy,
        "description": description,
    }
    if default is REQUIRED:
        return dataclasses.field(metadata={_META_KEY: meta})
    return dataclasses.field(default=default, metadata={_META_KEY: meta})


class Plugin:
    """Base of a plug-in: a dataclass whose `param(...)` fields are its parameters.

    name: the registry key a KVConfig uses. description: one line for docs and the dashboard.
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""

    @classmethod
    def params(cls) -> tuple[Param, ...]:
        """The declared parameters, in field order."""
        return _params_of(cls)

    @classmethod
    def validate_params(cls, values: Mapping[str, Any], where: str) -> tuple[dict[str, Any], list[str]]:
        """Normalised parameters (every declared one, defaults filled in, declaration order) and the problems.

        ``where`` prefixes each problem, e.g. ``policy_params`` -> "policy_params.pooling_kernel=4: must be odd".
        """
        declared = cls.params()
        names = [p.name for p in declared]
        problems = [
            f"{where}.{clip(str(key), 60)}: unknown parameter of {cls.name!r}; "
            + (f"its parameters: {', '.join(names)}" if names else "it takes none")
            for key in values
            if key not in names
        ]
        out: dict[str, Any] = {}
        for p in declared:
            if p.name not in values:
                if p.required:
                    detail = f": {p.description}" if p.description else ""
                    problems.append(f"{where}.{p.name}: required by {cls.name!r} ({p.allowed()}){detail}")
                else:
                    out[p.name] = p.default
                continue
            try:
                out[p.name] = p.validate(values[p.name])
            except ParamError as exc:
                problems.append(f"{where}.{p.name}={short(values[p.name])}: {exc}")
        return out, problems

    @classmethod
    def params_schema(cls) -> dict[str, Any]:
        declared = cls.params()
        return {
            "type": "object",
            "properties": {p.name: p.schema() for p in declared},
            "required": [p.name for p in declared if p.required],
            "additionalProperties": False,
        }


S = TypeVar("S", bound=type[Plugin])
C = TypeVar("C", bound=type[Plugin])


class Registry(Generic[S]):
    """Plug-in classes by name. Iterating yields names (registration order); `get` raises a one-line error."""

    def __init__(self, kind: str, base: type[Plugin]) -> None:
        self.kind = kind  # "policy", "layer allocation", ... (for messages)
        self.base = base
        self._entries: dict[str, S] = {}

    def register(self, cls: C) -> C:
        """Add a plug-in class (usable as a decorator); a name registered twice is a mistake, not an override."""
        if not (isinstance(cls, type) and issubclass(cls, self.base)):
            raise TypeError(f"a {self.kind} must subclass {self.base.__name__}, got {cls!r}")
        if not cls.name:
            raise TypeError(f"{cls.__name__}: set the class attribute `name`")
        if not dataclasses.is_dataclass(cls):
            raise TypeError(f"{cls.__name__}: decorate the {self.kind} with @dataclass (its fields are its params)")
        if cls.name in self._entries:
            raise ValueError(f"{self.kind} {cls.name!r} is already registered ({self._entries[cls.name].__qualname__})")
        cls.params()  # resolve the declarations now: a bad one fails at registration, not in a request
        self._entries[cls.name] = cast(S, cls)
        return cls

    def unregister(self, name: str) -> None:
        self._entries.pop(name, None)

    def get(self, name: str) -> S:
        try:
            return self._entries[name]
        except KeyError:
            raise UnknownPluginError(f"unknown {self.kind} {name!r}; known: {', '.join(self._entries)}") from None

    __getitem__ = get

    def names(self) -> tuple[str, ...]:
        return tuple(self._entries)

    def specs(self) -> tuple[S, ...]:
        return tuple(self._entries.values())

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(tuple(self._entries))

    def __len__(self) -> int:
        return len(self._entries)

    def markdown(self) -> str:
        """A Markdown table of the entries and their parameters (for docs)."""
        rows = [f"| {self.kind} | what it does | parameters |", "|---|---|---|"]
        for cls in self._entries.values():
            params = "; ".join(
                f"`{p.name}` {p.allowed()}" + ("" if p.required else f" (default {p.default!r})")
                for p in cls.params()
            )
            rows.append(f"| `{cls.name}` | {cls.description} | {params or '-'} |")
        return "\n".join(rows)


# ----- internals ---------------------------------------------------------------------------------------


@functools.cache
def _adapter(tp: Any) -> TypeAdapter[Any]:
    return TypeAdapter(tp)


def _number(value: float | None, missing: str) -> str:
    if value is None:
        return missing
    return str(value) if isinstance(value, int) else f"{value:g}"


def _within(value: float, low: float | None, high: float | None) -> bool:
    return (low is None or value >= low) and (high is None or value <= high)


_PARAMS: dict[type, tuple[Param, ...]] = {}


def _params_of(cls: type[Plugin]) -> tuple[Param, ...]:
    if cls not in _PARAMS:
        _PARAMS[cls] = _declared(cls) if dataclasses.is_dataclass(cls) else ()
    return _PARAMS[cls]


def _declared(cls: type[Plugin]) -> tuple[Param, ...]:
    try:
        hints = typing.get_type_hints(cls)
    except Exception as exc:  # an annotation that does not resolve: say which plug-in
        raise TypeError(f"{cls.__qualname__}: cannot resolve its field annotations ({exc})") from None
    out = []
    for f in dataclasses.fields(cast(Any, cls)):
        meta = f.metadata.get(_META_KEY)
        if meta is None:
            continue
        tp = hints[f.name]
        choices = meta["choices"]
        if typing.get_origin(tp) is Literal:
            choices = choices or typing.get_args(tp)
        default = f.default if f.default is not dataclasses.MISSING else REQUIRED
        out.append(Param(name=f.name, type=tp, default=default, **{**meta, "choices": choices}))
    return tuple(out)
