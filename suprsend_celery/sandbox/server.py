"""The sandbox HTTP server: a local SuprSend event API in a background thread.

Built on :mod:`http.server` so it needs nothing beyond the standard library, but tuned
so it is never the bottleneck of a benchmark: HTTP/1.1 keep-alive, ``TCP_NODELAY``,
one thread per connection, each body parsed once, records validated with plain type
checks, and each response written with a single ``send``. Raw bodies are never kept.

Routes (event routes need a valid signature; ``/_sandbox/*`` control routes do not)::

    POST /v2/event/         one record          -> 202 {"status": "success", "message_id"}
    POST /v2/bulk/event/    list of <= 100      -> 207 {"records": [...]} in request order
    POST /event/            legacy single route -> 202
    GET  /_sandbox/events   processed events, in arrival order
    GET  /_sandbox/stats    counters (see ``Sandbox.stats``)
    GET  /_sandbox/requests the request log (see ``RequestRecord``)
    GET|POST|DELETE /_sandbox/faults   read, replace or clear the fault plan
    POST /_sandbox/reset    forget events, counters, idempotency keys, log and faults
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import socket
import socketserver
import threading
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from email.utils import formatdate
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, cast
from urllib.parse import urlsplit

from ..__about__ import __version__
from .auth import MAX_CLOCK_SKEW, check_request, is_bearer
from .faults import FaultPlan, FaultPlanError, FaultRule, RecordErrorSpec
from .validation import validate_record

__all__ = [
    "BULK_PATH",
    "DEFAULT_API_KEY",
    "DEFAULT_WORKSPACE_KEY",
    "DEFAULT_WORKSPACE_SECRET",
    "DEFAULT_WORKSPACE_UID",
    "EVENT_PATH",
    "LEGACY_EVENT_PATH",
    "RequestRecord",
    "Sandbox",
]

logger = logging.getLogger(__name__)

EVENT_PATH = "/v2/event/"
BULK_PATH = "/v2/bulk/event/"
LEGACY_EVENT_PATH = "/event/"
EVENT_ROUTES = frozenset({EVENT_PATH, BULK_PATH, LEGACY_EVENT_PATH})

#: Credentials of a sandbox created without arguments (the key is a valid ``env``).
DEFAULT_WORKSPACE_KEY = "WSKEY_sandbox_0123456789"
DEFAULT_WORKSPACE_SECRET = "WSSECRET_sandbox"  # noqa: S105 - a public test credential
#: API-key mode credentials of a sandbox created without them (the UID is a valid ``env``).
DEFAULT_WORKSPACE_UID = "sandbox_workspace_uid_0123"
DEFAULT_API_KEY = "SSAPIKEY_sandbox_0123456789"  # a public test credential

#: SuprSend's limits: records per bulk request, bytes per bulk body, bytes per event.
MAX_BULK_RECORDS = 100
MAX_BULK_BYTES = 800 * 1024
MAX_EVENT_BYTES = 100 * 1024
#: Bodies above this are refused without being read (the connection is closed).
MAX_READ_BYTES = 16 * 1024 * 1024
#: A repeated ``$idempotency_key`` is skipped for this long (seconds).
IDEMPOTENCY_TTL = 24 * 3600.0
#: Keep-alive connections idle this long are closed, like a real load balancer.
IDLE_TIMEOUT = 300.0

_LOGGED_HEADERS = ("Content-Type", "Content-Length", "Date", "User-Agent", "Connection")
_STATS_KEYS = (
    "requests",
    "events_received",
    "events_processed",
    "duplicates_skipped",
    "rejected",
    "auth_failures",
    "max_concurrent_requests",
)
_HTML_PAGE = (
    "<html>\r\n<head><title>{code} {phrase}</title></head>\r\n<body>\r\n"
    "<center><h1>{code} {phrase}</h1></center>\r\n<hr><center>nginx</center>\r\n"
    "</body>\r\n</html>\r\n"
)
JSON_TYPE = "application/json; charset=utf-8"


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


def _error_body(message: str, error_type: str) -> dict[str, Any]:
    return {"status": "error", "error": {"message": message, "type": error_type}}


class _MessageIds:
    """UUID-shaped, unique message ids at a fraction of ``uuid4()``'s cost (hot path)."""

    def __init__(self) -> None:
        prefix = uuid.uuid4().hex
        self._prefix = f"{prefix[:8]}-{prefix[8:12]}-4{prefix[13:16]}-a{prefix[17:20]}-"
        self._counter = itertools.count(1)

    def __call__(self) -> str:
        return f"{self._prefix}{next(self._counter):012x}"


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


