"""A record's ``env`` (which workspace) is set when it is sent, from the settings then.

Issue 11 item 1: events accepted under a wrong workspace key were dead-lettered once
the key was fixed, because the record carried the old key from the moment it was
accepted; key rotation did the same to everything still buffered. These run the real
path: a Redis, in-process workers, the sandbox.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from _buffer_helpers import buffer_of, flush, flush_until
from celery import Celery
from click.testing import CliRunner
from conftest import (
    WORKSPACE_KEY,
    WORKSPACE_SECRET,
    close_result_consumer,
    in_process_worker,
    make_app,
    wait_for,
)

from suprsend_celery import buffer_event, track_event
from suprsend_celery.delivery.dead_letters import dead_letter_entry
from suprsend_celery.dev.sandbox import Sandbox
from suprsend_celery.events.model import Event, accept
from suprsend_celery.events.records import env_field, with_env
from suprsend_celery.ops.cli import cli
from suprsend_celery.pipeline.settings import reset_settings

OLD_KEY = "WSKEY_old_rotated_away_0123"
WRONG_KEY = "WSKEY_wrong_copy_paste_0123"


@pytest.fixture
def apps() -> Iterator[list[Celery]]:
    made: list[Celery] = []
    yield made
    for app in made:
        reset_settings(app)
        close_result_consumer(app)
        app.close()


def an_app(apps: list[Celery], redis_url: str, sandbox_url: str, key: str, **conf: Any) -> Celery:
    """A Celery app as a deployment configures it, with workspace key ``key``."""
    app = make_app(redis_url, sandbox_url, suprsend_workspace_key=key, **conf)
    app.set_current()
    app.set_default()
    apps.append(app)
    return app


def released_record(i: int, env: str) -> bytes:
    """A record as 0.1 stored it: the SDK's bytes with ``env`` fixed at accept."""
    stored = accept(Event(f"user-{i}", "order_placed", {"n": i}), sdk_version="0.1").payload
    return with_env(stored, env_field(env))


def envs(sandbox: Sandbox) -> set[str]:
    return {e["env"] for e in sandbox.events()}


class TestStoredForm:
    """What the buffer holds has no ``env``; what is sent has the current one."""

    def test_buffer_holds_no_env_and_bulk_sends_the_current(
        self, redis_url: str, sandbox: Sandbox, apps: list[Celery]
    ) -> None:
        app = an_app(apps, redis_url, sandbox.url, WORKSPACE_KEY)
        buffer_event("u1", "signed_up", {"plan": "pro"}, app=app)
        [stored] = buffer_of(app).redis.lrange(buffer_of(app).keys.pending, 0, -1)
        assert "env" not in json.loads(stored)
        with in_process_worker(app):
            flush(app)
        [sent] = sandbox.events()
        assert list(sent)[:5] == ["$insert_id", "$time", "event", "env", "distinct_id"]
        assert sent["env"] == WORKSPACE_KEY


class TestWrongKeyFixed:
    """Accepted under a wrong key, kept, then delivered once the key is fixed."""

    @pytest.mark.slow
    def test_wrong_key_then_fixed_and_restarted_delivers_everything(
        self, redis_url: str, sandbox: Sandbox, apps: list[Celery]
    ) -> None:
        """Buffered and direct events accepted with a wrong key are all delivered after the fix."""
        wrong = an_app(apps, redis_url, sandbox.url, WRONG_KEY)
        buffered = [buffer_event(f"u{i}", "order_placed", {"n": i}, app=wrong) for i in range(30)]
        with in_process_worker(wrong):
            direct = [track_event.delay(f"d{i}", "order_placed", {"n": i}) for i in range(5)]
            for result in direct:
                with pytest.raises(Exception, match="sent once this is fixed"):
                    result.get(timeout=30)
            report = flush(wrong)
        assert report["sent"] == 0 and report["dead_lettered"] == 0
        assert sandbox.stats()["auth_failures"] >= 2
        assert sandbox.events() == []
        buffer = buffer_of(wrong)
        assert buffer.stats()["dead"] == 0
        assert buffer.remaining() == 35

        fixed = an_app(apps, redis_url, sandbox.url, WORKSPACE_KEY)  # the restart
        with in_process_worker(fixed):
            # The breaker the wrong key opened lets a probe through after its cool-down.
            flush_until(fixed, lambda: len(sandbox.events()) == 35, timeout=60)
        delivered = {e["$idempotency_key"] for e in sandbox.events()}
        assert set(buffered) <= delivered
        assert envs(sandbox) == {WORKSPACE_KEY}
        assert sandbox.stats()["rejected"] == 0
        assert buffer_of(fixed).stats()["dead"] == 0


