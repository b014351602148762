"""``suprsend-celery``: every verb against the real Redis and sandbox.

Most tests run the click group in-process with the test app (``obj=app``, the way an
embedding program would); the ones about how the CLI finds its configuration, its exit
statuses and the ``sandbox`` verb run the real console script in a subprocess.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from celery import Celery
from click.testing import CliRunner, Result
from conftest import WORKSPACE_KEY, WORKSPACE_SECRET

from suprsend_celery import (
    Event,
    PermanentDeliveryError,
    SuprsendClient,
    buffer_event,
    buffer_events,
)
from suprsend_celery.ops.cli import cli
from suprsend_celery.pipeline.runtime import get_flusher

MARKER = "marker-7f3a-properties-must-stay-hidden"


def run(app: Celery, *args: str, input: str | None = None) -> Result:
    return CliRunner().invoke(cli, list(args), obj=app, input=input)


def cli_command() -> list[str]:
    """The installed console script, else the module (same code)."""
    script = Path(sys.executable).parent / "suprsend-celery"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "suprsend_celery.ops.cli"]


def relay_env(redis_url: str, sandbox_url: str, **extra: str) -> dict[str, str]:
    """Environment for the standalone relay app (the CLI's default configuration)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SUPRSEND_", "CELERY_"))}
    env.update(
        SUPRSEND_WORKSPACE_KEY=WORKSPACE_KEY,
        SUPRSEND_WORKSPACE_SECRET=WORKSPACE_SECRET,
        SUPRSEND_BASE_URL=sandbox_url,
        CELERY_BROKER_URL=redis_url,
    )
    env.update(extra)
    return env


def run_subprocess(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*cli_command(), *args], env=env, capture_output=True, text=True, timeout=60, check=False
    )


class TestStatus:
    def test_json_shows_buffer_figures(self, celery_app: Celery) -> None:
        """``status --json`` reports the buffer_stats figures plus the breaker's reason."""
        for i in range(3):
            buffer_event(f"u{i}", "signed_up", app=celery_app)
        result = run(celery_app, "status", "--json")
        assert result.exit_code == 0, result.output
        figures = json.loads(result.stdout)
        assert figures["pending"] == 3
        assert figures["in_flight"] == 0
        assert figures["scheduled_retries"] == 0
        assert figures["dead"] == 0
        assert figures["breaker"] == "closed"
        assert figures["breaker_reason"] == ""
        assert figures["oldest_age_seconds"] >= 0

    def test_table_is_readable(self, celery_app: Celery) -> None:
        """Without ``--json`` it prints one labelled line per figure."""
        buffer_event("u1", "signed_up", app=celery_app)
        result = run(celery_app, "status")
        assert result.exit_code == 0, result.output
        source, *table = result.stdout.splitlines()
        assert source.startswith("read Redis redis://127.0.0.1:")
        lines = dict(line.split(None, 1) for line in table if line)
        assert lines["pending"].strip() == "1"
        assert lines["breaker"].strip() == "closed"

    def test_open_breaker_shows_why(self, app_factory: Any, sandbox: Any) -> None:
        """Refused credentials open the breaker; status names the reason; flush exits 1."""
        app = app_factory(suprsend_workspace_secret="WSSECRET_wrong")
        buffer_events([Event("u1", "signed_up"), Event("u2", "signed_up")], app=app)
        flushed = run(app, "flush")
        assert flushed.exit_code == 1
        assert "circuit breaker is open" in flushed.stderr
        assert "Traceback" not in flushed.output

        result = run(app, "status", "--json")
        figures = json.loads(result.stdout)
        assert figures["breaker"] == "open"
        assert "401" in figures["breaker_reason"]
        assert figures["pending"] == 2  # kept, never dead-lettered for a credentials fault
        assert figures["dead"] == 0
        table = run(app, "status").stdout
        assert "reason" in table
        assert "401" in table
        assert sandbox.stats()["events_processed"] == 0