@dataclass(frozen=True)
class RequestRecord:
    """One event-route request as the sandbox saw it (never the body or secrets)."""

    method: str
    #: Path and query string, as sent.
    path: str
    #: Status answered, or ``None`` when the connection was dropped without an answer.
    status: int | None
    #: Records in the body (1 for a single event), ``None`` if the body was unreadable.
    records: int | None
    body_bytes: int
    #: A subset of the request headers: Content-Type/-Length, Date, User-Agent, Connection.
    headers: Mapping[str, str]
    #: Wall-clock arrival time (``time.time()``) and seconds spent answering.
    received_at: float
    duration: float
    #: Sequence number of the TCP connection: equal numbers mean a reused connection.
    connection: int
    #: The fault applied, e.g. ``"status 503"``, or ``None``.
    fault: str | None
    #: Why a whole request was refused (401/4xx), or ``None``.
    error: str | None
    idempotency_keys: tuple[str | None, ...]
    insert_ids: tuple[str | None, ...]

    def to_dict(self) -> dict[str, Any]:
        """The record as JSON-compatible data."""
        out = asdict(self)
        out["headers"] = dict(self.headers)
        out["idempotency_keys"] = list(self.idempotency_keys)
        out["insert_ids"] = list(self.insert_ids)
        return out


class _State:
    """Everything the handlers share; one lock guards it all (critical sections are short)."""

    def __init__(
        self,
        *,
        workspace_key: str,
        workspace_secret: str,
        workspace_uid: str,
        api_key: str,
        idempotency_ttl: float,
        max_clock_skew: float,
        max_events: int | None,
        max_requests_logged: int,
        clock: Callable[[], float],
    ) -> None:
        self.workspace_key = workspace_key
        self.workspace_secret = workspace_secret
        self.workspace_uid = workspace_uid
        self.api_key = api_key
        self.idempotency_ttl = idempotency_ttl
        self.max_clock_skew = max_clock_skew
        self.clock = clock
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.events: deque[dict[str, Any]] = deque(maxlen=max_events)
        self.request_log: deque[RequestRecord] = deque(maxlen=max_requests_logged)
        self.seen_keys: OrderedDict[str, tuple[float, str]] = OrderedDict()
        self.counters = dict.fromkeys(_STATS_KEYS, 0)
        self.faults = FaultPlan()
        self.connections = 0
        #: Event requests being handled right now (their peak is a stat).
        self.active = 0
        self.message_ids = _MessageIds()

    def reset(self) -> None:
        with self.lock:
            self.events.clear()
            self.request_log.clear()
            self.seen_keys.clear()
            self.counters = dict.fromkeys(_STATS_KEYS, 0)
            self.counters["max_concurrent_requests"] = self.active
            self.faults = FaultPlan()

    def next_connection(self) -> int:
        with self.lock:
            self.connections += 1
            return self.connections

    @contextlib.contextmanager
    def handling(self) -> Iterator[None]:
        """Count an event request as in progress while it is read, delayed and answered."""
        with self.lock:
            self.active += 1
            counters = self.counters
            counters["max_concurrent_requests"] = max(
                counters["max_concurrent_requests"], self.active
            )
        try:
            yield
        finally:
            with self.lock:
                self.active -= 1

    def log_request(self, entry: RequestRecord, **increments: int) -> None:
        with self.lock:
            self.request_log.append(entry)
            counters = self.counters
            counters["requests"] += 1
            for name, value in increments.items():
                counters[name] += value

    def process(
        self, records: Sequence[Any], injected: Mapping[int, RecordErrorSpec], env: str
    ) -> list[dict[str, Any]]:
        """Validate (``env`` as the request's credentials say), deduplicate and store
        records; one result per record, in order."""
        problems = [
            None if i in injected else validate_record(r, env) for i, r in enumerate(records)
        ]
        results: list[dict[str, Any]] = []
        processed = duplicates = rejected = 0
        new_id = self.message_ids
        with self.lock:
            now = self.clock()  # under the lock, so keys are inserted in time order
            seen = self.seen_keys
            horizon = now - self.idempotency_ttl
            while seen and next(iter(seen.values()))[0] <= horizon:
                seen.popitem(last=False)
            for i, record in enumerate(records):
                spec = injected.get(i)
                if spec is not None:
                    results.append(
                        {
                            "status": "error",
                            "status_code": spec.status,
                            "error": {"message": spec.message, "type": spec.type},
                        }
                    )
                    continue
                problem = problems[i]
                if problem is not None:
                    rejected += 1
                    results.append(
                        {
                            "status": "error",
                            "status_code": 400,
                            "error": {"message": problem, "type": "ValidationError"},
                        }
                    )
                    continue
                message_id = new_id()
                idempotency_key = record.get("$idempotency_key")
                if idempotency_key:
                    first = seen.get(idempotency_key)
                    if first is not None:
                        duplicates += 1
                        results.append(
                            {"status": "success", "status_code": 202, "message_id": first[1]}
                        )
                        continue
                    seen[idempotency_key] = (now, message_id)
                self.events.append(record)
                processed += 1
                results.append({"status": "success", "status_code": 202, "message_id": message_id})
            counters = self.counters
            counters["events_processed"] += processed
            counters["duplicates_skipped"] += duplicates
            counters["rejected"] += rejected
        return results


