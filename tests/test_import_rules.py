"""Dependencies point inward, and the folders show it (docs/architecture.md, "Layers").

Every module of ours is parsed (nothing is imported), and every import in it counts,
at module level, inside functions and under ``TYPE_CHECKING`` alike.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("domain", "store", "projections", "secstate", "producers", "consumers", "contracts")
# What contracts/ may import besides the standard library: downstream teams import it alone.
CONTRACTS_MAY_IMPORT = ("pydantic", "pydantic_core", "typing_extensions")
DATABASE_DRIVERS = (
    "sqlite3",
    "psycopg",
    "psycopg_pool",
    "eventsourcing.sqlite",
    "eventsourcing.postgres",
)


def our_modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


MODULES = our_modules()


def imported_names(module: str, path: Path) -> Iterator[str]:
    """Every module name ``module`` imports (``from a import b`` is ``a.b`` if that is a
    module, else ``a``); relative imports resolved."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            for alias in node.names:
                full = f"{base}.{alias.name}"
                yield full if full in MODULES else base


def imports_of(module: str) -> set[str]:
    return set(imported_names(module, MODULES[module]))


def ours(name: str) -> str | None:
    """The top-level package of ours that ``name`` is in, if any."""
    top = name.split(".")[0]
    return top if top in PACKAGES else None


def layer_violations(layer: str, allowed: set[str]) -> list[str]:
    return [
        f"{module} imports {name}"
        for module in MODULES
        if module.split(".")[0] == layer
        for name in sorted(imports_of(module))
        if ours(name) not in (None, layer, *allowed)
    ]


def test_there_are_modules_to_check() -> None:
    assert {"domain.ledger", "store.log", "projections.follower", "secstate.cli"} <= set(MODULES)
    # and the parser sees imports of each form: absolute, from-package, inside functions
    assert "store.log" in imports_of("secstate.bootstrap")
    assert "domain.commands" in imports_of("domain.campaigns")  # from domain import commands
    assert "psycopg" in imports_of("store.connect")  # imported inside a function


def test_domain_imports_nothing_of_ours_and_no_database_driver() -> None:
    # given every module of domain/
    found = []
    for module in (m for m in MODULES if m.split(".")[0] == "domain"):
        for name in sorted(imports_of(module)):
            # then it imports only domain/ of ours, and no database driver or recorder
            if ours(name) not in (None, "domain"):
                found.append(f"{module} imports {name}")
            if any(name == d or name.startswith(d + ".") for d in DATABASE_DRIVERS):
                found.append(f"{module} imports the database driver {name}")
    assert found == []


@pytest.mark.parametrize("layer", ["store", "projections"])
def test_store_and_projections_import_only_the_domain(layer: str) -> None:
    assert layer_violations(layer, {"domain"}) == []


def test_producers_do_not_reach_into_the_wiring() -> None:
    assert layer_violations("producers", {"domain", "store", "projections", "contracts"}) == []


def test_consumers_import_only_the_store_and_the_contracts() -> None:
    # given every module of consumers/ (what downstream teams build their consumers on)
    assert "consumers.app" in MODULES
    # then it imports store/ and contracts/ of ours, never the domain, the views, the
    # relay or the wiring: a consumer knows secstate only by its published contracts
    assert layer_violations("consumers", {"store", "contracts"}) == []


def test_contracts_import_only_pydantic_and_the_standard_library() -> None:
    # given every module of contracts/ (what downstream teams import on its own)
    modules = [m for m in MODULES if m.split(".")[0] == "contracts"]
    assert "contracts.payloads" in modules
    found = []
    for module in modules:
        for name in sorted(imports_of(module)):
            top = name.split(".")[0]
            # then it imports contracts/ of ours, pydantic, and the standard library only
            if top == "contracts" or top in CONTRACTS_MAY_IMPORT:
                continue
            if top in sys.stdlib_module_names or top == "__future__":
                continue
            found.append(f"{module} imports {name}")
    assert found == []


def test_nothing_imports_the_wiring() -> None:
    # given every module outside secstate/, then none imports secstate/
    assert [
        f"{module} imports {name}"
        for module in MODULES
        if module.split(".")[0] != "secstate"
        for name in sorted(imports_of(module))
        if ours(name) == "secstate"
    ] == []


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle of ``graph`` as a path (first module repeated last), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state:
            found = visit(start)
            if found:
                return found
    return None


def test_no_import_circles() -> None:
    # given the import graph of our modules (a package's own __init__ excluded as a
    # target of its submodules: Python runs it first whatever the submodule imports)
    graph = {
        module: {
            name
            for name in imports_of(module)
            if name in MODULES and name != module and not module.startswith(name + ".")
        }
        for module in MODULES
    }
    # then there is no circle
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph) or [])


def test_the_cycle_finder_finds_a_circle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