class TestFlush:
    def test_drains_the_buffer_and_reports_counts(self, celery_app: Celery, sandbox: Any) -> None:
        """``flush`` sends everything pending now and prints the final counts."""
        buffer_events([Event(f"u{i}", "page_viewed", {"i": i}) for i in range(250)], app=celery_app)
        result = run(celery_app, "flush")
        assert result.exit_code == 0, result.output
        assert "sent 250, retry scheduled 0, dead-lettered 0, remaining 0" in result.stdout
        assert "flushing" in result.stderr  # the progress bar's label
        assert sandbox.stats()["events_processed"] == 250
        assert json.loads(run(celery_app, "status", "--json").stdout)["pending"] == 0

    def test_transient_failures_are_scheduled_not_lost(
        self, celery_app: Celery, sandbox: Any
    ) -> None:
        """Records a 503 refused stay in the buffer as scheduled retries."""
        sandbox.set_faults({"rules": [{"status": 503, "count": 1}]})
        buffer_events([Event(f"u{i}", "page_viewed") for i in range(5)], app=celery_app)
        result = run(celery_app, "flush")
        assert result.exit_code == 0, result.output
        assert "retry scheduled 5" in result.stdout
        assert "remaining 5" in result.stdout
        figures = json.loads(run(celery_app, "status", "--json").stdout)
        assert figures["scheduled_retries"] == 5

    def test_empty_buffer(self, celery_app: Celery) -> None:
        """Flushing an empty buffer is a no-op that succeeds."""
        result = run(celery_app, "flush")
        assert result.exit_code == 0, result.output
        assert "sent 0" in result.stdout


@pytest.fixture
def dead_keys(celery_app: Celery, sandbox: Any) -> list[str]:
    """Two dead letters (refused with 400 by the sandbox) and one delivered event."""
    sandbox.set_faults(
        {
            "rules": [
                {
                    "record_errors": [
                        {"event": "bad_event", "status": 400, "message": "plan is not allowed"}
                    ]
                }
            ]
        }
    )
    keys = buffer_events(
        [
            Event("u1", "bad_event", {"secret_note": MARKER}, idempotency_key="dl-one"),
            Event("u2", "bad_event", {"secret_note": MARKER}, idempotency_key="dl-two"),
            Event("u3", "good_event", {"secret_note": MARKER}),
        ],
        app=celery_app,
    )
    report = get_flusher(celery_app).run(10)
    assert report.dead_lettered == 2
    sandbox.clear_faults()
    return keys[:2]


