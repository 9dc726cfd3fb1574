"""Pure core, thin shell: the deciding modules import neither asyncpg nor anyio, not even
through another schemad module. Checked on the source with `ast`, without importing it."""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

import pytest

import schemad

PACKAGE = Path(schemad.__file__).resolve().parent
FORBIDDEN_LIBRARIES = frozenset({"asyncpg", "anyio"})
# The I/O shell, by design (house-style.md 1); also caught by the transitive check below
# as soon as one of them imports asyncpg or anyio.
SHELL = frozenset(
    {
        "db",
        "lock",
        "ledger",
        "executor",
        "daemon",
        "http",
        "metrics",
        "index_builder",
        "engine",
        "commands",
        "demo",
        "cli",
        "pgcluster",
        "sdnotify",
    }
)
CORE = (
    "findings",
    "rules",
    "statements",
    "directives",
    "sourcefiles",
    "migrations",
    "lint",
    "indexes",
    "validation",
    "sqlparser",
    "parsecache",
    "config",
    "plan",
    "classify",
    "throttle",
    "index_plan",
    "index_report",
    "importer",
    "legacy",
    "redact",
    "errors",
)
CORE_PRESENT = list(CORE)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST, *, runtime_only: bool) -> set[str]:
    """Absolute module names imported anywhere in ``tree`` (function bodies included)."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if runtime_only and isinstance(node, ast.If) and _is_type_checking(node.test):
            for branch in node.orelse:  # only the else branch runs
                visit(branch)
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from . import x / from .x import y
                base = "schemad" + (f".{base}" if base else "")
            found.add(base)
            # `from schemad import db` imports the submodule schemad.db
            found.update(f"{base}.{alias.name}" for alias in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


@cache
def _tree(module: str) -> ast.Module:
    return ast.parse((PACKAGE / f"{module}.py").read_text(encoding="utf-8"))


@cache
def _schemad_deps(module: str) -> frozenset[str]:
    """Sibling modules of the package that ``module`` imports at run time."""
    out = set()
    for name in _imports(_tree(module), runtime_only=True):
        parts = name.split(".")
        if parts[0] == "schemad" and len(parts) > 1 and (PACKAGE / f"{parts[1]}.py").exists():
            out.add(parts[1])
    return frozenset(out)


def _libraries(module: str, *, runtime_only: bool) -> set[str]:
    return {name.split(".")[0] for name in _imports(_tree(module), runtime_only=runtime_only)}


def _closure(module: str) -> set[str]:
    seen: set[str] = set()
    todo = [module]
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        todo.extend(_schemad_deps(current))
    return seen


@cache
def _impure() -> frozenset[str]:
    """Every package module that reaches asyncpg or anyio at run time, plus the shell."""
    modules = [p.stem for p in PACKAGE.glob("*.py")]
    return SHELL | frozenset(
        m
        for m in modules
        if any(_libraries(dep, runtime_only=True) & FORBIDDEN_LIBRARIES for dep in _closure(m))
    )


@pytest.mark.parametrize("module", CORE_PRESENT)
def test_core_module_never_names_asyncpg_or_anyio(module: str) -> None:
    # Not even under TYPE_CHECKING: the core's types are plain data.
    assert not _libraries(module, runtime_only=False) & FORBIDDEN_LIBRARIES


@pytest.mark.parametrize("module", CORE_PRESENT)
def test_core_module_reaches_no_shell_module(module: str) -> None:
    reached = _closure(module) - {module}
    assert not reached & _impure(), f"{module} imports shell modules {sorted(reached & _impure())}"
    for dep in _closure(module):
        assert not _libraries(dep, runtime_only=True) & FORBIDDEN_LIBRARIES, (
            f"{module} reaches them via {dep}"
        )


def test_only_sqlparser_touches_the_parser_binding() -> None:
    users = {p.stem for p in PACKAGE.glob("*.py") if "postgast" in _libraries(p.stem, runtime_only=False)}
    assert users == {"sqlparser"}


def test_the_checker_sees_imports() -> None:
    """Guard against a vacuous pass: the walker finds imports in every form we rely on."""
    tree = ast.parse(
        "import anyio\n"
        "from schemad import db, rules\n"
        "from . import lock\n"
        "from .ledger import Row\n"
        "if TYPE_CHECKING:\n    import asyncpg\n"
        "def f() -> None:\n    import schemad.executor\n"
    )
    runtime = _imports(tree, runtime_only=True)
    assert {
        "anyio",
        "schemad.db",
        "schemad.rules",
        "schemad.lock",
        "schemad.ledger",
        "schemad.executor",
    } <= runtime
    assert "asyncpg" not in runtime
    assert "asyncpg" in _imports(tree, runtime_only=False)
    assert "db" in _impure()  # the shell is really there to be avoided
    # ... and at least one existing module of it really talks to asyncpg or anyio.
    present = [m for m in _impure() if (PACKAGE / f"{m}.py").exists()]
    assert any(_libraries(m, runtime_only=True) & FORBIDDEN_LIBRARIES for m in present)
