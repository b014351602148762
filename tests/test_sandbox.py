"""The sandbox: a real HTTP server over loopback, exercised with plain signed requests.

Requests are signed here with a third, deliberately naive implementation (not the
client's and not the sandbox's), so a shared mistake cannot hide.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from email.utils import formatdate
from typing import Any

import pytest
import requests

from suprsend_celery.dev.sandbox import (
    BULK_PATH,
    EVENT_PATH,
    LEGACY_EVENT_PATH,
    FaultPlan,
    FaultPlanError,
    Sandbox,
    serve,
    validate_record,
)

KEY = "WSKEY_sandboxtest_0123456789"
SECRET = "WSSECRET_sandboxtest"
CONTENT_TYPE = "application/json; charset=utf-8"


def sign(body: bytes, date: str, path: str, secret: str = SECRET, ct: str = CONTENT_TYPE) -> str:
    md5 = hashlib.md5(body).hexdigest()
    text = "POST\n" + md5 + "\n" + ct + "\n" + date + "\n" + path
    mac = hmac.new(secret.encode(), text.encode(), hashlib.sha256).digest()
    return base64.b64encode(mac).decode()


def record(event: str = "order_placed", **overrides: Any) -> dict[str, Any]:
    rec: dict[str, Any] = {
        "$insert_id": str(uuid.uuid4()),
        "$time": int(time.time() * 1000),
        "event": event,
        "env": KEY,
        "distinct_id": "user-1",
        "properties": {"amount": 10},
    }
    rec.update(overrides)
    return rec


def encode(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False).encode()


class Client:
    """Signed POSTs to one sandbox over one pooled session."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.session = requests.Session()

    def close(self) -> None:
        self.session.close()

    def post(
        self,
        path: str,
        body: bytes | Any,
        *,
        secret: str = SECRET,
        key: str = KEY,
        date: str | None = None,
        signed_body: bytes | None = None,
        auth: bool = True,
        headers: dict[str, str] | None = None,
    ) -> requests.Response:
        raw = body if isinstance(body, bytes) else encode(body)
        date = formatdate(usegmt=True) if date is None else date
        all_headers = {"Content-Type": CONTENT_TYPE, "Date": date}
        if auth:
            to_sign = raw if signed_body is None else signed_body
            all_headers["Authorization"] = f"{key}:{sign(to_sign, date, path, secret)}"
        all_headers.update(headers or {})
        return self.session.post(self.url + path.lstrip("/"), data=raw, headers=all_headers)

    def event(self, rec: dict[str, Any], path: str = EVENT_PATH) -> requests.Response:
        return self.post(path, rec)

    def bulk(self, recs: list[Any]) -> requests.Response:
        return self.post(BULK_PATH, recs)


def _one_event(url: str, i: int) -> int:
    """One signed event on a connection of its own; the status code."""
    c = Client(url)
    try:
        return c.event(record(**{"$idempotency_key": f"c{i}"})).status_code
    finally:
        c.close()


@pytest.fixture(scope="module")
def sandbox_server() -> Iterator[Sandbox]:
    with Sandbox(workspace_key=KEY, workspace_secret=SECRET) as sb:
        yield sb


@pytest.fixture
def sb(sandbox_server: Sandbox) -> Sandbox:
    sandbox_server.reset()
    return sandbox_server


@pytest.fixture
def client(sb: Sandbox) -> Iterator[Client]:
    c = Client(sb.url)
    yield c
    c.close()


class TestRoutes:
    def test_single_event_is_accepted_and_recorded(self, sb: Sandbox, client: Client) -> None:
        """POST /v2/event/ answers 202 with a message id and stores the record as sent."""
        rec = record()
        resp = client.event(rec)
        assert resp.status_code == 202
        body = resp.json()
        assert body["status"] == "success"
        uuid.UUID(body["message_id"])
        assert sb.events() == [rec]
        assert sb.stats() == {
            "requests": 1,
            "events_received": 1,
            "events_processed": 1,
            "duplicates_skipped": 0,
            "rejected": 0,
            "auth_failures": 0,
            "max_concurrent_requests": 1,
        }

    def test_legacy_route(self, sb: Sandbox, client: Client) -> None:
        """The legacy POST /event/ behaves like /v2/event/."""
        resp = client.event(record(), path=LEGACY_EVENT_PATH)
        assert resp.status_code == 202
        assert len(sb.events()) == 1

    def test_bulk_results_in_request_order(self, sb: Sandbox, client: Client) -> None:
        """Bulk answers 207 with one result per record, errors in place, valid ones stored."""
        recs = [record("first"), record("second", distinct_id=""), record("third")]
        resp = client.bulk(recs)
        assert resp.status_code == 207
        results = resp.json()["records"]
        assert [r["status"] for r in results] == ["success", "error", "success"]
        assert [r["status_code"] for r in results] == [202, 400, 202]
        assert "distinct_id" in results[1]["error"]["message"]
        assert results[1]["error"]["type"] == "ValidationError"
        assert [e["event"] for e in sb.events()] == ["first", "third"]
        stats = sb.stats()
        assert (stats["events_received"], stats["events_processed"], stats["rejected"]) == (3, 2, 1)

    def test_empty_bulk(self, sb: Sandbox, client: Client) -> None:
        """An empty list is a valid, empty bulk request."""
        resp = client.bulk([])
        assert resp.status_code == 207
        assert resp.json() == {"records": []}

    def test_query_string_is_part_of_the_signed_path(self, sb: Sandbox, client: Client) -> None:
        """The path signed includes the query string, exactly as sent."""
        resp = client.post(EVENT_PATH + "?source=test", record())
        assert resp.status_code == 202
        assert sb.requests()[0].path == "/v2/event/?source=test"

    def test_unknown_route_and_wrong_method(self, sb: Sandbox, client: Client) -> None:
        """Unknown paths are 404; GET on an event route is 405 with Allow: POST."""
        assert client.post("/v2/events/", record()).status_code == 404
        resp = client.session.get(sb.url + "v2/event/")
        assert resp.status_code == 405
        assert resp.headers["Allow"] == "POST"
        assert resp.json()["status"] == "error"

    def test_keep_alive(self, sb: Sandbox, client: Client) -> None:
        """Requests on one session share one TCP connection (HTTP/1.1 keep-alive)."""
        for _ in range(3):
            assert client.event(record()).status_code == 202
        assert len({r.connection for r in sb.requests()}) == 1