class _Incoming:
    """An authenticated event-route request body, parsed once."""

    def __init__(self, route: str, body: bytes) -> None:
        self.route = route
        self.bulk = route == BULK_PATH
        self.body = body
        self.parsed: Any = None
        self.parse_error: str | None = None
        #: The records (a one-item list for single routes), or ``None`` if unreadable.
        self.records: list[Any] | None = None

    @property
    def count(self) -> int:
        return 0 if self.records is None else len(self.records)

    def parse(self) -> None:
        try:
            self.parsed = json.loads(self.body.decode("utf-8"), parse_constant=_reject_constant)
        except (UnicodeDecodeError, ValueError) as exc:
            self.parse_error = f"body is not valid JSON: {exc}"
            return
        parsed = self.parsed
        if self.bulk and type(parsed) is list:
            self.records = parsed
        elif not self.bulk and type(parsed) is dict:
            self.records = [parsed]

    def field(self, name: str) -> tuple[str | None, ...]:
        """One top-level field of every record, for the request log."""
        if self.records is None:
            return ()
        return tuple(r.get(name) if type(r) is dict else None for r in self.records)

    def whole_request_error(self) -> tuple[int, str] | None:
        """``(status, message)`` when the request as a whole must be refused."""
        size = len(self.body)
        limit = MAX_BULK_BYTES if self.bulk else MAX_EVENT_BYTES
        if size > limit:
            return 413, f"body is {size} bytes; the limit for {self.route} is {limit}"
        if self.parse_error is not None:
            return 400, self.parse_error
        if self.records is None:
            shape = "a JSON list of records" if self.bulk else "a JSON object"
            return 400, f"body must be {shape}, got {type(self.parsed).__name__}"
        if self.bulk and len(self.records) > MAX_BULK_RECORDS:
            return 400, f"{len(self.records)} records; at most {MAX_BULK_RECORDS} per bulk request"
        return None


