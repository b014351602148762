"""SuprsendClient: SDK-identical signed bytes, and every kind of failure as a typed error.

Golden tests capture our real requests on a loopback server and check them with the
official SDK's own signature function. Faults come from the sandbox; responses the
sandbox cannot produce (broken HTTP, absurd JSON) come from a tiny raw server here.
"""

from __future__ import annotations

import base64
import email.utils
import hashlib
import hmac
import http.client
import json
import multiprocessing
import os
import pickle
import re
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from conftest import WORKSPACE_KEY, WORKSPACE_SECRET, wait_for
from hypothesis import given, settings
from hypothesis import strategies as st
from suprsend.signature import get_request_signature

from suprsend_celery import (
    BulkResult,
    ConfigurationError,
    DeliveryError,
    Event,
    PermanentDeliveryError,
    SuprsendClient,
    TransientDeliveryError,
)
from suprsend_celery.delivery.client import USER_AGENT, chunk_payloads
from suprsend_celery.delivery.credentials import CONTENT_TYPE, sign
from suprsend_celery.delivery.http import (
    HttpRequest,
    HttpResponse,
    MockTransport,
    Urllib3Transport,
)
from suprsend_celery.delivery.responses import classify_status, parse_retry_after
from suprsend_celery.dev.sandbox import Sandbox

VECTOR_KEY = "WSKEY_abcdefghij0123456789"
VECTOR_SECRET = "WSSECRET_0123456789abcdef"
VECTOR_DATE = "Thu, 01 Jan 2026 00:00:00 GMT"
VECTOR_PATH = "/v2/event/"
VECTOR_MD5 = "97c5d4dbf680d5ae18b5ab1a64c8b7ef"
VECTOR_AUTHORIZATION = "WSKEY_abcdefghij0123456789:8WNYOgeftXtIg8iGf1DDS5FP+tblpl80o389i7IOSU8="
IMF_FIXDATE = re.compile(
    r"^(Mon|Tue|Wed|Thu|Fri|Sat|Sun), \d\d (Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) "
    r"\d{4} \d\d:\d\d:\d\d GMT$"
)


# -- a raw loopback server ---------------------------------------------------------------


@dataclass(frozen=True)
class Captured:
    """One request exactly as it arrived."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes


def raw_response(
    status: int,
    body: bytes = b"",
    content_type: str | None = "application/json",
    headers: tuple[tuple[str, str], ...] = (),
) -> bytes:
    """A complete HTTP/1.1 response (connection closed after it)."""
    lines = [f"HTTP/1.1 {status} Whatever"]
    if content_type is not None:
        lines.append(f"Content-Type: {content_type}")
    lines += [f"{name}: {value}" for name, value in headers]
    lines += [f"Content-Length: {len(body)}", "Connection: close", "", ""]
    return "\r\n".join(lines).encode("latin-1") + body


def json_response(status: int, obj: Any) -> bytes:
    return raw_response(status, json.dumps(obj).encode())


class _RawHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        server: RawServer = self.server.owner  # type: ignore[attr-defined]
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        with server.lock:
            server.captured.append(Captured("POST", self.path, dict(self.headers.items()), body))
            answer = server.responses.pop(0) if server.responses else server.default
        self.wfile.write(answer)
        self.wfile.flush()
        self.close_connection = True

    def log_message(self, format: str, *args: Any) -> None:
        pass


class RawServer:
    """A real HTTP server on loopback that records requests and answers with exact bytes."""

    def __init__(self, *responses: bytes, default: bytes | None = None) -> None:
        self.responses = list(responses)
        self.default = default or json_response(202, {"status": "success", "message_id": "m"})
        self.captured: list[Captured] = []
        self.lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _RawHandler)
        self._server.daemon_threads = True
        self._server.owner = self  # type: ignore[attr-defined]
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/"

    def __enter__(self) -> RawServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


@pytest.fixture
def raw() -> Iterator[RawServer]:
    with RawServer() as server:
        yield server


def make_client(base_url: str, **options: Any) -> SuprsendClient:
    options.setdefault("timeout", 5)
    return SuprsendClient(WORKSPACE_KEY, WORKSPACE_SECRET, base_url=base_url, **options)


@pytest.fixture
def client(sandbox: Sandbox) -> Iterator[SuprsendClient]:
    c = make_client(sandbox.url)
    yield c
    c.close()


@pytest.fixture
def raw_client(raw: RawServer) -> Iterator[SuprsendClient]:
    c = make_client(raw.url)
    yield c
    c.close()


def events(n: int, prefix: str = "ev") -> list[Event]:
    return [Event(f"user-{i}", f"{prefix}_{i}", {"i": i}) for i in range(n)]


def delivery_error(call: Any) -> DeliveryError:
    with pytest.raises(DeliveryError) as info:
        call()
    return info.value


# -- signatures ----------------------------------------------------------------------------


class TestSignature:
    """The HMAC signature, against the protocol's vector (docs/protocol.md) and the SDK's own."""

    def test_spec_vector(self) -> None:
        """The documented string-to-sign over the vector's body md5 gives the vector."""
        string_to_sign = (
            f"POST\n{VECTOR_MD5}\n{CONTENT_TYPE}\n{VECTOR_DATE}\n{VECTOR_PATH}"
        ).encode()
        digest = hmac.new(VECTOR_SECRET.encode(), string_to_sign, hashlib.sha256).digest()
        assert f"{VECTOR_KEY}:{base64.b64encode(digest).decode()}" == VECTOR_AUTHORIZATION

    @pytest.mark.parametrize(
        "body", [b"", b"{}", b"[]", '{"name": "Zoë 東京"}'.encode(), b"x" * 100_000]
    )
    def test_sign_is_the_spec_formula(self, body: bytes) -> None:
        """``sign`` is HMAC-SHA256 over exactly the documented string, so it meets the vector."""
        md5 = hashlib.md5(body).hexdigest()
        text = f"POST\n{md5}\n{CONTENT_TYPE}\n{VECTOR_DATE}\n{VECTOR_PATH}".encode()
        expected = base64.b64encode(
            hmac.new(VECTOR_SECRET.encode(), text, hashlib.sha256).digest()
        ).decode()
        assert sign(VECTOR_SECRET, body, VECTOR_DATE, VECTOR_PATH) == expected

    @pytest.mark.parametrize(
        ("obj", "url"),
        [
            ({"event": "order_placed", "distinct_id": "u1"}, "https://hub.suprsend.com/v2/event/"),
            ([{"a": "ü"}, {"b": [1, 2.5, None]}], "https://hub.suprsend.com/v2/bulk/event/"),
            ({"q": "x"}, "https://proxy.example.com/base/v2/event/?region=eu"),
        ],
    )
    def test_matches_sdk_signature_function(self, obj: Any, url: str) -> None:
        """For the SDK's own serialisation, ``sign`` equals ``get_request_signature``."""
        headers = {"Content-Type": CONTENT_TYPE, "Date": VECTOR_DATE}
        content, expected = get_request_signature(url, "POST", obj, headers, VECTOR_SECRET)
        path = url.split(".com", 1)[1]
        assert sign(VECTOR_SECRET, content.encode(), VECTOR_DATE, path) == expected