class TestDeadLetters:
    def test_list_shows_key_event_error_attempts_age(
        self, celery_app: Celery, dead_keys: list[str]
    ) -> None:
        """The table names each letter's key, event, attempts, age and error, not properties."""
        result = run(celery_app, "dead-letters", "list")
        assert result.exit_code == 0, result.output
        source, header, *rows = result.stdout.splitlines()
        assert source.startswith("read Redis redis://127.0.0.1:")
        assert header.split() == ["KEY", "EVENT", "ATTEMPTS", "AGE", "ERROR"]
        assert len(rows) == 2
        for key in dead_keys:
            row = next(r for r in rows if r.startswith(key))
            key_, event, attempts, age, *error = row.split()
            assert (key_, event, attempts) == (key, "bad_event", "1")
            assert age.endswith("s")
            assert "plan is not allowed" in " ".join(error)
        assert MARKER not in result.output
        assert "u1" not in result.output  # distinct_id neither

    def test_show_properties_opt_in(self, celery_app: Celery, dead_keys: list[str]) -> None:
        """``--show-properties`` adds distinct_id and properties."""
        result = run(celery_app, "dead-letters", "list", "--show-properties")
        assert result.exit_code == 0, result.output
        assert MARKER in result.stdout
        assert "distinct_id=u1" in result.stdout

    def test_list_json(self, celery_app: Celery, dead_keys: list[str]) -> None:
        """``--json`` gives one object per letter, without properties unless asked."""
        listing = json.loads(run(celery_app, "dead-letters", "list", "--json").stdout)
        assert listing["key_prefix"] == "suprsend_celery"
        rows = listing["dead_letters"]
        assert {r["idempotency_key"] for r in rows} == set(dead_keys)
        for row in rows:
            assert row["event"] == "bad_event"
            assert row["status_code"] == 400
            assert row["attempts"] == 1
            assert row["source"] == "buffer"
            assert row["age_seconds"] >= 0
            assert "plan is not allowed" in row["error"]
            assert "properties" not in row
        assert MARKER not in json.dumps(rows)
        shown = json.loads(
            run(celery_app, "dead-letters", "list", "--json", "--show-properties").stdout
        )["dead_letters"]
        assert all(r["properties"]["secret_note"] == MARKER for r in shown)

    def test_list_empty_and_limit(self, celery_app: Celery, dead_keys: list[str]) -> None:
        """``--limit`` caps the rows and says how many exist."""
        result = run(celery_app, "dead-letters", "list", "--limit", "1")
        assert "(1 of 2 shown; use --limit)" in result.stdout
        run(celery_app, "dead-letters", "purge", "--all", "--yes")
        assert run(celery_app, "dead-letters", "list").stdout.endswith("\nno dead letters\n")
        listing = json.loads(run(celery_app, "dead-letters", "list", "--json").stdout)
        assert listing["dead_letters"] == []

    def test_requeue_by_key_delivers_on_next_flush(
        self, celery_app: Celery, sandbox: Any, dead_keys: list[str]
    ) -> None:
        """A requeued letter goes back to the buffer and the next flush delivers it."""
        result = run(celery_app, "dead-letters", "requeue", "--key", dead_keys[0])
        assert result.exit_code == 0, result.output
        assert "requeued 1 dead letter(s)" in result.stdout
        figures = json.loads(run(celery_app, "status", "--json").stdout)
        assert (figures["pending"], figures["dead"]) == (1, 1)
        assert run(celery_app, "flush").exit_code == 0
        processed = {e.get("$idempotency_key") for e in sandbox.events()}
        assert dead_keys[0] in processed
        assert dead_keys[1] not in processed

    def test_requeue_all_and_unknown_key(
        self, celery_app: Celery, sandbox: Any, dead_keys: list[str]
    ) -> None:
        """``--all`` requeues everything; an unknown key is reported on stderr, exit 1."""
        missing = run(celery_app, "dead-letters", "requeue", "--key", "no-such-key")
        assert missing.exit_code == 1
        assert "requeued 0" in missing.stdout
        assert "1 key(s) not found" in missing.stderr
        figures = json.loads(run(celery_app, "status", "--json").stdout)
        assert (figures["pending"], figures["dead"]) == (0, 2)
        result = run(celery_app, "dead-letters", "requeue", "--all")
        assert "requeued 2 dead letter(s)" in result.stdout
        run(celery_app, "flush")
        assert sandbox.stats()["events_processed"] == 3

    def test_requeue_with_an_unknown_key_requeues_the_known_and_exits_1(
        self, celery_app: Celery, dead_keys: list[str]
    ) -> None:
        """A known and an unknown ``--key``: the known one is requeued, the exit status is 1."""
        result = run(
            celery_app, "dead-letters", "requeue", "--key", dead_keys[0], "--key", "typo-key"
        )
        assert result.exit_code == 1
        assert "requeued 1 dead letter(s)" in result.stdout
        assert "1 key(s) not found among the dead letters" in result.stderr
        figures = json.loads(run(celery_app, "status", "--json").stdout)
        assert (figures["pending"], figures["dead"]) == (1, 1)

    def test_purge_asks_first(self, celery_app: Celery, dead_keys: list[str]) -> None:
        """Without ``--yes`` purge asks; answering no keeps every letter."""
        result = run(celery_app, "dead-letters", "purge", "--all", input="n\n")
        assert result.exit_code == 1
        assert "Aborted" in result.output
        assert json.loads(run(celery_app, "status", "--json").stdout)["dead"] == 2

        result = run(celery_app, "dead-letters", "purge", "--key", dead_keys[1], input="y\n")
        assert result.exit_code == 0, result.output
        assert "purged 1 dead letter(s)" in result.stdout
        rows = json.loads(run(celery_app, "dead-letters", "list", "--json").stdout)["dead_letters"]
        assert [r["idempotency_key"] for r in rows] == [dead_keys[0]]

    def test_purge_all_with_yes(self, celery_app: Celery, dead_keys: list[str]) -> None:
        """``--all --yes`` drops everything without a prompt."""
        result = run(celery_app, "dead-letters", "purge", "--all", "--yes")
        assert result.exit_code == 0, result.output
        assert "purged 2 dead letter(s)" in result.stdout
        assert json.loads(run(celery_app, "status", "--json").stdout)["dead"] == 0

    @pytest.mark.parametrize("verb", ["requeue", "purge"])
    def test_selection_is_required_and_exclusive(self, celery_app: Celery, verb: str) -> None:
        """Neither or both of ``--key``/``--all`` is a usage error (exit 2)."""
        neither = run(celery_app, "dead-letters", verb)
        assert neither.exit_code == 2
        assert "--key K (repeatable) or --all" in neither.output
        both = run(celery_app, "dead-letters", verb, "--key", "k", "--all")
        assert both.exit_code == 2