class _Server(ThreadingHTTPServer):
    """A threading HTTP server that can close its keep-alive connections on stop."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256

    def __init__(self, address: tuple[str, int], state: _State) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.state = state
        self._live: dict[socket.socket, threading.Thread] = {}
        self._live_lock = threading.Lock()
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind resolves the host's FQDN, which can stall for seconds
        # on machines with slow reverse DNS; nothing here needs it.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)

    def track(self, conn: socket.socket) -> None:
        with self._live_lock:
            self._live[conn] = threading.current_thread()

    def untrack(self, conn: socket.socket) -> None:
        with self._live_lock:
            self._live.pop(conn, None)

    def close_connections(self, timeout: float) -> None:
        """Wake every handler blocked on a keep-alive socket and wait for it to finish."""
        with self._live_lock:
            live = list(self._live.items())
        for conn, _ in live:
            with contextlib.suppress(OSError):  # already closed by the peer
                conn.shutdown(socket.SHUT_RDWR)
        deadline = time.monotonic() + timeout
        for _, thread in live:
            thread.join(max(0.0, deadline - time.monotonic()))

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients vanishing mid-request are normal in fault tests; keep stderr quiet.
        logger.debug("sandbox connection from %s failed", client_address, exc_info=True)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = f"suprsend-sandbox/{__version__}"
    timeout = IDLE_TIMEOUT

    def setup(self) -> None:
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._server = cast(_Server, self.server)
        self._state = self._server.state
        self._connection_id = self._state.next_connection()
        self._server.track(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self._server.untrack(self.connection)

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("sandbox: " + format, *args)

    # -- plumbing ---------------------------------------------------------------------

    def _send(
        self,
        status: int,
        body: bytes,
        content_type: str = JSON_TYPE,
        headers: Iterable[tuple[str, str]] = (),
    ) -> None:
        """Write status line, headers and body with one ``send`` (no Nagle stalls)."""
        lines = [
            f"HTTP/1.1 {status} {_phrase(status)}",
            f"Server: {self.server_version}",
            f"Date: {formatdate(usegmt=True)}",
            f"Content-Type: {content_type}",
            f"Content-Length: {len(body)}",
        ]
        lines.extend(f"{name}: {value}" for name, value in headers)
        if self.close_connection:
            lines.append("Connection: close")
        lines.append("\r\n")
        self.wfile.write("\r\n".join(lines).encode("latin-1") + body)

    def _send_json(
        self, status: int, payload: Any, headers: Iterable[tuple[str, str]] = ()
    ) -> None:
        self._send(status, json.dumps(payload).encode(), headers=headers)

    def _send_error_json(self, status: int, message: str, error_type: str) -> None:
        self._send_json(status, _error_body(message, error_type))

    def _read_body(self) -> bytes | None:
        """The request body, or ``None`` after answering a request that has none readable."""
        if self.headers.get("Transfer-Encoding"):
            self.close_connection = True
            self._send_error_json(411, "chunked bodies are not supported", "LengthRequired")
            return None
        raw = self.headers.get("Content-Length")
        try:
            length = int(raw) if raw is not None else 0
        except ValueError:
            length = -1
        if length < 0:
            self.close_connection = True
            self._send_error_json(400, f"bad Content-Length {raw!r}", "BadRequest")
            return None
        if length > MAX_READ_BYTES:
            self.close_connection = True
            self._send_error_json(413, f"body of {length} bytes is far too large", "TooLarge")
            return None
        body = self.rfile.read(length) if length else b""
        if len(body) < length:
            self.close_connection = True  # the client went away mid-body
            return None
        return body

    def _route(self) -> str:
        return urlsplit(self.path).path

    # -- verbs ------------------------------------------------------------------------

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_PATCH(self) -> None:
        self._dispatch("PATCH")

    def _dispatch(self, method: str) -> None:
        route = self._route()
        try:
            if route in EVENT_ROUTES:
                if method == "POST":
                    with self._state.handling():
                        self._event_request(route)
                elif self._read_body() is not None:
                    self._send(
                        405,
                        json.dumps(
                            _error_body(f"{method} not allowed", "MethodNotAllowed")
                        ).encode(),
                        headers=[("Allow", "POST")],
                    )
            elif route.startswith("/_sandbox/"):
                self._control(route, method)
            elif self._read_body() is not None:
                self._not_found(route)
        except Exception:
            logger.exception("sandbox failed on %s %s", method, route)
            self.close_connection = True
            with contextlib.suppress(OSError):
                self._send_error_json(500, "sandbox internal error", "SandboxError")

    def _not_found(self, route: str) -> None:
        self._send_error_json(404, f"no route {route!r}", "NotFound")

    # -- control routes ---------------------------------------------------------------

    def _control(self, route: str, method: str) -> None:
        body = self._read_body()
        if body is None:
            return
        state = self._state
        if route == "/_sandbox/events" and method == "GET":
            with state.lock:
                events = list(state.events)
            self._send_json(200, events)
        elif route == "/_sandbox/stats" and method == "GET":
            with state.lock:
                stats = dict(state.counters)
            self._send_json(200, stats)
        elif route == "/_sandbox/requests" and method == "GET":
            with state.lock:
                log = list(state.request_log)
            self._send_json(200, [r.to_dict() for r in log])
        elif route == "/_sandbox/reset" and method == "POST":
            state.reset()
            logger.info("sandbox reset")
            self._send_json(200, {"status": "success"})
        elif route == "/_sandbox/faults" and method == "GET":
            self._send_json(200, state.faults.to_dict(with_state=True))
        elif route == "/_sandbox/faults" and method in ("POST", "DELETE"):
            try:
                data = json.loads(body, parse_constant=_reject_constant) if body else None
                plan = FaultPlan.from_dict(None if method == "DELETE" else data)
            except (ValueError, FaultPlanError) as exc:
                self._send_error_json(400, str(exc), "InvalidFaultPlan")
                return
            with state.lock:
                state.faults = plan
            logger.info("sandbox fault plan set: %d rules", len(plan.rules))
            self._send_json(200, {"status": "success", "faults": plan.to_dict()})
        elif route in ("/_sandbox/events", "/_sandbox/stats", "/_sandbox/requests"):
            self._send(405, json.dumps(_error_body("use GET", "MethodNotAllowed")).encode())
        elif route in ("/_sandbox/reset", "/_sandbox/faults"):
            self._send(405, json.dumps(_error_body("use POST", "MethodNotAllowed")).encode())
        else:
            self._not_found(route)

    # -- the event API ----------------------------------------------------------------

    def _event_request(self, route: str) -> None:
        started = time.monotonic()
        received_at = time.time()
        body = self._read_body()
        if body is None:
            return
        state = self._state
        headers = self.headers
        incoming = _Incoming(route, body)
        fault_label: str | None = None

        def log(status: int | None, error: str | None = None, **increments: int) -> None:
            records = incoming.records
            state.log_request(
                RequestRecord(
                    method="POST",
                    path=self.path,
                    status=status,
                    records=None if records is None else len(records),
                    body_bytes=len(body),
                    headers={h: v for h in _LOGGED_HEADERS if (v := headers.get(h)) is not None},
                    received_at=received_at,
                    duration=time.monotonic() - started,
                    connection=self._connection_id,
                    fault=fault_label,
                    error=error,
                    idempotency_keys=incoming.field("$idempotency_key"),
                    insert_ids=incoming.field("$insert_id"),
                ),
                **increments,
            )

        problem = check_request(
            workspace_key=state.workspace_key,
            workspace_secret=state.workspace_secret,
            authorization=headers.get("Authorization"),
            date=headers.get("Date"),
            content_type=headers.get("Content-Type"),
            path=self.path,
            body=body,
            max_clock_skew=state.max_clock_skew,
            api_key=state.api_key,
        )
        if problem is not None:
            logger.info("sandbox refused %s: %s", route, problem)
            log(401, problem, auth_failures=1)
            self._send_error_json(401, problem, "AuthenticationError")
            return

        incoming.parse()
        received = incoming.count
        events = {r.get("event") for r in incoming.records or () if isinstance(r, dict)}
        decision = state.faults.decide(route, incoming.bulk, events)
        if decision.delay and state.stopping.wait(decision.delay):
            self.close_connection = True  # shutting down: abandon the request
            return
        rule = decision.rule
        if rule is not None:
            fault_label = f"rules[{decision.rule_index}]: {rule.describe()}"
        elif decision.delay:
            fault_label = f"delay {decision.delay:g}s"

        if rule is not None and (rule.status is not None or rule.drop_connection):
            if rule.process:
                self._answer(incoming, None, 0)
            if rule.drop_connection:
                log(None, events_received=received)
                self.close_connection = True
                with contextlib.suppress(OSError):
                    self.connection.shutdown(socket.SHUT_RDWR)
            else:
                assert rule.status is not None
                log(rule.status, events_received=received)
                self._send_fault(rule, rule.status)
            return

        status, payload, error = self._answer(incoming, rule, decision.rule_index or 0)
        rejected = max(received, 1) if error is not None else 0
        # Count before answering, so a client that got its response sees it in stats().
        log(status, error, events_received=received, rejected=rejected)
        self._send_json(status, payload)

    def _answer(
        self, incoming: _Incoming, rule: FaultRule | None, rule_index: int
    ) -> tuple[int, Any, str | None]:
        """Check limits, process the records; ``(status, payload, whole-request error)``."""
        error = incoming.whole_request_error()
        if error is not None:
            status, message = error
            error_type = "PayloadTooLarge" if status == 413 else "ValidationError"
            return status, _error_body(message, error_type), message
        records = incoming.records
        assert records is not None
        state = self._state
        injected: dict[int, RecordErrorSpec] = {}
        if rule is not None and rule.record_errors:
            for i, record in enumerate(records):
                spec = state.faults.record_error(rule_index, rule, i, record)
                if spec is not None:
                    injected[i] = spec
        bearer = is_bearer(self.headers.get("Authorization"))
        results = state.process(
            records, injected, state.workspace_uid if bearer else state.workspace_key
        )
        if incoming.bulk:
            if rule is not None and rule.truncate_records is not None:
                results = results[: rule.truncate_records]
            return 207, {"records": results}, None
        result = results[0]
        if result["status"] == "success":
            return 202, {"status": "success", "message_id": result["message_id"]}, None
        info = result["error"]
        return result["status_code"], _error_body(info["message"], info["type"]), None

    def _send_fault(self, rule: FaultRule, status: int) -> None:
        headers = [("Retry-After", rule.retry_after)] if rule.retry_after is not None else []
        phrase = _phrase(status)
        if rule.body is not None:
            content_type = rule.content_type or "text/plain; charset=utf-8"
            self._send(status, rule.body.encode(), content_type, headers)
        elif rule.html:
            page = _HTML_PAGE.format(code=status, phrase=phrase).encode()
            self._send(status, page, rule.content_type or "text/html", headers)
        else:
            payload = _error_body(f"sandbox fault: {status} {phrase}", phrase.replace(" ", ""))
            self._send_json(status, payload, headers)


class Sandbox:
    """A local SuprSend event API running in a daemon thread.

    Use as a context manager (or ``start()``/``stop()``)::

        with Sandbox() as sb:
            client = SuprsendClient(sb.workspace_key, sb.workspace_secret, base_url=sb.url)
            ...
            sb.wait_for(3)            # until 3 events were processed
            assert sb.stats()["duplicates_skipped"] == 0

    It accepts both of the SDK's auth modes: signed requests with ``workspace_key`` /
    ``workspace_secret`` (records' ``env`` the key) and ``Authorization: Bearer
    <api_key>`` (records' ``env`` the ``workspace_uid``).

    ``port=0`` picks a free port (read it back from ``url``/``port``). Memory stays
    bounded: only the newest ``max_events`` events and ``max_requests_logged`` log
    entries are kept (the counters always count everything), idempotency keys are
    forgotten after ``idempotency_ttl`` seconds of ``clock``, and bodies are never kept.
    """

    def __init__(
        self,
        workspace_key: str = DEFAULT_WORKSPACE_KEY,
        workspace_secret: str = DEFAULT_WORKSPACE_SECRET,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        workspace_uid: str = DEFAULT_WORKSPACE_UID,
        api_key: str = DEFAULT_API_KEY,
        idempotency_ttl: float = IDEMPOTENCY_TTL,
        max_clock_skew: float = MAX_CLOCK_SKEW,
        max_events: int | None = 500_000,
        max_requests_logged: int = 10_000,
        faults: FaultPlan | Mapping[str, Any] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.workspace_key = workspace_key
        self.workspace_secret = workspace_secret
        self.workspace_uid = workspace_uid
        self.api_key = api_key
        self.host = host
        self.port = port
        self._state = _State(
            workspace_key=workspace_key,
            workspace_secret=workspace_secret,
            workspace_uid=workspace_uid,
            api_key=api_key,
            idempotency_ttl=idempotency_ttl,
            max_clock_skew=max_clock_skew,
            max_events=max_events,
            max_requests_logged=max_requests_logged,
            clock=clock,
        )
        if faults is not None:
            self.set_faults(faults)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle --------------------------------------------------------------------

    def start(self) -> Sandbox:
        """Bind and start serving in a daemon thread; returns ``self``."""
        if self._server is not None:
            return self
        self._state.stopping.clear()
        server = _Server((self.host, self.port), self._state)
        self.port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"suprsend-sandbox:{self.port}",
            daemon=True,
        )
        self._thread.start()
        logger.info("sandbox listening on %s", self.url)
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop serving, close every connection and wait (up to ``timeout``) for handlers."""
        server, thread = self._server, self._thread
        if server is None:
            return
        self._state.stopping.set()
        server.shutdown()
        server.server_close()
        server.close_connections(timeout)
        if thread is not None:
            thread.join(timeout)
        self._server = self._thread = None
        logger.info("sandbox on port %s stopped", self.port)

    def __enter__(self) -> Sandbox:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        """Whether the server thread is serving."""
        return self._server is not None

    @property
    def url(self) -> str:
        """Base URL ending in ``/``, ready for ``base_url=``."""
        host = self.host
        if host in ("", "0.0.0.0"):
            host = "127.0.0.1"
        elif host == "::":
            host = "::1"
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}/"

    # -- inspection -------------------------------------------------------------------

    def events(self) -> list[dict[str, Any]]:
        """Processed events (first-time, valid records), in arrival order."""
        with self._state.lock:
            return list(self._state.events)

    def stats(self) -> dict[str, int]:
        """``requests`` (event routes), ``events_received``, ``events_processed``,
        ``duplicates_skipped``, ``rejected`` (invalid records or bodies),
        ``auth_failures`` and ``max_concurrent_requests`` (the most event requests
        handled at once since the last reset, delays included)."""
        with self._state.lock:
            return dict(self._state.counters)

    def requests(self) -> list[RequestRecord]:
        """The request log for event routes, oldest first."""
        with self._state.lock:
            return list(self._state.request_log)

    def wait_for(
        self,
        condition: int | Callable[[], object],
        timeout: float = 10.0,
        interval: float = 0.01,
    ) -> None:
        """Poll until ``condition`` holds, else raise ``TimeoutError`` (with the stats).

        An int waits until at least that many events were processed; a callable is
        polled until it returns something truthy.
        """
        if isinstance(condition, int):
            wanted = condition

            def check() -> object:
                return self.stats()["events_processed"] >= wanted

        else:
            check = condition
        deadline = time.monotonic() + timeout
        while not check():
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"sandbox condition not met within {timeout}s; stats: {self.stats()}"
                )
            time.sleep(interval)

    # -- control ----------------------------------------------------------------------

    def set_faults(self, plan: FaultPlan | Mapping[str, Any] | Sequence[Any] | None) -> FaultPlan:
        """Replace the fault plan (see :mod:`.faults`); ``None`` clears it. Returns it."""
        fresh = FaultPlan.coerce(plan)
        with self._state.lock:
            self._state.faults = fresh
        logger.info("sandbox fault plan set: %d rules", len(fresh.rules))
        return fresh

    def clear_faults(self) -> None:
        """Stop injecting faults."""
        self.set_faults(None)

    def faults(self) -> dict[str, Any]:
        """The current plan as JSON, with how often each rule matched and applied."""
        return self._state.faults.to_dict(with_state=True)

    def reset(self) -> None:
        """Forget events, counters, idempotency keys, the request log and the fault plan."""
        self._state.reset()
