"""The documentation site builds with ``mkdocs build --strict``: no link, anchor or page rots.

CI runs ``pytest`` after installing the ``test`` extra, which includes the ``docs`` extra,
so this is where the site is built in CI. A build takes about a second, in a Python
subprocess (so the builds are ``slow``; ``pytest tests/test_docs.py`` after editing a page).
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
#: What the site is built from: the config, the pages, and the root files it shows.
SOURCES = ("mkdocs.yml", "README.md", "BENCHMARKS.md", "CHANGELOG.md", "docs")


def mkdocs_build(config_dir: Path, site_dir: Path) -> subprocess.CompletedProcess[str]:
    """``mkdocs build --strict`` of ``config_dir/mkdocs.yml`` into ``site_dir``."""
    if importlib.util.find_spec("mkdocs") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("mkdocs is required in CI (the test extra includes the docs extra)")
        pytest.skip('the docs extra is not installed: pip install -e ".[docs]"')
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}  # the theme's notice, not a warning of ours
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "mkdocs",
            "build",
            "--strict",
            "--config-file",
            str(config_dir / "mkdocs.yml"),
            "--site-dir",
            str(site_dir),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=env,
    )


def copy_sources(into: Path) -> Path:
    """A copy of the site's sources, to break on purpose."""
    into.mkdir()
    for name in SOURCES:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, into / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, into / name)
    return into


class TestSite:
    @pytest.mark.slow
    def test_builds_strict(self, tmp_path: Path) -> None:
        """The real sources build with no warning, and every page of ``docs/`` is in it."""
        done = mkdocs_build(ROOT, tmp_path / "site")
        assert done.returncode == 0, done.stdout + done.stderr
        assert "WARNING" not in done.stderr, done.stderr
        home = (tmp_path / "site" / "index.html").read_text(encoding="utf-8")
        assert 'id="quick-start"' in home and 'id="where-to-go-next"' in home  # the README
        for page in (ROOT / "docs").glob("*.md"):
            built = "index.html" if page.stem == "index" else f"{page.stem}/index.html"
            assert (tmp_path / "site" / built).exists(), page.name

    def test_nav_lists_every_page(self) -> None:
        """Every page in ``docs/`` is in the navigation, once (``validation`` warns
        about the rest; this names them)."""
        config = yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))
        listed: list[str] = []

        def walk(items: list[object]) -> None:
            for item in items:
                value = next(iter(item.values())) if isinstance(item, dict) else item
                if isinstance(value, list):
                    walk(value)
                else:
                    listed.append(str(value))

        walk(config["nav"])
        pages = sorted(p.name for p in (ROOT / "docs").glob("*.md"))
        assert sorted(listed) == pages

    @pytest.mark.slow
    def test_a_broken_link_or_anchor_fails_the_build(self, tmp_path: Path) -> None:
        """The guard works: a dead link in the README and a dead anchor in a page each
        fail the strict build, named in its output."""
        sources = copy_sources(tmp_path / "src")
        readme = sources / "README.md"
        readme.write_text(readme.read_text() + "\nSee [gone](docs/no-such-page.md).\n")
        errors = sources / "docs" / "errors.md"
        errors.write_text(errors.read_text() + "\nSee [it](configuration.md#no-such-anchor).\n")
        done = mkdocs_build(sources, tmp_path / "site")
        assert done.returncode != 0
        output = done.stdout + done.stderr
        assert re.search(r"index\.md.*no-such-page\.md", output), output
        assert re.search(r"errors\.md.*no-such-anchor", output), output
