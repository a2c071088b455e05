"""The shape of the code, as docs/architecture.md draws it: data flows one way, the sampler knows no
source and no consumer by name, nothing shipped or benchmarked leans on the tests, and no module
grows into several."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("gpumon", "grafana", "tools", "benchmarks")
MAX_LINES = 700


def modules(*packages: str) -> dict[str, Path]:
    found = {}
    for package in packages:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imports(name: str, path: Path) -> set[str]:
    """Every module `name` imports, at the top or inside a function, relative imports resolved."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            out.add(base)
            out.update(f"{base}.{alias.name}" for alias in node.names)
    return out


def graph() -> dict[str, set[str]]:
    """Import edges between the project's own modules, less those between a package and its own
    modules (an __init__ that re-exports is not a cycle)."""
    mods = modules(*PACKAGES)
    edges = {}
    for name, path in mods.items():
        edges[name] = {t for t in imports(name, path) & mods.keys()
                       if t != name and not t.startswith(name + ".") and not name.startswith(t + ".")}
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iteratively)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in edges:
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles() -> None:
    assert cycles(graph()) == []


def test_nothing_outside_the_tests_imports_them() -> None:
    leaning = {name: sorted(t for t in imports(name, path) if t == "tests" or t.startswith("tests."))
               for name, path in modules(*PACKAGES).items()}
    assert {name: found for name, found in leaning.items() if found} == {}


def test_the_sampler_knows_no_source_and_no_consumer() -> None:
    edges = graph()
    concrete = {m for m in edges if m.startswith("gpumon.sources.") and m != "gpumon.sources.base"}
    consumers = {"gpumon.exporter", "gpumon.web", "gpumon.rules", "gpumon.notify", "gpumon.daemon"}
    known = edges["gpumon.sampler"]
    assert not known & concrete
    assert not {m for m in known if any(m == c or m.startswith(c + ".") for c in consumers)}


def test_no_module_is_several() -> None:
    long = {name: n for name, path in modules("gpumon", "grafana").items()
            if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert long == {}, f"split these (over {MAX_LINES} lines): {long}"
