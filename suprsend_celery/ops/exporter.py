"""A Prometheus exporter over the buffer: every figure is read from Redis at scrape time.

Needs the optional extra (``pip install "suprsend-celery[prometheus]"``). Nothing is
counted in this process: gauges come from the buffer's keys and counters and
histograms from the ``{p}:metrics`` hash the settling scripts increment (see
``counters.py``), so any number of exporters, restarted at will, serve the same
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
``breaker_state{state}``                                1 for the breaker's current state
``breaker_open_seconds``                                how long it has been open (0 closed)
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

import logging
import signal
import socketserver
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
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
from ..buffer.redis_buffer import RedisBuffer
from ..delivery.tally import (
    BUCKETS,
    FLUSH_SECONDS,
    LAST_FLUSH_AT,
    PAST_WINDOW,
    REQUEST_SECONDS,
    bucket_field,
)

__all__ = ["SCRAPE_TIMEOUT", "BufferCollector", "make_registry", "serve", "wsgi_app"]

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
        "Direct-path (track_event) outcomes: sent, retried, dead_lettered, kept.",
        "direct",
        ("sent", "retried", "dead_lettered", "kept"),
    ),
)
PATHS = ("bulk", "direct")
STATUS_CLASSES = ("2xx", "4xx", "5xx", "error")


@dataclass(slots=True)
class Snapshot:
    """Everything one scrape reads from Redis."""

    stats: dict[str, Any]
    journal: int
    counters: dict[str, str]
    breaker_open_seconds: float


def read_snapshot(buffer: RedisBuffer) -> Snapshot:
    """The buffer's figures and its metrics hash (two round trips and a small third)."""
    stats = {**buffer.stats(), **outbox_figures(buffer)}
    pipe = buffer.pipeline()
    pipe.hmget(buffer.breaker_key, "open_since")
    pipe.time()
    (open_since,), now_pair = pipe.execute()
    now = float(now_pair[0]) + float(now_pair[1]) / 1e6
    journal, counters = 0, dict[str, float]()
    for part in buffer.parts():  # a sharded buffer's shards each count their own
        pipe = part.pipeline()
        pipe.zcard(part.journal_key)
        pipe.hgetall(part.metrics_key)
        size, raw = pipe.execute()
        journal += int(size)
        for field, value in raw.items():
            name = field.decode()
            counters[name] = counters.get(name, 0) + _number(value)
    open_seconds = 0.0
    if stats["breaker"] != "closed" and open_since:
        open_seconds = max(0.0, now - float(open_since))
    return Snapshot(stats, journal, {k: _text(v) for k, v in counters.items()}, open_seconds)


def _number(raw: bytes) -> float:
    return float(raw) if b"." in raw or b"e" in raw else int(raw)


def _text(value: float) -> str:
    return repr(value) if isinstance(value, float) else str(value)


def _name(suffix: str) -> str:
    return f"{NAMESPACE}_{suffix}"


def _gauge(suffix: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(_name(suffix), doc, value=value)


class BufferCollector(Collector):
    """Reads the buffer at every scrape; a Redis failure yields ``redis_up 0`` only.

    ``buffer`` is a buffer, or a function that opens one (opening asks Redis about
    clusters and shards, so it may fail too: it is tried again at the next scrape).
    """

    def __init__(self, buffer: RedisBuffer | Callable[[], RedisBuffer]) -> None:
        self._open = buffer if callable(buffer) else None
        self._buffer = None if callable(buffer) else buffer

    def describe(self) -> Iterable[Metric]:
        return []  # no Redis round trip at registration

    def collect(self) -> Iterator[Metric]:
        try:
            if self._buffer is None:
                assert self._open is not None
                self._buffer = self._open()
            snap = read_snapshot(self._buffer)
        except redis.RedisError as exc:
            logger.warning("metrics: Redis did not answer (%s: %s)", type(exc).__name__, exc)
            yield _gauge("redis_up", "1 if Redis answered this scrape.", 0)
            return
        yield _gauge("redis_up", "1 if Redis answered this scrape.", 1)
        yield from self._gauges(snap)
        yield from self._counters(snap.counters)
        yield from self._histograms(snap.counters)

    @staticmethod
    def _gauges(snap: Snapshot) -> Iterator[Metric]:
        s = snap.stats
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
        state = GaugeMetricFamily(
            _name("breaker_state"), "1 for the circuit breaker's current state.", labels=["state"]
        )
        for name in BREAKER_STATES:
            state.add_metric([name], 1 if s["breaker"] == name else 0)
        yield state
        yield _gauge(
            "breaker_open_seconds",
            "Seconds since the breaker opened (0 while closed).",
            snap.breaker_open_seconds,
        )
        last = float(snap.counters.get(LAST_FLUSH_AT, 0) or 0)
        yield _gauge(
            "last_flush_timestamp_seconds",
            "Unix time at which the latest flush run ended (0: never).",
            last,
        )

    @staticmethod
    def _counters(counters: dict[str, str]) -> Iterator[Metric]:
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
    def _histograms(counters: dict[str, str]) -> Iterator[Metric]:
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


def _buckets(counters: dict[str, str], histogram: str) -> tuple[list[tuple[str, float]], float]:
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
    """A registry holding only this app's buffer collector (no process metrics)."""
    from ..pipeline.settings import get_settings
    from .health import quick_buffer

    settings = get_settings(app)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(BufferCollector(lambda: quick_buffer(settings, SCRAPE_TIMEOUT)))
    return registry


def wsgi_app(app: Any = None) -> Callable[..., Iterable[bytes]]:
    """A WSGI app serving the metrics of a Celery app's buffer (mount it at ``/metrics``)."""
    wsgi: Callable[..., Iterable[bytes]] = make_wsgi_app(make_registry(app))
    return wsgi


class _Server(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True


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