class TestConfiguration:
    @pytest.mark.slow
    def test_default_app_reads_the_environment(
        self, celery_app: Celery, redis_url: str, sandbox: Any
    ) -> None:
        """Without ``-A`` the standalone relay's environment variables configure the CLI."""
        buffer_events([Event("u1", "signed_up"), Event("u2", "signed_up")], app=celery_app)
        done = run_subprocess(["status", "--json"], relay_env(redis_url, sandbox.url))
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["pending"] == 2

        flushed = run_subprocess(["flush"], relay_env(redis_url, sandbox.url))
        assert flushed.returncode == 0, flushed.stderr
        assert "sent 2" in flushed.stdout
        assert sandbox.stats()["events_processed"] == 2

    @pytest.mark.slow
    def test_missing_setting_is_a_clean_error(self, redis_url: str, sandbox: Any) -> None:
        """A ConfigurationError exits 1 with its message and no traceback (``flush``
        sends, so it needs the credentials the read-only verbs do without)."""
        env = relay_env(redis_url, sandbox.url)
        del env["SUPRSEND_WORKSPACE_KEY"]
        done = run_subprocess(["flush"], env)
        assert done.returncode == 1
        assert "Error: suprsend_workspace_key is required" in done.stderr
        assert "Traceback" not in done.stderr

    @pytest.mark.slow
    def test_unreachable_redis_is_a_clean_error(self, sandbox: Any) -> None:
        """A Redis that refuses connections exits 1 with a one-line message."""
        done = run_subprocess(
            ["dead-letters", "list"], relay_env("redis://127.0.0.1:1/0", sandbox.url)
        )
        assert done.returncode == 1
        assert "Redis is not reachable" in done.stderr
        assert "Traceback" not in done.stderr

    @pytest.mark.slow
    def test_usage_errors_exit_2(self, redis_url: str, sandbox: Any) -> None:
        """Unknown verbs and options are usage errors."""
        assert run_subprocess(["no-such-verb"], relay_env(redis_url, sandbox.url)).returncode == 2
        assert (
            run_subprocess(["status", "--bogus"], relay_env(redis_url, sandbox.url)).returncode == 2
        )

    def test_app_option_loads_module_attr(
        self, redis_url: str, sandbox: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """``-A module:attr`` reads the settings of that Celery app."""
        name = f"cli_app_{uuid.uuid4().hex[:8]}"
        (tmp_path / f"{name}.py").write_text(
            "from celery import Celery\n"
            "my_app = Celery('cli_test', set_as_current=False)\n"
            f"my_app.conf.update(broker_url={redis_url!r}, suprsend_key_prefix='other',\n"
            f"    suprsend_workspace_key={WORKSPACE_KEY!r},\n"
            f"    suprsend_workspace_secret={WORKSPACE_SECRET!r},\n"
            f"    suprsend_base_url={sandbox.url!r})\n"
        )
        monkeypatch.syspath_prepend(str(tmp_path))
        try:
            module = __import__(name)
            buffer_event("u1", "signed_up", app=module.my_app)
            result = CliRunner().invoke(cli, ["-A", f"{name}:my_app", "status", "--json"])
            assert result.exit_code == 0, result.output
            assert json.loads(result.stdout)["pending"] == 1
            # By module name alone, as with `celery -A`.
            result = CliRunner().invoke(cli, ["-A", name, "status", "--json"])
            assert json.loads(result.stdout)["pending"] == 1
            module.my_app.close()
        finally:
            sys.modules.pop(name, None)

    def test_app_option_unknown_module(self) -> None:
        """A bad ``-A`` exits 1 naming it."""
        result = CliRunner().invoke(cli, ["-A", "no_such_module_xyz:app", "status"])
        assert result.exit_code == 1
        assert "cannot load the Celery app 'no_such_module_xyz:app'" in result.output


def redis_only_env(redis_url: str) -> dict[str, str]:
    """A monitoring sidecar's environment: the broker's Redis, no SuprSend credentials."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SUPRSEND_", "CELERY_"))}
    env["CELERY_BROKER_URL"] = redis_url
    return env


class TestRedisOnlyVerbs:
    """Verbs that only read or move records in Redis need no workspace credentials."""

    @pytest.mark.slow
    def test_read_and_move_without_credentials(
        self, celery_app: Celery, dead_keys: list[str], redis_url: str
    ) -> None:
        """status, check, dead-letters list/requeue/purge run with Redis alone."""
        env = redis_only_env(redis_url)
        status = run_subprocess(["status", "--json"], env)
        assert status.returncode == 0, status.stderr
        assert json.loads(status.stdout)["dead"] == 2
        check = run_subprocess(["check"], env)
        assert check.returncode == 0, check.stdout + check.stderr
        assert "healthy" in check.stdout
        listed = run_subprocess(["dead-letters", "list", "--json"], env)
        assert listed.returncode == 0, listed.stderr
        shown = {row["idempotency_key"] for row in json.loads(listed.stdout)["dead_letters"]}
        assert shown == set(dead_keys)
        requeued = run_subprocess(["dead-letters", "requeue", "--key", "dl-one"], env)
        assert requeued.returncode == 0, requeued.stderr
        assert "requeued 1 dead letter(s)" in requeued.stdout
        purged = run_subprocess(["dead-letters", "purge", "--all", "--yes"], env)
        assert purged.returncode == 0, purged.stderr
        assert "purged 1 dead letter(s)" in purged.stdout
        assert json.loads(run(celery_app, "status", "--json").stdout)["pending"] == 1
        for done in (status, check, listed, requeued, purged):
            assert "workspace_key" not in done.stdout + done.stderr

    @pytest.mark.slow
    def test_metrics_without_credentials(self, celery_app: Celery, redis_url: str) -> None:
        """The exporter starts and serves a scrape with Redis alone."""
        buffer_events([Event("u1", "signed_up"), Event("u2", "signed_up")], app=celery_app)
        process = subprocess.Popen(
            [*cli_command(), "metrics", "--port", "0"],
            env=redis_only_env(redis_url),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            bufsize=0,
        )
        try:
            url = serving_url(process)
            body = requests.get(url, timeout=10).text
            assert "suprsend_celery_redis_up 1.0" in body
            assert "suprsend_celery_pending_records 2.0" in body
        finally:
            process.terminate()
            process.communicate(timeout=15)
        assert process.returncode == 0

    def test_flush_still_needs_credentials(self, redis_url: str, sandbox: Any) -> None:
        """``flush`` sends: without credentials it says which setting is missing."""
        app = Celery("no_credentials", set_as_current=False)
        app.conf.update(broker_url=redis_url, suprsend_base_url=sandbox.url)
        try:
            result = run(app, "flush")
        finally:
            app.close()
        assert result.exit_code == 1
        assert "suprsend_workspace_key is required" in result.output


def serving_url(process: subprocess.Popen[bytes]) -> str:
    """The URL from ``metrics``' "serving <url>" line (its stderr if it exits first)."""
    stdout = process.stdout
    assert stdout is not None
    deadline = time.monotonic() + 30
    lines: list[str] = []
    while True:
        left = deadline - time.monotonic()
        assert left > 0, f"the exporter did not start: {lines}"
        ready, _, _ = select.select([stdout], [], [], left)
        if not ready:
            continue
        line = stdout.readline().decode().strip()
        if not line:
            _, err = process.communicate(timeout=10)
            raise AssertionError(f"the exporter exited: {lines} {err.decode()}")
        lines.append(line)
        if line.startswith("serving "):
            return line.split(" ", 1)[1]


@pytest.fixture
def sandbox_process() -> Iterator[tuple[subprocess.Popen[bytes], list[str]]]:
    """``suprsend-celery sandbox --port 0`` in a subprocess, with its banner lines."""
    process = subprocess.Popen(
        [
            *cli_command(),
            "sandbox",
            "--port",
            "0",
            "--workspace-key",
            "WSKEY_cli_test_0123",
            "--workspace-uid",
            "ws_uid_cli_test_0123456789",
            "--api-key",
            "SSAPIKEY_cli_test",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        bufsize=0,  # unbuffered, so select() sees every line that is not read yet
    )
    try:
        stdout = process.stdout
        assert stdout is not None
        banner: list[str] = []
        deadline = time.monotonic() + 30
        while not banner or not banner[-1].startswith("Press Ctrl-C"):
            left = deadline - time.monotonic()
            assert left > 0, f"no banner from the sandbox: {banner}"
            ready, _, _ = select.select([stdout], [], [], left)
            if ready:
                line = stdout.readline()
                assert line, f"the sandbox exited: {banner}"
                banner.append(line.decode().strip())
        yield process, banner
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=10)  # reaps it and closes the pipes


class TestSandboxCommand:
    @pytest.mark.slow
    def test_serves_until_sigterm(self, sandbox_process: tuple[Any, list[str]]) -> None:
        """The sandbox verb prints URL and credentials, serves, and stops cleanly on SIGTERM."""
        process, banner = sandbox_process
        url = banner[0].rsplit(" ", 1)[1]
        assert f"export SUPRSEND_BASE_URL={url}" in banner
        assert "export SUPRSEND_WORKSPACE_KEY=WSKEY_cli_test_0123" in banner
        uid_line = "SUPRSEND_WORKSPACE_UID=ws_uid_cli_test_0123456789"
        assert any(line.endswith(uid_line) for line in banner)
        stats = requests.get(url + "_sandbox/stats", timeout=5).json()
        assert stats["events_processed"] == 0
        # --workspace-uid/--api-key: Bearer requests with env = the UID are processed.
        api = SuprsendClient.with_workspace_api_key(
            "ws_uid_cli_test_0123456789", "SSAPIKEY_cli_test", base_url=url, timeout=5
        )
        assert api.send_event(Event("u1", "signed_up"))["status_code"] == 202
        api.close()
        wrong = SuprsendClient.with_workspace_api_key(
            "ws_uid_cli_test_0123456789", "SSAPIKEY_other", base_url=url, timeout=5
        )
        with pytest.raises(PermanentDeliveryError, match="HTTP 401"):
            wrong.send_event(Event("u1", "signed_up"))
        wrong.close()
        assert requests.get(url + "_sandbox/stats", timeout=5).json()["events_processed"] == 1
        process.send_signal(signal.SIGTERM)
        out, _ = process.communicate(timeout=15)
        assert process.returncode == 0
        assert b"stopped: 1 events processed" in out
