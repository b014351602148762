"""Junk in the buffer's Redis keys never stops the flusher, and nothing is dropped.

Anything can be written into a Redis list (a bug elsewhere, a hand-made ``RPUSH``, a
restore from the wrong dump). An item that is not a record is dead-lettered byte for
byte with a reason, the good records claimed with it are sent, and ``requeue`` moves
only what is a record, keeping the rest.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from _buffer_helpers import buffer_of, make_events, processed_keys, redis_state
from celery import Celery
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from suprsend_celery import buffer_events
from suprsend_celery.buffer.keys import KINDS
from suprsend_celery.buffer.protocol import Buffer
from suprsend_celery.delivery.dead_letters import parse_dead_letter
from suprsend_celery.delivery.decisions import UNREADABLE
from suprsend_celery.dev.sandbox import Sandbox
from suprsend_celery.events.records import read_item
from suprsend_celery.ops.cli import cli
from suprsend_celery.ops.health import _wrong_kinds
from suprsend_celery.pipeline.runtime import get_flusher

#: Items a review found to block a whole batch forever, and a few more of the same kind.
JUNK = [b"garbage", b"[1,2,3]", b"12345", b"", b"abc|def", b"3|garbage", b"|{}", b"7|"]


def interleave(good: list[bytes], junk: list[bytes]) -> list[bytes]:
    """Junk spread among the good records, so every claim holds some of each."""
    mixed = list(good)
    for n, item in enumerate(junk):
        mixed.insert((n * 3) % (len(mixed) + 1), item)
    return mixed


def drain(app: Celery) -> None:
    """Flush runs until nothing remains; a run that raised would fail the test."""
    flusher = get_flusher(app)
    for _ in range(10):
        report = flusher.run(10.0)
        if report.remaining == 0:
            return
    raise AssertionError(f"the buffer did not drain: {report}")


def good_records(app: Celery, count: int) -> tuple[list[str], list[bytes]]:
    """``count`` accepted records, taken back out of pending as the bytes Redis holds."""
    buffer = buffer_of(app)
    keys = buffer_events(make_events(count), app=app)
    raw = buffer.redis.lrange(buffer.keys.pending, 0, -1)
    buffer.redis.delete(buffer.keys.pending)
    return keys, raw


class TestPoisonItems:
    """Unreadable items are set aside; their batch still goes."""

    def test_junk_among_twenty_good_records(
        self, app_factory: Callable[..., Celery], sandbox: Sandbox
    ) -> None:
        """The review's case: 20 good records around junk items, small batches."""
        app = app_factory(suprsend_flush_batch_size=5)
        keys, good = good_records(app, 20)
        buffer = buffer_of(app)
        buffer.redis.rpush(buffer.keys.pending, *interleave(good, JUNK))
        drain(app)
        assert processed_keys(sandbox) == dict.fromkeys(keys, 1)
        letters = buffer.dead_letters(limit=100)
        assert sorted(letter.record for letter in letters) == sorted(JUNK)
        assert {letter.error for letter in letters} == {UNREADABLE}
        assert all(letter.idempotency_key is None for letter in letters)
        state = redis_state(buffer)
        assert state["pending"] == state["in_flight"] == state["retry"] == 0

    def test_junk_in_the_retry_set_and_the_journal(
        self, app_factory: Callable[..., Celery], sandbox: Sandbox
    ) -> None:
        """Due retries and silent journal entries reach pending unchecked: same outcome."""
        app = app_factory()
        keys, good = good_records(app, 3)
        buffer = buffer_of(app)
        buffer.redis.zadd(buffer.keys.retry, {b"retry-junk": 0, good[0]: 0})
        buffer.redis.zadd(buffer.keys.journal, {b"[journal junk]": 0, good[1]: 0})
        buffer.redis.rpush(buffer.keys.pending, good[2])
        drain(app)
        assert processed_keys(sandbox) == dict.fromkeys(keys, 1)
        assert sorted(d.record for d in buffer.dead_letters()) == [b"[journal junk]", b"retry-junk"]

    def test_stats_read_past_a_junk_head(self, app_factory: Callable[..., Celery]) -> None:
        """``buffer_stats``/``status`` read the oldest record's age; junk has none."""
        app = app_factory()
        buffer = buffer_of(app)
        buffer.redis.rpush(buffer.keys.pending, b"garbage")
        stats = buffer.stats()
        assert stats["pending"] == 1
        assert stats["oldest_age_seconds"] == 0.0

    @settings(
        max_examples=25,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture],
    )
    @given(junk=st.lists(st.binary(max_size=40), min_size=1, max_size=8))
    def test_any_bytes(
        self, app_factory: Callable[..., Celery], sandbox: Sandbox, junk: list[bytes]
    ) -> None:
        """Whatever bytes sit among the records: every good one is delivered once, every
        unreadable item is dead-lettered as it was, and the flusher never raises."""
        sandbox.reset()
        app = app_factory(suprsend_flush_batch_size=4)
        buffer = buffer_of(app)
        buffer.clear()
        keys, good = good_records(app, 6)
        buffer.redis.rpush(buffer.keys.pending, *interleave(good, junk))
        drain(app)
        assert processed_keys(sandbox) == dict.fromkeys(keys, 1)
        unreadable = sorted(item for item in junk if read_item(item) is None)
        letters = buffer.dead_letters(limit=100)
        assert sorted(d.record for d in letters if d.error == UNREADABLE) == unreadable
        # A readable junk item ("{..." or "3|{...}") was sent; SuprSend judged it.
        assert len(letters) == len(junk)