class TestKeyRotation:
    """Whatever waits in Redis or the broker goes out under the key in force when sent."""

    def test_rotation_delivers_what_was_buffered_and_published(
        self, redis_url: str, apps: list[Celery]
    ) -> None:
        with Sandbox(workspace_key=OLD_KEY, workspace_secret="WSSECRET_old_0123") as old:
            before = an_app(
                apps, redis_url, old.url, OLD_KEY, suprsend_workspace_secret="WSSECRET_old_0123"
            )
            keys = [buffer_event(f"u{i}", "order_placed", {"n": i}, app=before) for i in range(20)]
            direct = track_event.delay("d1", "order_placed", {"n": 1}).id  # waits in the broker
        with Sandbox(workspace_key=WORKSPACE_KEY, workspace_secret=WORKSPACE_SECRET) as new:
            after = an_app(apps, redis_url, new.url, WORKSPACE_KEY)
            with in_process_worker(after):
                assert after.AsyncResult(direct).get(timeout=30)["status"] == "success"
                flush(after)
            assert {e["$idempotency_key"] for e in new.events()} >= set(keys)
            assert len(new.events()) == 21
            assert envs(new) == {WORKSPACE_KEY}
            assert new.stats()["rejected"] == 0


class TestReleasedRecords:
    """Records the released version stored with an ``env`` are delivered with the current one."""

    def test_pending_records_with_an_old_env_are_delivered(
        self, redis_url: str, sandbox: Sandbox, apps: list[Celery]
    ) -> None:
        app = an_app(apps, redis_url, sandbox.url, WORKSPACE_KEY)
        buffer_of(app).push([released_record(i, OLD_KEY) for i in range(10)])
        with in_process_worker(app):
            report = flush(app)
        assert report["sent"] == 10 and report["dead_lettered"] == 0
        assert envs(sandbox) == {WORKSPACE_KEY}

    def test_broker_message_with_an_old_env_is_delivered(
        self, redis_url: str, sandbox: Sandbox, apps: list[Celery]
    ) -> None:
        """A ``track_event`` message published by 0.1 (its record has an env) is sent."""
        app = an_app(apps, redis_url, sandbox.url, WORKSPACE_KEY)
        record = released_record(1, OLD_KEY).decode()
        with in_process_worker(app):
            result = app.send_task("suprsend_celery.track_event", kwargs={"record": record})
            assert result.get(timeout=30)["status"] == "success"
        assert envs(sandbox) == {WORKSPACE_KEY}

    def test_env_dead_letters_become_deliverable_by_requeue(
        self, redis_url: str, sandbox: Sandbox, apps: list[Celery]
    ) -> None:
        """Dead letters whose only fault was the workspace identity are sent by requeue."""
        app = an_app(apps, redis_url, sandbox.url, WORKSPACE_KEY)
        buffer = buffer_of(app)
        for i in range(5):
            entry = dead_letter_entry(
                released_record(i, OLD_KEY),
                error="HTTP 400: 'env' does not match the workspace key of the request",
                status_code=400,
                attempts=1,
                source="buffer",
            )
            buffer.dead_letter(entry)
        result = CliRunner().invoke(cli, ["dead-letters", "requeue", "--all"], obj=app)
        assert result.exit_code == 0, result.output
        assert "requeued 5" in result.output
        with in_process_worker(app):
            report = flush(app)
        assert report["sent"] == 5 and report["dead_lettered"] == 0
        assert envs(sandbox) == {WORKSPACE_KEY}
        wait_for(lambda: buffer.stats()["dead"] == 0)
