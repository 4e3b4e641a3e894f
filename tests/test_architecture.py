"""The import graph of lsmia, read from the code (module-level and function-level imports alike): one
direction, no cycles, each layer importing only the layers below it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.helpers.paths import ROOT

PACKAGE = ROOT / "lsmia"

# Lower layers never import higher ones: the science knows nothing of how it is run, tracked or reported.
SCIENCE = ("lsmia.data", "lsmia.models", "lsmia.training", "lsmia.attack", "lsmia.metrics", "lsmia.defenses")
RUNNERS = (
    "lsmia.cli",
    "lsmia.experiments",
    "lsmia.tracking",
    "lsmia.reporting.report",
    "lsmia.stages",
    "lsmia.infra.services",
)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(path: Path, modules: set[str]) -> set[str]:
    """The lsmia modules ``path`` imports (``from lsmia.x import y`` names lsmia.x.y when that is a module)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, *([node.module] if node.module else [])])
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)
    return {m for m in found if m in modules and m != name} | {m for m in found if m.split(".")[0] == "mlflow"}


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    files = {module_name(path): path for path in PACKAGE.rglob("*.py")}
    return {name: imported(path, set(files)) for name, path in files.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in graph.get(node, set()) & set(graph):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def edges_from(graph: dict[str, set[str]], sources: tuple[str, ...], targets: tuple[str, ...]) -> list[str]:
    def within(name: str, prefixes: tuple[str, ...]) -> bool:
        return any(name == p or name.startswith(p + ".") for p in prefixes)

    return sorted(f"{a} -> {b}" for a, bs in graph.items() if within(a, sources) for b in bs if within(b, targets))


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_graph_is_read_from_the_code(graph: dict[str, set[str]]) -> None:
    assert "lsmia.attack.batches" in graph["lsmia.attack.ppa"]  # a module-level import
    assert "lsmia.stages.train" in graph["lsmia.experiments.graph"]  # a function-level import


def test_lsmia_has_no_import_cycle(graph: dict[str, set[str]]) -> None:
    assert cycles(graph) == []


def test_the_models_import_no_defense_training_attack_or_metric(graph: dict[str, set[str]]) -> None:
    higher = ("lsmia.defenses", "lsmia.training", "lsmia.attack", "lsmia.metrics")
    assert edges_from(graph, ("lsmia.models",), higher) == []


def test_the_science_never_imports_the_runners_or_mlflow(graph: dict[str, set[str]]) -> None:
    assert edges_from(graph, SCIENCE, (*RUNNERS, "mlflow")) == []


def test_only_the_tracking_module_imports_mlflow(graph: dict[str, set[str]]) -> None:
    assert {a for a, bs in graph.items() if any(b.split(".")[0] == "mlflow" for b in bs)} == {"lsmia.tracking.client"}
