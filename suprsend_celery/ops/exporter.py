"""A Prometheus exporter over the buffer: every figure is read from Redis at scrape time.

Needs the optional extra (``pip install "suprsend-celery[prometheus]"``). Nothing is
counted in this process: gauges come from the buffer's keys and counters and
histograms from the ``{p}:metrics`` hash the settling scripts increment (see
``delivery.tally``), so any number of exporters, restarted at will, serve the same
numbers. Serve it with ``suprsend-celery metrics --port 9808`` or mount ``wsgi_app(app)``
in any WSGI server.

Metrics (all ``suprsend_celery_*``; gauges unless marked):

======================================================  ==============================
``redis_up``                                            1 if Redis answered this scrape
``pending_records``                                     records waiting to be claimed
``in_flight_records``                                   records claimed by a flusher
``retry_scheduled_records``                             records waiting for a retry
``dead_letters``                                        dead letters held
``oldest_record_age_seconds``                           age of the oldest waiting record
``journal_records``                                     direct-path records not settled yet
``outbox_rows``                                         Django outbox rows, as its relay last saw
``outbox_oldest_age_seconds``                           age of the oldest Django outbox row
``journal_overdue_seconds``                             how long the first due entry waits
``journal_oldest_age_seconds``                          age of that entry's event
``breaker_state{state}``                                1 for the breaker's current state
``breaker_open_seconds``                                how long it has been open (0 closed)
``flush_concurrency_limit``                             requests in flight the flushers share
``flush_concurrency_flushers``                          flushers sharing it (lately)
``last_flush_timestamp_seconds``                        end of the latest flush run
``records_total{outcome}`` (counter)                    buffered records by outcome
``direct_events_total{outcome}`` (counter)              direct-path events by outcome
``requests_total{path,status_class}`` (counter)         HTTP requests to SuprSend
``records_sent_past_dedup_window_total`` (counter)      records sent over 24 h after accept
``request_duration_seconds{path}`` (histogram)          one HTTP request
``flush_duration_seconds`` (histogram)                  one flush run
======================================================  ==============================
"""

from __future__ import annotations

import contextlib
import logging
import selectors
import signal
import socket
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import redis

try:
    from prometheus_client import CollectorRegistry, make_wsgi_app
    from prometheus_client.core import (
        CounterMetricFamily,
        GaugeMetricFamily,
        HistogramMetricFamily,
        Metric,
    )
    from prometheus_client.registry import Collector
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "the exporter needs prometheus_client: pip install 'suprsend-celery[prometheus]'"
    ) from exc

from ..buffer.outbox_figures import outbox_figures
from ..buffer.protocol import Buffer
from ..buffer.snapshot import Snapshot
from ..delivery.tally import BUCKETS, FLUSH_SECONDS, PAST_WINDOW, REQUEST_SECONDS, bucket_field

__all__ = [
    "MAX_CONNECTIONS",
    "MAX_THREADS",
    "READ_TIMEOUT",
    "SCRAPE_TIMEOUT",
    "BufferCollector",
    "make_registry",
    "serve",
    "wsgi_app",
]

logger = logging.getLogger(__name__)

NAMESPACE = "suprsend_celery"
BREAKER_STATES = ("closed", "open", "half_open")
#: Counters by outcome: (metric name, help, hash field prefix, outcomes).
OUTCOME_COUNTERS = (
    (
        "records",
        "Buffered records settled, by outcome (counted by the settling script).",
        "records",
        ("sent", "retried", "dead_lettered", "returned", "lease_expired"),
    ),
    (
        "direct_events",
        "Direct-path (track_event) outcomes: sent, retried, dead_lettered, kept, and "
        "taken_over (sent from the journal by the flusher after the task went silent).",
        "direct",
        ("sent", "retried", "dead_lettered", "kept", "taken_over"),
    ),
)
PATHS = ("bulk", "direct")
STATUS_CLASSES = ("2xx", "4xx", "5xx", "error")


