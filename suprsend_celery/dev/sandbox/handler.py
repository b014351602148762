"""The sandbox's HTTP server and request handler (standard library only).

Tuned so it is never the bottleneck of a benchmark: HTTP/1.1 keep-alive,
``TCP_NODELAY``, one thread per connection, each body parsed once, each response
written with a single ``send``. Raw bodies are never kept.
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import socketserver
import ssl
import threading
import time
from collections.abc import Iterable
from email.utils import formatdate
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, cast
from urllib.parse import urlsplit

from ...__about__ import __version__
from .auth import check_request, is_bearer
from .faults import FaultPlan, FaultPlanError, FaultRule, RecordErrorSpec
from .state import (
    EVENT_ROUTES,
    IDLE_TIMEOUT,
    MAX_READ_BYTES,
    Incoming,
    RequestRecord,
    State,
    error_body,
    reject_constant,
)

__all__ = ["Server"]

# The logger name the sandbox always used (its log lines, and filters on them, predate
# the split into modules).
logger = logging.getLogger("suprsend_celery.sandbox.server")

_LOGGED_HEADERS = ("Content-Type", "Content-Length", "Date", "User-Agent", "Connection")
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


class Server(ThreadingHTTPServer):
    """A threading HTTP server that can close its keep-alive connections on stop."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256

    def __init__(self, address: tuple[str, int], state: State) -> None:
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
        tls = cast(Server, self.server).state.ssl_context
        if tls is not None:  # the handshake runs here, in the connection's own thread
            self.request = tls.wrap_socket(self.request, server_side=True)
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._server = cast(Server, self.server)
        self._state = self._server.state
        self._connection_id = self._state.next_connection()
        self._server.track(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self._server.untrack(self.connection)
            if isinstance(self.request, ssl.SSLSocket):
                self.request.close()  # the server closes only the plain socket it accepted

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
        self._send_json(status, error_body(message, error_type))

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
                            error_body(f"{method} not allowed", "MethodNotAllowed")
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
        elif route == "/_sandbox/processed" and method == "GET":
            with state.lock:
                stamps = list(state.processed_at)
            self._send_json(200, [{"idempotency_key": k, "processed_at": t} for k, t in stamps])
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
                data = json.loads(body, parse_constant=reject_constant) if body else None
                plan = FaultPlan.from_dict(None if method == "DELETE" else data)
            except (ValueError, FaultPlanError) as exc:
                self._send_error_json(400, str(exc), "InvalidFaultPlan")
                return
            with state.lock:
                state.faults = plan
            logger.info("sandbox fault plan set: %d rules", len(plan.rules))
            self._send_json(200, {"status": "success", "faults": plan.to_dict()})
        elif route in (
            "/_sandbox/events",
            "/_sandbox/processed",
            "/_sandbox/stats",
            "/_sandbox/requests",
        ):
            self._send(405, json.dumps(error_body("use GET", "MethodNotAllowed")).encode())
        elif route in ("/_sandbox/reset", "/_sandbox/faults"):
            self._send(405, json.dumps(error_body("use POST", "MethodNotAllowed")).encode())
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
        incoming = Incoming(route, body)
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
        plan = state.faults
        with state.lock:
            active = state.active
        if plan.over_concurrency(route, active):
            fault_label = f"max_concurrent {plan.max_concurrent}"
            log(429, events_received=received)
            message = f"too many concurrent requests (over {plan.max_concurrent})"
            self._send_error_json(429, message, "TooManyRequests")
            return
        events = {r.get("event") for r in incoming.records or () if isinstance(r, dict)}
        decision = plan.decide(route, incoming.bulk, events)
        delay = decision.delay + plan.queue_delay(route, time.monotonic())
        if delay and state.stopping.wait(delay):
            self.close_connection = True  # shutting down: abandon the request
            return
        rule = decision.rule
        if rule is not None:
            fault_label = f"rules[{decision.rule_index}]: {rule.describe()}"
        elif delay:
            fault_label = f"delay {delay:g}s"

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
        self, incoming: Incoming, rule: FaultRule | None, rule_index: int
    ) -> tuple[int, Any, str | None]:
        """Check limits, process the records; ``(status, payload, whole-request error)``."""
        error = incoming.whole_request_error()
        if error is not None:
            status, message = error
            error_type = "PayloadTooLarge" if status == 413 else "ValidationError"
            return status, error_body(message, error_type), message
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
        return result["status_code"], error_body(info["message"], info["type"]), None

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
            payload = error_body(f"sandbox fault: {status} {phrase}", phrase.replace(" ", ""))
            self._send_json(status, payload, headers)
