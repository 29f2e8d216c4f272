"""The package's import graph has no cycles, counting imports inside functions too: a lazy import that
closes a circle still couples the two modules both ways (and breaks as soon as someone hoists it)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "vimpo_bench"


def module_names() -> dict[str, Path]:
    names = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return names


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package modules `name` imports anywhere in its body. `from pkg import sub` counts as importing
    pkg.sub when that is a module, else pkg; Python runs pkg/__init__ either way, but a package importing
    its own submodules is not a circle with them."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
            found |= {f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names}
    return {m for m in found if m in modules and m != name}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
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
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_cycle_finder_finds_a_circle_and_nothing_else():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_package_has_no_import_cycles():
    modules = module_names()
    graph = {name: imports_of(name, path, modules) for name, path in modules.items()}
    assert "vimpo_bench.report.render" in graph["vimpo_bench.report"]  # the walk sees real imports
    assert cycles(graph) == []


LOWER = ("vimpo_bench.config", "vimpo_bench.algorithms", "vimpo_bench.tasks", "vimpo_bench.grading.answers")
HIGHER = ("vimpo_bench.engines", "vimpo_bench.cli", "vimpo_bench.report")


def test_the_lower_layers_import_nothing_from_the_higher_ones():
    """config, algorithms, tasks and the answer rules are what everything else builds on: none of them imports
    an engine, the CLI or the report (an engine checks a config; a config never asks an engine)."""
    modules = module_names()
    upward = [f"{name} -> {target}" for name, path in modules.items() if name.startswith(LOWER)
              for target in imports_of(name, path, modules) if target.startswith(HIGHER)]
    assert not upward, upward


def test_no_module_imports_a_private_name_of_another():
    found = []
    for name, path in module_names().items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("vimpo_bench"):
                found += [f"{name}: from {node.module} import {a.name}" for a in node.names
                          if a.name.startswith("_") and not a.name.startswith("__")]
    assert not found, found


def test_no_module_is_over_600_lines():
    long = {name: n for name, path in module_names().items()
            if (n := len(path.read_text(encoding="utf-8").splitlines())) > 600}
    assert not long, long


# The package's floors, bottom first (the package docstring reads them top-down). The ground is the modules at
# the package root (ranges, net, faults, the package itself); a package may import its own floor's modules and
# those of any floor below, never one above, and two packages on one floor do not import each other.
FLOORS = (
    {"ground"},
    {"grading"},
    {"algorithms"},
    {"config"},
    {"tasks", "rollout"},
    {"models"},
    {"runs"},
    {"evaluation"},
    {"rl"},
    {"engines"},
    {"experiments"},
    {"report"},
    {"cli"},
)


def floor_of(name: str, path: Path) -> str:
    if name == "vimpo_bench.__main__":  # `python -m vimpo_bench`: the command line's door, above every floor
        return "__main__"
    parts = name.split(".")
    in_package = len(parts) > 2 or (len(parts) == 2 and path.name == "__init__.py")
    return parts[1] if in_package else "ground"


def test_every_package_sits_on_a_floor_and_imports_only_downward():
    modules = module_names()
    level = {package: i for i, floor in enumerate(FLOORS) for package in floor}
    homes = {floor_of(name, path) for name, path in modules.items()} - {"__main__"}
    assert homes == set(level), homes ^ set(level)  # a new package is given its floor here
    upward = []
    for name, path in modules.items():
        home = floor_of(name, path)
        if home == "__main__":
            continue
        for target in imports_of(name, path, modules):
            there = floor_of(target, modules[target])
            if there != home and level[there] >= level[home] and there != "ground":
                upward.append(f"{name} ({home}) -> {target} ({there})")
    assert not upward, upward


def test_the_floor_check_sees_an_upward_import():
    level = {package: i for i, floor in enumerate(FLOORS) for package in floor}
    assert level["config"] < level["engines"] and level["rl"] < level["engines"] < level["cli"]
    assert floor_of("vimpo_bench.rl.loop", PACKAGE / "rl" / "loop.py") == "rl"
    assert floor_of("vimpo_bench.net", PACKAGE / "net.py") == "ground"
    assert floor_of("vimpo_bench.models", PACKAGE / "models" / "__init__.py") == "models"
