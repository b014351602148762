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
    GET  /_sandbox/processed  [{"idempotency_key", "processed_at"}]: when each was processed
    GET  /_sandbox/stats    counters (see ``Sandbox.stats``)
    GET  /_sandbox/requests the request log (see ``RequestRecord``)
    GET|POST|DELETE /_sandbox/faults   read, replace or clear the fault plan
    POST /_sandbox/reset    forget events, counters, idempotency keys, log and faults
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from types import TracebackType
from typing import Any

from .auth import MAX_CLOCK_SKEW
from .faults import FaultPlan
from .handler import Server
from .state import (
    BULK_PATH,
    DEFAULT_API_KEY,
    DEFAULT_WORKSPACE_KEY,
    DEFAULT_WORKSPACE_SECRET,
    DEFAULT_WORKSPACE_UID,
    EVENT_PATH,
    IDEMPOTENCY_TTL,
    LEGACY_EVENT_PATH,
    RequestRecord,
    State,
)

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

    ``ssl_context`` (a server-side ``ssl.SSLContext`` holding a certificate) serves it
    over HTTPS, e.g. to test a private CA.

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
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.workspace_key = workspace_key
        self.workspace_secret = workspace_secret
        self.workspace_uid = workspace_uid
        self.api_key = api_key
        self.host = host
        self.port = port
        self._state = State(
            workspace_key=workspace_key,
            workspace_secret=workspace_secret,
            workspace_uid=workspace_uid,
            api_key=api_key,
            idempotency_ttl=idempotency_ttl,
            max_clock_skew=max_clock_skew,
            max_events=max_events,
            max_requests_logged=max_requests_logged,
            clock=clock,
            ssl_context=ssl_context,
        )
        if faults is not None:
            self.set_faults(faults)
        self._server: Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle --------------------------------------------------------------------

    def start(self) -> Sandbox:
        """Bind and start serving in a daemon thread; returns ``self``."""
        if self._server is not None:
            return self
        self._state.stopping.clear()
        server = Server((self.host, self.port), self._state)
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
        scheme = "https" if self._state.ssl_context is not None else "http"
        return f"{scheme}://{host}:{self.port}/"

    # -- inspection -------------------------------------------------------------------

    def events(self) -> list[dict[str, Any]]:
        """Processed events (first-time, valid records), in arrival order."""
        with self._state.lock:
            return list(self._state.events)

    def processed(self) -> dict[str | None, float]:
        """When each processed event was processed (``time.time()``), by idempotency key
        (``GET /_sandbox/processed``): accept-to-delivered latencies."""
        with self._state.lock:
            return dict(self._state.processed_at)

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
