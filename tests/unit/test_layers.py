"""Imports run one way: core <- schemas <- connectors | streams | projections <- tidemark. A layer imports only the
layers below it (the three middle ones not each other), so each can be read, tested and replaced on its own."""

from __future__ import annotations

import ast

import pytest

from tests.conftest import REPO

BELOW: dict[str, frozenset[str]] = {
    "core": frozenset(),
    "schemas": frozenset({"core"}),
    "connectors": frozenset({"core", "schemas"}),
    "streams": frozenset({"core", "schemas"}),
    "projections": frozenset({"core", "schemas"}),
    "tidemark": frozenset({"core", "schemas", "connectors", "streams", "projections"}),
    "fakes": frozenset(),
}
OURS = frozenset(BELOW) | {"bench", "tests"}


def imported_packages(source: str) -> set[tuple[str, int]]:
    """Our top-level packages a module imports (at any depth: function-level imports count too), with the line."""
    found: set[tuple[str, int]] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        found.update((name.split(".")[0], node.lineno) for name in names if name.split(".")[0] in OURS)
    return found


def upward_imports(package: str) -> list[str]:
    allowed = BELOW[package] | {package}
    return [
        f"{path.relative_to(REPO)}:{line} imports {imported}"
        for path in sorted((REPO / package).rglob("*.py"))
        for imported, line in sorted(imported_packages(path.read_text()))
        if imported not in allowed
    ]


@pytest.mark.parametrize("package", sorted(BELOW))
def test_layer_imports_only_the_layers_below(package: str) -> None:
    assert (REPO / package).is_dir()
    assert upward_imports(package) == []


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("from core.settings import Settings", {("core", 1)}),
        ("import streams.runner", {("streams", 1)}),
        ("def f():\n    from tidemark.topics import create_topics", {("tidemark", 2)}),
        ("from . import sibling\nimport numpy", set()),
    ],
)
def test_imports_are_found_at_every_depth(source: str, expected: set[tuple[str, int]]) -> None:
    assert imported_packages(source) == expected
