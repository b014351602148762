"""``SuprsendClient``: signed requests to the event API. No Celery, no Redis, no retries.

Requests are byte-compatible with suprsend-py-sdk 0.20.0: the same JSON spelling, the
same HMAC-SHA256 signature over ``POST\\n<md5(body)>\\n<content type>\\n<date>\\n<path>``.
Unlike the SDK, every request has connect and read timeouts, connections are pooled
(per thread, rebuilt after a fork), and any response, even an HTML 502 or a truncated
body, becomes a result or a typed ``DeliveryError``. Retrying is the caller's job (the
tasks), so one call is always one request. Signing is in ``credentials``, reading
responses in ``responses``, moving bytes in ``http`` (``MockTransport`` for tests).
"""

from __future__ import annotations

import copy
import email.utils
import logging
import platform
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

from .. import defaults
from ..__about__ import __version__
from ..events.model import AcceptedRecord, Event, accept
from ..events.records import bulk_body, env_field, key_of, with_env
from ..exceptions import ConfigurationError, DeliveryError, TransientDeliveryError
from .credentials import CONTENT_TYPE, Credentials, client_user_agent
from .http import NO_RESPONSE, TIMEOUTS, HttpRequest, HttpTransport, Urllib3Transport
from .responses import (
    BulkResponse,
    BulkResult,
    RecordResult,
    bulk_answer,
    decode_body,
    error_for_response,
)
from .routing import route_for

__all__ = [
    "BULK_PATH",
    "CLIENT_USER_AGENT",
    "EVENT_PATH",
    "USER_AGENT",
    "SuprsendClient",
    "chunk_payloads",
]

logger = logging.getLogger(__name__)

EVENT_PATH = "v2/event/"
BULK_PATH = "v2/bulk/event/"


def user_agent() -> str:
    """``suprsend-celery/<version> (python/<version>; <os>)``, also sent as ``$ss_sdk_version``."""
    try:
        system = platform.system().lower() or "unknown"
    except OSError:  # pragma: no cover - platform lookups can fail in odd sandboxes
        system = "unknown"
    return f"suprsend-celery/{__version__} (python/{platform.python_version()}; {system})"


USER_AGENT = user_agent()
CLIENT_USER_AGENT = client_user_agent()


class _HttpDate:
    """IMF-fixdate for the ``Date`` header, locale-independent, computed once a second.

    The second and its text are one tuple, swapped in one assignment, so threads
    (``-P threads``, the flusher's request threads) never pair a second with another
    second's text.
    """

    def __init__(self) -> None:
        self._cached = (-1, "")

    def __call__(self) -> str:
        now = int(time.time())
        second, text = self._cached
        if now != second:
            text = email.utils.formatdate(now, usegmt=True)
            self._cached = (now, text)
        return text


http_date = _HttpDate()


def chunk_payloads(
    payloads: Sequence[bytes],
    max_records: int = defaults.MAX_BULK_RECORDS,
    max_bytes: int = defaults.MAX_BULK_BYTES,
) -> Iterator[tuple[int, Sequence[bytes]]]:
    """Split records into request-sized chunks: ``(offset, chunk)`` pairs, order kept."""
    total = len(payloads)
    if 0 < total <= max_records and sum(map(len, payloads)) + 2 * total <= max_bytes:
        yield 0, payloads  # the usual claim: one request (the sum is taken in C)
        return
    start = 0
    while start < total:
        end = start
        size = 2  # the brackets
        while end < total and end - start < max_records:
            grow = len(payloads[end]) + (2 if end > start else 0)
            if end > start and size + grow > max_bytes:
                break
            size += grow
            end += 1
        yield start, payloads[start:end]
        start = end


