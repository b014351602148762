"""RedisBuffer against a real Redis: push, leased claims, settle, breaker, dead letters, stats.

No HTTP here: these tests drive the Lua scripts directly and check what Redis holds
afterwards. The flusher and the sandbox are exercised in ``test_flush.py``.
"""

from __future__ import annotations

import json
import os
import random
import threading
from collections.abc import Callable
from typing import Any

import pytest
import redis
from _buffer_helpers import settlement
from conftest import REDIS_KILLED, wait_for

from suprsend_celery import BufferFullError, Event, InvalidEventError
from suprsend_celery.buffer.breaker import breaker_state
from suprsend_celery.buffer.opening import BufferConfig, open_buffer
from suprsend_celery.buffer.redis_buffer import RedisBuffer
from suprsend_celery.buffer.scripts import claim_call
from suprsend_celery.delivery.dead_letters import dead_letter_entry, parse_dead_letter
from suprsend_celery.dev.redis_server import RedisServer
from suprsend_celery.events.model import accept
from suprsend_celery.events.records import join_item, split_item
from suprsend_celery.pipeline.producers import buffer_event, buffer_events, buffer_stats
from suprsend_celery.pipeline.runtime import get_buffer


def make_record(i: int, event: str = "order_placed", **properties: Any) -> bytes:
    """One accepted record, exactly as producers store it."""
    props = {"n": i, **properties}
    return accept(Event(f"user-{i}", event, props), sdk_version="tests").payload


def key_of(record: bytes) -> str:
    key: str = json.loads(split_item(record)[1])["$idempotency_key"]
    return key


@pytest.fixture
def make_buffer(redis_client: redis.Redis) -> Callable[..., RedisBuffer]:
    def factory(**kwargs: Any) -> RedisBuffer:
        kwargs.setdefault("prefix", "t")
        return RedisBuffer(redis_client, **kwargs)

    return factory


@pytest.fixture
def buf(make_buffer: Callable[..., RedisBuffer]) -> RedisBuffer:
    return make_buffer()


def claim_key_lengths(buffer: RedisBuffer) -> int:
    """How many records sit in live claims, counted the slow way."""
    ids = buffer.redis.zrange(buffer.keys.claims, 0, -1)
    return sum(int(buffer.redis.llen(buffer.keys.claim_prefix + i.decode())) for i in ids)


class TestItems:
    """Stored items: a bare record, or ``attempts|record`` after a failure."""

    def test_round_trip(self) -> None:
        """join_item and split_item are inverses, and a fresh record has no prefix."""
        record = make_record(1)
        assert join_item(0, record) == record
        assert split_item(record) == (0, record)
        assert split_item(join_item(7, record)) == (7, record)
        assert join_item(12, record).startswith(b"12|{")


class TestPush:
    """push: all records or none, bounded by max_length."""

    def test_appends_in_order(self, buf: RedisBuffer) -> None:
        """Records land in pending in the order given; push returns the new length."""
        records = [make_record(i) for i in range(5)]
        assert buf.push(records[:2]) == 2
        assert buf.push(records[2:]) == 5
        assert buf.redis.lrange(buf.keys.pending, 0, -1) == records

    def test_many_records_in_one_call(self, buf: RedisBuffer) -> None:
        """More records than Lua's unpack takes at once still arrive, in order."""
        records = [b'{"n": %d}' % i for i in range(2500)]
        assert buf.push(records) == 2500
        assert buf.redis.lrange(buf.keys.pending, 0, -1) == records

    def test_empty_push_is_a_no_op(self, buf: RedisBuffer) -> None:
        """Nothing to push means no round trip and no key."""
        assert buf.push([]) == 0
        assert not buf.redis.exists(buf.keys.pending)

    def test_full_buffer_refuses_the_whole_batch(
        self, make_buffer: Callable[..., RedisBuffer]
    ) -> None:
        """A batch that does not fit is refused whole; the buffer keeps what it accepted."""
        buf = make_buffer(max_length=10)
        accepted = [make_record(i) for i in range(8)]
        buf.push(accepted)
        with pytest.raises(BufferFullError, match="suprsend_buffer_max_length=10"):
            buf.push([make_record(100 + i) for i in range(3)])
        assert buf.redis.lrange(buf.keys.pending, 0, -1) == accepted
        buf.push([make_record(200), make_record(201)])  # exactly fills it
        with pytest.raises(BufferFullError):
            buf.push([make_record(300)])
        assert buf.pending_count() == 10

    def test_bound_counts_in_flight_and_retries(
        self, make_buffer: Callable[..., RedisBuffer]
    ) -> None:
        """Claimed records and scheduled retries still count against max_length."""
        buf = make_buffer(max_length=4)
        buf.push([make_record(i) for i in range(4)])
        claim = buf.claim(2, lease=30)
        buf.settle(claim.id, settlement(retries=[(60, join_item(1, claim.items[0]))]))
        assert buf.stats()["pending"] == 2
        assert buf.stats()["scheduled_retries"] == 1
        with pytest.raises(BufferFullError):
            buf.push([make_record(9), make_record(10)])
        buf.push([make_record(9)])
        assert buf.remaining() == 4


