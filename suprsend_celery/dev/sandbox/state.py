"""The sandbox's state: what it received, processed and counts, and one parsed request.

Shared by the HTTP handler (``handler``) and the ``Sandbox`` object (``server``), under
one lock; the constants here are the sandbox's limits and default credentials.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import ssl
import threading
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from .faults import FaultPlan, RecordErrorSpec
from .validation import validate_record

__all__ = [
    "BULK_PATH",
    "DEFAULT_API_KEY",
    "DEFAULT_WORKSPACE_KEY",
    "DEFAULT_WORKSPACE_SECRET",
    "DEFAULT_WORKSPACE_UID",
    "EVENT_PATH",
    "EVENT_ROUTES",
    "IDEMPOTENCY_TTL",
    "IDLE_TIMEOUT",
    "LEGACY_EVENT_PATH",
    "MAX_BULK_BYTES",
    "MAX_BULK_RECORDS",
    "MAX_EVENT_BYTES",
    "MAX_READ_BYTES",
    "STATS_KEYS",
    "Incoming",
    "RequestRecord",
    "State",
    "error_body",
    "reject_constant",
]

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

STATS_KEYS = (
    "requests",
    "events_received",
    "events_processed",
    "duplicates_skipped",
    "rejected",
    "auth_failures",
    "max_concurrent_requests",
)


def error_body(message: str, error_type: str) -> dict[str, Any]:
    return {"status": "error", "error": {"message": message, "type": error_type}}


class _MessageIds:
    """UUID-shaped, unique message ids at a fraction of ``uuid4()``'s cost (hot path)."""

    def __init__(self) -> None:
        prefix = uuid.uuid4().hex
        self._prefix = f"{prefix[:8]}-{prefix[8:12]}-4{prefix[13:16]}-a{prefix[17:20]}-"
        self._counter = itertools.count(1)

    def __call__(self) -> str:
        return f"{self._prefix}{next(self._counter):012x}"


def reject_constant(name: str) -> Any:
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


class State:
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
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.workspace_key = workspace_key
        self.workspace_secret = workspace_secret
        self.workspace_uid = workspace_uid
        self.api_key = api_key
        self.idempotency_ttl = idempotency_ttl
        self.max_clock_skew = max_clock_skew
        self.clock = clock
        self.ssl_context = ssl_context
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.events: deque[dict[str, Any]] = deque(maxlen=max_events)
        #: ``(idempotency key, wall-clock time)`` of each processed event, as ``events``:
        #: when it was processed, for accept-to-delivered latencies.
        self.processed_at: deque[tuple[str | None, float]] = deque(maxlen=max_events)
        self.request_log: deque[RequestRecord] = deque(maxlen=max_requests_logged)
        self.seen_keys: OrderedDict[str, tuple[float, str]] = OrderedDict()
        self.counters = dict.fromkeys(STATS_KEYS, 0)
        self.faults = FaultPlan()
        self.connections = 0
        #: Event requests being handled right now (their peak is a stat).
        self.active = 0
        self.message_ids = _MessageIds()

    def reset(self) -> None:
        with self.lock:
            self.events.clear()
            self.processed_at.clear()
            self.request_log.clear()
            self.seen_keys.clear()
            self.counters = dict.fromkeys(STATS_KEYS, 0)
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
            wall = time.time()
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
                self.processed_at.append((idempotency_key, wall))
                processed += 1
                results.append({"status": "success", "status_code": 202, "message_id": message_id})
            counters = self.counters
            counters["events_processed"] += processed
            counters["duplicates_skipped"] += duplicates
            counters["rejected"] += rejected
        return results


class Incoming:
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
            self.parsed = json.loads(self.body.decode("utf-8"), parse_constant=reject_constant)
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
