"""The layering holds: the import-linter contracts of pyproject.toml, no import cycle between
modules or between packages, and DAG files that import only the pipeline steps.

Imports inside functions count (grimp reads every import statement of a module).
"""

from __future__ import annotations

import ast
import graphlib
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import grimp
import pytest

REPO = Path(__file__).resolve().parents[1]
ROOT_PACKAGES = ("entrypoints", "services", "training", "shoprec", "simulator")
DAG_IMPORTS = {"entrypoints.steps", "shoprec.config"}  # besides Airflow and the standard library


@pytest.fixture(scope="module")
def graph() -> grimp.ImportGraph:
    return grimp.build_graph(*ROOT_PACKAGES, cache_dir=None)


def test_lint_imports_keeps_every_contract():
    lint_imports = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run([str(lint_imports), "--no-cache", "--no-logo"], cwd=REPO, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stdout[-8000:] + result.stderr[-2000:]
    assert "0 broken" in result.stdout


def cycle(edges: dict[str, set[str]]) -> list[str]:
    """One import cycle of the graph (its first node repeated at the end), or [] when there is none."""
    try:
        graphlib.TopologicalSorter(edges).prepare()
    except graphlib.CycleError as error:
        return error.args[1]
    return []


def test_cycle_finder_finds_a_cycle_and_nothing_else():
    found = cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}})
    assert set(found) == {"a", "b", "c"} and found[0] == found[-1]
    assert cycle({"a": {"a"}}) == ["a", "a"]
    assert cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) == []


def module_edges(graph: grimp.ImportGraph) -> dict[str, set[str]]:
    return {module: set(graph.find_modules_directly_imported_by(module)) for module in graph.modules}


def package_cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """One cycle per level that has one: the top-level packages, and the children of each package
    (its modules and sub-packages, each sub-package taken whole) as siblings."""
    edges = module_edges(graph)
    packages = {module for module in graph.modules if graph.find_children(module)}
    found = []
    for parent in sorted(packages | {""}):
        siblings: dict[str, set[str]] = defaultdict(set)
        for module, targets in edges.items():
            source = child_of(parent, module)
            for target in targets:
                destination = child_of(parent, target)
                if source and destination and source != destination:
                    siblings[source].add(destination)
        if found_here := cycle(siblings):
            found.append(found_here)
    return found


def test_no_import_cycle_between_modules(graph):
    found = cycle(module_edges(graph))
    assert not found, "an import cycle between modules: " + " -> ".join(found)


def test_no_import_cycle_between_packages(graph):
    found = package_cycles(graph)
    assert not found, "import cycles between packages: " + "; ".join(" -> ".join(c) for c in found)


def test_the_cycle_checks_see_a_cycle_once_one_is_added():
    graph = grimp.build_graph(*ROOT_PACKAGES, cache_dir=None)
    graph.add_import(importer="shoprec.config", imported="entrypoints.steps")  # steps imports shoprec.config
    assert {"shoprec.config", "entrypoints.steps"} <= set(cycle(module_edges(graph)))
    assert any({"entrypoints", "shoprec"} <= set(c) for c in package_cycles(graph))


def child_of(parent: str, module: str) -> str | None:
    """The child of ``parent`` that holds ``module`` (None: outside it, or its own __init__)."""
    prefix = f"{parent}." if parent else ""
    if not module.startswith(prefix) or module == parent:
        return None
    return prefix + module[len(prefix):].split(".")[0]


def imported_modules(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            named = {f"{node.module}.{alias.name}" for alias in node.names}
            # `from entrypoints import steps` imports the module entrypoints.steps
            found |= named & DAG_IMPORTS or {node.module}
    return found


@pytest.mark.parametrize("dag_file", sorted((REPO / "dags").glob("*.py")), ids=lambda p: p.name)
def test_a_dag_file_imports_only_the_steps_and_the_config(dag_file):
    ours = {m for m in imported_modules(dag_file) if m.split(".")[0] in ROOT_PACKAGES}
    others = {m for m in imported_modules(dag_file) if m.split(".")[0] not in ROOT_PACKAGES}
    assert ours <= DAG_IMPORTS, f"{dag_file.name} imports {sorted(ours - DAG_IMPORTS)}"
    assert {m.split(".")[0] for m in others} <= {"__future__", "airflow", "datetime"}, sorted(others)
