"""docs/configuration.md is generated from the registries (tools/gen_docs.py): the committed page must be what
the code says today, so adding a plug-in or a parameter without regenerating the page fails here."""

from __future__ import annotations

import difflib
import importlib.util
from pathlib import Path
from types import ModuleType

from kvpilot.config import KVConfig

ROOT = Path(__file__).resolve().parent.parent


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_docs", ROOT / "tools" / "gen_docs.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_configuration_page_matches_the_registries():
    gen = _generator()
    expected = gen.render()
    current = gen.TARGET.read_text(encoding="utf-8") if gen.TARGET.exists() else ""
    diff = "".join(difflib.unified_diff(current.splitlines(True), expected.splitlines(True),
                                        "docs/configuration.md (committed)", "generated", n=1))
    assert current == expected, f"docs/configuration.md is stale: run `python tools/gen_docs.py`\n{diff[:4000]}"


def test_field_notes_only_fill_missing_descriptions():
    gen = _generator()
    described = [name for name in gen.FIELD_NOTES if KVConfig.model_fields[name].description]
    assert not described, (
        f"KVConfig now describes {described} itself: delete their FIELD_NOTES in tools/gen_docs.py "
        "and run `python tools/gen_docs.py`"
    )
    assert set(gen.FIELD_NOTES) <= set(KVConfig.model_fields)
