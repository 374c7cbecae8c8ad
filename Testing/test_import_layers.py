"""The house has no cycles: imports inside lkm_core and the Slicer module only go down.

Reads every import with ``ast`` (function-level imports included: a lazy import is still an
arrow), builds the graph of the project's own modules and checks
- no cycle among lkm_core's modules, nor among the Slicer module's;
- lkm_core's stage folders import only their own folder or a lower floor (the order below);
- the Slicer process imports of the engine only ``lkm_core``, ``lkm_core.contract`` and
  ``lkm_core.terminology`` (both standard library only).
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# lkm_core's floors, lowest first: a module may import its own folder or any lower floor
FLOORS = [
    {"__init__", "contract", "terminology", "errors", "files"},  # standard library only
    {"ssm"}, {"network"}, {"bundle", "nnunet_steps"}, {"inputs"}, {"inference"}, {"outputs"}, {"batch"},
    {"training"}, {"cli"}, {"__main__"},
]
SLICER_MAY_IMPORT = {"lkm_core", "lkm_core.contract", "lkm_core.terminology"}


def _modules(package_dir: Path, prefix: str) -> dict[str, Path]:
    found = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = list(path.relative_to(package_dir).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join([prefix, *parts]) if parts else prefix] = path
    return found


def _imports(name: str, path: Path, known: dict) -> set[str]:
    """The project modules ``name`` (file ``path``) imports, wherever the import statement is."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name in known}
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            target = ".".join(base + ([node.module] if node.module else []))
            for alias in node.names:  # "from pkg import module" points at the module itself
                sub = f"{target}.{alias.name}"
                out.add(sub if sub in known else target)
    return {m for m in out if m in known and m != name}


def _graph(modules: dict) -> dict[str, set[str]]:
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def _cycles(graph: dict) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return found


ENGINE = _modules(REPO / "lkm_core", "lkm_core")
SLICER = {**_modules(REPO / "LKMSegment" / "LKMSegmentLib", "LKMSegmentLib"),
          "LKMSegment": REPO / "LKMSegment" / "LKMSegment.py"}


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycle_in_the_engine():
    assert _cycles(_graph(ENGINE)) == []


def test_no_import_cycle_in_the_slicer_module():
    assert _cycles(_graph(SLICER)) == []


def _floor(module: str) -> int:
    top = module.split(".")[1] if "." in module else "__init__"
    for level, names in enumerate(FLOORS):
        if top in names:
            return level
    raise AssertionError(f"{module}: lkm_core/{top} is on no floor; add it to FLOORS")


def test_engine_imports_only_go_down():
    upward = [f"{m} -> {d}" for m, deps in _graph(ENGINE).items() for d in sorted(deps)
              if m.split(".")[:2] != d.split(".")[:2] and _floor(d) > _floor(m)]
    assert upward == []


def test_the_slicer_process_imports_only_the_engine_contract():
    engine_names = set(ENGINE)
    taken = set()
    for path in SLICER.values():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                taken |= {a.name for a in node.names if a.name.split(".")[0] == "lkm_core"}
            elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "lkm_core":
                taken |= {f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in engine_names
                          else node.module for a in node.names}
    assert taken and taken <= SLICER_MAY_IMPORT, sorted(taken - SLICER_MAY_IMPORT)