class TestSignature:
    def test_missing_authorization(self, sb: Sandbox, client: Client) -> None:
        """No Authorization header: 401, counted, nothing processed."""
        resp = client.post(EVENT_PATH, record(), auth=False)
        assert resp.status_code == 401
        assert resp.json()["error"]["type"] == "AuthenticationError"
        assert sb.stats()["auth_failures"] == 1
        assert sb.events() == []

    def test_wrong_secret(self, sb: Sandbox, client: Client) -> None:
        """A signature made with another secret is refused."""
        assert client.post(EVENT_PATH, record(), secret="WSSECRET_other").status_code == 401
        assert sb.stats()["auth_failures"] == 1

    def test_wrong_workspace_key(self, sb: Sandbox, client: Client) -> None:
        """The key before the colon must be the sandbox's workspace key."""
        resp = client.post(EVENT_PATH, record(), key="WSKEY_someone_else_000000")
        assert resp.status_code == 401

    def test_tampered_body(self, sb: Sandbox, client: Client) -> None:
        """The signature covers the raw body bytes: any change is refused."""
        signed = encode(record())
        sent = signed.replace(b'"amount": 10', b'"amount": 11')
        assert sent != signed
        assert client.post(EVENT_PATH, sent, signed_body=signed).status_code == 401

    def test_respacing_the_json_breaks_the_signature(self, sb: Sandbox, client: Client) -> None:
        """Same JSON value, different bytes: still refused (no re-serialising)."""
        rec = record()
        signed = json.dumps(rec).encode()
        sent = json.dumps(rec, separators=(",", ":")).encode()
        assert client.post(EVENT_PATH, sent, signed_body=signed).status_code == 401

    def test_signature_uses_the_requests_content_type(self, sb: Sandbox, client: Client) -> None:
        """Content-Type is signed as sent, whatever its spelling."""
        date = formatdate(usegmt=True)
        body = encode(record())
        ct = "application/json"
        headers = {
            "Content-Type": ct,
            "Authorization": f"{KEY}:{sign(body, date, EVENT_PATH, ct=ct)}",
        }
        resp = client.post(EVENT_PATH, body, date=date, auth=False, headers=headers)
        assert resp.status_code == 202

    def test_missing_date(self, sb: Sandbox, client: Client) -> None:
        """The Date header is required."""
        body = encode(record())
        headers = {"Authorization": f"{KEY}:{sign(body, '', EVENT_PATH)}"}
        session = client.session
        resp = session.post(
            sb.url + "v2/event/", data=body, headers={"Content-Type": CONTENT_TYPE, **headers}
        )
        assert resp.status_code == 401
        assert "Date" in resp.json()["error"]["message"]

    @pytest.mark.parametrize("offset", [-20 * 60, 20 * 60])
    def test_clock_skew_beyond_fifteen_minutes(
        self, sb: Sandbox, client: Client, offset: int
    ) -> None:
        """A Date more than 15 minutes away from the server clock is refused."""
        date = formatdate(time.time() + offset, usegmt=True)
        assert client.post(EVENT_PATH, record(), date=date).status_code == 401

    def test_clock_skew_within_tolerance(self, sb: Sandbox, client: Client) -> None:
        """A few minutes of skew is fine."""
        date = formatdate(time.time() - 5 * 60, usegmt=True)
        assert client.post(EVENT_PATH, record(), date=date).status_code == 202

    def test_garbage_date(self, sb: Sandbox, client: Client) -> None:
        """An unparseable Date is refused, not a crash."""
        assert client.post(EVENT_PATH, record(), date="yesterday").status_code == 401


