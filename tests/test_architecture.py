"""Imports point one way: the layering of docs/architecture.md, checked on every module of kvpilot/.

Each module is parsed with `ast` (imports at module level, inside functions and under TYPE_CHECKING all
count: a dependency is a dependency), mapped to its layer by LAYERS, and every import of a higher layer
is a failure naming file:line. Also checked: nothing inside the package imports the package root,
packages of one layer do not import each other in a cycle, and the torch-free side never imports torch.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "kvpilot"

# ----- the layering (mirrors docs/architecture.md; bottom = 0) ----------------------------------------
# Longest matching prefix wins, so a torch-free module inside a torch-side package can sit lower.
LAYERS: dict[str, int] = {
    # 0 foundation, torch-free: imports nothing above it
    "kvpilot.errors": 0,
    "kvpilot.version": 0,
    "kvpilot.paths": 0,
    "kvpilot.inputs": 0,
    "kvpilot.plugins": 0,
    "kvpilot.config": 0,
    "kvpilot.policies": 0,
    "kvpilot.vllm_config": 0,  # VLLMConfig: pydantic only, validated by the registry
    # 1 data and control plane (torch-free) and the torch-side cache and kernels
    "kvpilot.storage": 1,
    "kvpilot.workloads": 1,
    "kvpilot.kernels": 1,
    "kvpilot.cache": 1,
    # 2 the engine: the transformers binding and the one request path
    "kvpilot.engine": 2,
    # 3 what runs the engine: evaluation (and replay, the sensitivity profiler), probes, the tuner
    "kvpilot.evaluation": 3,
    "kvpilot.probes": 3,
    "kvpilot.tuner": 3,
    "kvpilot.vllm": 3,  # a vLLM server's collector, supervisor and tuning target (HTTP only, no torch)
    # 4 entry points
    "kvpilot.attach": 4,
    "kvpilot.commands": 4,
    "kvpilot.cli": 4,
    "kvpilot.dashboard": 4,
}
LAYER_NAMES = {0: "foundation", 1: "data/cache", 2: "engine", 3: "evaluation/probes/tuner", 4: "entry points"}

# Modules that must never import torch (or transformers), directly or through what they import.
TORCH_FREE = [
    "kvpilot",
    "kvpilot.errors",
    "kvpilot.version",
    "kvpilot.paths",
    "kvpilot.inputs",
    "kvpilot.config",
    "kvpilot.storage",
    "kvpilot.workloads",
    "kvpilot.attach",
    "kvpilot.cli",
    "kvpilot.tuner",
    "kvpilot.tuner.study",
    "kvpilot.probes.base",
    "kvpilot.probes.registry",
    "kvpilot.probes.recorder",
    "kvpilot.probes.otel",
    "kvpilot.dashboard.app",
    "kvpilot.vllm_config",
]
# ... and every submodule of these packages (walked, so a new module is covered without editing this list)
TORCH_FREE_PACKAGES = ["kvpilot.storage", "kvpilot.workloads", "kvpilot.dashboard", "kvpilot.plugins",
                       "kvpilot.policies", "kvpilot.vllm"]
HEAVY = ("torch", "transformers", "triton")
# The bottom of the package: importable from anywhere because they import nothing from kvpilot.
LEAVES = ("kvpilot.errors", "kvpilot.version")


# ----- reading the package --------------------------------------------------------------------------


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def package_modules() -> list[tuple[str, Path]]:
    return sorted((module_name(p), p) for p in PACKAGE.rglob("*.py") if "migrations" not in p.parts)


MODULES = dict(package_modules())


@dataclass(frozen=True)
class Import:
    target: str  # the imported module (a submodule when `from pkg import sub` names one)
    line: int
    top_level: bool  # runs when the module is imported (not inside a function, not under TYPE_CHECKING)
    names_root: bool  # `import kvpilot` / `from kvpilot import <not a submodule>`


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _walk(node: ast.AST, top_level: bool) -> Iterator[tuple[ast.AST, bool]]:
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            yield from _walk(child, False)
        elif isinstance(child, ast.If) and _is_type_checking(child.test):
            for stmt in child.body:
                yield stmt, False
                yield from _walk(stmt, False)
            for stmt in child.orelse:
                yield stmt, top_level
                yield from _walk(stmt, top_level)
        else:
            yield child, top_level
            yield from _walk(child, top_level)


def imports_of(module: str, path: Path) -> list[Import]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    is_package = path.name == "__init__.py"
    out: list[Import] = []
    for node, top in _walk(tree, True):
        if isinstance(node, ast.Import):
            for alias in node.names:
                out.append(Import(alias.name, node.lineno, top, alias.name == "kvpilot"))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if is_package else module.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            for alias in node.names:
                sub = f"{source}.{alias.name}"
                if sub in MODULES:
                    out.append(Import(sub, node.lineno, top, False))
                else:
                    out.append(Import(source, node.lineno, top, source == "kvpilot"))
    return list(dict.fromkeys(out))  # `from m import a, b` is one import of m


def layer_of(module: str) -> int | None:
    best, layer = -1, None
    for prefix, n in LAYERS.items():
        if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best:
            best, layer = len(prefix), n
    return layer


def top_package(module: str) -> str:
    return ".".join(module.split(".")[:2])


def where(path: Path, line: int) -> str:
    return f"{path.relative_to(ROOT)}:{line}"


# ----- the checks -------------------------------------------------------------------------------------


def test_every_module_has_a_layer():
    missing = [m for m in MODULES if m != "kvpilot" and layer_of(m) is None]
    assert not missing, f"modules with no layer (add them to LAYERS and docs/architecture.md): {missing}"


def test_imports_point_down():
    problems = []
    for module, path in MODULES.items():
        if module == "kvpilot":
            continue  # the root re-exports the public API from every layer, and nothing imports it
        mine = layer_of(module)
        for imp in imports_of(module, path):
            if not imp.target.startswith("kvpilot.") or imp.names_root:
                continue
            theirs = layer_of(imp.target)
            if mine is not None and theirs is not None and theirs > mine:
                problems.append(f"{where(path, imp.line)}: {module} (layer {mine}, {LAYER_NAMES[mine]}) imports "
                                f"{imp.target} (layer {theirs}, {LAYER_NAMES[theirs]})")
    assert not problems, "imports against the layering:\n  " + "\n  ".join(problems)


def test_leaves_import_nothing_from_kvpilot():
    problems = [f"{where(MODULES[m], imp.line)}: {m} imports {imp.target}"
                for m in LEAVES for imp in imports_of(m, MODULES[m]) if imp.target.split(".")[0] == "kvpilot"]
    assert not problems, "\n  ".join(["these modules must import nothing from kvpilot:", *problems])


def test_nothing_imports_the_package_root():
    problems = [
        f"{where(path, imp.line)}: {module} imports the package root `kvpilot` (import from the defining module)"
        for module, path in MODULES.items() if module != "kvpilot"
        for imp in imports_of(module, path) if imp.names_root
    ]
    assert not problems, "\n  ".join(["the package root is the public API only:", *problems])


def test_packages_of_one_layer_do_not_import_each_other_in_a_cycle():
    graph: dict[str, set[str]] = {}
    for module, path in MODULES.items():
        if module == "kvpilot":
            continue
        src = top_package(module)
        for imp in imports_of(module, path):
            if imp.target.startswith("kvpilot.") and top_package(imp.target) != src:
                graph.setdefault(src, set()).add(top_package(imp.target))
    cycles = [c for c in _strongly_connected(graph) if len(c) > 1]
    assert not cycles, f"packages that import each other (directly or around a loop): {cycles}"


def _strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm, iterative enough for a graph of a dozen packages."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_torch_free_modules_do_not_import_torch_at_module_level():
    """Static: a torch-free module has no top-level import of torch, transformers or triton."""
    problems = []
    for module, path in MODULES.items():
        if not _torch_free(module):
            continue
        for imp in imports_of(module, path):
            if imp.top_level and imp.target.split(".")[0] in HEAVY:
                problems.append(f"{where(path, imp.line)}: {module} imports {imp.target} at module level")
    assert not problems, "torch-free modules importing torch:\n  " + "\n  ".join(problems)


def _torch_free(module: str) -> bool:
    return module in TORCH_FREE or any(module == p or module.startswith(p + ".") for p in TORCH_FREE_PACKAGES)


@pytest.mark.parametrize("group", ["core", "packages"])
def test_torch_free_side_imports_no_torch(group: str):
    """Dynamic: importing the torch-free side (and whatever it imports in turn) loads no torch."""
    if group == "core":
        names = TORCH_FREE
    else:
        names = [m for m in MODULES if any(m == p or m.startswith(p + ".") for p in TORCH_FREE_PACKAGES)]
    code = (
        "import importlib, sys\n"
        f"for name in {names!r}:\n"
        "    importlib.import_module(name)\n"
        "    heavy = [m for m in " + repr(HEAVY) + " if m in sys.modules]\n"
        "    assert not heavy, f'{name} imported {heavy}'\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_the_root_is_lazy_and_exports_what_it_lists():
    code = (
        "import sys, kvpilot\n"
        "lazy = set(kvpilot._LAZY)\n"
        "assert set(kvpilot.__all__) == lazy | {'attach', '__version__'}, set(kvpilot.__all__) ^ lazy\n"
        "loaded = [m for m in ('torch', 'sqlalchemy', 'pydantic', 'opentelemetry', 'optuna') if m in sys.modules]\n"
        "assert not loaded, loaded\n"
        "for name in kvpilot.__all__:\n"
        "    assert getattr(kvpilot, name) is not None, name\n"
        "assert callable(kvpilot.attach) and kvpilot.attach.__name__ == 'attach'\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
