"""MkDocs hooks: the site's home, benchmarks and changelog are the repository's own files.

README.md, BENCHMARKS.md and CHANGELOG.md stay at the repository's root, where GitHub
and PyPI show them; their pages here (``index.md``, ``benchmarks.md``, ``changelog.md``)
are stand-ins whose text is replaced by the root file's, so nothing is written twice.
Links are kept right for GitHub in the sources (``docs/cli.md`` from the README,
``../BENCHMARKS.md`` from a page) and pointed at the site's pages here; the strict
build then checks every one of them.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

#: Site page -> the root file it shows.
ROOT_FILES = {
    "index.md": "README.md",
    "benchmarks.md": "BENCHMARKS.md",
    "changelog.md": "CHANGELOG.md",
}
#: Root file -> its page on the site.
PAGE_OF = {root: page for page, root in ROOT_FILES.items()}

_LINK = re.compile(r"\]\((?P<target>[^)\s]+)\)")


def _retarget(markdown: str, *, from_root: bool) -> str:
    """Point links written for GitHub at the site's pages."""

    def sub(match: re.Match[str]) -> str:
        target = match.group("target")
        path, hash_, anchor = target.partition("#")
        if from_root and path.startswith("docs/"):
            path = path.removeprefix("docs/")
        elif not from_root and path.startswith("../"):
            path = PAGE_OF.get(path.removeprefix("../"), path)
        if from_root:
            path = PAGE_OF.get(path, path)
        return f"]({path}{hash_}{anchor})"

    return _LINK.sub(sub, markdown)


def on_page_markdown(markdown: str, *, page: Any, config: Any, files: Any) -> str:
    """Replace a stand-in by its root file; retarget links on every page."""
    root_file = ROOT_FILES.get(page.file.src_uri)
    if root_file is None:
        return _retarget(markdown, from_root=False)
    root = Path(config.config_file_path).parent
    return _retarget((root / root_file).read_text(encoding="utf-8"), from_root=True)