class TestValidation:
    @pytest.mark.parametrize(
        ("change", "field"),
        [
            ({"$insert_id": None}, "$insert_id"),
            ({"$insert_id": "too-short"}, "$insert_id"),
            ({"$time": 1640995199999}, "$time"),
            ({"$time": 1.7e12 + 0.5}, "$time"),
            ({"$time": "1700000000000"}, "$time"),
            ({"$time": True}, "$time"),
            ({"event": "x"}, "event"),
            ({"event": 12}, "event"),
            ({"env": "WSKEY_another_workspace_01"}, "env"),
            ({"distinct_id": ""}, "distinct_id"),
            ({"distinct_id": 42}, "distinct_id"),
            ({"properties": []}, "properties"),
            ({"$idempotency_key": "k" * 256}, "$idempotency_key"),
            ({"tenant_id": "t" * 65}, "tenant_id"),
            ({"brand_id": 7}, "brand_id"),
        ],
    )
    def test_invalid_single_record(
        self, sb: Sandbox, client: Client, change: dict[str, Any], field: str
    ) -> None:
        """Each schema rule is enforced: 400 naming the field, counted as rejected."""
        rec = record(**change)
        resp = client.event(rec)
        assert resp.status_code == 400
        body = resp.json()
        assert body["status"] == "error"
        assert field in body["error"]["message"]
        assert sb.stats()["rejected"] == 1
        assert sb.events() == []

    @pytest.mark.parametrize(
        "name", ["$insert_id", "$time", "event", "env", "distinct_id", "properties"]
    )
    def test_required_fields(self, name: str) -> None:
        """Every required field must be present."""
        rec = record()
        del rec[name]
        assert validate_record(rec, KEY) == f"'{name}' is a required property"

    def test_optional_fields_accept_null_and_limits(self) -> None:
        """Optional fields may be null or exactly at their length limit; extras are kept."""
        assert validate_record(record(**{"$idempotency_key": None}), KEY) is None
        rec = record(**{"$idempotency_key": "k" * 255, "tenant_id": "t" * 64, "brand_id": "b" * 64})
        assert validate_record(rec, KEY) is None
        assert validate_record(record(extra={"x": 1}), KEY) is None

    @pytest.mark.parametrize(
        "body",
        [
            b"{not json",
            b'{"$time": NaN}',
            b'{"x": Infinity}',
            b'{"x": -Infinity}',
            b"\xff\xfe{}",
            b"",
        ],
    )
    def test_unreadable_bodies(self, sb: Sandbox, client: Client, body: bytes) -> None:
        """Invalid JSON (including NaN/Infinity literals and bad UTF-8) is a 400."""
        resp = client.post(EVENT_PATH, body)
        assert resp.status_code == 400
        assert resp.json()["error"]["type"] == "ValidationError"
        assert sb.stats()["rejected"] == 1

    def test_wrong_shapes(self, sb: Sandbox, client: Client) -> None:
        """Single routes want an object, the bulk route a list."""
        assert client.post(EVENT_PATH, [record()]).status_code == 400
        assert client.post(BULK_PATH, record()).status_code == 400
        assert client.post(BULK_PATH, "just a string").status_code == 400
        assert sb.events() == []

    def test_bulk_record_that_is_not_an_object(self, sb: Sandbox, client: Client) -> None:
        """A non-object item fails alone, with a per-record 400."""
        resp = client.bulk([record(), "oops"])
        assert [r["status_code"] for r in resp.json()["records"]] == [202, 400]


class TestLimits:
    def test_hundred_records_is_fine(self, sb: Sandbox, client: Client) -> None:
        """Exactly 100 records per bulk request is allowed."""
        resp = client.bulk([record() for _ in range(100)])
        assert resp.status_code == 207
        assert sb.stats()["events_processed"] == 100

    def test_more_than_hundred_records_refuses_the_request(
        self, sb: Sandbox, client: Client
    ) -> None:
        """101 records: the whole request is a 400 and nothing is processed."""
        resp = client.bulk([record() for _ in range(101)])
        assert resp.status_code == 400
        assert "100" in resp.json()["error"]["message"]
        assert sb.events() == []
        assert sb.stats()["rejected"] == 101

    def test_bulk_body_over_800_kib(self, sb: Sandbox, client: Client) -> None:
        """A bulk body above 800 KiB is a 413, even with few records."""
        padding = "x" * (800 * 1024)
        resp = client.bulk([record(properties={"blob": padding})])
        assert resp.status_code == 413
        assert resp.json()["error"]["type"] == "PayloadTooLarge"
        assert sb.events() == []

    def test_bulk_body_at_800_kib_is_fine(self, sb: Sandbox, client: Client) -> None:
        """Exactly 800 KiB is within the limit."""
        base = encode([record(properties={"blob": ""})])
        rec = record(properties={"blob": "x" * (800 * 1024 - len(base))})
        rec["$insert_id"] = json.loads(base)[0]["$insert_id"]
        rec["$time"] = json.loads(base)[0]["$time"]
        body = encode([rec])
        assert len(body) == 800 * 1024
        assert client.post(BULK_PATH, body).status_code == 207

    def test_single_event_over_100_kib(self, sb: Sandbox, client: Client) -> None:
        """A single event above 100 KiB is a 413."""
        resp = client.event(record(properties={"blob": "x" * (100 * 1024)}))
        assert resp.status_code == 413
        assert sb.events() == []