class TestGoldenRequests:
    """Our real requests, captured on the wire, are what the SDK would send and sign."""

    def assert_sdk_compatible(self, request: Captured, url: str) -> Any:
        """The body is the SDK's ``json.dumps`` of itself and the Authorization is the SDK's."""
        obj = json.loads(request.body)
        content, signature = get_request_signature(
            url, "POST", obj, request.headers, WORKSPACE_SECRET
        )
        assert content.encode() == request.body
        assert request.headers["Authorization"] == f"{WORKSPACE_KEY}:{signature}"
        assert request.headers["Content-Type"] == "application/json; charset=utf-8"
        assert IMF_FIXDATE.match(request.headers["Date"])
        sent = email.utils.parsedate_to_datetime(request.headers["Date"]).timestamp()
        assert abs(sent - time.time()) < 5
        assert request.headers["User-Agent"] == USER_AGENT
        assert USER_AGENT.startswith("suprsend-celery/")
        assert int(request.headers["Content-Length"]) == len(request.body)
        return obj

    def test_single_event(self, raw: RawServer, raw_client: SuprsendClient) -> None:
        """``send_event`` posts the accepted payload to ``/v2/event/`` with the SDK's signature."""
        event = Event("Zoë", "order_placed", {"city": "東京", "n": 1.5}, tenant_id="t1")
        accepted = raw_client.accept(event)
        result = raw_client.send_event(accepted)
        assert result == {
            "status": "success",
            "status_code": 202,
            "message_id": "m",
            "idempotency_key": accepted.idempotency_key,
        }
        [request] = raw.captured
        assert request.path == "/v2/event/"
        assert request.body == raw_client.as_sent(accepted.payload)
        obj = self.assert_sdk_compatible(request, raw.url + "v2/event/")
        assert obj["properties"]["$ss_sdk_version"] == USER_AGENT

    def test_bulk(self, raw: RawServer, raw_client: SuprsendClient) -> None:
        """The bulk body is the SDK's ``json.dumps(list)`` of the accepted records."""
        raw.default = json_response(207, {"records": [{"status": "success"}] * 3})
        accepted = [raw_client.accept(e) for e in events(2)]
        accepted.append(raw_client.accept(Event("ü", "ünicode", {"x": "€"})))
        result = raw_client.send_bulk(accepted)
        assert result.succeeded == 3
        [request] = raw.captured
        assert request.path == "/v2/bulk/event/"
        obj = self.assert_sdk_compatible(request, raw.url + "v2/bulk/event/")
        assert request.body == json.dumps(obj, ensure_ascii=False).encode("utf-8")
        assert obj == [json.loads(raw_client.as_sent(a.payload)) for a in accepted]

    def test_base_url_with_path_prefix(self, raw: RawServer) -> None:
        """A base URL behind a path prefix signs the full path, like the SDK."""
        c = make_client(raw.url + "proxy/suprsend")
        try:
            c.send_event(Event("u", "ev"))
        finally:
            c.close()
        [request] = raw.captured
        assert request.path == "/proxy/suprsend/v2/event/"
        self.assert_sdk_compatible(request, raw.url + "proxy/suprsend/v2/event/")

    def test_every_attempt_sends_the_same_bytes(
        self, raw: RawServer, raw_client: SuprsendClient
    ) -> None:
        """Re-sending an accepted record re-sends identical bytes (same ids, same time)."""
        raw.responses = [raw_response(503, b"busy", "text/plain")]
        accepted = raw_client.accept(Event("u", "ev", {"a": 1}))
        with pytest.raises(TransientDeliveryError):
            raw_client.send_event(accepted)
        raw_client.send_event(accepted)
        first, second = raw.captured
        assert first.body == second.body == raw_client.as_sent(accepted.payload)

    def test_sandbox_accepts_our_signature(self, client: SuprsendClient, sandbox: Sandbox) -> None:
        """The sandbox, which verifies signatures over the raw bytes, processes our event."""
        accepted = client.accept(Event("u1", "signed_up", {"plan": "pro"}))
        result = client.send_event(accepted)
        assert result["status_code"] == 202
        assert isinstance(result["message_id"], str)
        assert sandbox.events() == [json.loads(client.as_sent(accepted.payload))]
        assert sandbox.stats()["auth_failures"] == 0


# -- helpers -------------------------------------------------------------------------------