#: Junk for every other key the buffer owns, each of its own Redis type: a value that
#: is not a number where a count or a time is kept, members that name nothing.
JUNK_VALUES: dict[str, Any] = {
    "inflight": b"garbage",
    "claims": {b"no-such-claim": 0},
    "breaker": {
        b"state": b"open",
        b"until": b"garbage",
        b"failures": b"x",
        b"cooldown": b"nan",
        b"open_since": b"\xff",
    },
    "concurrency": {b"limit": b"garbage", b"refused": b"x", b"flushers": b"?"},
    "flushers": {b"junk-flusher": 0},
    "journal_expires": {b"[not a record]": 0},
    "journal_taken": {b"not-a-sha": 0},
    "metrics": {
        b"records:sent": b"garbage",
        b"records:lease_expired": b"x",
        b"requests:bulk:2xx": b"1e999",
        b"request_seconds:sum": b"nan",
        b"last_flush_at": b"never",
        b"junk": b"\xff",
    },
    "shards": [b"garbage"],
    "outbox": {b"pending": b"x"},
    "wake": [b"garbage", b""],
    "duty": {b"junk-run": 0},
}


def write_junk(buffer: Buffer) -> None:
    """``JUNK_VALUES`` into the buffer's keys (``buffer`` unsharded: shard 0's keys)."""
    client = buffer.redis
    for name, junk in JUNK_VALUES.items():
        key = getattr(buffer.keys, name)
        if isinstance(junk, bytes):
            client.set(key, junk)
        elif isinstance(junk, list):
            client.sadd(key, *junk) if name == "shards" else client.rpush(key, *junk)
        elif name in ("breaker", "concurrency", "metrics", "outbox"):
            client.hset(key, mapping=junk)
        else:
            client.zadd(key, junk)


class TestJunkInEveryKey:
    """A value that is not what we keep, in any key we own, stops neither accepts, nor
    the flusher, nor the figures (``status``, ``check`` and the exporter read them)."""

    def test_accepts_flushes_and_reads(
        self, app_factory: Callable[..., Celery], sandbox: Sandbox
    ) -> None:
        app = app_factory(suprsend_flush_batch_size=5)
        keys, good = good_records(app, 20)
        buffer = buffer_of(app)
        write_junk(buffer)
        buffer.redis.rpush(buffer.keys.pending, *interleave(good, JUNK))
        keys += buffer_events(make_events(5, "signed_up"), app=app)  # the bound is read
        before = buffer.snapshot()
        assert before.pending == len(good) + len(JUNK) + 5 and before.in_flight == 0
        drain(app)
        assert processed_keys(sandbox) == dict.fromkeys(keys, 1)
        assert sorted(d.record for d in buffer.dead_letters(limit=100)) == sorted(JUNK)
        after = buffer.snapshot()
        # The in-flight count was counted again; a junk counter starts again from 0.
        assert after.in_flight == 0 and buffer.redis.get(buffer.keys.inflight) == b"0"
        assert after.counters["records:sent"] == len(keys)
        assert after.breaker.state == "closed"
        assert buffer.stats()["pending"] == 0
        # Every key held the type the scripts work on (they ran on each without a
        # WRONGTYPE): the types ``check`` expects (``KINDS``) are those.
        # (junk items in the other four: ``TestPoisonItems``)
        assert set(KINDS) - set(JUNK_VALUES) == {"pending", "retry", "journal", "dead"}
        assert _wrong_kinds(buffer) == []


class TestRequeueKeepsWhatItCannotMove:
    """``dead-letters requeue`` moves records back and keeps every other entry."""

    def entries(self, good: list[bytes]) -> list[bytes]:
        header = b'{"idempotency_key": null, "error": "x"}'
        return [
            *(parse_dead_letter(b"{}\n" + r).raw for r in good),
            b"no newline at all",
            b"\n",
            header + b"\n",
            header + b"\nnot a record",
        ]

    def test_requeue_all(self, app_factory: Callable[..., Celery]) -> None:
        """Three records move; the four damaged entries stay, in their order."""
        app = app_factory()
        _, good = good_records(app, 3)
        buffer = buffer_of(app)
        entries = self.entries(good)
        for entry in entries:
            buffer.dead_letter(entry)
        moved, kept = buffer.requeue_dead_letters()
        assert (moved, kept) == (3, 4)
        assert buffer.redis.lrange(buffer.keys.pending, 0, -1) == good
        assert buffer.redis.lrange(buffer.keys.dead, 0, -1) == list(reversed(entries[3:]))

    def test_cli_reports_what_it_moved(
        self, app_factory: Callable[..., Celery], redis_url: str
    ) -> None:
        """The count printed is the count moved, and the kept ones are named."""
        app = app_factory()
        _, good = good_records(app, 2)
        buffer = buffer_of(app)
        for entry in self.entries(good):
            buffer.dead_letter(entry)
        result = CliRunner().invoke(
            cli, ["dead-letters", "requeue", "--all"], obj=app, catch_exceptions=False
        )
        assert result.exit_code == 0, result.output
        assert "requeued 2 dead letter(s)" in result.output
        assert "kept 4 dead letter(s)" in result.output
        assert buffer.stats()["dead"] == 4