def _open_seconds(snap: Snapshot) -> float:
    """How long the breaker has been open (0 while closed)."""
    since = snap.breaker.open_since
    if snap.breaker.state == "closed" or not since:
        return 0.0
    return max(0.0, snap.now - since)


def _name(suffix: str) -> str:
    return f"{NAMESPACE}_{suffix}"


def _gauge(suffix: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(_name(suffix), doc, value=value)


class BufferCollector(Collector):
    """Reads the buffer at every scrape; a Redis failure yields ``redis_up 0`` only.

    ``buffer`` is a buffer, or a function that opens one (opening asks Redis about
    clusters and shards, so it may fail too: it is tried again at the next scrape).
    """

    def __init__(self, buffer: Buffer | Callable[[], Buffer]) -> None:
        self._open = buffer if callable(buffer) else None
        self._buffer = None if callable(buffer) else buffer

    def describe(self) -> Iterable[Metric]:
        return []  # no Redis round trip at registration

    def collect(self) -> Iterator[Metric]:
        try:
            if self._buffer is None:
                assert self._open is not None
                self._buffer = self._open()
            snap = self._buffer.snapshot()
            outbox = outbox_figures(self._buffer)
        except redis.RedisError as exc:
            logger.warning("metrics: Redis did not answer (%s: %s)", type(exc).__name__, exc)
            yield _gauge("redis_up", "1 if Redis answered this scrape.", 0)
            return
        yield _gauge("redis_up", "1 if Redis answered this scrape.", 1)
        yield from self._gauges(snap, outbox)
        yield from self._counters(snap.counters)
        yield from self._histograms(snap.counters)

    @staticmethod
    def _gauges(snap: Snapshot, outbox: dict[str, Any]) -> Iterator[Metric]:
        s = {**snap.stats(), **outbox}
        yield _gauge("pending_records", "Buffered records waiting to be claimed.", s["pending"])
        yield _gauge("in_flight_records", "Records claimed by a flusher.", s["in_flight"])
        yield _gauge(
            "retry_scheduled_records",
            "Records waiting for their retry to fall due.",
            s["scheduled_retries"],
        )
        yield _gauge("dead_letters", "Dead letters held in Redis.", s["dead"])
        yield _gauge(
            "oldest_record_age_seconds",
            "Age of the oldest record not yet delivered.",
            s["oldest_age_seconds"],
        )
        yield _gauge(
            "journal_records", "Direct-path records whose task has not settled.", snap.journal
        )
        yield _gauge(
            "outbox_rows", "Django outbox rows waiting, as the relay last saw.", s["outbox_pending"]
        )
        yield _gauge(
            "outbox_oldest_age_seconds",
            "Age of the oldest Django outbox row.",
            s["outbox_oldest_age_seconds"],
        )
        yield _gauge(
            "journal_overdue_seconds",
            "Seconds the journal entry due first is past due: no flush run sent it (0: none).",
            snap.journal_overdue_seconds,
        )
        yield _gauge(
            "journal_oldest_age_seconds",
            "Age of the event whose journal entry is due first (0: no entries).",
            snap.journal_oldest_age_seconds,
        )
        state = GaugeMetricFamily(
            _name("breaker_state"), "1 for the circuit breaker's current state.", labels=["state"]
        )
        for name in BREAKER_STATES:
            state.add_metric([name], 1 if s["breaker"] == name else 0)
        yield state
        yield _gauge(
            "breaker_open_seconds",
            "Seconds since the breaker opened (0 while closed).",
            _open_seconds(snap),
        )
        limit = snap.concurrency
        yield _gauge(
            "flush_concurrency_limit",
            "Bulk requests in flight the flushers share, as the adaptive limit stands "
            "(0: no flusher adapted in the last hour).",
            limit.limit if limit else 0.0,
        )
        yield _gauge(
            "flush_concurrency_flushers",
            "Flushers that shared the adaptive limit at its latest merge.",
            limit.flushers if limit else 0,
        )
        yield _gauge(
            "last_flush_timestamp_seconds",
            "Unix time at which the latest flush run ended (0: never).",
            snap.last_flush_at or 0.0,
        )

    @staticmethod
    def _counters(counters: dict[str, float]) -> Iterator[Metric]:
        def value(field: str) -> float:
            return float(counters.get(field, 0) or 0)

        for suffix, doc, prefix, outcomes in OUTCOME_COUNTERS:
            family = CounterMetricFamily(_name(suffix), doc, labels=["outcome"])
            for outcome in outcomes:
                family.add_metric([outcome], value(f"{prefix}:{outcome}"))
            yield family
        requests = CounterMetricFamily(
            _name("requests"),
            "HTTP requests to SuprSend by path and status class (error: no answer).",
            labels=["path", "status_class"],
        )
        # The usual classes always, at 0 until seen, so dashboards have every series.
        fields = {f"requests:{p}:{c}" for p in PATHS for c in STATUS_CLASSES}
        fields.update(f for f in counters if f.startswith("requests:"))
        for field in sorted(fields):
            _, path, klass = field.split(":", 2)
            requests.add_metric([path, klass], value(field))
        yield requests
        yield CounterMetricFamily(
            _name("records_sent_past_dedup_window"),
            "Records sent more than 24 h after they were accepted: SuprSend no "
            "longer deduplicates their keys.",
            value=value(PAST_WINDOW),
        )

    @staticmethod
    def _histograms(counters: dict[str, float]) -> Iterator[Metric]:
        request = HistogramMetricFamily(
            _name("request_duration_seconds"),
            "Duration of one HTTP request to SuprSend.",
            labels=["path"],
        )
        for path in PATHS:
            buckets, total = _buckets(counters, f"{REQUEST_SECONDS}:{path}")
            request.add_metric([path], buckets, total)
        yield request
        buckets, total = _buckets(counters, FLUSH_SECONDS)
        yield HistogramMetricFamily(
            _name("flush_duration_seconds"),
            "Duration of one flush run.",
            buckets=buckets,
            sum_value=total,
        )


def _buckets(counters: dict[str, float], histogram: str) -> tuple[list[tuple[str, float]], float]:
    """Cumulative ``(le, count)`` pairs from the per-bucket fields, and the sum."""
    bounds = [*BUCKETS[histogram.partition(":")[0]], float("inf")]
    out: list[tuple[str, float]] = []
    running = 0.0
    for bound in bounds:
        running += float(counters.get(bucket_field(histogram, bound), 0) or 0)
        out.append(("+Inf" if bound == float("inf") else repr(bound), running))
    return out, float(counters.get(f"hist:{histogram}:sum", 0) or 0)


SCRAPE_TIMEOUT = 5.0
"""Seconds a scrape waits for Redis before it answers ``redis_up 0`` (Prometheus'
own scrape timeout is 10 s): the exporter's client has short timeouts and no retries."""


def make_registry(app: Any = None) -> CollectorRegistry:
    """A registry holding only this app's buffer collector (no process metrics); it
    needs Redis only, never the workspace credentials."""
    from ..pipeline.settings import get_settings
    from .health import quick_buffer

    settings = get_settings(app, require_credentials=False)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(BufferCollector(lambda: quick_buffer(settings, SCRAPE_TIMEOUT)))
    return registry


def wsgi_app(app: Any = None) -> Callable[..., Iterable[bytes]]:
    """A WSGI app serving the metrics of a Celery app's buffer (mount it at ``/metrics``)."""
    wsgi: Callable[..., Iterable[bytes]] = make_wsgi_app(make_registry(app))
    return wsgi


MAX_THREADS = 4
"""Threads answering scrapes at once (Prometheus scrapes one target serially)."""
MAX_CONNECTIONS = 256
"""Open connections kept at most; past it the longest-idle one is closed for a new one."""
READ_TIMEOUT = 5.0
"""Seconds a connection may stay silent: before its request starts, and per read after."""


class _Server(WSGIServer):
    """A WSGI server whose threads and connections are bounded.

    ``ThreadingMixIn`` starts a thread per connection as it is accepted, and wsgiref
    reads without a timeout: 400 half-open connections held 400 threads. Here an
    accepted connection waits in a selector, costing a file descriptor and no thread,
    until its request arrives (within ``READ_TIMEOUT``, else it is closed); only then
    does one of ``MAX_THREADS`` pool threads handle it, its socket reads and writes
    bounded by ``READ_TIMEOUT``. At ``MAX_CONNECTIONS`` the longest-waiting silent
    connection is closed, so a flood of idle connections cannot lock a scrape out.
    """

    request_queue_size = 128  # socketserver's 5 drops SYNs under a burst of connections

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._pool = ThreadPoolExecutor(MAX_THREADS, thread_name_prefix="suprsend-metrics")
        self._selector = selectors.DefaultSelector()
        #: Silent connections, oldest first: socket -> (address, deadline).
        self._waiting: OrderedDict[socket.socket, tuple[Any, float]] = OrderedDict()
        self._busy = 0  # connections handed to the pool, not finished yet
        self._busy_lock = threading.Lock()
        self._stop = threading.Event()
        self._stopped = threading.Event()

    def serve_forever(self, poll_interval: float = 0.5) -> None:
        self._selector.register(self.socket, selectors.EVENT_READ)
        try:
            while not self._stop.is_set():
                for key, _ in self._selector.select(poll_interval):
                    if key.fileobj is self.socket:
                        self._accept()
                    else:
                        self._dispatch(key.fileobj)  # type: ignore[arg-type]
                self._expire()
        finally:
            self._stopped.set()

    def shutdown(self) -> None:
        self._stop.set()
        self._stopped.wait()

    def server_close(self) -> None:
        for sock in list(self._waiting):
            self._forget(sock)
            self.shutdown_request(sock)
        self._selector.close()
        self._pool.shutdown(wait=False, cancel_futures=True)
        super().server_close()

    def _accept(self) -> None:
        try:
            sock, address = self.get_request()
        except OSError:
            return
        with self._busy_lock:
            full = len(self._waiting) + self._busy >= MAX_CONNECTIONS
        if full and self._waiting:
            oldest = next(iter(self._waiting))
            self._forget(oldest)
            self.shutdown_request(oldest)
        elif full:  # every slot is a request being answered: refuse this one
            self.shutdown_request(sock)
            return
        self._waiting[sock] = (address, time.monotonic() + READ_TIMEOUT)
        self._selector.register(sock, selectors.EVENT_READ)

    def _forget(self, sock: socket.socket) -> None:
        self._waiting.pop(sock, None)
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(sock)

    def _dispatch(self, sock: socket.socket) -> None:
        """Its request has started: a pool thread answers it."""
        address, _ = self._waiting[sock]
        self._forget(sock)
        with self._busy_lock:
            self._busy += 1
        self._pool.submit(self._answer, sock, address)

    def _expire(self) -> None:
        now = time.monotonic()
        while self._waiting:
            sock, (_, deadline) = next(iter(self._waiting.items()))
            if deadline > now:
                break
            self._forget(sock)
            self.shutdown_request(sock)

    def _answer(self, sock: socket.socket, address: Any) -> None:
        try:
            sock.settimeout(READ_TIMEOUT)
            self.finish_request(sock, address)
        except OSError as exc:  # a timeout, or the client went away
            logger.debug("metrics: connection from %s ended: %s", address, exc)
        except Exception:
            logger.exception("metrics: answering %s failed", address)
        finally:
            self.shutdown_request(sock)
            with self._busy_lock:
                self._busy -= 1


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("%s " + format, self.address_string(), *args)


def serve(app: Any, host: str, port: int, ready: Callable[[str], None] | None = None) -> None:
    """Serve ``/metrics`` until SIGTERM or Ctrl-C; ``ready`` gets the URL once listening."""
    server = make_server(host, port, wsgi_app(app), _Server, _QuietHandler)

    def stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        bound_host, bound_port = server.server_address[:2]
        if ready is not None:
            ready(f"http://{bound_host!s}:{bound_port}/metrics")
        server.serve_forever(poll_interval=0.5)
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        server.server_close()