class TestParseRetryAfter:
    """``Retry-After``: delta-seconds or HTTP-date, floored at 0 and capped."""

    @pytest.mark.parametrize(
        ("value", "expected"),
        [
            (None, None),
            ("", None),
            ("   ", None),
            ("soon", None),
            ("nan", None),
            ("5", 5.0),
            (" 2.5 ", 2.5),
            ("0", 0.0),
            ("-3", 0.0),
            ("99999", 600.0),
            ("inf", 600.0),
            ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0),
        ],
    )
    def test_values(self, value: str | None, expected: float | None) -> None:
        """Each spelling parses to the expected delay."""
        assert parse_retry_after(value) == expected

    @pytest.mark.parametrize("zone", ["GMT", "+0000", "-0000", "UT"])
    def test_http_date_in_the_future(self, zone: str) -> None:
        """An HTTP-date gives the seconds until then, in any UTC spelling."""
        when = email.utils.formatdate(time.time() + 60, usegmt=True).replace("GMT", zone)
        delay = parse_retry_after(when)
        assert delay is not None
        assert 57 <= delay <= 60

    def test_unknown_zone_is_utc(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """``-0000`` (zone unknown) is read as UTC, not as the machine's local time."""
        monkeypatch.setenv("TZ", "FAR-14")  # POSIX spelling of UTC+14
        time.tzset()
        try:
            when = email.utils.formatdate(time.time() + 60, usegmt=True).replace("GMT", "-0000")
            delay = parse_retry_after(when)
        finally:
            monkeypatch.undo()
            time.tzset()
        assert delay is not None
        assert 57 <= delay <= 60

    def test_cap(self) -> None:
        """The cap applies to both spellings."""
        assert parse_retry_after("50", cap=10) == 10
        later = email.utils.formatdate(time.time() + 3600, usegmt=True)
        assert parse_retry_after(later, cap=10) == 10


class TestClassifyStatus:
    """Which statuses are worth retrying."""

    @pytest.mark.parametrize("status", [408, 409, 425, 429, 500, 502, 503, 504, 507, 599])
    def test_transient(self, status: int) -> None:
        """Timeouts, conflicts, throttling and server errors are transient."""
        assert classify_status(status) is TransientDeliveryError

    @pytest.mark.parametrize("status", [300, 400, 401, 403, 404, 405, 413, 422, 451, 501, 505])
    def test_permanent(self, status: int) -> None:
        """Other 4xx (and 501/505) are permanent."""
        assert classify_status(status) is PermanentDeliveryError


class TestChunkPayloads:
    """Bulk chunks hold at most 100 records and 800 KiB, in order."""

    @staticmethod
    def body_size(chunk: Any) -> int:
        return len(b"[" + b", ".join(chunk) + b"]")

    def test_record_limit(self) -> None:
        """250 small records go out as 100 + 100 + 50."""
        payloads = [b'{"i": %d}' % i for i in range(250)]
        chunks = list(chunk_payloads(payloads))
        assert [(offset, len(c)) for offset, c in chunks] == [(0, 100), (100, 100), (200, 50)]
        assert [p for _, c in chunks for p in c] == payloads

    def test_byte_limit(self) -> None:
        """Bodies never exceed 800 KiB, counting brackets and separators exactly."""
        payloads = [b"x" * 20_000 for _ in range(100)]
        chunks = list(chunk_payloads(payloads))
        assert all(self.body_size(c) <= 800 * 1024 for _, c in chunks)
        assert len(chunks) == 3
        assert len(chunks[0][1]) == (800 * 1024 - 2) // 20_002

    def test_exact_fit(self) -> None:
        """Records filling exactly 800 KiB share one request; one byte more splits."""
        size = (800 * 1024 - 2 - 2 * 3) // 4
        fits = [b"a" * size] * 4
        assert self.body_size(fits) == 800 * 1024
        assert len(list(chunk_payloads(fits))) == 1
        over = [*fits[:3], b"a" * (size + 1)]
        assert [len(c) for _, c in chunk_payloads(over)] == [3, 1]

    def test_oversized_record_goes_alone(self) -> None:
        """A record above the byte limit still gets its own request rather than vanishing."""
        payloads = [b"small", b"x" * 900_000, b"small"]
        assert [len(c) for _, c in chunk_payloads(payloads)] == [1, 1, 1]

    def test_empty(self) -> None:
        """No records, no chunks."""
        assert list(chunk_payloads([])) == []

    @settings(max_examples=100, deadline=None)
    @given(
        sizes=st.lists(st.integers(1, 3000), max_size=60),
        max_records=st.integers(1, 10),
        max_bytes=st.integers(100, 10_000),
    )
    def test_partition(self, sizes: list[int], max_records: int, max_bytes: int) -> None:
        """Chunks partition the input in order and respect both limits."""
        payloads = [bytes([65 + i % 26]) * n for i, n in enumerate(sizes)]
        chunks = list(chunk_payloads(payloads, max_records, max_bytes))
        assert [p for _, c in chunks for p in c] == payloads
        offset = 0
        for start, chunk in chunks:
            assert start == offset
            assert 1 <= len(chunk) <= max_records
            assert len(chunk) == 1 or self.body_size(chunk) <= max_bytes
            offset += len(chunk)


# -- faults --------------------------------------------------------------------------------


class TestSingleEventFaults:
    """Each sandbox fault becomes the right ``DeliveryError`` for ``send_event``."""

    @pytest.mark.parametrize(
        ("rule", "status", "text"),
        [
            ({"status": 503}, 503, "HTTP 503"),
            ({"status": 500}, 500, "HTTP 500"),
            ({"status": 504}, 504, "HTTP 504"),
            ({"status": 502, "html": True}, 502, "HTTP 502"),
            ({"status": 408}, 408, "HTTP 408"),
            ({"status": 500, "body": "upstream exploded"}, 500, "upstream exploded"),
            ({"status": 503, "body": ""}, 503, "HTTP 503"),
        ],
    )
    def test_transient(
        self,
        client: SuprsendClient,
        sandbox: Sandbox,
        rule: dict[str, Any],
        status: int,
        text: str,
    ) -> None:
        """5xx answers (HTML, plain text or empty) are transient, keyed, with no Retry-After."""
        sandbox.set_faults({"rules": [{**rule, "count": 1}]})
        event = Event("u", "ev", idempotency_key="key-1")
        error = delivery_error(lambda: client.send_event(event))
        assert type(error) is TransientDeliveryError
        assert error.retryable
        assert (error.status_code, error.idempotency_key, error.retry_after) == (
            status,
            "key-1",
            None,
        )
        assert text in str(error)
        assert "<html" not in str(error).lower()
        assert not error.is_auth_error

    def test_retry_after_seconds(self, client: SuprsendClient, sandbox: Sandbox) -> None:
        """A 429 with ``Retry-After: 7`` carries retry_after 7."""
        sandbox.set_faults({"rules": [{"status": 429, "retry_after": "7", "count": 1}]})
        error = delivery_error(lambda: client.send_event(Event("u", "ev")))
        assert type(error) is TransientDeliveryError
        assert (error.status_code, error.retry_after) == (429, 7.0)

    def test_retry_after_http_date(self, client: SuprsendClient, sandbox: Sandbox) -> None:
        """A 503 with an HTTP-date ``Retry-After`` carries the seconds until then."""
        when = email.utils.formatdate(time.time() + 120, usegmt=True)
        sandbox.set_faults({"rules": [{"status": 503, "retry_after": when, "count": 1}]})
        error = delivery_error(lambda: client.send_event(Event("u", "ev")))
        assert type(error) is TransientDeliveryError
        assert error.retry_after is not None
        assert 115 <= error.retry_after <= 120

    @pytest.mark.parametrize("status", [400, 404, 422, 413])
    def test_permanent(self, client: SuprsendClient, sandbox: Sandbox, status: int) -> None:
        """Other 4xx are permanent and not auth errors."""
        sandbox.set_faults({"rules": [{"status": status, "count": 1}]})
        error = delivery_error(lambda: client.send_event(Event("u", "ev")))
        assert type(error) is PermanentDeliveryError
        assert not error.retryable
        assert error.status_code == status
        assert not error.is_auth_error

    @pytest.mark.parametrize("status", [401, 403])
    def test_auth_fault(self, client: SuprsendClient, sandbox: Sandbox, status: int) -> None:
        """401/403 are permanent auth errors whose message points at the credentials."""
        sandbox.set_faults({"rules": [{"status": status, "count": 1}]})
        error = delivery_error(lambda: client.send_event(Event("u", "ev")))
        assert type(error) is PermanentDeliveryError
        assert error.is_auth_error
        assert "suprsend_workspace_secret" in str(error)

    def test_wrong_secret(self, sandbox: Sandbox) -> None:
        """A real signature failure is a 401 auth error, and the secret is nowhere in it."""
        secret = "WSSECRET_wrong_but_private"
        c = SuprsendClient(WORKSPACE_KEY, secret, base_url=sandbox.url, timeout=5)
        try:
            error = delivery_error(lambda: c.send_event(Event("u", "ev")))
        finally:
            c.close()
        assert error.status_code == 401
        assert error.is_auth_error
        assert secret not in str(error)
        assert secret not in repr(error)
        assert sandbox.stats()["auth_failures"] == 1

    def test_validation_refusal(self, client: SuprsendClient, sandbox: Sandbox) -> None:
        """A record the server refuses as invalid is a permanent 400."""
        bad = json.dumps({"event": "ev"}).encode()
        error = delivery_error(lambda: client.send_event(bad))
        assert type(error) is PermanentDeliveryError
        assert error.status_code == 400

    def test_dropped_connection(self, client: SuprsendClient, sandbox: Sandbox) -> None:
        """A connection closed without an answer is transient with no status code."""
        sandbox.set_faults({"rules": [{"drop_connection": True, "count": 1}]})
        error = delivery_error(lambda: client.send_event(Event("u", "ev", idempotency_key="k")))
        assert type(error) is TransientDeliveryError
        assert (error.status_code, error.idempotency_key) == (None, "k")

    def test_lost_response_is_deduplicated(self, client: SuprsendClient, sandbox: Sandbox) -> None:
        """Processed-then-dropped, the retry of the same record is skipped by the server."""
        sandbox.set_faults({"rules": [{"drop_connection": True, "process": True, "count": 1}]})
        accepted = client.accept(Event("u", "ev"))
        with pytest.raises(TransientDeliveryError):
            client.send_event(accepted)
        client.send_event(accepted)
        stats = sandbox.stats()
        assert (stats["events_processed"], stats["duplicates_skipped"]) == (1, 1)

    def test_timeout(self, sandbox: Sandbox) -> None:
        """A server slower than the read timeout gives a transient error with no status."""
        sandbox.set_faults({"rules": [{"delay": 0.5, "count": 1}]})
        c = make_client(sandbox.url, timeout=0.1)
        try:
            error = delivery_error(lambda: c.send_event(Event("u", "ev", idempotency_key="k")))
        finally:
            c.close()
        assert type(error) is TransientDeliveryError
        assert (error.status_code, error.idempotency_key) == (None, "k")
        assert "timed out" in str(error)
        wait_for(lambda: sandbox.stats()["requests"] == 1, timeout=5, message="delayed request")

    def test_connection_refused(self) -> None:
        """Nobody listening is transient with no status."""
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        c = make_client(f"http://127.0.0.1:{port}/")
        try:
            error = delivery_error(lambda: c.send_event(Event("u", "ev")))
        finally:
            c.close()
        assert type(error) is TransientDeliveryError
        assert error.status_code is None


class TestBulkFaults:
    """``send_bulk`` reports each record's outcome, in order, with the right class."""

    def test_per_record_errors(self, client: SuprsendClient, sandbox: Sandbox) -> None:
        """Failed records get their own status and class; the rest are processed."""
        sandbox.set_faults(
            {
                "rules": [
                    {
                        "record_errors": [
                            {"index": 1, "status": 400, "message": "bad record"},
                            {"index": 3, "status": 500},
                            {"index": 4, "status": 401},
                            {"index": 5, "status": 429},
                        ],
                        "count": 1,
                    }
                ]
            }
        )
        accepted = [client.accept(e) for e in events(7)]
        result = client.send_bulk(accepted)
        assert isinstance(result, BulkResult)
        assert (len(result), result.requests, result.succeeded) == (7, 1, 3)
        assert [r.index for r in result] == list(range(7))
        assert [r.idempotency_key for r in result] == [a.idempotency_key for a in accepted]
        assert [r.status_code for r in result] == [202, 400, 202, 500, 401, 429, 202]
        assert [type(r.error) for r in result] == [
            type(None),
            PermanentDeliveryError,
            type(None),
            TransientDeliveryError,
            PermanentDeliveryError,
            TransientDeliveryError,
            type(None),
        ]
        assert [r.index for r in result.failed] == [1, 3, 4, 5]
        assert "bad record" in str(result[1].error)
        assert result[4].error is not None and result[4].error.is_auth_error
        for r in result.failed:
            assert r.error is not None
            assert r.error.idempotency_key == r.idempotency_key
        processed = {e["$idempotency_key"] for e in sandbox.events()}
        assert processed == {accepted[i].idempotency_key for i in (0, 2, 6)}

    def test_short_records_list(self, client: SuprsendClient, sandbox: Sandbox) -> None:
        """Records missing from a 2xx bulk response are transient failures."""
        sandbox.set_faults({"rules": [{"truncate_records": 2, "count": 1}]})
        accepted = [client.accept(e) for e in events(5)]
        result = client.send_bulk(accepted)
        assert [r.ok for r in result] == [True, True, False, False, False]
        for r in result.failed:
            assert type(r.error) is TransientDeliveryError
            assert r.status_code == 207
            assert r.error is not None and r.error.idempotency_key == r.idempotency_key
        # Sending them again is safe: the server had processed them and now skips them.
        again = client.send_bulk(accepted[2:])
        assert again.succeeded == 3
        stats = sandbox.stats()
        assert (stats["events_processed"], stats["duplicates_skipped"]) == (5, 3)

    @pytest.mark.parametrize(
        ("rule", "cls", "status"),
        [
            ({"status": 503, "retry_after": "3"}, TransientDeliveryError, 503),
            ({"status": 502, "html": True}, TransientDeliveryError, 502),
            ({"status": 400}, PermanentDeliveryError, 400),
            ({"status": 403}, PermanentDeliveryError, 403),
            ({"drop_connection": True}, TransientDeliveryError, None),
            ({"status": 207, "body": "all good"}, TransientDeliveryError, 207),
            ({"status": 200, "body": ""}, TransientDeliveryError, 200),
        ],
    )
    def test_whole_request_failure(
        self,
        client: SuprsendClient,
        sandbox: Sandbox,
        rule: dict[str, Any],
        cls: type[DeliveryError],
        status: int | None,
    ) -> None:
        """A failed request, or a 2xx without a records list, fails every record of it."""
        sandbox.set_faults({"rules": [{**rule, "count": 1}]})
        accepted = [client.accept(e) for e in events(3)]
        result = client.send_bulk(accepted)
        assert result.succeeded == 0
        for r, a in zip(result, accepted, strict=True):
            assert type(r.error) is cls
            assert r.status_code == status
            assert r.error is not None
            assert r.error.idempotency_key == a.idempotency_key == r.idempotency_key
        if rule.get("retry_after"):
            assert all(r.error is not None and r.error.retry_after == 3.0 for r in result)

    def test_chunking_by_count(self, client: SuprsendClient, sandbox: Sandbox) -> None:
        """250 events take three requests of 100, 100 and 50 records."""
        result = client.send_bulk(events(250))
        assert (result.requests, result.succeeded) == (3, 250)
        assert [r.records for r in sandbox.requests()] == [100, 100, 50]
        assert [e["event"] for e in sandbox.events()] == [f"ev_{i}" for i in range(250)]

    def test_chunking_by_bytes(self, client: SuprsendClient, sandbox: Sandbox) -> None:
        """Large records split so no request body exceeds 800 KiB."""
        big = [Event("u", f"big_{i}", {"pad": "x" * 60_000}) for i in range(40)]
        result = client.send_bulk(big)
        assert result.succeeded == 40
        sizes = [r.body_bytes for r in sandbox.requests()]
        assert result.requests == len(sizes) == 4
        assert all(size <= 800 * 1024 for size in sizes)
        assert sum(r.records or 0 for r in sandbox.requests()) == 40

    def test_failed_chunk_does_not_hide_others(
        self, client: SuprsendClient, sandbox: Sandbox
    ) -> None:
        """When the second of three requests fails, only its records fail."""
        sandbox.set_faults({"rules": [{"status": 503, "after": 1, "count": 1}]})
        result = client.send_bulk(events(250))
        assert [r.ok for r in result] == [True] * 100 + [False] * 100 + [True] * 50
        assert len({r.error.idempotency_key for r in result.failed if r.error}) == 100

    def test_empty(self, client: SuprsendClient, sandbox: Sandbox) -> None:
        """No events, no request."""
        result = client.send_bulk([])
        assert (len(result), result.requests) == (0, 0)
        assert sandbox.stats()["requests"] == 0


class TestMalformedResponses:
    """Responses the sandbox cannot produce never crash the client."""

    @pytest.mark.parametrize(
        "answer",
        [
            b"NOT HTTP AT ALL\r\n\r\n",
            b"",
            b"HTTP/1.1 abc OK\r\nContent-Length: 0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\nConnection: close\r\n\r\n{}",
        ],
        ids=["garbage-status-line", "closed", "bad-status-code", "truncated-body"],
    )
    def test_broken_http(self, raw: RawServer, raw_client: SuprsendClient, answer: bytes) -> None:
        """Broken HTTP is a transient error with no status code."""
        raw.responses = [answer]
        error = delivery_error(lambda: raw_client.send_event(Event("u", "ev")))
        assert type(error) is TransientDeliveryError
        assert error.status_code is None

    @pytest.mark.parametrize(
        ("answer", "text"),
        [
            (raw_response(502, b"<html><body>Bad Gateway</body></html>", None), "HTTP 502"),
            (raw_response(503, b"\xff\xfe\x00 not utf-8", "text/plain"), "not utf-8"),
            (raw_response(500, b"[" * 100_000), "HTTP 500"),
            (raw_response(500, b'{"error": "plain string error"}'), "plain string error"),
            (raw_response(500, b'{"message": "top-level message"}'), "top-level message"),
            (raw_response(500, b'{"error": {"message": 5, "type": null}}'), "HTTP 500: 5"),
            (raw_response(500, b'"a json string"'), "a json string"),
            (raw_response(500, b"null"), "HTTP 500"),
            (raw_response(500, b"[1, 2]"), "HTTP 500"),
            (raw_response(500, b"x" * 5000, "text/plain"), "xxx..."),
        ],
    )
    def test_error_bodies(
        self, raw: RawServer, raw_client: SuprsendClient, answer: bytes, text: str
    ) -> None:
        """Whatever the error body, the result is a short, typed error."""
        raw.responses = [answer]
        error = delivery_error(lambda: raw_client.send_event(Event("u", "ev")))
        assert type(error) is TransientDeliveryError
        assert text in str(error)
        assert len(str(error)) < 300

    def test_retry_after_from_raw_header(self, raw: RawServer, raw_client: SuprsendClient) -> None:
        """A past HTTP-date means retry now; a junk value is ignored."""
        raw.responses = [
            raw_response(429, headers=(("Retry-After", "Wed, 21 Oct 2015 07:28:00 GMT"),)),
            raw_response(429, headers=(("Retry-After", "whenever"),)),
        ]
        assert delivery_error(lambda: raw_client.send_event(Event("u", "ev"))).retry_after == 0
        assert delivery_error(lambda: raw_client.send_event(Event("u", "ev"))).retry_after is None

    @pytest.mark.parametrize(
        "body", [b"", b"OK", b"[]", b"null", b'"accepted"', b"<html>ok</html>", b'{"x": 1}']
    )
    def test_single_success_without_json(
        self, raw: RawServer, raw_client: SuprsendClient, body: bytes
    ) -> None:
        """A 2xx is a success whatever its body; the message id is then None."""
        raw.responses = [raw_response(202, body)]
        result = raw_client.send_event(Event("u", "ev", idempotency_key="k"))
        assert result == {
            "status": "success",
            "status_code": 202,
            "message_id": None,
            "idempotency_key": "k",
        }

    def test_message_id_must_be_text(self, raw: RawServer, raw_client: SuprsendClient) -> None:
        """A non-string message id is dropped rather than passed on."""
        raw.responses = [json_response(202, {"status": "success", "message_id": {"x": 1}})]
        assert raw_client.send_event(Event("u", "ev"))["message_id"] is None

    @pytest.mark.parametrize(
        "body",
        [b"", b"OK", b"[]", b"{}", b'{"records": "all"}', b'{"records": null}', b"[" * 50_000],
    )
    def test_bulk_2xx_without_records(
        self, raw: RawServer, raw_client: SuprsendClient, body: bytes
    ) -> None:
        """A 2xx bulk answer with no usable records list fails every record transiently."""
        raw.responses = [raw_response(207, body)]
        result = raw_client.send_bulk(events(3))
        assert result.succeeded == 0
        assert all(type(r.error) is TransientDeliveryError for r in result)
        assert [r.status_code for r in result] == [207, 207, 207]

    def test_bulk_malformed_record_results(
        self, raw: RawServer, raw_client: SuprsendClient
    ) -> None:
        """Odd per-record entries become errors in place; extra entries are ignored."""
        records = [
            None,
            5,
            {"status": "error"},
            {"status": "success"},
            {"status": "error", "status_code": "400", "error": "text"},
            {"status": "error", "status_code": True},
            {"status": "error", "status_code": 422, "error": {"message": "no", "type": "V"}},
            {"status": "error", "status_code": 200},
            {"status": "success"},
            {"status": "success"},
        ]
        raw.responses = [json_response(207, {"records": records})]
        result = raw_client.send_bulk(events(9))
        assert [r.ok for r in result] == [
            False,
            False,
            False,
            True,
            False,
            False,
            False,
            False,
            True,
        ]
        classes = [type(r.error).__name__ if r.error else None for r in result]
        assert classes == [
            "TransientDeliveryError",
            "TransientDeliveryError",
            "TransientDeliveryError",
            None,
            "TransientDeliveryError",
            "TransientDeliveryError",
            "PermanentDeliveryError",
            "TransientDeliveryError",
            None,
        ]
        assert result[6].error is not None
        assert (result[6].error.status_code, result[6].error.error_type) == (422, "V")
        assert "no" in str(result[6].error)
        for r in result.failed:
            assert r.error is not None and r.error.idempotency_key == r.idempotency_key


# -- without a server: MockTransport ------------------------------------------------------


class Recorder:
    """A handler for ``MockTransport``: records each request, answers from a list."""

    def __init__(self, *answers: HttpResponse | Exception) -> None:
        self.answers = list(answers)
        self.requests: list[HttpRequest] = []

    def __call__(self, request: HttpRequest) -> HttpResponse:
        self.requests.append(request)
        answer = self.answers.pop(0) if self.answers else ok_response()
        if isinstance(answer, Exception):
            raise answer
        return answer


def ok_response() -> HttpResponse:
    return HttpResponse(202, {"Content-Type": "application/json"}, b'{"message_id": "m1"}')


def mock_client(handler: Recorder, **options: Any) -> SuprsendClient:
    return SuprsendClient(
        WORKSPACE_KEY,
        WORKSPACE_SECRET,
        base_url="https://hub.example.com/",
        transport=MockTransport(handler),
        **options,
    )


class TestMockTransport:
    """The transport seam: the client's whole request/answer logic with no server."""

    def test_request_is_signed_as_the_sdk_signs(self) -> None:
        """The transport gets the signed request: SDK headers over exactly the body sent."""
        handler = Recorder()
        client = mock_client(handler, connect_timeout=2, timeout=7)
        accepted = client.accept(Event("u1", "signed_up", {"plan": "pro"}))
        assert client.send_event(accepted)["message_id"] == "m1"
        [request] = handler.requests
        assert (request.method, request.url, request.path) == (
            "POST",
            "https://hub.example.com/v2/event/",
            "/v2/event/",
        )
        assert request.body == client.as_sent(accepted.payload)
        assert request.timeout == (2, 7)
        headers = request.headers
        assert headers["Content-Type"] == CONTENT_TYPE
        assert headers["User-Agent"] == USER_AGENT
        assert json.loads(headers["X-Suprsend-Client-User-Agent"])["sdk"] == "suprsend-celery"
        assert IMF_FIXDATE.match(headers["Date"])
        signature = sign(WORKSPACE_SECRET, request.body, headers["Date"], "/v2/event/")
        assert headers["Authorization"] == f"{WORKSPACE_KEY}:{signature}"
        _, sdk_signature = get_request_signature(
            request.url, "POST", json.loads(request.body), dict(headers), WORKSPACE_SECRET
        )
        assert signature == sdk_signature

    def test_bulk_requests(self) -> None:
        """250 events go out as three signed bulk requests, 100 + 100 + 50 records."""
        handler = Recorder(*(bulk_ok(n) for n in (100, 100, 50)))
        result = mock_client(handler).send_bulk(events(250))
        assert (result.requests, result.succeeded) == (3, 250)
        assert [len(json.loads(r.body)) for r in handler.requests] == [100, 100, 50]
        for request in handler.requests:
            assert request.path == "/v2/bulk/event/"
            date = request.headers["Date"]
            signature = sign(WORKSPACE_SECRET, request.body, date, request.path)
            assert request.headers["Authorization"] == f"{WORKSPACE_KEY}:{signature}"

    def test_api_key_mode(self) -> None:
        """In API-key mode the request carries the Bearer key and no Date."""
        handler = Recorder()
        client = SuprsendClient.with_workspace_api_key(
            "ws_uid", "SSAPIKEY_x", transport=MockTransport(handler)
        )
        client.send_event(Event("u1", "ev"))
        [request] = handler.requests
        assert request.headers["Authorization"] == "Bearer SSAPIKEY_x"
        assert "Date" not in request.headers
        assert json.loads(request.body)["env"] == "ws_uid"

    @pytest.mark.parametrize(
        ("status", "cls"),
        [
            *((s, TransientDeliveryError) for s in (408, 409, 425, 429, 500, 502, 503, 504)),
            *((s, PermanentDeliveryError) for s in (400, 401, 403, 404, 413, 422)),
        ],
    )
    def test_statuses(self, status: int, cls: type[DeliveryError]) -> None:
        """Each refusal becomes its class, keyed, with ``Retry-After`` read whatever its case."""
        answer = HttpResponse(
            status, {"retry-after": "4"}, b'{"status": "error", "error": {"message": "nope"}}'
        )
        client = mock_client(Recorder(answer))
        event = Event("u", "ev", idempotency_key="k-1")
        error = delivery_error(lambda: client.send_event(event))
        assert type(error) is cls
        assert (error.status_code, error.idempotency_key, error.retry_after) == (status, "k-1", 4)
        assert "nope" in str(error)
        assert error.is_auth_error == (status in (401, 403))

    def test_html_error_page(self) -> None:
        """An HTML 502 is a short transient error without the page in it."""
        page = HttpResponse(502, {"Content-Type": "text/html"}, b"<html>Bad Gateway</html>")
        error = delivery_error(lambda: mock_client(Recorder(page)).send_event(Event("u", "ev")))
        assert type(error) is TransientDeliveryError
        assert "HTTP 502" in str(error) and "<html" not in str(error)

    def test_bulk_record_results(self) -> None:
        """Per-record results map to each record, in order, keyed."""
        records = [
            {"status": "success"},
            {"status": "error", "status_code": 400, "error": {"message": "bad", "type": "V"}},
            {"status": "error", "status_code": 500},
        ]
        answer = HttpResponse(207, body=json.dumps({"records": records}).encode())
        client = mock_client(Recorder(answer))
        accepted = [client.accept(e) for e in events(3)]
        result = client.send_bulk(accepted)
        assert [type(r.error).__name__ if r.error else None for r in result] == [
            None,
            "PermanentDeliveryError",
            "TransientDeliveryError",
        ]
        assert [r.status_code for r in result] == [202, 400, 500]
        assert [r.idempotency_key for r in result] == [a.idempotency_key for a in accepted]

    @pytest.mark.parametrize(
        ("raised", "text"),
        [
            (TimeoutError(), "timed out: TimeoutError"),
            (ConnectionResetError(), "connection failed: ConnectionResetError"),
            (http.client.BadStatusLine("x"), "connection failed: BadStatusLine"),
        ],
    )
    def test_no_answer(self, raised: Exception, text: str) -> None:
        """A transport that gets no answer gives transient errors with no status, on both
        paths; the bulk error is each record's, with its own key."""
        client = mock_client(Recorder(raised, raised))
        error = delivery_error(lambda: client.send_event(Event("u", "ev", idempotency_key="k")))
        assert type(error) is TransientDeliveryError
        assert (str(error), error.status_code, error.idempotency_key) == (text, None, "k")
        accepted = [client.accept(e) for e in events(2)]
        result = client.send_bulk(accepted)
        assert [str(r.error) for r in result] == [text, text]
        assert [r.error.idempotency_key for r in result if r.error] == [
            a.idempotency_key for a in accepted
        ]

    def test_dry_run_sends_nothing(self) -> None:
        """A dry-run client validates and answers, and its transport is never called."""
        handler = Recorder()
        client = mock_client(handler, dry_run=True)
        assert client.send_event(Event("u", "ev", idempotency_key="k"))["status"] == "dry_run"
        assert client.send_bulk(events(150)).succeeded == 150
        assert handler.requests == []

    def test_transport_and_route_settings_conflict(self) -> None:
        """A proxy or CA bundle with your own transport is refused (it would be ignored)."""
        for option in ({"proxy_url": "http://proxy:3128"}, {"ca_bundle": "/etc/ca.pem"}):
            with pytest.raises(ConfigurationError, match="transport"):
                mock_client(Recorder(), **option)


def bulk_ok(records: int) -> HttpResponse:
    return HttpResponse(
        207, body=json.dumps({"records": [{"status": "success"}] * records}).encode()
    )


# -- pools, forks, secrets ----------------------------------------------------------------


def pool_of(client: SuprsendClient) -> Any:
    """This thread's urllib3 pool for the client's API host (the default transport's)."""
    transport = client.transport
    assert isinstance(transport, Urllib3Transport)
    return transport.pool(client.base_url + "v2/event/")


def _forked_child(client: SuprsendClient, conn: Any) -> None:
    """Runs in a forked child: report whether the inherited pool was replaced."""
    transport = client.transport
    assert isinstance(transport, Urllib3Transport)
    inherited = transport._local.pools[client.base_url + "v2/event/"][0]
    fresh = pool_of(client)
    result = client.send_event(Event("forked", "fork_test"))
    conn.send(
        {
            "replaced": fresh is not inherited,
            "pid_recorded": transport._local.pid == os.getpid(),
            "stable": pool_of(client) is fresh,
            "status": result["status_code"],
        }
    )
    client.close()
    conn.close()


class TestSessions:
    """One connection pool per thread and per process."""

    def test_reused_within_a_thread(self, client: SuprsendClient, sandbox: Sandbox) -> None:
        """Requests from one thread share one pool and one TCP connection."""
        pool = pool_of(client)
        client.send_bulk(events(2))
        client.send_event(Event("u", "ev"))
        assert pool_of(client) is pool
        assert len({r.connection for r in sandbox.requests()}) == 1

    def test_separate_per_thread(self, client: SuprsendClient) -> None:
        """Another thread gets its own pool."""
        seen: dict[str, Any] = {}

        def work() -> None:
            seen["pool"] = pool_of(client)
            seen["status"] = client.send_event(Event("u", "threaded"))["status_code"]
            client.close()

        thread = threading.Thread(target=work)
        thread.start()
        thread.join(10)
        assert seen["status"] == 202
        assert seen["pool"] is not pool_of(client)

    def test_close_keeps_client_usable(self, client: SuprsendClient) -> None:
        """After ``close`` the next request opens a new pool."""
        first = pool_of(client)
        client.close()
        assert pool_of(client) is not first
        assert client.send_event(Event("u", "ev"))["status_code"] == 202

    def test_close_all_closes_every_threads_session(self, client: SuprsendClient) -> None:
        """``close_all`` closes other threads' pools too; every thread then gets a new
        one and the client keeps working."""
        seen: list[Any] = []

        def in_thread() -> None:
            seen.append(pool_of(client))
            client.send_event(Event("u", "ev_thread"))

        worker = threading.Thread(target=in_thread)
        worker.start()
        worker.join()
        mine = pool_of(client)
        client.close_all()
        assert seen[0].pool is None  # the other thread's connections are closed
        assert pool_of(client) is not mine
        assert client.send_event(Event("u", "ev_after"))["status_code"] == 202

    # Python 3.12+ warns about fork() in a process with threads (the sandbox's); the
    # child here only makes one request, which is exactly what the test is about.
    @pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
    def test_fork_gets_a_new_session(self, client: SuprsendClient, sandbox: Sandbox) -> None:
        """A forked child builds its own pool instead of sharing the parent's sockets."""
        client.send_event(Event("u", "before_fork"))
        parent_pool = pool_of(client)
        ctx = multiprocessing.get_context("fork")
        receiver, sender = ctx.Pipe(duplex=False)
        child = ctx.Process(target=_forked_child, args=(client, sender))
        child.start()
        sender.close()
        assert receiver.poll(15), "the forked child did not report"
        report = receiver.recv()
        receiver.close()
        child.join(10)
        assert child.exitcode == 0
        assert report == {"replaced": True, "pid_recorded": True, "stable": True, "status": 202}
        assert pool_of(client) is parent_pool
        assert client.send_event(Event("u", "after_fork"))["status_code"] == 202
        assert [e["event"] for e in sandbox.events()] == ["before_fork", "fork_test", "after_fork"]


class TestConstruction:
    """Bad client settings fail fast, and the secret is never shown."""

    @pytest.mark.parametrize(
        "kwargs",
        [
            {"workspace_key": ""},
            {"workspace_key": "   "},
            {"workspace_key": None},
            {"workspace_secret": ""},
            {"workspace_secret": None},
            {"base_url": "ftp://hub.example.com/"},
            {"base_url": "hub.suprsend.com"},
            {"timeout": 0},
            {"timeout": -1},
            {"connect_timeout": 0},
        ],
    )
    def test_refused(self, kwargs: dict[str, Any]) -> None:
        """Each bad setting raises ConfigurationError."""
        options = {"workspace_key": WORKSPACE_KEY, "workspace_secret": "S3CR3T-xyz", **kwargs}
        with pytest.raises(ConfigurationError) as info:
            SuprsendClient(**options)
        assert "S3CR3T-xyz" not in str(info.value)

    def test_base_url_normalised(self) -> None:
        """A base URL without a trailing slash gets one."""
        c = SuprsendClient(WORKSPACE_KEY, "s", base_url=" https://hub.example.com/api ")
        assert c.base_url == "https://hub.example.com/api/"
        assert SuprsendClient(WORKSPACE_KEY, "s").base_url == "https://hub.suprsend.com/"

    def test_no_secret_in_repr(self) -> None:
        """``repr(client)`` shows the key and URL but not the secret."""
        secret = "WSSECRET_never_print_me"
        c = SuprsendClient(WORKSPACE_KEY, secret)
        assert secret not in repr(c)
        assert WORKSPACE_KEY in repr(c)
        assert secret not in str(vars(c).get("workspace_key"))

    def test_errors_never_carry_the_secret(self, sandbox: Sandbox) -> None:
        """Neither a signature failure nor a connection error mentions the secret."""
        secret = "WSSECRET_never_print_me"
        errors = []
        for url in (sandbox.url, "http://127.0.0.1:9/"):
            c = SuprsendClient(WORKSPACE_KEY, secret, base_url=url, timeout=2)
            try:
                errors.append(delivery_error(lambda c=c: c.send_event(Event("u", "ev"))))
            finally:
                c.close()
        for error in errors:
            text = f"{error!s} {error!r} {pickle.loads(pickle.dumps(error))!s}"
            assert secret not in text

    def test_error_pickles(self) -> None:
        """Delivery errors survive pickling with all their fields (result backends)."""
        error = TransientDeliveryError(
            "HTTP 429: slow down", status_code=429, idempotency_key="k", retry_after=2.0
        )
        copy = pickle.loads(pickle.dumps(error))
        assert type(copy) is TransientDeliveryError
        assert (copy.status_code, copy.idempotency_key, copy.retry_after, str(copy)) == (
            429,
            "k",
            2.0,
            "HTTP 429: slow down",
        )

    def test_unknown_input_type(self, client: SuprsendClient) -> None:
        """Only Events, accepted records and payload bytes can be sent."""
        with pytest.raises(TypeError):
            client.send_event({"event": "ev"})  # type: ignore[arg-type]


class TestBulkAnswerFastPath:
    """``bulk_answer`` reads the usual all-success answer without JSON, and any other
    answer exactly as ``bulk_response`` over the parsed body does."""

    BODIES = [
        b'{"records": [{"status": "success", "status_code": 202, "message_id": "m1"}, '
        b'{"status": "success", "status_code": 202, "message_id": "m2"}]}',
        b'{"records":[{"status":"success","status_code":202},{"status":"success"}]}',
        b'{"records": [{"status": "success"}, {"status": "error", "status_code": 400, '
        b'"error": {"message": "bad", "type": "Validation"}}]}',
        b'{"records": [{"status": "success", "x": {"status": "success"}}]}',
        b'{"records": [{"status": "success", "message_id": "a\\"b"}, {"status": "success"}]}',
        b'{"records": [{"status": "success"}]}',
        b'{"records": [{"status": "success"}, {"status": "success"}], "status": "success"}',
        b'{"records": [{"status": "success", "status": "error"}, {"status": "success"}]}',
        b'{"records": []}',
        b"<html>502</html>",
        b'"just a string"',
    ]

    @settings(max_examples=500, deadline=None)
    @given(
        st.lists(
            st.lists(
                st.tuples(
                    st.sampled_from(["status", "status_code", "message_id", "error", "x"]),
                    st.one_of(
                        st.sampled_from(["success", "error", "a}b", "{", "]", 'q"']),
                        st.integers(),
                        st.none(),
                        st.just({"status": "success"}),
                    ),
                ),
                max_size=3,
            ),
            max_size=4,
        ),
        st.sampled_from([(", ", ": "), (",", ":")]),
        st.integers(0, 5),
    )
    def test_counting_agrees_with_parsing(
        self, records: list[list[tuple[str, object]]], separators: tuple[str, str], size: int
    ) -> None:
        """The byte-counting check says "all succeeded" only when the parsed answer holds
        ``size`` flat records, each with one ``"status": "success"``."""
        from suprsend_celery.delivery.responses import _all_ok

        answer = {"records": [dict([("status", "success"), *fields]) for fields in records]}
        body = json.dumps(answer, separators=separators).encode()
        parsed = json.loads(body)["records"]
        flat_successes = len(parsed) == size and all(
            r.get("status") == "success"
            and not any(isinstance(v, (dict, list)) for v in r.values())
            and b"\\" not in body
            for r in parsed
        )
        if _all_ok(body, size):
            assert flat_successes and size > 0
        elif separators == (", ", ": ") and flat_successes and size > 0:
            # It declines such an answer only for a brace, bracket or backslash inside a
            # string (the regex, then JSON, read it instead).
            values = [json.dumps(v) for r in parsed for v in r.values()]
            assert any(c in v for v in values for c in "{}[]\\")

    @pytest.mark.parametrize("body", BODIES)
    def test_same_outcome_as_parsing(self, body: bytes) -> None:
        from suprsend_celery.delivery.responses import bulk_answer, bulk_response, decode_body

        payloads = [b'{"$idempotency_key": "k1"}', b'{"$idempotency_key": "k2"}']
        fast = bulk_answer(207, body, payloads)
        slow = bulk_response(207, decode_body(body), payloads)
        assert [(i, type(e), str(e)) for i, e in fast.failures or ()] == [
            (i, type(e), str(e)) for i, e in slow.failures or ()
        ]