class SuprsendClient:
    """A signed, pooled, timeout-bounded client for the SuprSend event API.

    Thread-safe, and fork-safe: a child process gets its own connection pool on first use.
    ``transport`` replaces the network (``http.MockTransport`` in unit tests); the client
    owns it and closes it.
    """

    def __init__(
        self,
        workspace_key: str | None = None,
        workspace_secret: str | None = None,
        base_url: str = defaults.BASE_URL,
        timeout: float = defaults.REQUEST_TIMEOUT,
        *,
        credentials: Credentials | None = None,
        connect_timeout: float = defaults.CONNECT_TIMEOUT,
        pool_size: int = 10,
        max_event_bytes: int = defaults.MAX_EVENT_BYTES,
        proxy_url: str | None = None,
        ca_bundle: str | None = None,
        dry_run: bool = False,
        transport: HttpTransport | None = None,
    ) -> None:
        if credentials is None:
            credentials = Credentials.from_key_secret(workspace_key, workspace_secret)
        elif workspace_key is not None or workspace_secret is not None:
            raise ConfigurationError("give either workspace_key + workspace_secret or credentials")
        base = (base_url or defaults.BASE_URL).strip()
        parts = urlsplit(base)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ConfigurationError(f"base_url must be an http(s) URL; got {base_url!r}")
        if not base.endswith("/"):
            base += "/"
        if timeout <= 0 or connect_timeout <= 0:
            raise ConfigurationError(f"timeout must be positive; got {timeout!r}")
        if transport is not None and (proxy_url or ca_bundle):
            raise ConfigurationError(
                "proxy_url and ca_bundle configure the default transport; "
                "with transport= given, configure that transport instead"
            )
        self.credentials = credentials
        #: ``, "env": "<key or UID>"``: spliced into every record as it is sent.
        self._env_field = env_field(credentials.env)
        self.base_url = base
        #: ``(connect, read)`` seconds for every request.
        self.timeout = (connect_timeout, timeout)
        self.max_event_bytes = max_event_bytes
        base_path = parts.path if parts.path.endswith("/") else parts.path + "/"
        self._event_url, self._event_path = base + EVENT_PATH, base_path + EVENT_PATH
        self._bulk_url, self._bulk_path = base + BULK_PATH, base_path + BULK_PATH
        #: What sends the requests: by default urllib3 pools through the proxy and CAs
        #: of the arguments or the standard environment variables; ``MockTransport`` in tests.
        self.transport: HttpTransport = transport or Urllib3Transport(
            route_for(base, proxy_url, ca_bundle), pool_size=pool_size
        )
        #: Validate and build requests as usual, send nothing (``suprsend_dry_run``).
        self.dry_run = dry_run

    @classmethod
    def with_workspace_api_key(
        cls,
        workspace_uid: str,
        api_key: str,
        base_url: str = defaults.BASE_URL,
        timeout: float = defaults.REQUEST_TIMEOUT,
        **options: Any,
    ) -> SuprsendClient:
        """A client in API-key (Bearer) mode, like the SDK's ``with_workspace_api_key``."""
        return cls(
            base_url=base_url,
            timeout=timeout,
            credentials=Credentials.from_api_key(workspace_uid, api_key),
            **options,
        )

    @property
    def workspace_key(self) -> str | None:
        """The workspace key in HMAC mode (None in API-key mode)."""
        return self.credentials.env if self.credentials.mode == "hmac" else None

    def __repr__(self) -> str:
        c = self.credentials
        who = "workspace_key" if c.mode == "hmac" else "workspace_uid"
        return f"SuprsendClient({who}={c.env!r}, base_url={self.base_url!r})"

    # -- sending -----------------------------------------------------------------

    def close(self) -> None:
        """Close this thread's connections (the client stays usable)."""
        self.transport.close()

    def close_all(self) -> None:
        """Close the connections of every thread (e.g. the flusher's request threads) in
        this process; threads then open new ones on their next request."""
        self.transport.close_all()

    def _post(
        self, url: str, path: str, body: bytes, idempotency_key: str | None
    ) -> tuple[int, bytes, Mapping[str, str]]:
        headers = {
            "Content-Type": CONTENT_TYPE,
            "User-Agent": USER_AGENT,
            "X-Suprsend-Client-User-Agent": CLIENT_USER_AGENT,
        }
        self.credentials.authorize(headers, body, path, http_date())
        try:
            response = self.transport.send(
                HttpRequest("POST", url, path, headers, body, self.timeout)
            )
        except TIMEOUTS as exc:
            raise TransientDeliveryError(
                f"timed out: {type(exc).__name__}", idempotency_key=idempotency_key
            ) from None
        except NO_RESPONSE as exc:
            # Connection resets, refused connections, malformed HTTP: all worth a retry.
            raise TransientDeliveryError(
                f"connection failed: {type(exc).__name__}", idempotency_key=idempotency_key
            ) from None
        return response.status, response.body, response.headers

    def _error(
        self, url: str, status: int, body: object, headers: Mapping[str, str], key: str | None
    ) -> DeliveryError:
        hint = self.credentials.setting_names
        return error_for_response(status, body, headers, key, settings_hint=hint, url=url)

    # -- single events -------------------------------------------------------------

    def accept(self, event: Event) -> AcceptedRecord:
        """Turn an ``Event`` into its record (``env`` is added when it is sent)."""
        return accept(
            event,
            sdk_version=USER_AGENT,
            max_event_bytes=self.max_event_bytes,
            env_size=len(self._env_field),
        )

    def as_sent(self, payload: bytes) -> bytes:
        """A record's bytes as this client sends them: with this workspace's ``env``."""
        return with_env(payload, self._env_field)

    def _payload(self, event: Event | AcceptedRecord | bytes) -> tuple[bytes, str | None]:
        if isinstance(event, Event):
            event = self.accept(event)
        if isinstance(event, AcceptedRecord):
            return event.payload, event.idempotency_key
        if isinstance(event, (bytes, bytearray)):
            return bytes(event), key_of(event)
        raise TypeError(f"expected an Event, AcceptedRecord or bytes; got {type(event).__name__}")

    def send_event(self, event: Event | AcceptedRecord | bytes) -> dict[str, Any]:
        """Send one event with one request to ``v2/event/``; raise ``DeliveryError`` if refused.

        Returns ``{"status": "success", "status_code", "message_id", "idempotency_key"}``.
        """
        payload, key = self._payload(event)
        if self.dry_run:
            logger.info(
                "dry run: event %s not sent (%d bytes)",
                key,
                len(payload),
                extra={"idempotency_key": key, "outcome": "dry_run"},
            )
            return {
                "status": "dry_run",
                "status_code": None,
                "message_id": None,
                "idempotency_key": key,
            }
        wire = with_env(payload, self._env_field)
        status, raw, headers = self._post(self._event_url, self._event_path, wire, key)
        body = decode_body(raw)
        if 200 <= status < 300:
            message_id = body.get("message_id") if isinstance(body, dict) else None
            return {
                "status": "success",
                "status_code": status,
                "message_id": message_id if isinstance(message_id, str) else None,
                "idempotency_key": key,
            }
        raise self._error(self._event_url, status, body, headers, key)

    # -- bulk --------------------------------------------------------------------

    def post_bulk(self, payloads: Sequence[bytes]) -> BulkResponse:
        """One request to ``v2/bulk/event/`` with at most 100 records; never raises.

        The body is the records joined exactly as ``json.dumps(list)`` would join them,
        each with this workspace's ``env`` spliced in, so records serialised once at
        accept time are never re-encoded.
        """
        size = len(payloads)
        if self.dry_run:
            logger.info(
                "dry run: bulk request of %d record(s) not sent",
                size,
                extra={"records": size, "outcome": "dry_run"},
            )
            return BulkResponse(size, failures=[])
        body = bulk_body(payloads, self._env_field)
        try:
            status, raw, headers = self._post(self._bulk_url, self._bulk_path, body, None)
        except DeliveryError as exc:
            return BulkResponse(size, request_error=exc)
        if not 200 <= status < 300:
            parsed = decode_body(raw)
            return BulkResponse(
                size, request_error=self._error(self._bulk_url, status, parsed, headers, None)
            )
        return bulk_answer(status, raw, payloads)

    def send_bulk(self, events: Iterable[Event | AcceptedRecord | bytes]) -> BulkResult:
        """Send events in as few bulk requests as the limits allow (100 records, 800 KiB).

        Returns one ``RecordResult`` per event, in order. Whole-request failures are
        reported on each record of that request, not raised, so one bad chunk does not
        hide the outcome of the others.
        """
        pairs = [self._payload(e) for e in events]
        payloads = [p for p, _ in pairs]
        results: list[RecordResult] = []
        requests_sent = 0
        for offset, chunk in chunk_payloads(payloads):
            response = self.post_bulk(chunk)
            requests_sent += 1
            errors: dict[int, DeliveryError] = dict(response.failures or ())
            for index in range(len(chunk)):
                key = pairs[offset + index][1]
                error = response.request_error or errors.get(index)
                if error is not None and error.idempotency_key is None:
                    error = copy.copy(error)  # a whole-request error is shared by its records
                    error.idempotency_key = key
                status = error.status_code if error is not None else 202
                results.append(RecordResult(offset + index, key, status, error))
        return BulkResult(results, requests_sent)