class TestIdempotency:
    def test_repeated_key_is_accepted_but_not_processed(self, sb: Sandbox, client: Client) -> None:
        """A second record with the same key gets success and the original message id."""
        first = client.event(record(**{"$idempotency_key": "order-1"})).json()
        second = client.event(record(**{"$idempotency_key": "order-1"})).json()
        assert second["status"] == "success"
        assert second["message_id"] == first["message_id"]
        assert len(sb.events()) == 1
        stats = sb.stats()
        assert (stats["events_received"], stats["events_processed"]) == (2, 1)
        assert stats["duplicates_skipped"] == 1

    def test_duplicates_within_and_across_bulk_requests(self, sb: Sandbox, client: Client) -> None:
        """Keys are remembered across routes and within one bulk request."""
        client.event(record(**{"$idempotency_key": "a"}))
        resp = client.bulk([record(**{"$idempotency_key": k}) for k in ("a", "b", "b", "c")])
        assert all(r["status"] == "success" for r in resp.json()["records"])
        assert [e["$idempotency_key"] for e in sb.events()] == ["a", "b", "c"]
        assert sb.stats()["duplicates_skipped"] == 2

    def test_records_without_key_are_always_processed(self, sb: Sandbox, client: Client) -> None:
        """No key, no deduplication (even for an identical body)."""
        rec = record()
        client.event(rec)
        client.event(rec)
        assert len(sb.events()) == 2

    def test_invalid_record_does_not_burn_its_key(self, sb: Sandbox, client: Client) -> None:
        """A rejected record's key can still be processed later."""
        client.event(record(distinct_id="", **{"$idempotency_key": "k1"}))
        client.event(record(**{"$idempotency_key": "k1"}))
        assert len(sb.events()) == 1

    def test_keys_expire_after_the_ttl(self) -> None:
        """After the window (24 h by default) a key is processed again."""
        now = [1000.0]
        with Sandbox(
            workspace_key=KEY, workspace_secret=SECRET, idempotency_ttl=60, clock=lambda: now[0]
        ) as sb:
            c = Client(sb.url)
            try:
                c.event(record(**{"$idempotency_key": "k"}))
                now[0] += 59
                c.event(record(**{"$idempotency_key": "k"}))
                assert sb.stats()["duplicates_skipped"] == 1
                now[0] += 2
                c.event(record(**{"$idempotency_key": "k"}))
                assert sb.stats()["events_processed"] == 2
            finally:
                c.close()

    def test_concurrent_senders_never_double_process(self, sb: Sandbox) -> None:
        """Many threads racing on the same keys still process each key exactly once."""
        keys = [f"key-{i}" for i in range(50)]

        def send() -> None:
            c = Client(sb.url)
            try:
                for _ in range(5):
                    resp = c.bulk([record(**{"$idempotency_key": k}) for k in keys])
                    assert resp.status_code == 207
            finally:
                c.close()

        threads = [threading.Thread(target=send) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        stats = sb.stats()
        assert stats["events_processed"] == 50
        assert stats["duplicates_skipped"] == 6 * 5 * 50 - 50
        assert sorted(e["$idempotency_key"] for e in sb.events()) == sorted(keys)


class TestFaults:
    def test_status_by_count(self, sb: Sandbox, client: Client) -> None:
        """The first N matching requests fail with the status and process nothing."""
        sb.set_faults({"rules": [{"status": 503, "count": 2}]})
        codes = [client.event(record()).status_code for _ in range(3)]
        assert codes == [503, 503, 202]
        assert len(sb.events()) == 1
        stats = sb.stats()
        assert (stats["events_received"], stats["events_processed"]) == (3, 1)
        assert sb.faults()["rules"][0]["applied"] == 2
        faulted = sb.requests()[0]
        assert faulted.fault == "rules[0]: status 503"
        assert faulted.status == 503

    def test_containing_event_refuses_only_requests_holding_it(
        self, sb: Sandbox, client: Client
    ) -> None:
        """``containing_event`` selects the requests that hold a record of that event:
        a whole bulk request is refused for one bad record, the others go through."""
        sb.set_faults([{"status": 400, "containing_event": "poison"}])
        assert client.bulk([record(), record("poison")]).status_code == 400
        assert client.bulk([record(), record()]).status_code == 207
        assert client.event(record("poison")).status_code == 400
        assert sb.stats()["events_processed"] == 2
        assert sb.faults()["rules"][0]["containing_event"] == "poison"

    def test_fault_error_body_is_json(self, sb: Sandbox, client: Client) -> None:
        """By default a fault answers SuprSend's JSON error shape."""
        sb.set_faults([{"status": 500}])
        body = client.event(record()).json()
        assert body["status"] == "error"
        assert body["error"]["type"] == "InternalServerError"

    @pytest.mark.parametrize("retry_after", ["2", "Wed, 21 Oct 2015 07:28:00 GMT", 7])
    def test_retry_after_is_passed_through(
        self, sb: Sandbox, client: Client, retry_after: str | int
    ) -> None:
        """Retry-After is sent verbatim (seconds or an HTTP-date)."""
        sb.set_faults({"rules": [{"status": 429, "retry_after": retry_after, "count": 1}]})
        resp = client.event(record())
        assert resp.status_code == 429
        assert resp.headers["Retry-After"] == str(retry_after)
        assert client.event(record()).status_code == 202

    def test_html_error_page(self, sb: Sandbox, client: Client) -> None:
        """``html`` answers a load balancer's text/html page instead of JSON."""
        sb.set_faults({"rules": [{"status": 502, "html": True}]})
        resp = client.bulk([record()])
        assert resp.status_code == 502
        assert resp.headers["Content-Type"].startswith("text/html")
        assert resp.text.startswith("<html>")
        assert "502 Bad Gateway" in resp.text
        assert sb.events() == []

    def test_custom_body(self, sb: Sandbox, client: Client) -> None:
        """``body`` sends exactly that text, e.g. a 2xx plain string."""
        sb.set_faults([{"status": 200, "body": "OK", "count": 1}])
        resp = client.bulk([record()])
        assert (resp.status_code, resp.text) == (200, "OK")
        assert resp.headers["Content-Type"].startswith("text/plain")

    def test_rate_with_seed_is_reproducible(self, sb: Sandbox, client: Client) -> None:
        """A seeded rate fails a reproducible, roughly proportional subset."""

        def run() -> list[int]:
            sb.reset()
            sb.set_faults({"seed": 42, "rules": [{"status": 503, "rate": 0.5}]})
            return [client.event(record()).status_code for _ in range(40)]

        first, second = run(), run()
        assert first == second
        assert 5 < first.count(503) < 35
        assert len(sb.events()) == first.count(202)

    def test_rate_extremes(self, sb: Sandbox, client: Client) -> None:
        """Rate 0 never fires, rate 1 always does."""
        sb.set_faults([{"status": 503, "rate": 0.0}])
        assert {client.event(record()).status_code for _ in range(5)} == {202}
        sb.set_faults([{"status": 503, "rate": 1.0}])
        assert {client.event(record()).status_code for _ in range(5)} == {503}

    def test_delay(self, sb: Sandbox, client: Client) -> None:
        """``delay`` holds the answer back; a delay-only rule still processes."""
        sb.set_faults([{"delay": 0.3, "count": 1}])
        started = time.monotonic()
        assert client.event(record()).status_code == 202
        assert time.monotonic() - started >= 0.3
        assert sb.requests()[0].fault == "delay 0.3s"
        assert len(sb.events()) == 1

    def test_delay_rule_combines_with_a_later_outcome(self, sb: Sandbox, client: Client) -> None:
        """Delay-only rules do not stop evaluation; the next outcome still applies."""
        sb.set_faults([{"delay": 0.2, "count": 1}, {"status": 504, "count": 1}])
        started = time.monotonic()
        assert client.event(record()).status_code == 504
        assert time.monotonic() - started >= 0.2

    def test_drop_connection(self, sb: Sandbox, client: Client) -> None:
        """The socket closes without a response; nothing is processed; the next works."""
        sb.set_faults([{"drop_connection": True, "count": 1}])
        with pytest.raises(requests.ConnectionError):
            client.event(record())
        assert client.event(record()).status_code == 202
        assert len(sb.events()) == 1
        dropped = sb.requests()[0]
        assert dropped.status is None
        assert dropped.fault == "rules[0]: drop_connection"

    def test_process_then_fail(self, sb: Sandbox, client: Client) -> None:
        """``process`` stores the events, then answers the fault: a lost response."""
        sb.set_faults([{"status": 500, "process": True, "count": 1}])
        rec = record(**{"$idempotency_key": "lost-1"})
        assert client.event(rec).status_code == 500
        assert len(sb.events()) == 1
        assert client.event(rec).status_code == 202
        assert sb.stats()["duplicates_skipped"] == 1
        assert len(sb.events()) == 1

    def test_process_then_drop(self, sb: Sandbox, client: Client) -> None:
        """``process`` with ``drop_connection``: stored, but the client sees an error."""
        sb.set_faults([{"drop_connection": True, "process": True, "count": 1}])
        with pytest.raises(requests.ConnectionError):
            client.bulk([record(), record()])
        assert len(sb.events()) == 2

    def test_record_errors_by_index(self, sb: Sandbox, client: Client) -> None:
        """Selected records fail with the given status and message; others are processed."""
        sb.set_faults(
            [
                {
                    "record_errors": [
                        {"index": 0, "status": 400, "message": "bad", "type": "Invalid"},
                        {"index": [2, 3]},
                    ]
                }
            ]
        )
        resp = client.bulk([record(f"ev_{i}") for i in range(5)])
        assert resp.status_code == 207
        results = resp.json()["records"]
        assert [r["status_code"] for r in results] == [400, 202, 500, 500, 202]
        assert results[0]["error"] == {"message": "bad", "type": "Invalid"}
        assert results[2]["status"] == "error"
        assert [e["event"] for e in sb.events()] == ["ev_1", "ev_4"]
        assert sb.stats()["rejected"] == 0

    def test_record_errors_by_event_with_count(self, sb: Sandbox, client: Client) -> None:
        """``event`` + ``count``: the first delivery of that event fails, the retry works."""
        sb.set_faults([{"record_errors": [{"event": "flaky", "count": 1, "status": 503}]}])
        first = client.bulk([record("steady"), record("flaky")]).json()["records"]
        assert [r["status_code"] for r in first] == [202, 503]
        again = client.bulk([record("flaky")]).json()["records"]
        assert [r["status_code"] for r in again] == [202]
        assert [e["event"] for e in sb.events()] == ["steady", "flaky"]

    def test_record_errors_by_rate(self, sb: Sandbox, client: Client) -> None:
        """A record-level rate fails a seeded, partial subset of records."""
        sb.set_faults({"seed": 3, "rules": [{"record_errors": [{"rate": 0.3}]}]})
        results = client.bulk([record() for _ in range(100)]).json()["records"]
        failed = sum(r["status"] == "error" for r in results)
        assert 5 < failed < 60
        assert len(sb.events()) == 100 - failed

    def test_record_errors_do_not_touch_single_events(self, sb: Sandbox, client: Client) -> None:
        """Record-level rules only match bulk requests."""
        sb.set_faults([{"record_errors": [{"index": 0}]}])
        assert client.event(record()).status_code == 202

    def test_truncated_records(self, sb: Sandbox, client: Client) -> None:
        """``truncate_records`` processes all records but answers a short list."""
        sb.set_faults([{"truncate_records": 1, "count": 1}])
        resp = client.bulk([record(), record(), record()])
        assert resp.status_code == 207
        assert len(resp.json()["records"]) == 1
        assert len(sb.events()) == 3

    def test_paths_and_after(self, sb: Sandbox, client: Client) -> None:
        """``paths`` limits a rule to routes; ``after`` lets the first N through."""
        sb.set_faults({"paths": [BULK_PATH], "rules": [{"status": 503, "after": 1, "count": 1}]})
        assert client.event(record()).status_code == 202
        assert client.bulk([record()]).status_code == 207
        assert client.bulk([record()]).status_code == 503
        assert client.bulk([record()]).status_code == 207

    def test_faults_apply_after_auth(self, sb: Sandbox, client: Client) -> None:
        """A badly signed request is a 401 and does not use up a fault."""
        sb.set_faults([{"status": 503, "count": 1}])
        assert client.post(EVENT_PATH, record(), secret="WSSECRET_nope").status_code == 401
        assert client.event(record()).status_code == 503
        assert client.event(record()).status_code == 202

    def test_fault_plan_over_http(self, sb: Sandbox, client: Client) -> None:
        """POST /_sandbox/faults sets a plan, GET shows it with its counters."""
        plan = {"rules": [{"status": 429, "retry_after": "1", "count": 1}]}
        resp = client.session.post(sb.url + "_sandbox/faults", json=plan)
        assert resp.status_code == 200
        assert client.event(record()).status_code == 429
        current = client.session.get(sb.url + "_sandbox/faults").json()
        assert current["rules"][0] == {
            "count": 1,
            "status": 429,
            "retry_after": "1",
            "matched": 1,
            "applied": 1,
        }
        assert client.session.delete(sb.url + "_sandbox/faults").status_code == 200
        assert sb.faults() == {"rules": []}

    @pytest.mark.parametrize(
        "plan",
        [
            {"rules": [{"stauts": 503}]},
            {"rules": [{"status": 503, "drop_connection": True}]},
            {"rules": [{"status": "503"}]},
            {"rules": [{"status": 503, "rate": 1.5}]},
            {"rules": [{"retry_after": "2"}]},
            {"rules": [{"status": 503, "retry_after": "2\r\nX-Evil: 1"}]},
            {"rules": [{"process": True}]},
            {"rules": [{"record_errors": [{"index": "0"}]}]},
            {"rules": [{"record_errors": [{"status": 200}]}]},
            {"rules": {"status": 503}},
            {"unknown": 1},
        ],
    )
    def test_invalid_plans_are_refused(
        self, sb: Sandbox, client: Client, plan: dict[str, Any]
    ) -> None:
        """Typos and contradictions raise rather than silently disabling a fault."""
        with pytest.raises(FaultPlanError):
            sb.set_faults(plan)
        resp = client.session.post(sb.url + "_sandbox/faults", json=plan)
        assert resp.status_code == 400
        assert resp.json()["error"]["type"] == "InvalidFaultPlan"

    def test_plan_objects_round_trip(self, sb: Sandbox) -> None:
        """A FaultPlan can be passed directly; it starts with fresh counters."""
        plan = FaultPlan.from_dict({"seed": 1, "rules": [{"status": 503, "count": 1}]})
        sb.set_faults(plan)
        assert sb.faults()["seed"] == 1
        assert FaultPlan.from_dict(plan.to_dict()).to_dict() == plan.to_dict()


class TestControl:
    def test_inspection_routes(self, sb: Sandbox, client: Client) -> None:
        """GET events/stats/requests mirror the Python API."""
        rec = record()
        client.event(rec)
        get = client.session.get
        assert get(sb.url + "_sandbox/events").json() == [rec]
        assert get(sb.url + "_sandbox/stats").json() == sb.stats()
        (logged,) = get(sb.url + "_sandbox/requests").json()
        assert logged["path"] == EVENT_PATH
        assert logged["status"] == 202
        assert logged["insert_ids"] == [rec["$insert_id"]]

    def test_reset(self, sb: Sandbox, client: Client) -> None:
        """Reset forgets events, counters, keys, the log and faults."""
        client.event(record(**{"$idempotency_key": "k"}))
        sb.set_faults([{"status": 503, "after": 5}])
        assert client.session.post(sb.url + "_sandbox/reset").status_code == 200
        assert sb.events() == []
        assert set(sb.stats().values()) == {0}
        assert sb.requests() == []
        assert sb.faults() == {"rules": []}
        client.event(record(**{"$idempotency_key": "k"}))
        assert len(sb.events()) == 1

    def test_max_concurrent_requests(self, sb: Sandbox) -> None:
        """Delayed requests are served side by side, and the peak is reported and reset."""
        sb.set_faults([{"delay": 1.0}])
        started = time.monotonic()
        with ThreadPoolExecutor(6) as pool:
            codes = list(pool.map(lambda i: _one_event(sb.url, i), range(6)))
        elapsed = time.monotonic() - started
        assert codes == [202] * 6
        assert elapsed < 3.5, f"a delay must not serialise requests ({elapsed:.2f}s)"
        assert sb.stats()["max_concurrent_requests"] == 6
        with requests.get(sb.url + "_sandbox/stats", timeout=10) as resp:
            assert resp.json()["max_concurrent_requests"] == 6
        sb.reset()
        assert sb.stats()["max_concurrent_requests"] == 0
        assert _one_event(sb.url, 7) == 202
        assert sb.stats()["max_concurrent_requests"] == 1

    def test_control_routes_check_methods(self, sb: Sandbox, client: Client) -> None:
        """Wrong verbs on control routes are 405, unknown control routes 404."""
        assert client.session.post(sb.url + "_sandbox/stats").status_code == 405
        assert client.session.get(sb.url + "_sandbox/reset").status_code == 405
        assert client.session.get(sb.url + "_sandbox/nothing").status_code == 404

    def test_request_log(self, sb: Sandbox, client: Client) -> None:
        """The log has counts, sizes, a header subset (no Authorization) and times."""
        recs = [record(**{"$idempotency_key": f"k{i}"}) for i in range(3)]
        before = time.time()
        resp = client.bulk(recs)
        (entry,) = sb.requests()
        assert entry.records == 3
        assert entry.body_bytes == len(resp.request.body or b"")
        assert entry.idempotency_keys == ("k0", "k1", "k2")
        assert "Authorization" not in entry.headers
        assert entry.headers["Content-Type"] == CONTENT_TYPE
        assert before - 1 <= entry.received_at <= time.time()
        assert entry.duration >= 0


class TestLifecycle:
    def test_stop_closes_open_keep_alive_connections(self) -> None:
        """Stopping with a pooled client connection open is clean and prompt."""
        sb = Sandbox(workspace_key=KEY, workspace_secret=SECRET).start()
        c = Client(sb.url)
        try:
            assert c.event(record()).status_code == 202
            started = time.monotonic()
            sb.stop()
            assert time.monotonic() - started < 2
            assert not sb.running
            with pytest.raises(requests.ConnectionError):
                c.event(record())
        finally:
            c.close()
            sb.stop()

    def test_stop_interrupts_a_delay(self) -> None:
        """A long fault delay does not hold up stop()."""
        sb = Sandbox(workspace_key=KEY, workspace_secret=SECRET).start()
        sb.set_faults([{"delay": 30}])
        c = Client(sb.url)
        errors: list[BaseException] = []

        def send() -> None:
            try:
                c.event(record())
            except requests.ConnectionError as exc:
                errors.append(exc)

        t = threading.Thread(target=send)
        t.start()
        try:
            sb.wait_for(lambda: sb.faults()["rules"][0]["applied"] == 1, timeout=5)
            started = time.monotonic()
            sb.stop()
            assert time.monotonic() - started < 3
            t.join(5)
            assert errors
        finally:
            c.close()

    def test_url_and_restart(self) -> None:
        """``url`` ends in a slash; a stopped sandbox can start again."""
        sb = Sandbox(workspace_key=KEY, workspace_secret=SECRET)
        with sb:
            assert sb.url == f"http://127.0.0.1:{sb.port}/"
        sb.stop()  # idempotent
        with sb:
            c = Client(sb.url)
            try:
                assert c.event(record()).status_code == 202
            finally:
                c.close()

    def test_wait_for(self, sb: Sandbox, client: Client) -> None:
        """``wait_for`` returns once a count or predicate holds, else times out."""
        client.event(record())
        sb.wait_for(1, timeout=1)
        sb.wait_for(lambda: sb.stats()["requests"] == 1, timeout=1)
        with pytest.raises(TimeoutError, match="events_processed"):
            sb.wait_for(2, timeout=0.05)


class TestCommand:
    def test_serve_in_a_thread(self) -> None:
        """``serve`` prints the URL and the key, never a secret it was given (issue 10 item 8),
        and returns 0 when asked to stop."""
        out = io.StringIO()
        stop = threading.Event()
        result: list[int] = []
        t = threading.Thread(
            target=lambda: result.append(
                serve("127.0.0.1", 0, KEY, SECRET, api_key="SSAPIKEY_given", out=out, stop=stop)
            )
        )
        t.start()
        try:
            deadline = time.monotonic() + 5
            while "Ctrl-C" not in out.getvalue():
                assert time.monotonic() < deadline
                time.sleep(0.01)
        finally:
            stop.set()
            t.join(5)
        assert result == [0]
        text = out.getvalue()
        assert "listening on http://127.0.0.1:" in text
        assert KEY in text
        assert SECRET not in text and "SSAPIKEY_given" not in text
        assert "SUPRSEND_WORKSPACE_SECRET=<the one you gave; not shown>" in text

    def test_prints_export_lines_a_shell_takes(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """The banner's ``export`` lines, pasted into a shell, configure an app that sends
        to this sandbox; the API-key pair stays commented out (both pairs is an error)."""
        from celery import Celery

        from suprsend_celery import Event
        from suprsend_celery.pipeline.runtime import close_runtime, get_client

        for name in (
            "SUPRSEND_WORKSPACE_KEY",
            "SUPRSEND_WORKSPACE_SECRET",
            "SUPRSEND_WORKSPACE_UID",
            "SUPRSEND_API_KEY",
            "SUPRSEND_BASE_URL",
        ):
            monkeypatch.delenv(name, raising=False)
        out = io.StringIO()
        stop = threading.Event()
        thread = threading.Thread(
            target=serve, args=("127.0.0.1", 0), kwargs={"out": out, "stop": stop}
        )
        thread.start()
        try:
            deadline = time.monotonic() + 5
            while "Ctrl-C" not in out.getvalue():
                assert time.monotonic() < deadline
                time.sleep(0.01)
            banner = out.getvalue().splitlines()
            url = banner[0].rsplit(" ", 1)[1]
            assert f"export SUPRSEND_BASE_URL={url}" in banner
            pasted = "\n".join(banner[1:-1])  # between "listening on" and "Press Ctrl-C"
            shell = subprocess.run(
                ["sh", "-c", f"{pasted}\nenv"],
                env={"PATH": os.environ["PATH"]},
                capture_output=True,
                text=True,
                timeout=10,
                check=True,
            )
            exported = dict(
                line.split("=", 1)
                for line in shell.stdout.splitlines()
                if line.startswith("SUPRSEND_")
            )
            assert set(exported) == {
                "SUPRSEND_BASE_URL",
                "SUPRSEND_WORKSPACE_KEY",
                "SUPRSEND_WORKSPACE_SECRET",
            }
            assert exported["SUPRSEND_BASE_URL"] == url
            for name, value in exported.items():
                monkeypatch.setenv(name, value)
            app = Celery("pasted", set_as_current=False)
            try:
                assert get_client(app).send_event(Event("u1", "signed_up"))["status_code"] == 202
            finally:
                close_runtime(app)
            stats = requests.get(url + "_sandbox/stats", timeout=5).json()
            assert (stats["events_processed"], stats["auth_failures"]) == (1, 0)
        finally:
            stop.set()
            thread.join(5)

    @pytest.mark.slow
    def test_python_dash_m(self) -> None:
        """``python -m suprsend_celery.sandbox`` serves until SIGTERM, then exits 0."""
        env = {**os.environ, "SUPRSEND_WORKSPACE_KEY": KEY, "SUPRSEND_WORKSPACE_SECRET": SECRET}
        proc = subprocess.Popen(
            [sys.executable, "-m", "suprsend_celery.sandbox", "--port", "0"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env=env,
        )
        try:
            assert proc.stdout is not None
            first = proc.stdout.readline()
            url = first.rsplit(" ", 1)[-1].strip()
            assert url.startswith("http://127.0.0.1:")
            c = Client(url)
            try:
                assert c.event(record()).status_code == 202
                stats = c.session.get(url + "_sandbox/stats").json()
                assert stats["events_processed"] == 1
            finally:
                c.close()
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(10) == 0
            assert "1 events processed" in proc.stdout.read()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(5)
            if proc.stdout is not None:
                proc.stdout.close()


def test_pytest_plugin_fixture(suprsend_sandbox: Sandbox) -> None:
    """The ``suprsend_sandbox`` fixture from the package's pytest plugin is clean and live."""
    assert suprsend_sandbox.running
    assert suprsend_sandbox.events() == []
    assert set(suprsend_sandbox.stats().values()) == {0}
    resp = requests.get(suprsend_sandbox.url + "_sandbox/stats", timeout=5)
    assert resp.status_code == 200


class TestLoadModels:
    """``capacity`` (answers slow down with load) and ``max_concurrent`` (429 beyond N)."""

    def test_capacity_queues_requests_in_order(self, sb: Sandbox) -> None:
        """Ten requests at once on a server of 20 a second: the last waits about half a
        second for the nine before it; each is processed."""
        sb.set_faults({"capacity": 20})
        started = time.monotonic()
        with ThreadPoolExecutor(10) as pool:
            codes = list(pool.map(lambda i: _one_event(sb.url, i), range(10)))
        elapsed = time.monotonic() - started
        assert codes == [202] * 10
        assert 0.45 <= elapsed < 2.0, elapsed
        durations = sorted(r.duration for r in sb.requests())
        assert durations[0] < 0.2 and durations[-1] >= 0.45
        assert sb.stats()["events_processed"] == 10

    def test_max_concurrent_answers_429_beyond_n(self, sb: Sandbox) -> None:
        """Six at once on a server taking four: two are refused with 429 at once,
        processing nothing; the fault is named in the log."""
        sb.set_faults({"max_concurrent": 4, "rules": [{"delay": 0.5}]})
        with ThreadPoolExecutor(6) as pool:
            codes = sorted(pool.map(lambda i: _one_event(sb.url, i), range(6)))
        assert codes == [202] * 4 + [429] * 2
        refused = [r for r in sb.requests() if r.status == 429]
        assert {r.fault for r in refused} == {"max_concurrent 4"}
        assert all(r.duration < 0.4 for r in refused)
        assert sb.stats()["events_processed"] == 4

    def test_plan_keys_round_trip_and_are_checked(self, sb: Sandbox) -> None:
        plan = {"capacity": 150.0, "max_concurrent": 8, "rules": [{"delay": 0.05}]}
        assert sb.set_faults(plan).to_dict() == plan
        with pytest.raises(FaultPlanError, match="capacity"):
            FaultPlan.from_dict({"capacity": 0})
        with pytest.raises(FaultPlanError, match="max_concurrent"):
            FaultPlan.from_dict({"max_concurrent": 0})
        assert FaultPlan.from_dict({"max_concurrent": 1})  # a plan with only a model is on
