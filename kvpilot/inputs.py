"""Reading what a user hands kvpilot (config files, JSONL workloads, traces, search spaces) without tracebacks.

Every input path reads through here so that a hostile or broken file (binary, UTF-16, nested ten thousand
deep, a 5,000-digit integer, a lone surrogate, a directory) becomes one `InputError` naming the file and
the problem, which the CLI prints as one line with exit status 2. Torch-free; imports only `kvpilot.errors`.
"""

from __future__ import annotations

import json
import os
from typing import Any

from kvpilot.errors import KVPilotError

MAX_DEPTH = 64  # nesting of arrays and objects: far above any real kvpilot document, far below the C stack
MAX_FILE_BYTES = 1 << 30  # a file larger than this is not a kvpilot input

_BOMS = {
    b"\xff\xfe\x00\x00": "UTF-32", b"\x00\x00\xfe\xff": "UTF-32",
    b"\xff\xfe": "UTF-16", b"\xfe\xff": "UTF-16",
}


class InputError(KVPilotError, ValueError):
    """A file or document the user gave cannot be read; the message names it and says why."""


def read_text(path: str | os.PathLike[str], what: str = "file") -> str:
    """The file's text, decoded as UTF-8 (a UTF-8 BOM is dropped); InputError names any other encoding."""
    try:
        if os.path.getsize(path) > MAX_FILE_BYTES:
            raise InputError(f"{what} {path} is larger than {MAX_FILE_BYTES >> 20} MiB")
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        raise InputError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    return decode_text(data, f"{what} {path}")


def decode_text(data: bytes, where: str) -> str:
    """``data`` as UTF-8 text; InputError saying it is UTF-16/32 or binary otherwise."""
    for bom, name in _BOMS.items():
        if data.startswith(bom):
            raise InputError(f"{where} is {name} text; kvpilot reads UTF-8 (save it as UTF-8)")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InputError(f"{where} is not UTF-8 text (invalid byte at offset {exc.start})") from None
    if "\x00" in text:
        raise InputError(f"{where} contains NUL bytes: binary data or UTF-16 without a BOM, not UTF-8 text")
    return text


def parse_json(text: str | bytes, where: str) -> Any:
    """JSON text as Python data; InputError for bad JSON, deep nesting, huge integers or lone surrogates."""
    if isinstance(text, bytes):
        text = decode_text(text, where)
    try:
        return loads(text)
    except InputError as exc:
        raise InputError(f"{where}: {exc}") from None


def loads(text: str) -> Any:
    """`json.loads` whose every failure is an InputError saying what is wrong (no location prefix)."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})") from None
    except RecursionError:
        raise InputError(f"JSON nested too deeply (more than {MAX_DEPTH} levels)") from None
    except ValueError as exc:  # an integer of more than 4,300 digits
        raise InputError(str(exc).split(": value has")[0].split("; use")[0]) from None
    problem = check_document(data)
    if problem:
        raise InputError(problem)
    return data


def check_document(data: Any) -> str | None:
    """A problem that makes ``data`` unfit to store or print as JSON, or None.

    Nesting deeper than MAX_DEPTH, strings with lone surrogates (they cannot be written as UTF-8),
    non-finite floats (JSON has none), integers outside 64 bits (no database column holds them).
    Iterative, so a document nested beyond the recursion limit is reported rather than crashing.
    """
    stack: list[tuple[Any, int, str]] = [(data, 0, "")]
    while stack:
        value, depth, path = stack.pop()
        at = f"{path}: " if path else ""
        if isinstance(value, (dict, list, tuple)):
            if depth >= MAX_DEPTH:
                return f"{at}nested too deeply (more than {MAX_DEPTH} levels)"
            if isinstance(value, dict):
                for key in value:
                    if isinstance(key, str) and not _encodable(key):
                        return f"{at}key {_short(key)} contains a lone surrogate (not valid Unicode text)"
                stack.extend((v, depth + 1, _join(path, k)) for k, v in value.items())
            else:
                stack.extend((v, depth + 1, f"{path}[{i}]") for i, v in enumerate(value))
        elif isinstance(value, str):
            if not _encodable(value):
                return f"{at}string {_short(value)} contains a lone surrogate (not valid Unicode text)"
        elif isinstance(value, float):
            if value != value or value in (float("inf"), float("-inf")):
                return f"{at}{value!r} is not a finite number"
        elif isinstance(value, int) and not isinstance(value, bool) and not -(2**63) <= value < 2**63:
            return f"{at}integer {_short(value)} does not fit in 64 bits"
    return None


def _join(path: str, key: Any) -> str:
    name = key if isinstance(key, str) and _encodable(key) else _short(key)
    return f"{path}.{name}" if path else str(name)


def clip(text: str, limit: int = 80) -> str:
    """``text`` cut to ``limit`` characters (a name or key in a message)."""
    return text if len(text) <= limit else f"{text[: limit - 14]}... ({len(text)} chars)"


def short(value: Any, limit: int = 80) -> str:
    """``repr(value)`` cut to ``limit`` characters, so a 10 MB value makes a readable message."""
    return _short(value, limit)


def _short(value: Any, limit: int = 80) -> str:
    try:
        text = repr(value) if not isinstance(value, int) or value.bit_length() < 4000 else "<a huge integer>"
    except (RecursionError, ValueError):
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else f"{text[: limit - 14]}... ({len(text)} chars)"


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