class TestProducerConnection:
    """push's own connections fall back to redis-py's retrying path on any trouble."""

    def test_script_lost_by_redis_is_loaded_again(self, buf: RedisBuffer) -> None:
        """After SCRIPT FLUSH (as after a restart) the next push still lands, once."""
        records = [make_record(i) for i in range(3)]
        buf.push(records[:1])
        buf.redis.script_flush()
        buf.push(records[1:2])
        buf.push(records[2:])
        assert buf.redis.lrange(buf.keys.pending, 0, -1) == records

    @REDIS_KILLED
    def test_connection_broken_by_a_restart_reconnects(self) -> None:
        """A push after Redis was SIGKILLed and restarted reconnects and lands."""
        records = [make_record(i) for i in range(2)]
        with RedisServer(appendonly=True, appendfsync="always") as server:
            client = server.client()
            try:
                buf = RedisBuffer(client)
                buf.push(records[:1])
                server.restart(kill=True)
                buf.push(records[1:])
                assert client.lrange(buf.keys.pending, 0, -1) == records
            finally:
                client.close()

    def test_connections_are_reused_not_multiplied(self, buf: RedisBuffer) -> None:
        """Sequential pushes share one connection; eight threads use at most eight."""
        for i in range(20):
            buf.push([make_record(i)])
        assert len(buf.slot.producers._idle) == 1

        def producer(n: int) -> None:
            for i in range(50):
                buf.push([make_record(n * 100 + i)])

        threads = [threading.Thread(target=producer, args=(n,)) for n in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert 1 <= len(buf.slot.producers._idle) <= 8
        assert buf.pending_count() == 20 + 8 * 50

    @pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
    def test_a_forked_child_opens_its_own_connection(self, buf: RedisBuffer) -> None:
        """A child (gunicorn/uWSGI pre-fork) never writes on its parent's socket."""
        records = [make_record(i) for i in range(3)]
        buf.push(records[:1])
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the child
            code = 0
            try:
                buf.push(records[1:2])
                code = 0 if len(buf.slot.producers._idle) == 1 else 3
            except BaseException:
                code = 4
            os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        buf.push(records[2:])
        assert buf.redis.lrange(buf.keys.pending, 0, -1) == records


class TestProducer:
    """buffer_event / buffer_events / buffer_stats on a configured app."""

    def test_buffer_event_returns_the_key_it_stored(self, app_factory: Any) -> None:
        """The returned key is the record's $idempotency_key, given or generated."""
        app = app_factory(suprsend_key_prefix="prod")
        given = buffer_event("u1", "signed_up", {"plan": "pro"}, idempotency_key="k-1", app=app)
        generated = buffer_event(Event("u2", "signed_up"), app=app)
        buf = get_buffer(app)
        assert buf is not None
        assert buf.keys.pending == "{prod}:pending"
        stored = [json.loads(r) for r in buf.redis.lrange(buf.keys.pending, 0, -1)]
        assert given == "k-1"
        assert [r["$idempotency_key"] for r in stored] == ["k-1", generated]
        assert stored[0]["properties"]["plan"] == "pro"

    def test_buffer_events_is_all_or_nothing(self, app_factory: Any) -> None:
        """A bad event or a full buffer refuses the whole call: nothing is buffered."""
        app = app_factory(suprsend_buffer_max_length=5)
        keys = buffer_events([Event(f"u{i}", "evt_ok") for i in range(3)], app=app)
        assert len(set(keys)) == 3
        with pytest.raises(InvalidEventError):
            buffer_events([Event("u", "evt_ok"), Event("u", "$bad_name")], app=app)
        with pytest.raises(InvalidEventError, match="item 1"):
            buffer_events([Event("u", "evt_ok"), "not an event"], app=app)
        with pytest.raises(BufferFullError):
            buffer_events([Event(f"v{i}", "evt_ok") for i in range(3)], app=app)
        assert buffer_stats(app=app)["pending"] == 3
        buffer_events([Event(f"w{i}", "evt_ok") for i in range(2)], app=app)
        with pytest.raises(BufferFullError):
            buffer_event("x", "evt_ok", app=app)
        assert buffer_stats(app=app)["pending"] == 5
        assert buffer_events([], app=app) == []


class TestClaim:
    """claim: atomic, FIFO, leased, recovered when the lease runs out."""

    def test_fifo_batches(self, buf: RedisBuffer) -> None:
        """Claims take the oldest records first, at most ``count`` each."""
        records = [make_record(i) for i in range(250)]
        buf.push(records)
        claims = [buf.claim(100, lease=30) for _ in range(4)]
        assert [len(c.items) for c in claims] == [100, 100, 50, 0]
        assert [i for c in claims for i in c.items] == records
        assert all(c.mode == "ok" for c in claims)
        assert buf.stats()["in_flight"] == 250
        assert claim_key_lengths(buf) == 250

    def test_concurrent_claims_never_share_a_record(self, buf: RedisBuffer, redis_url: str) -> None:
        """Eight threads claiming at once split the records with no overlap and no loss."""
        records = [b'{"n": %d}' % i for i in range(3000)]
        buf.push(records)
        taken: list[list[bytes]] = [[] for _ in range(8)]

        def drain(slot: int) -> None:
            own = RedisBuffer(redis.Redis.from_url(redis_url), prefix=buf.prefix)
            while True:
                claim = own.claim(random.randint(1, 100), lease=30)
                if not claim.items:
                    break
                taken[slot].extend(claim.items)
            own.redis.close()

        threads = [threading.Thread(target=drain, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        flat = [i for t in taken for i in t]
        assert len(flat) == len(set(flat)) == 3000
        assert set(flat) == set(records)

    def test_expired_lease_returns_records_to_the_head(self, buf: RedisBuffer) -> None:
        """A dead flusher's claim goes back in front of newer records, in order."""
        first = [make_record(i) for i in range(3)]
        buf.push(first)
        lost = buf.claim(3, lease=0.2)
        newer = make_record(99)
        buf.push([newer])
        assert buf.stats()["in_flight"] == 3

        def expired() -> bool:
            seconds, micros = buf.redis.time()
            deadline = buf.redis.zscore(buf.keys.claims, lost.id)
            return deadline is not None and deadline < seconds + micros / 1e6

        wait_for(expired, timeout=10, message="the lease to run out")
        claim = buf.claim(10, lease=30)
        assert claim.items == [*first, newer]
        assert not buf.settle(lost.id, settlement()), "the old owner lost its lease"
        assert buf.stats()["in_flight"] == 4
        assert buf.settle(claim.id, settlement())
        assert buf.stats()["in_flight"] == 0
        assert buf.remaining() == 0

    def test_extend_keeps_a_claim(self, buf: RedisBuffer) -> None:
        """A lease that is extended is not recovered; a lost one cannot be extended."""
        buf.push([make_record(1)])
        claim = buf.claim(1, lease=30)
        assert buf.extend(claim.id, 30)
        assert buf.settle(claim.id, settlement())
        assert not buf.extend(claim.id, 30)

    def test_rerun_claim_returns_the_same_records(self, buf: RedisBuffer) -> None:
        """A CLAIM re-sent by redis-py after a lost reply hands back the same records."""
        records = [make_record(i) for i in range(6)]
        buf.push(records)
        keys, args = claim_call(buf.keys, "fixed", count=3, lease=30, probe_lease=30)
        first = buf.queue._claim(keys=keys, args=args)
        again = buf.queue._claim(keys=keys, args=args)
        assert first[2:] == again[2:] == records[:3]
        assert buf.stats()["in_flight"] == 3
        assert buf.pending_count() == 3
        assert buf.settle("fixed", settlement())
        assert buf.remaining() == 3

    def test_due_retries_rejoin_pending(self, buf: RedisBuffer) -> None:
        """A retry comes back (with its attempt count) once it is due, not before."""
        records = [make_record(i) for i in range(2)]
        buf.push(records)
        claim = buf.claim(2, lease=30)
        assert buf.settle(
            claim.id,
            settlement(retries=[(0.3, join_item(1, records[0])), (3600, join_item(4, records[1]))]),
        )
        assert buf.claim(10, lease=30).items == []
        items = wait_for(lambda: buf.claim(10, lease=30).items, timeout=10, message="the due retry")
        assert items == [join_item(1, records[0])]
        assert buf.stats()["scheduled_retries"] == 1


class TestSettle:
    """settle: one atomic step per claim."""

    def test_settle_routes_each_record(self, buf: RedisBuffer) -> None:
        """Successes vanish, retries are scheduled, dead letters kept, ``back`` re-queued."""
        records = [make_record(i) for i in range(5)]
        buf.push(records)
        claim = buf.claim(5, lease=30)
        entry = dead_letter_entry(
            records[2], error="HTTP 400: bad", status_code=400, attempts=1, source="buffer"
        )
        assert buf.settle(
            claim.id,
            settlement(
                retries=[(60, join_item(1, records[1]))],
                dead=[entry],
                back=[records[3], records[4]],
            ),
        )
        assert buf.redis.lrange(buf.keys.pending, 0, -1) == [records[3], records[4]]
        assert buf.redis.zrange(buf.keys.retry, 0, -1) == [join_item(1, records[1])]
        assert buf.redis.lrange(buf.keys.dead, 0, -1) == [entry]
        stats = buf.stats()
        assert (stats["pending"], stats["in_flight"], stats["scheduled_retries"]) == (2, 0, 1)
        assert stats["dead"] == 1

    def test_resent_settle_is_not_a_lost_lease(self, buf: RedisBuffer) -> None:
        """Settling the same claim twice (a retried command) reports success both times
        and feeds the breaker once."""
        buf.push([make_record(1)])
        claim = buf.claim(1, lease=30)
        assert buf.settle(claim.id, settlement(verdict="fail"))
        assert buf.settle(claim.id, settlement(verdict="fail"))
        assert buf.breaker()["failures"] == 1
        assert buf.stats()["in_flight"] == 0

    def test_in_flight_never_drifts(self, buf: RedisBuffer) -> None:
        """Random claims, settles, expiries and lost leases keep the counter exact."""
        rng = random.Random(4)
        buf.push([b'{"n": %d}' % i for i in range(400)])
        live: list[str] = []
        for _ in range(300):
            op = rng.random()
            if op < 0.45:
                claim = buf.claim(rng.randint(1, 20), lease=rng.choice([30, 0.001]))
                if claim.items:
                    live.append(claim.id)
            elif live:
                claim_id = live.pop(rng.randrange(len(live)))
                items = buf.redis.lrange(buf.keys.claim_prefix + claim_id, 0, -1)
                retries = [(0.001, join_item(1, i)) for i in items[: rng.randint(0, len(items))]]
                buf.settle(claim_id, settlement(retries=retries))
            assert buf.stats()["in_flight"] == claim_key_lengths(buf)
        for claim_id in live:
            buf.settle(claim_id, settlement())
        while buf.claim(100, lease=30).items:
            pass
        for claim_id in buf.redis.zrange(buf.keys.claims, 0, -1):
            buf.settle(claim_id.decode(), settlement())
        assert buf.stats()["in_flight"] == 0
        assert buf.remaining() == 0


@pytest.mark.parametrize(
    ("stored", "now", "reported"),
    [
        ({}, 100.0, "closed"),
        ({b"state": b"closed", b"failures": b"3"}, 100.0, "closed"),
        ({b"state": b"open", b"until": b"150"}, 100.0, "open"),
        ({b"state": b"open", b"until": b"50"}, 100.0, "half_open"),
        ({b"state": b"half_open", b"until": b"150"}, 100.0, "half_open"),
        ({b"state": b"half_open", b"until": b"50"}, 100.0, "half_open"),
    ],
)
def test_breaker_state_reads_the_hash_as_the_scripts_write_it(
    stored: dict[bytes, bytes], now: float, reported: str
) -> None:
    """The reported state follows the table in ``breaker``: an open breaker whose time
    is up reads half_open (the next claim probes); a missing hash is closed."""
    assert breaker_state(stored, now) == reported


class TestBreaker:
    """The shared circuit breaker: threshold, cool-down, one probe, auth, Retry-After."""

    @pytest.fixture
    def fast(self, make_buffer: Callable[..., RedisBuffer]) -> RedisBuffer:
        """A breaker whose cool-down passes quickly (for tests that wait for it)."""
        return make_buffer(breaker_threshold=3, breaker_cooldown=0.3, breaker_cooldown_max=5)

    @pytest.fixture
    def slow(self, make_buffer: Callable[..., RedisBuffer]) -> RedisBuffer:
        """A breaker that stays open for the whole test, however slow the machine."""
        return make_buffer(breaker_threshold=3, breaker_cooldown=60)

    @staticmethod
    def raw(buf: RedisBuffer) -> dict[str, float | str]:
        """The breaker hash as stored (no clock involved)."""
        out: dict[str, float | str] = {}
        for k, v in buf.redis.hgetall(buf.keys.breaker).items():
            text = v.decode()
            try:
                out[k.decode()] = float(text)
            except ValueError:
                out[k.decode()] = text
        return out

    def fail_once(self, buf: RedisBuffer, verdict: str = "fail", **kwargs: Any) -> None:
        buf.push([make_record(0)])
        claim = buf.claim(1, lease=30)
        assert claim.items, claim
        buf.settle(
            claim.id, settlement(back=claim.items, verdict=verdict, reason="HTTP 503", **kwargs)
        )

    def test_opens_after_threshold_and_refuses_claims(self, slow: RedisBuffer) -> None:
        """Consecutive failures open it; while open no one claims, records stay put."""
        self.fail_once(slow)
        self.fail_once(slow)
        assert slow.stats()["breaker"] == "closed"
        self.fail_once(slow)
        state = slow.breaker()
        assert state["state"] == "open"
        assert state["reason"] == "HTTP 503"
        assert 50 < state["retry_in"] <= 60
        refused = slow.claim(100, lease=30)
        assert (refused.mode, refused.items) == ("open", [])
        assert 50 < refused.wait <= 60
        assert slow.stats()["pending"] == 3

    def test_a_success_resets_the_count(self, fast: RedisBuffer) -> None:
        """Failures must be consecutive."""
        self.fail_once(fast)
        self.fail_once(fast)
        fast.push([make_record(1)])
        claim = fast.claim(100, lease=30)
        fast.settle(claim.id, settlement(verdict="ok"))
        self.fail_once(fast)
        self.fail_once(fast)
        assert fast.stats()["breaker"] == "closed"
        assert fast.breaker()["failures"] == 2

    def test_one_probe_after_cooldown(self, fast: RedisBuffer) -> None:
        """After the cool-down exactly one small probe claim is allowed; others wait."""
        fast.push([make_record(i) for i in range(30)])
        for _ in range(3):
            self.fail_once(fast)
        wait_for(lambda: fast.stats()["breaker"] == "half_open", timeout=10)
        probe = fast.claim(100, lease=30)
        assert probe.mode == "probe"
        assert 0 < len(probe.items) <= 10
        other = fast.claim(100, lease=30)
        assert other.mode == "open"
        assert fast.stats()["breaker"] == "half_open"
        fast.settle(probe.id, settlement(verdict="ok"))
        assert fast.breaker() == {"state": "closed", "failures": 0, "reason": "", "retry_in": 0}
        assert fast.claim(100, lease=30).mode == "ok"

    def test_failed_probe_doubles_the_cooldown(self, fast: RedisBuffer) -> None:
        """A failed probe reopens the breaker for twice as long (capped)."""
        for _ in range(3):
            self.fail_once(fast)
        wait_for(lambda: fast.stats()["breaker"] == "half_open", timeout=10)
        probe = fast.claim(100, lease=30)
        assert probe.mode == "probe"
        fast.settle(probe.id, settlement(back=probe.items, verdict="fail", reason="HTTP 502"))
        raw = self.raw(fast)
        assert (raw["state"], raw["reason"]) == ("open", "HTTP 502")
        assert raw["cooldown"] == pytest.approx(0.6)
        assert float(raw["until"]) - float(raw["opened_at"]) == pytest.approx(0.6)

    def test_probe_of_an_empty_buffer_leaves_it_half_open(self, fast: RedisBuffer) -> None:
        """With nothing to send, the next claim with records becomes the probe."""
        for _ in range(3):
            self.fail_once(fast)
        fast.redis.delete(fast.keys.pending)
        wait_for(lambda: fast.stats()["breaker"] == "half_open", timeout=10)
        assert fast.claim(100, lease=30).items == []
        fast.push([make_record(5)])
        assert fast.claim(100, lease=30).mode == "probe"

    def test_auth_opens_at_once(self, slow: RedisBuffer) -> None:
        """401/403 open the breaker on the first failure, records go back untouched."""
        self.fail_once(slow, verdict="auth")
        assert slow.breaker()["state"] == "open"
        assert slow.redis.lrange(slow.keys.pending, 0, -1)[0][:1] == b"{"

    def test_retry_after_pauses_exactly_that_long(
        self, make_buffer: Callable[..., RedisBuffer]
    ) -> None:
        """One Retry-After opens the breaker for that many seconds, below the threshold."""
        buf = make_buffer(breaker_threshold=5, breaker_cooldown=60)
        self.fail_once(buf, open_for=2.0)
        raw = self.raw(buf)
        assert raw["state"] == "open"
        assert float(raw["until"]) - float(raw["opened_at"]) == pytest.approx(2.0)

    def test_retry_after_extends_an_open_breaker(self, fast: RedisBuffer) -> None:
        """A longer Retry-After answered while open pushes the next probe out, a shorter
        one never pulls it in."""
        fast.push([make_record(1), make_record(2)])
        early, late = fast.claim(1, lease=30), fast.claim(1, lease=30)  # before it opened
        for _ in range(3):
            self.fail_once(fast)
        opened = self.raw(fast)
        fast.settle(early.id, settlement(back=early.items, verdict="fail", open_for=5.0))
        extended = self.raw(fast)
        assert float(extended["until"]) - float(opened["until"]) > 4.5
        fast.settle(late.id, settlement(back=late.items, verdict="fail", open_for=1.0))
        assert self.raw(fast)["until"] == extended["until"]
        assert self.raw(fast)["state"] == "open"

    def test_reset_breaker(self, slow: RedisBuffer) -> None:
        """reset_breaker closes it at once."""
        self.fail_once(slow, verdict="auth")
        slow.reset_breaker()
        assert slow.stats()["breaker"] == "closed"


class TestRehome:
    """The direct path's refused-credentials move: into pending within the bound."""

    def entry(self, record: bytes) -> bytes:
        return dead_letter_entry(
            record, error="HTTP 401", status_code=401, attempts=1, source="direct"
        )

    def test_moves_into_pending_while_there_is_room(
        self, make_buffer: Callable[..., RedisBuffer]
    ) -> None:
        """Below the bound the record joins pending, untouched; nothing is dead."""
        buf = make_buffer(max_length=2)
        first, second = make_record(0), make_record(1)
        buf.push([first])
        assert buf.rehome(second, self.entry(second))
        assert buf.redis.lrange(buf.keys.pending, 0, -1) == [first, second]
        assert buf.stats()["dead"] == 0

    def test_a_full_buffer_dead_letters_instead(
        self, make_buffer: Callable[..., RedisBuffer]
    ) -> None:
        """At the bound (counting pending, claimed and scheduled records) the record is
        dead-lettered with its entry, and pending is left as it was."""
        buf = make_buffer(max_length=3)
        records = [make_record(i) for i in range(3)]
        buf.push(records)
        claim = buf.claim(1, lease=30)
        assert buf.settle(claim.id, settlement(retries=[(3600, join_item(1, claim.items[0]))]))
        buf.claim(1, lease=30)  # one pending, one claimed, one scheduled: full
        record = make_record(9)
        assert not buf.rehome(record, self.entry(record))
        assert buf.redis.lrange(buf.keys.pending, 0, -1) == [records[2]]
        (letter,) = buf.dead_letters()
        assert (letter.record, letter.status_code, letter.source) == (record, 401, "direct")


class TestDeadLetters:
    """The dead-letter API: list, requeue, purge."""

    def kill(self, buf: RedisBuffer, records: list[bytes], error: str = "HTTP 400: nope") -> None:
        buf.push(records)
        claim = buf.claim(len(records), lease=30)
        entries = [
            dead_letter_entry(
                split_item(item)[1],
                error=error,
                status_code=400,
                attempts=split_item(item)[0] + 1,
                source="buffer",
            )
            for item in claim.items
        ]
        assert buf.settle(claim.id, settlement(dead=entries))

    def test_list_shows_metadata_never_properties(self, buf: RedisBuffer) -> None:
        """Each letter has key, event, error, attempts and age; repr hides the record."""
        record = make_record(1, secret_note="do-not-show")
        self.kill(buf, [join_item(2, record)])
        (letter,) = buf.dead_letters()
        assert letter.idempotency_key == key_of(record)
        assert letter.event == "order_placed"
        assert letter.error == "HTTP 400: nope"
        assert letter.status_code == 400
        assert letter.attempts == 3
        assert letter.source == "buffer"
        assert 0 <= letter.age_seconds < 60
        assert letter.record == record
        assert "do-not-show" not in repr(letter)
        assert "do-not-show" not in letter.raw.partition(b"\n")[0].decode()
        assert letter.record_dict()["properties"]["secret_note"] == "do-not-show"
        assert letter.record_json() == record.decode()  # the text, as it will be re-sent

    def test_newest_first_and_paged(self, buf: RedisBuffer) -> None:
        """dead_letters(limit, offset) pages newest first."""
        records = [make_record(i) for i in range(5)]
        for r in records:
            self.kill(buf, [r])
        keys = [key_of(r) for r in reversed(records)]
        assert [d.idempotency_key for d in buf.dead_letters(limit=2)] == keys[:2]
        assert [d.idempotency_key for d in buf.dead_letters(limit=10, offset=2)] == keys[2:]

    def test_requeue_all_restores_original_bytes(self, buf: RedisBuffer) -> None:
        """Requeued records are the original bytes, attempts reset, oldest first."""
        records = [make_record(i) for i in range(3)]
        self.kill(buf, [join_item(3, r) for r in records])
        assert buf.requeue_dead_letters().moved == 3
        assert buf.redis.lrange(buf.keys.pending, 0, -1) == records
        assert buf.stats()["dead"] == 0

    def test_requeue_and_purge_by_key(self, buf: RedisBuffer) -> None:
        """Selected keys are requeued or purged; the others stay."""
        records = [make_record(i) for i in range(4)]
        self.kill(buf, records)
        assert buf.requeue_dead_letters([key_of(records[1]), "no-such-key"]).moved == 1
        assert buf.requeue_dead_letters([]).moved == 0
        assert buf.redis.lrange(buf.keys.pending, 0, -1) == [records[1]]
        assert buf.purge_dead_letters([key_of(records[0])]) == 1
        assert {d.idempotency_key for d in buf.dead_letters()} == {
            key_of(records[2]),
            key_of(records[3]),
        }
        assert buf.purge_dead_letters() == 2
        assert buf.stats()["dead"] == 0

    def test_dead_letters_count_toward_the_bound(
        self, make_buffer: Callable[..., RedisBuffer]
    ) -> None:
        """None is ever trimmed away (issue 10 item 5): dead letters fill the buffer's
        bound, producers then get BufferFullError, and requeue or purge makes room."""
        buf = make_buffer(max_length=5)
        records = [make_record(i) for i in range(5)]
        self.kill(buf, records)
        assert buf.stats()["dead"] == 5
        with pytest.raises(BufferFullError, match="dead letters included"):
            buf.push([make_record(9)])
        assert [d.idempotency_key for d in buf.dead_letters()][-1] == key_of(records[0])
        assert buf.purge_dead_letters([key_of(records[0])]) == 1
        buf.push([make_record(9)])
        assert buf.requeue_dead_letters().moved == 4  # moved within the bound, not added
        assert buf.pending_count() == 5

    def test_direct_dead_letters_are_never_trimmed(self, buf: RedisBuffer) -> None:
        for i in range(20):
            buf.dead_letter(b'{"idempotency_key": "k%d"}\n{}' % i)
        assert buf.stats()["dead"] == 20

    def test_unreadable_header_still_lists(self) -> None:
        """A damaged header does not break listing."""
        letter = parse_dead_letter(b"not json\n{}")
        assert (letter.idempotency_key, letter.attempts, letter.record) == (None, 0, b"{}")


class TestStats:
    """buffer_stats() figures in each situation."""

    def test_empty(self, buf: RedisBuffer) -> None:
        """A fresh buffer: all zero, breaker closed."""
        assert buf.stats() == {
            "pending": 0,
            "in_flight": 0,
            "scheduled_retries": 0,
            "sent_past_dedup_window": 0,
            "dead": 0,
            "oldest_age_seconds": 0.0,
            "breaker": "closed",
        }

    def test_each_field(self, buf: RedisBuffer) -> None:
        """pending, in_flight, scheduled_retries, dead and the oldest record's age."""
        old = make_record(0)
        record = json.loads(old)
        record["$time"] -= 30_000  # accepted 30 s ago
        old = json.dumps(record).encode()
        buf.push([old, *[make_record(i) for i in range(1, 10)]])
        assert 29 < buf.stats()["oldest_age_seconds"] < 90
        claim = buf.claim(4, lease=30)
        stats = buf.stats()
        assert (stats["pending"], stats["in_flight"]) == (6, 4)
        assert 29 < stats["oldest_age_seconds"] < 90, "the oldest record is in flight"
        entry = dead_letter_entry(
            claim.items[1], error="x", status_code=400, attempts=1, source="t"
        )
        buf.settle(claim.id, settlement(retries=[(60, join_item(1, claim.items[0]))], dead=[entry]))
        stats = buf.stats()
        assert stats == {
            "pending": 6,
            "in_flight": 0,
            "scheduled_retries": 1,
            "sent_past_dedup_window": 0,
            "dead": 1,
            "oldest_age_seconds": stats["oldest_age_seconds"],
            "breaker": "closed",
        }
        assert 29 < stats["oldest_age_seconds"] < 90, "the oldest record waits for a retry"
        buf.redis.delete(buf.keys.pending, buf.keys.retry)
        assert buf.stats()["oldest_age_seconds"] == 0.0

    def test_prefixes_keep_buffers_apart(self, make_buffer: Callable[..., RedisBuffer]) -> None:
        """Two prefixes on one Redis never see each other's records."""
        a, b = make_buffer(prefix="a"), make_buffer(prefix="b")
        a.push([make_record(1)])
        assert (a.stats()["pending"], b.stats()["pending"]) == (1, 0)
        b.clear()
        assert a.stats()["pending"] == 1
        a.clear()
        assert a.redis.keys("{a}*") == []


class TestClose:
    """``close()`` releases every connection a buffer opened; it stays usable after."""

    @pytest.mark.parametrize("shards", [1, 3])
    def test_releases_pool_and_producer_connections(
        self, redis_client: redis.Redis, redis_url: str, shards: int
    ) -> None:
        """The client's pool and each shard's producer connections are closed (Redis
        sees them go); a later push connects again; closing twice is fine."""
        name = f"close-test-{shards}"  # our connections, told apart from other tests'

        def ours() -> int:
            return sum(1 for c in redis_client.client_list() if c["name"] == name)

        buffer = open_buffer(BufferConfig(f"{redis_url}?client_name={name}", shards=shards))
        for i in range(shards):
            buffer.push([make_record(i)])
        assert buffer.stats()["pending"] == shards
        assert ours() >= 1 + shards  # the pool, and each shard's producers
        buffer.close()
        wait_for(lambda: ours() == 0, message="all closed")
        buffer.push([make_record(9)])
        assert buffer.pending_count() == shards + 1
        assert ours() >= 1
        buffer.close()
        buffer.close()
        wait_for(lambda: ours() == 0, message="closed again")


def test_time_comes_from_redis(buf: RedisBuffer) -> None:
    """Leases use Redis TIME: a claim's deadline is Redis now + lease."""
    buf.push([make_record(1)])
    buf.claim(1, lease=100)
    (member, deadline), *_ = buf.redis.zrange(buf.keys.claims, 0, 0, withscores=True)
    seconds, micros = buf.redis.time()
    assert abs(deadline - (seconds + micros / 1e6 + 100)) < 5
    assert member
